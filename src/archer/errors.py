"""User-facing errors: one clear line, exit code 2, no traceback."""

from __future__ import annotations

MAX_LINE = 300  # characters of an error line; longer messages (a huge value quoted back) are cut


class UserError(Exception):
    """A mistake in what the user asked for (bad recipe key, missing file, impossible setting).

    The CLI prints ``str(err)`` as a single line prefixed with ``error:`` and exits with code 2.
    The message must name the file / key / value at fault and what would be valid.
    """

    exit_code = 2


def one_line(message: object, limit: int = MAX_LINE) -> str:
    """``message`` on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
