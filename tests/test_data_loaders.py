"""archer.data.loaders: public training sets mapped onto the rewards' columns (offline, rows in each set's layout)."""

from __future__ import annotations

import json
import shutil

import datasets
import pytest

from archer.data.loaders import (
    LOADERS,
    MATH_INSTRUCTION,
    convert_dataset,
    guess_loader,
    load_training_dataset,
    normalize_code_tests,
)
from archer.errors import UserError
from archer.recipe import DataArgs

DAPO_TEMPLATE = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)


def _ds(rows):
    return datasets.Dataset.from_list(rows)


def test_deepscaler_rows_become_boxed_prompts():
    rows = [
        {"problem": "What is $2+3$?", "answer": "5", "solution": "2+3=5"},
        {"problem": "Find $x$.", "answer": "", "solution": "no final answer"},  # unusable: dropped
    ]
    out = convert_dataset(_ds(rows), "deepscaler", system_prompt="Be brief.")
    assert len(out) == 1
    row = out[0]
    assert row["solution"] == "5"  # the answer, not the worked solution
    assert row["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert row["prompt"][1]["role"] == "user"
    assert row["prompt"][1]["content"] == f"What is $2+3$?\n\n{MATH_INSTRUCTION}"


def test_dapo_math_instruction_is_replaced_in_both_layouts():
    problem = "Let $a$ be the answer. Compute $a$ if $a^2 = 49$ and $a > 0$."
    original = [
        {
            "data_source": "math_dapo",
            "prompt": [{"role": "user", "content": DAPO_TEMPLATE.format(problem)}],
            "reward_model": {"ground_truth": "7", "style": "rule-lighteval/MATH_v2"},
        }
    ]
    processed = [{"prompt": problem, "solution": "7"}]
    for rows in (original, processed):
        row = convert_dataset(_ds(rows), "dapo_math")[0]
        assert row["problem"] == problem
        assert row["solution"] == "7"
        assert "Answer:" not in row["prompt"][-1]["content"]
        assert row["prompt"][-1]["content"].endswith(MATH_INSTRUCTION)


def test_skywork_takes_the_first_gold_and_does_not_repeat_the_instruction():
    rows = [
        {
            "prompt": [
                {"role": "user", "content": f"Evaluate $\\frac{{1}}{{2}}+\\frac{{1}}{{2}}$. {MATH_INSTRUCTION}"}
            ],
            "reward_model": {"ground_truth": '["1", "1.0"]', "style": "rule"},
        },
        {"prompt": [{"role": "user", "content": "No gold here."}], "reward_model": {"ground_truth": "[]"}},
    ]
    out = convert_dataset(_ds(rows), "skywork_or1")
    assert len(out) == 1
    assert out[0]["solution"] == "1"
    assert out[0]["prompt"][-1]["content"].count("\\boxed{}") == 1


def test_code_test_layouts_normalise_to_the_reward_form():
    # PrimeIntellect: stdin tests, and call-based tests with argument lists and wrapped results
    stdin = [{"type": "stdin_stdout", "input": "1 2\n", "output": "3\n"}]
    assert normalize_code_tests(json.dumps(stdin)) == (
        [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}],
        None,
    )
    call = [{"type": "function_call", "fn_name": "add", "input": [1, [2, 3]], "output": [6]}]
    assert normalize_code_tests(call) == ([{"input": "1\n[2, 3]", "output": "6", "testtype": "functional"}], "add")
    # APPS / TACO: parallel lists, fn_name inside
    taco = {"inputs": [[[1, 2]]], "outputs": [[[2, 1]]], "fn_name": "rev"}
    assert normalize_code_tests(taco) == ([{"input": "[1, 2]", "output": "[2, 1]", "testtype": "functional"}], "rev")
    # LiveCodeBench: functional inputs already one JSON value per line, fn_name from the caller (metadata)
    lcb = [{"input": "[1, 2]\n3", "output": "[1, 2, 3]", "testtype": "functional"}]
    assert normalize_code_tests(lcb, "append") == (lcb, "append")
    # unusable: no tests, functional without a name, a malformed test, not JSON
    for bad in ([], [{"input": "1", "output": "1", "testtype": "functional"}], [{"input": "1"}], "not json {"):
        assert normalize_code_tests(bad) is None


def test_deepcoder_rows_keep_tests_as_json_and_honour_min_tests():
    five = [{"input": f"{i}\n", "output": f"{2 * i}\n"} for i in range(5)]
    rows = [
        {"problem": "Double the number.", "tests": json.dumps(five), "metadata": "{}"},
        {"problem": "Too few tests.", "tests": json.dumps(five[:2]), "metadata": "{}"},
        {"problem": "Reverse.", "tests": json.dumps(five[:1]), "metadata": json.dumps({"func_name": "rev"})},
    ]
    out = convert_dataset(_ds(rows), "deepcoder", min_tests=5)
    assert out["problem"] == ["Double the number."]
    assert json.loads(out[0]["tests"])[4] == {"input": "4\n", "output": "8\n", "testtype": "stdin"}
    assert out[0]["fn_name"] is None
    assert "```python" in out[0]["prompt"][-1]["content"] and "standard input" in out[0]["prompt"][-1]["content"]
    functional = convert_dataset(_ds(rows), "deepcoder")[2]
    assert functional["fn_name"] == "rev" and "`rev`" in functional["prompt"][-1]["content"]


