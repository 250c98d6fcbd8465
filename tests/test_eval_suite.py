"""Suite YAML parsing: the shipped suites, and one clear UserError per kind of mistake."""

from pathlib import Path

import pytest
from paths import ROOT

from archer.errors import UserError
from archer.evaluation.suite import load_suite

SUITES = ROOT / "eval" / "suites"
NAMES = ("aime24", "aime25", "amc23", "math_500", "minerva", "olympiadbench", "lcb_v5", "lcb_v6", "arithmetic")
KNOWN = {f"archer:{n}" for n in NAMES}


def test_paper_suite_is_the_paper_protocol():
    suite = load_suite(SUITES / "paper.yaml", KNOWN)
    by_task = {t.short_name: t for t in suite.tasks}
    assert {name: t.k for name, t in by_task.items()} == {
        "aime24": 64,
        "aime25": 64,
        "amc23": 64,
        "math_500": 4,
        "minerva": 8,
        "olympiadbench": 4,
        "lcb_v5": 8,
        "lcb_v6": 16,
    }
    for task in suite.tasks:
        assert (task.temperature, task.top_p, task.max_new_tokens, task.prompt_style) == (0.8, 1.0, 32768, "chat")
    assert suite.module == (SUITES.parent / "archer_tasks.py").resolve()


@pytest.mark.parametrize("name", ["quick", "tiny"])
def test_shipped_suites_parse(name):
    suite = load_suite(SUITES / f"{name}.yaml", KNOWN)
    assert suite.name == name and suite.tasks


def test_tiny_suite_is_raw_and_short():
    (task,) = load_suite(SUITES / "tiny.yaml", KNOWN).tasks
    assert task.task == "archer:arithmetic" and task.prompt_style == "raw" and task.max_new_tokens <= 64


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


def test_task_values_override_defaults_and_data_is_relative_to_suite(tmp_path):
    path = _write(
        tmp_path,
        "defaults: {temperature: 0.6, k: 2}\ntasks:\n  - aime24\n  - {task: math_500, k: 4, data: d/m.jsonl}\n",
    )
    a, m = load_suite(path, KNOWN).tasks
    assert (a.k, a.temperature, m.k, m.temperature) == (2, 0.6, 4, 0.6)
    assert m.data == str((tmp_path / "d" / "m.jsonl").resolve())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tasks: [{task: aime26}]", "unknown task 'aime26'"),
        ("tasks: [{task: aime24, k: four}]", "tasks[0].k: expected int, got 'four'"),
        ("tasks: [{task: aime24, k: true}]", "tasks[0].k: expected int, got True"),
        ("tasks: [{task: aime24, temperature: hot}]", "tasks[0].temperature: expected float, got 'hot'"),
        ("defaults: {top_p: 2}\ntasks: [aime24]", "defaults.top_p=2.0: must be in (0, 1]"),
        (
            "defaults: {prompt_style: fancy}\ntasks: [aime24]",
            "defaults.prompt_style: expected one of ['chat', 'raw'], got 'fancy'",
        ),
        ("tasks: [{task: aime24, samples: 3}]", "tasks[0].samples: unknown key"),
        ("taks: [aime24]", "unknown key 'taks'"),
        ("tasks: []", "tasks: expected a non-empty list"),
        ("tasks: [{task: aime24, k: 4, temperature: 0}]", "greedy decoding needs k=1"),
        ("tasks: [{task: aime24, k: 4, pass_k: [8]}]", "pass_k: 8 exceeds k=4"),
        ("tasks: [aime24, aime24]", "listed twice"),
        ("seed: -1\ntasks: [aime24]", "seed: expected a non-negative integer"),
        ("tasks: [aime24", "not valid YAML"),
        ("- aime24", "expected a mapping"),
    ],
)
def test_bad_suites_name_file_and_key(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(UserError, match=None) as err:
        load_suite(path, KNOWN)
    assert message in str(err.value)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_suite_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_suite(tmp_path / "nope.yaml", KNOWN)


@pytest.mark.parametrize(
    ("suite_bytes", "config_json", "message"),
    [
        (b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00\x00", '{"model_type": "qwen2"}', "suite file is not UTF-8 text"),
        (b"tasks: [aime24]\n", '{"model_type": "qwen2", ', "config.json is not valid JSON"),
    ],
    ids=["binary suite", "corrupt model config"],
)
def test_eval_bad_files_are_one_line_exit_2_nothing_written(tmp_path, capsys, suite_bytes, config_json, message):
    from archer.cli import main

    suite, model, out = tmp_path / "suite.yaml", tmp_path / "model", tmp_path / "out"
    suite.write_bytes(suite_bytes)
    model.mkdir()
    (model / "config.json").write_text(config_json)
    assert main(["eval", "--model", str(model), "--suite", str(suite), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not out.exists() and sorted(p.name for p in model.iterdir()) == ["config.json"]


def test_packaged_suites_by_name_and_the_default_task_module(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # found from any working directory
    assert load_suite("paper", KNOWN).path == (SUITES / "paper.yaml").resolve()
    # a suite without `module:` uses the packaged task module, wherever the suite file lives
    own = tmp_path / "mine.yaml"
    own.write_text("tasks: [arithmetic]\n")
    assert load_suite(own, KNOWN).module == (SUITES.parent / "archer_tasks.py").resolve()
    with pytest.raises(UserError, match=r"suite file papr does not exist \(packaged suites, given by name: paper, "):
        load_suite("papr", KNOWN)
