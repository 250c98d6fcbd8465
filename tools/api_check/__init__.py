"""`make api-check` (`python -m tools.api_check`): what no CPU run reaches of vLLM (the GPU wheel's pins and sources,
TRL's calls into it) and our lighteval calls, read from their source.

A developer tool of this checkout, not shipped in the wheel."""
