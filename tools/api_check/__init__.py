"""`make api-check` (`python -m tools.api_check`): our calls into vLLM, TRL and lighteval, read from their source.

A developer tool of this checkout, not shipped in the wheel."""
