"""User-facing errors: one clear line, exit code 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for (bad recipe key, missing file, impossible setting).

    The CLI prints ``str(err)`` as a single line prefixed with ``error:`` and exits with code 2.
    The message must name the file / key / value at fault and what would be valid.
    """

    exit_code = 2
