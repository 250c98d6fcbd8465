"""archer.data.verl: datasets made for verl (the authors' ArcherCodeR file among them) train here as they are, from
JSON, JSON lines or parquet files written by the tests; malformed rows are one line naming the row."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from archer.data.loaders import VERL, guess_loader, load_training_dataset
from archer.errors import UserError
from archer.recipe import DataArgs, load_recipe
from archer.sandbox.runner import sandbox_available

ROOT = Path(__file__).resolve().parents[1]
PAPER_CODE = ROOT / "recipes" / "DeepSeek-R1-Distill-Qwen-1.5B" / "archer" / "code.yaml"
needs_bwrap = pytest.mark.skipif(not sandbox_available(), reason="bubblewrap cannot run here")

# A functional problem in the authors' format: one assert script that calls the solution.
CHECK = (
    "def check(candidate):\n"
    "    assert candidate(nums=[3, 1, 5, 4, 2], k=2) == 4\n"
    "    assert candidate(nums=[3, 1, 5, 4, 2], k=5) == 5\n"
    "\n"
    "check(Solution().minOperations)"
)
MIN_OPERATIONS = (
    "class Solution:\n"
    "    def minOperations(self, nums: List[int], k: int) -> int:\n"
    "        need = set(range(1, k + 1))\n"
    "        for taken, value in enumerate(reversed(nums), 1):\n"
    "            need.discard(value)\n"
    "            if not need:\n"
    "                return taken\n"
)


def row(ground_truth, index=0, data_source="code", prompt=None):
    return {
        "data_source": data_source,
        "prompt": prompt or [{"role": "user", "content": f"Problem {index}. Answer in a ```python block."}],
        "ability": "code" if data_source == "code" else "math",
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {"split": "train", "index": index},
    }


STDIN = json.dumps({"inputs": ["1 2\n", "5 7\n"], "outputs": ["3\n", "12\n"]})
FUNCTIONAL = json.dumps({"functional": CHECK})
ROWS = [row(STDIN, 0), row(FUNCTIONAL, 1)]


def write(path: Path, rows: list[dict]) -> Path:
    """The rows in the file format its suffix names: a JSON array (as the authors' file), JSON lines, parquet."""
    if path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


@pytest.mark.parametrize("name", ["train.json", "train.jsonl", "train.parquet"])
def test_verl_code_rows_become_tests(tmp_path, name):
    path = write(tmp_path / name, ROWS)
    out = load_training_dataset(DataArgs(dataset=str(path), loader=VERL, rewards=["code"]))
    assert out.column_names == ["prompt", "data_source", "tests", "fn_name"]
    assert out[0]["prompt"] == ROWS[0]["prompt"]  # the dataset's own prompt, no instruction of ours added
    assert json.loads(out[0]["tests"]) == [
        {"input": "1 2\n", "output": "3\n", "testtype": "stdin"},
        {"input": "5 7\n", "output": "12\n", "testtype": "stdin"},
    ]
    assert json.loads(out[1]["tests"]) == [{"input": CHECK, "output": "", "testtype": "script"}]
    assert out["fn_name"] == [None, None] and out["data_source"] == ["code", "code"]


def test_a_file_of_a_folder_or_repo_and_the_loader_found_by_itself(tmp_path):
    write(tmp_path / "train" / "rows.json", ROWS) if (tmp_path / "train").mkdir() is None else None
    out = load_training_dataset(DataArgs(dataset=str(tmp_path), data_files="train/rows.json", rewards=["code"]))
    assert len(out) == 2 and "tests" in out.column_names  # verl's columns: no loader needed
    assert guess_loader("wizardII/ArcherCodeR-Dataset") == VERL
    with_system = load_training_dataset(
        DataArgs(dataset=str(tmp_path), data_files="train/rows.json", rewards=["code"], system_prompt="Be terse.")
    )
    assert with_system[0]["prompt"][0] == {"role": "system", "content": "Be terse."}


def test_math_rows_and_mixed_datasets(tmp_path):
    math_rows = [
        row("7", 0, "math", [{"role": "user", "content": "a^2 = 49, a > 0. Find a."}]),
        row('["\\\\frac{1}{2}", "0.5"]', 1, "math"),  # a JSON list of accepted answers: the first
        row(3, 2, "math"),
    ]
    out = load_training_dataset(DataArgs(dataset=str(write(tmp_path / "m.json", math_rows)), loader=VERL))
    assert out.column_names == ["prompt", "data_source", "solution"] and out["solution"] == ["7", "\\frac{1}{2}", "3"]
    # Both rewards: each row goes to the reward its data source (or ground truth) names; the other skips it.
    mixed = load_training_dataset(
        DataArgs(dataset=str(write(tmp_path / "x.json", [*ROWS, math_rows[0]])), loader=VERL, rewards=["math", "code"])
    )
    assert mixed["solution"] == [None, None, "7"] and [t is None for t in mixed["tests"]] == [False, False, True]
    from archer.rewards import code_reward, math_reward

    completions = ["\\boxed{1}", "\\boxed{2}", "so \\boxed{7}"]
    assert math_reward(completions, solution=mixed["solution"]) == [None, None, 1.0]
    assert code_reward(completions, tests=mixed["tests"])[2] is None


def test_list_outputs_join_and_text_free_stdin_rows_are_dropped(tmp_path, caplog):
    joined = row(json.dumps({"inputs": ["2\n"], "outputs": [["1", "2"]]}), 0)
    odd = row(json.dumps({"inputs": [[1, 2]], "outputs": ["3"]}), 1)  # the authors' grader fails such a test always
    with caplog.at_level("INFO", logger="archer.data.verl"):
        out = load_training_dataset(DataArgs(dataset=str(write(tmp_path / "r.json", [joined, odd])), rewards=["code"]))
    assert len(out) == 1 and json.loads(out[0]["tests"])[0]["output"] == "1, 2"
    assert "1 of 2 rows dropped (a test's stdin is not text)" in caplog.text


@pytest.mark.parametrize(
    ("truth", "message"),
    [
        (None, "row 1: reward_model.ground_truth is missing; a code row needs a JSON string"),
        ("", "row 1: reward_model.ground_truth is missing"),
        ("{inputs: [1]", "row 1: reward_model.ground_truth is not JSON"),
        (json.dumps({"inputs": [], "outputs": []}), "row 1: reward_model.ground_truth has an empty test list"),
        (json.dumps([]), "row 1: reward_model.ground_truth has an empty test list"),
        (json.dumps({"functional": "  "}), "row 1: reward_model.ground_truth has an empty 'functional' script"),
        (json.dumps({"inputs": ["1"], "outputs": []}), "row 1: reward_model.ground_truth has 1 inputs but 0 outputs"),
        (json.dumps({"tests": 3}), "row 1: reward_model.ground_truth holds no tests"),
    ],
)
@pytest.mark.parametrize("name", ["bad.json", "bad.jsonl", "bad.parquet"])
def test_malformed_rows_are_one_line_naming_the_row(tmp_path, truth, message, name):
    if truth is None and name.endswith(".parquet"):
        truth = ""  # parquet needs one type per column; a missing value is the empty string there
    path = write(tmp_path / name, [row(STDIN, 0), row(truth, 1)])
    with pytest.raises(UserError) as err:
        load_training_dataset(DataArgs(dataset=str(path), loader=VERL, rewards=["code"]))
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


def test_malformed_prompts_and_math_answers(tmp_path):
    for bad, message in [
        (row("1", 1, "math", prompt=[{"role": "user"}]), "row 1: prompt message 0 must be a dict with 'role'"),
        (row("", 1, "math"), "row 1: reward_model.ground_truth is missing; a math row needs the answer"),
    ]:
        path = write(tmp_path / "m.json", [row("2", 0, "math"), bad])
        with pytest.raises(UserError, match=message):
            load_training_dataset(DataArgs(dataset=str(path), loader=VERL, rewards=["math"]))
    no_gt = tmp_path / "plain.json"
    no_gt.write_text(json.dumps([{"prompt": "1+1?", "answer": "2"}]))
    with pytest.raises(UserError, match="loader 'verl' needs column 'reward_model'"):
        load_training_dataset(DataArgs(dataset=str(no_gt), loader=VERL))


def test_the_paper_code_recipe_reads_the_authors_file_in_verl_format():
    recipe = load_recipe(PAPER_CODE)
    data = recipe.data
    assert (data.dataset, data.data_files, data.loader) == (
        "wizardII/ArcherCodeR-Dataset",
        "train/archercoder-1.5b-train.json",
        VERL,
    )
    assert (data.max_tests, data.code_timeout_s, data.code_script_timeout_s) == (16, 30.0, 60.0)
    assert (data.code_memory_mb, data.code_compare, data.max_prompt_tokens) == (1024, "whole", 2048)


@needs_bwrap
def test_the_paper_code_recipe_trains_on_verl_rows_with_the_authors_rules(tmp_path):
    from archer.data.loaders import drop_long_prompts
    from archer.tiny import build_tokenizer
    from archer.training.pipeline import _train_dataset, reward_funcs

    long = row(STDIN, 2, prompt=[{"role": "user", "content": "Read this. " * 400}])
    path = write(tmp_path / "archer.json", [*ROWS, long])
    recipe = load_recipe(PAPER_CODE, [f"data.dataset={path}", "data.data_files=null"])
    tokenizer = build_tokenizer()
    tokenizer.chat_template = (ROOT / "tests" / "data" / "chat_templates" / "deepseek_r1_distill.jinja").read_text()
    dataset = drop_long_prompts(_train_dataset(recipe), tokenizer, recipe.data.max_prompt_tokens)
    assert len(dataset) == 2  # the prompt over 2048 tokens is dropped, as the authors' loader drops it
    (reward,) = reward_funcs(recipe)
    assert reward.keywords == {
        "require_think_close": False, "max_tests": 16, "timeout_s": 30.0, "script_timeout_s": 60.0,
        "memory_mb": 1024, "compare": "whole", "budget_s": None,
    }  # fmt: skip
    add = "a, b = map(int, input().split())\nprint(a + b)\n"
    completions = [
        f"```python\n{add}```",  # stdin/stdout tests
        f"```python\n{MIN_OPERATIONS}```",  # the assert script passes
        f"```python\n{add.replace('a + b)', 'a + b, end=chr(32))')}```",  # trailing space: stripped, still equal
        f"```python\n{MIN_OPERATIONS.replace('return taken', 'return taken + 1')}```",  # an assert fails
    ]
    tests = list(dataset["tests"]) * 2
    assert reward(completions, tests=tests, fn_name=[None] * 4) == [1.0, 1.0, 1.0, 0.0]


def test_livecodebench_test_lists_keep_their_function_name(tmp_path):
    lcb = [{"input": "[1, 2]\n3", "output": "6", "testtype": "functional", "metadata": {"func_name": "addAll"}}]
    out = load_training_dataset(
        DataArgs(dataset=str(write(tmp_path / "l.json", [row(json.dumps(lcb), 0, "livecodebench")])), loader=VERL,
                 rewards=["code"])
    )  # fmt: skip
    assert out[0]["fn_name"] == "addAll"
    assert json.loads(out[0]["tests"]) == [{"input": "[1, 2]\n3", "output": "6", "testtype": "functional"}]
