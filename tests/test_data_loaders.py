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


# --------------------------------------------------------------------------------------------------------------
# archer.data.filtering


def test_select_learnable_keeps_strictly_between_zero_and_one():
    from archer.data.filtering import select_learnable

    rows = _ds([{"prompt": f"p{i}", "solution": str(i)} for i in range(5)])
    kept, stats = select_learnable(rows, [0.0, 0.125, 1.0, 0.875, 0.5])
    assert kept["prompt"] == ["p1", "p3", "p4"]
    assert kept["pass_rate"] == [0.125, 0.875, 0.5]
    assert stats == {"problems": 5, "never_solved": 1, "always_solved": 1, "kept": 3}


def test_pass_rates_group_k_answers_per_problem_through_the_math_reward():
    from archer.data.filtering import pass_rates
    from archer.rewards import math_reward

    k = 4
    rows = _ds([{"prompt": f"Problem {i}", "solution": str(10 + i)} for i in range(4)])
    texts = list(rows["prompt"])

    def sample(prompts, n):  # problem i: its first i answers are right, the others wrong
        answers = []
        for i, _ in enumerate(prompts):
            answers.append([f"\\boxed{{{10 + i if j < i else -1}}}" for j in range(n)])
        return answers

    assert pass_rates(rows, texts, sample, math_reward, k) == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(RuntimeError, match="not k=4"):
        pass_rates(rows, texts, lambda p, n: sample(p, n)[:-1], math_reward, k)


def test_transformers_sampler_draws_k_answers_reproducibly(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from archer.data.filtering import FilterConfig, transformers_sampler

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = FilterConfig(k=3, max_new_tokens=6, batch_size=2, seed=7)
    texts = ["Compute 1+2.", "Compute 10-3.", "Compute 4+4+4."]
    first = transformers_sampler(model, tokenizer, config)(texts, 3)
    again = transformers_sampler(model, tokenizer, config)(texts, 3)
    assert [len(group) for group in first] == [3, 3, 3]
    assert first == again
    assert all(len(tokenizer(answer, add_special_tokens=False)["input_ids"]) <= 6 for g in first for answer in g)
    assert tokenizer.padding_side == AutoTokenizer.from_pretrained(tiny_model_dir).padding_side  # restored


def test_filter_drops_long_prompts_by_token_count(tiny_model_dir):
    from transformers import AutoTokenizer

    from archer.data.filtering import FilterConfig, filter_dataset
    from archer.rewards import math_reward

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    short, long = "Compute 1+2.", "Compute " + "+".join(["1"] * 40) + "."
    limit = len(tokenizer(short, add_special_tokens=False)["input_ids"])
    rows = _ds([{"prompt": short, "solution": "3"}, {"prompt": long, "solution": "40"}])

    def sample(texts, k):
        assert texts == [short]  # the long prompt never reaches the sampler
        return [["\\boxed{3}"] + ["\\boxed{0}"] * (k - 1)]

    kept, stats = filter_dataset(rows, tokenizer, sample, math_reward, FilterConfig(k=2, max_prompt_tokens=limit))
    assert kept["prompt"] == [short] and kept["pass_rate"] == [0.5]
    assert stats["prompt_too_long"] == 1 and stats["kept"] == 1


def test_filtered_output_trains_as_prepared_data(tmp_path):
    from archer.data.filtering import STATS_FILE, _save

    kept = _ds([{"prompt": [{"role": "user", "content": "1+1?"}], "solution": "2", "pass_rate": 0.5}])
    _save(kept, {"kept": 1}, tmp_path / "out")
    assert json.loads((tmp_path / "out" / STATS_FILE).read_text()) == {"kept": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind
    out = load_training_dataset(DataArgs(dataset=str(tmp_path / "out")))
    assert out[0]["solution"] == "2" and out[0]["prompt"][0]["content"] == "1+1?"


def test_cli_fails_clearly_when_nothing_is_learnable(tiny_model_dir, tmp_path, capsys):
    from archer.data.filtering import main

    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"problem": f"Compute {i}+1.", "answer": str(i + 1)}) + "\n" for i in range(3)))
    output = tmp_path / "filtered"
    argv = [str(data), str(output), "--model", str(tiny_model_dir), "--reward", "math", "--loader", "deepscaler"]
    # the tiny tokenizer has no chat template, and the loader builds chat prompts
    assert main([*argv, "--k", "2", "--max-new-tokens", "4"]) == 2
    assert "no chat template" in capsys.readouterr().err
    assert main([*argv, "--k", "1"]) == 2
    assert "k >= 2" in capsys.readouterr().err
    # plain-text prompts: sampled for real; a random model never writes a right \boxed{} answer
    plain = tmp_path / "plain.jsonl"
    plain.write_text(
        "".join(json.dumps({"prompt": f"Compute {i}+1.", "solution": str(i + 1)}) + "\n" for i in range(3))
    )
    argv = [str(plain), str(output), "--model", str(tiny_model_dir), "--reward", "math", "--k", "2"]
    assert main([*argv, "--max-new-tokens", "4"]) == 2
    assert "no problem has 0 < pass rate < 1 (3 never solved, 0 always solved)" in capsys.readouterr().err
    assert not output.exists()
