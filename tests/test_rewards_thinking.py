"""What a completion without </think> scores: graded whole by default, as the authors' rewards grade it (the paper
recipes and suite keep that rule); 0 with the stricter require_think_close (true, or auto when the chat template
opens the reasoning), in the rewards the trainer builds from a recipe and in evaluation alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from paths import ROOT

from archer.errors import UserError
from archer.recipe import load_recipe
from archer.rewards import (
    extract_boxed_answer,
    extract_code,
    math_reward,
    resolve_require_think_close,
    template_requires_think_close,
)

TEMPLATES = ROOT / "tests" / "data" / "chat_templates"
R1_MATH = ROOT / "recipes" / "DeepSeek-R1-Distill-Qwen-1.5B" / "archer" / "math.yaml"
R1_CODE = ROOT / "recipes" / "DeepSeek-R1-Distill-Qwen-1.5B" / "archer" / "code.yaml"
QWEN3_MATH = ROOT / "recipes" / "Qwen3-4B" / "archer" / "math.yaml"

TRUNCATED = "Let me think. 13 * 17 = 221, minus 17 is 204, so it might be \\boxed{204}. Wait, let me recheck"
CLOSED = "13 * 17 - 17 = 204.\n</think>\n\nThe answer is \\boxed{204}."


@pytest.fixture(scope="module")
def tokenizer():
    from archer.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture
def with_template(tokenizer):
    def use(name: str | None):
        tokenizer.chat_template = None if name is None else (TEMPLATES / f"{name}.jinja").read_text()
        return tokenizer

    yield use
    tokenizer.chat_template = None


def test_truncated_reasoning_is_graded_whole_unless_required():
    # The R1-distill prompt already opened <think>, so this completion never finished thinking. The authors' rewards
    # grade it whole (their format-error return is commented out): the guess before the cut scores.
    assert math_reward([TRUNCATED, CLOSED], ["204", "204"]) == [1.0, 1.0]
    assert math_reward(["<think>\n" + TRUNCATED], ["204"]) == [1.0]  # an opening tag changes nothing
    # The stricter rule of ours: no </think>, no answer.
    assert math_reward([TRUNCATED, CLOSED], ["204", "204"], require_think_close=True) == [0.0, 1.0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (TRUNCATED, None),
        (CLOSED, "204"),
        ("<think>x</think> \\boxed{1}", "1"),
        ("</think> \\boxed{1} <think> again \\boxed{2}", None),  # reopened and never closed
    ],
)
def test_extraction_requires_the_close(text, expected):
    assert extract_boxed_answer(text, require_close=True) == expected


def test_code_extraction_requires_the_close():
    draft = "I could write\n```python\nprint(1)\n```\nbut first let me che"
    assert extract_code(draft) == "print(1)\n"
    assert extract_code(draft, require_close=True) is None
    assert extract_code("plan\n</think>\n```python\nprint(2)\n```", require_close=True) == "print(2)\n"


@pytest.mark.parametrize(
    ("template", "kwargs", "required"),
    [
        ("deepseek_r1_distill", None, True),  # the prompt ends with <think>\n
        ("qwen3", None, True),  # thinking on (the default): the model opens the block itself
        ("qwen3", {"enable_thinking": True}, True),
        ("qwen3", {"enable_thinking": False}, False),  # an empty block closes in the prompt
        ("qwen2_5", None, False),  # no reasoning block at all
        (None, None, False),  # no chat template (the tiny model, raw prompts)
    ],
)
def test_the_chat_template_decides(with_template, template, kwargs, required):
    tokenizer = with_template(template)
    assert template_requires_think_close(tokenizer, kwargs) is required
    assert resolve_require_think_close("auto", tokenizer, kwargs) is required
    assert resolve_require_think_close(not required, tokenizer, kwargs) is (not required)  # explicit wins


def test_auto_without_a_tokenizer_and_bad_settings():
    assert resolve_require_think_close("auto") is False
    with pytest.raises(UserError, match="expected auto, true or false, got 'yes'"):
        resolve_require_think_close("yes")


def test_an_unrenderable_template_asks_for_an_explicit_setting(with_template):
    tokenizer = with_template(None)
    tokenizer.chat_template = "{{ raise_exception('no') }}"
    with pytest.raises(UserError, match="set it to true or false"):
        template_requires_think_close(tokenizer)


# --------------------------------------------------------------------------------------------------------------
# Training: the reward functions the trainer builds from a recipe.


def _rewards(recipe_path: Path, tokenizer, *overrides: str):
    from archer.training.pipeline import reward_funcs

    recipe = load_recipe(recipe_path, list(overrides))
    return recipe, reward_funcs(recipe, tokenizer)


def test_r1_distill_recipe_rewards_grade_as_the_authors(with_template):
    recipe, (reward,) = _rewards(R1_MATH, with_template("deepseek_r1_distill"))
    assert recipe.data.require_think_close is False
    assert reward.__name__ == "math_reward"  # TRL logs rewards by name
    assert reward([TRUNCATED, CLOSED], solution=["204", "204"]) == [1.0, 1.0]
    # the stricter rule is one override away; auto reads it from the model's template
    for setting in ("true", "auto"):
        _, (strict,) = _rewards(R1_MATH, with_template("deepseek_r1_distill"), f"data.require_think_close={setting}")
        assert strict([TRUNCATED, CLOSED], solution=["204", "204"]) == [0.0, 1.0]


def test_the_default_is_the_authors_rule():
    from archer.evaluation.suite import TaskSpec
    from archer.recipe import DataArgs

    assert DataArgs().require_think_close is False and TaskSpec(task="x").require_think_close is False


def test_qwen3_recipe_is_non_thinking_and_keeps_grading_whole_answers(with_template):
    tokenizer = with_template("qwen3")
    recipe, (reward,) = _rewards(QWEN3_MATH, tokenizer)
    assert recipe.trainer.chat_template_kwargs == {"enable_thinking": False}
    assert reward(["So \\boxed{204}."], solution=["204"]) == [1.0]
    # The same model in thinking mode with auto requires the close.
    _, (thinking,) = _rewards(
        QWEN3_MATH, tokenizer, "trainer.chat_template_kwargs={enable_thinking: true}", "data.require_think_close=auto"
    )
    assert thinking(["<think>\n" + TRUNCATED], solution=["204"]) == [0.0]
    assert thinking([TRUNCATED], solution=["204"]) == [0.0]


def test_tiny_recipe_grades_as_before(with_template):
    _, (reward,) = _rewards(ROOT / "recipes" / "tiny" / "archer.yaml", with_template(None))
    assert reward(["\\boxed{5}", "<think>2+3=5.</think> \\boxed{5}"], solution=["5", "5"]) == [1.0, 1.0]


def test_code_recipe_binds_the_rule_and_the_authors_limits(with_template):
    recipe, (reward,) = _rewards(R1_CODE, with_template("deepseek_r1_distill"))
    assert reward.__name__ == "code_reward"
    assert reward.keywords == {
        "require_think_close": False, "max_tests": 16, "timeout_s": 30.0, "script_timeout_s": 60.0, "memory_mb": 1024,
        "compare": "whole", "budget_s": None,
    }  # fmt: skip
    _, (explicit,) = _rewards(
        R1_CODE,
        with_template(None),
        "data.require_think_close=true",
        "data.code_budget_s=120",
        "data.code_timeout_s=4",
        "data.code_compare=lines",
    )
    assert explicit.keywords == {
        "require_think_close": True, "max_tests": 16, "timeout_s": 4.0, "script_timeout_s": 60.0, "memory_mb": 1024,
        "compare": "lines", "budget_s": 120.0,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.require_think_close=maybe", "data: require_think_close: expected auto, true or false, got 'maybe'"),
        ("data.require_think_close=1", "data.require_think_close: expected"),
        ("data.code_timeout_s=0", "code_timeout_s: must be > 0 seconds"),
        ("data.code_budget_s=-5", "code_budget_s: must be > 0 seconds"),
        ("data.code_script_timeout_s=0", "code_script_timeout_s: must be > 0 seconds"),
        ("data.code_compare=tokens", "code_compare: 'tokens' is not one of lines, whole"),
        ("data.code_memory_mb=10", "code_memory_mb: must be >= 64 MiB"),
        ("data.max_prompt_tokens=0", "max_prompt_tokens: must be >= 1"),
    ],
)
def test_bad_recipe_settings_are_one_line_errors(override, message):
    with pytest.raises(UserError) as err:
        load_recipe(R1_MATH, [override])
    assert message in str(err.value) and "\n" not in str(err.value)
