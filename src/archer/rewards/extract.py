"""Pull the graded part out of a completion: the final ``\\boxed{...}`` or the final ```python block.

The answer is read after the reasoning: when a completion holds ``</think>``, the text after its last ``</think>``
is graded. When it holds none, the rule is the caller's choice (``require_close``):

- False (the default, and the paper recipes' rule): the whole completion is graded, as the authors' rewards do
  (their format-error return for a missing ``</think>`` is commented out, in the math and the code reward alike).
  A ``\\boxed`` answer or a code block written inside reasoning that was cut off can then still score.
- True: no answer at all, so the completion scores 0. This is a stricter rule of ours, not the paper's: with chat
  templates that open the think block in the prompt (DeepSeek-R1-Distill's ends with ``<think>\\n``), every
  completion cut at the length limit mid-thought scores 0, which acts as an implicit length penalty.
  ``archer.rewards.thinking`` can decide it from the chat template (``auto``).
"""

from __future__ import annotations

import re
from typing import Any

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_CODE_RE = re.compile(r"```(?:python3?|py)[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)


def completion_text(completion: Any) -> str:
    """The text of one completion as TRL passes it: a string, or a list of chat messages (the last one counts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        return _content_text(completion[-1].get("content")) if completion else ""
    raise TypeError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    # Multimodal-style content: a list of {"type": "text", "text": ...} parts.
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def answer_region(text: str, require_close: bool = False) -> str | None:
    """The part of ``text`` that may hold the answer, or None when there is none.

    With a ``</think>``, the text after the last one counts (None when a ``<think>`` opens again after it and never
    closes). Without one, the whole text counts, as in the authors' rewards, unless ``require_close`` (then None).
    """
    head, sep, tail = text.rpartition(THINK_CLOSE)
    if sep:
        return None if THINK_OPEN in tail else tail
    return None if require_close else text


def extract_boxed_answer(text: str, require_close: bool = False) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) after the reasoning, braces balanced.

    Escaped braces (``\\{``, ``\\}``) are literal set braces and do not open or close a group. Returns None when
    there is no answer region (see ``answer_region``), no box, an empty box, or the last box never closes (a
    truncated answer is not replaced by an earlier one).
    """
    region = answer_region(text, require_close)
    if region is None:
        return None
    matches = list(_BOX_RE.finditer(region))
    if not matches:
        return None
    start = matches[-1].end()
    depth = 1
    i = start
    while i < len(region):
        char = region[i]
        if char == "\\":
            i += 2  # skip the escaped character (\{, \}, \\ ...)
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                answer = region[start:i].strip()
                return answer or None
        i += 1
    return None


def extract_code(text: str, require_close: bool = False) -> str | None:
    """The body of the last complete ```python (or ```py) block after the reasoning (``answer_region``), or None."""
    region = answer_region(text, require_close)
    if region is None:
        return None
    blocks = _CODE_RE.findall(region)
    if not blocks:
        return None
    code = blocks[-1]
    return code if code.strip() else None
