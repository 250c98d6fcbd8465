"""``require_think_close``: whether a completion without ``</think>`` scores 0, and how ``auto`` reads it from the
chat template.

The paper's rule is ``false``: the authors' rewards grade the whole completion when it has no ``</think>`` (their
format-error return is commented out), so this is the default of recipes and suites. ``true`` is a stricter choice
of ours: a completion cut off mid-thought scores 0, which acts as an implicit length penalty. ``auto`` asks the
chat template. Three kinds of template exist:

- the prompt opens the think block (DeepSeek-R1-Distill's generation prompt ends with ``<think>\\n``, as do
  Qwen3-Thinking-2507's and QwQ's): every completion starts mid-thought and never contains ``<think>``;
- a switch closes an empty block in the prompt when thinking is off and leaves it to the model when on (Qwen3:
  ``enable_thinking=False`` renders ``<think>\\n\\n</think>\\n\\n``; by default the model writes ``<think>``
  itself);
- no think block at all (Qwen2.5-Instruct, the embedded tiny model, raw prompts).

``auto`` is true for the first kind and for the second with thinking on (a completion without ``</think>`` was cut
off while reasoning), false otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from archer.errors import UserError
from archer.rewards.extract import THINK_CLOSE, THINK_OPEN

AUTO = "auto"
CHOICES = (AUTO, True, False)
_PROBE = "archer: which generation prompt follows this message?"


def _generation_prompt(tokenizer: Any, kwargs: Mapping[str, Any]) -> str:
    """What the template appends after a one-message user turn to start the assistant's reply."""
    messages = [{"role": "user", "content": _PROBE}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    return text[text.rfind(_PROBE) + len(_PROBE) :] if _PROBE in text else text


def _opens_reasoning(text: str) -> bool:
    head, sep, tail = text.rpartition(THINK_CLOSE)
    return THINK_OPEN in (tail if sep else text)


def template_requires_think_close(tokenizer: Any, chat_template_kwargs: Mapping[str, Any] | None = None) -> bool:
    """True when the tokenizer's chat template (rendered with ``chat_template_kwargs``) makes the model reason
    in a think block that the completion must close; False without a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    kwargs = dict(chat_template_kwargs or {})
    try:
        prompt = _generation_prompt(tokenizer, kwargs)
        if _opens_reasoning(prompt):
            return True  # the prompt opened the block
        if THINK_CLOSE in prompt:
            return False  # an empty block closed in the prompt: thinking is off
        switched_off = _generation_prompt(tokenizer, {**kwargs, "enable_thinking": False})
    except Exception as err:  # a template that cannot render one user turn: the user must decide
        raise UserError(
            f"require_think_close: auto cannot render the chat template ({type(err).__name__}: {err}); "
            "set it to true or false"
        ) from None
    # A switch that closes the block when off means the model opens it itself when on (Qwen3's thinking mode).
    return THINK_CLOSE in switched_off


def check_setting(value: Any, where: str) -> Any:
    """``value`` if it is one of auto / true / false, else a UserError naming ``where``."""
    if not (value is True or value is False or value == AUTO):  # 1 == True, so no `in CHOICES`
        raise UserError(f"{where}: expected auto, true or false, got {value!r}")
    return value


def resolve_require_think_close(
    setting: Any, tokenizer: Any = None, chat_template_kwargs: Mapping[str, Any] | None = None
) -> bool:
    """The setting as a bool: ``auto`` asks the chat template (no tokenizer or no template: False)."""
    if setting == AUTO:
        return tokenizer is not None and template_requires_think_close(tokenizer, chat_template_kwargs)
    return bool(check_setting(setting, "require_think_close"))