@pytest.mark.sandbox
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
def test_converted_code_tests_grade_real_programs():
    from archer.rewards import code_reward

    rows = [
        {"problem": "Sum two numbers.", "tests": json.dumps([{"input": "1 2\n", "output": "3\n"}]), "metadata": ""},
        {"problem": "Reverse a list.", "tests": json.dumps({"inputs": [[[1, 2, 3]]], "outputs": [[[3, 2, 1]]],
                                                             "fn_name": "rev"}), "metadata": ""},
    ]  # fmt: skip
    out = convert_dataset(_ds(rows), "deepcoder")
    right = [
        "```python\na, b = map(int, input().split())\nprint(a + b)\n```",
        "```python\ndef rev(xs):\n    return xs[::-1]\n```",
    ]
    wrong = ["```python\nprint(0)\n```", "```python\ndef rev(xs):\n    return xs\n```"]
    assert code_reward(right, tests=out["tests"], fn_name=out["fn_name"]) == [1.0, 1.0]
    assert code_reward(wrong, tests=out["tests"], fn_name=out["fn_name"]) == [0.0, 0.0]


def test_converted_math_solutions_grade_with_the_math_reward():
    from archer.rewards import math_reward

    rows = [{"problem": "Half of one?", "answer": "\\frac{1}{2}"}, {"problem": "Two cubed?", "answer": "8"}]
    out = convert_dataset(_ds(rows), "deepscaler")
    completions = ["<think>1/2</think> \\boxed{0.5}", "<think>2*2*2</think> \\boxed{9}"]
    assert math_reward(completions, solution=out["solution"]) == [1.0, 0.0]


def test_loader_is_guessed_from_the_hub_id():
    assert guess_loader("agentica-org/DeepScaleR-Preview-Dataset") == "deepscaler"
    assert guess_loader("bytedtsinghua-sia/dapo-math-17k") == "dapo_math"
    assert guess_loader("agentica-org/DeepCoder-Preview-Dataset") == "deepcoder"
    assert guess_loader("someone/else") is None
    assert {loader.reward for loader in LOADERS.values()} == {"math", "code"}


def test_load_training_dataset_from_local_files(tmp_path):
    path = tmp_path / "deepscaler.jsonl"
    path.write_text("".join(json.dumps({"problem": f"{i}+{i}?", "answer": str(2 * i)}) + "\n" for i in range(6)))
    data = DataArgs(dataset=str(path), loader="deepscaler", num_examples=4)
    out = load_training_dataset(data)
    assert len(out) == 4 and out["solution"] == ["0", "2", "4", "6"]

    # prepared data (what the filtering step writes) needs no loader; a system prompt is still added
    folder = tmp_path / "prepared"
    datasets.Dataset.from_list([{"prompt": "1+1?", "solution": "2"}]).save_to_disk(str(folder))
    out = load_training_dataset(DataArgs(dataset=str(folder), system_prompt="Think."))
    assert out[0]["prompt"] == [{"role": "system", "content": "Think."}, {"role": "user", "content": "1+1?"}]


def test_an_archer_filter_output_is_read_as_prepared_data_whatever_the_recipes_loader(tmp_path):
    """A paper recipe (loader deepscaler, or verl with a data file) pointed at a filter output with only data.dataset
    changed: its rows were converted when they were filtered, so they are read as they are."""
    folder = tmp_path / "filtered"
    rows = [{"prompt": [{"role": "user", "content": "1+1?"}], "problem": "1+1?", "solution": "2", "pass_rate": 0.5}]
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    (folder / "filter.json").write_text(json.dumps({"model": "org/model", "k": 8}))
    for loader, data_files in (("deepscaler", None), ("verl", "train/archercoder-1.5b-train.json")):
        out = load_training_dataset(DataArgs(dataset=str(folder), loader=loader, data_files=data_files))
        assert out.to_list() == rows, loader
    (folder / "filter.json").unlink()  # without the record, the loader is applied as the recipe says
    with pytest.raises(UserError, match="loader 'deepscaler' needs column 'answer'"):
        load_training_dataset(DataArgs(dataset=str(folder), loader="deepscaler"))


def test_user_errors(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "gold": "2"}) + "\n")
    with pytest.raises(UserError, match="needs column 'problem'"):
        load_training_dataset(DataArgs(dataset=str(path), loader="deepscaler"))
    with pytest.raises(UserError, match="lacks the columns prompt"):
        load_training_dataset(DataArgs(dataset=str(path)))
    with pytest.raises(UserError, match="unknown loader 'nope'"):
        load_training_dataset(DataArgs(dataset=str(path), loader="nope"))
    with pytest.raises(UserError, match="found no usable row"):
        convert_dataset(_ds([{"problem": "x", "answer": None}]), "deepscaler")
    with pytest.raises(UserError, match="cannot load someone/not-cached"):  # offline, nothing cached
        load_training_dataset(DataArgs(dataset="someone/not-cached", loader="deepscaler"))
