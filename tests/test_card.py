"""Model cards: metadata that parses back with huggingface_hub, eval results in model-index, a body for every run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from paths import ROOT

from archer.cli import main
from archer.errors import UserError
from archer.publish.card import card_data, render_card, write_card
from archer.publish.run_info import load_run, read_eval_results

FIXTURE = ROOT / "tests" / "data" / "run_fixture"
BASE_MODEL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
# A PNG header is enough: the card links plots, it never decodes them.
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def make_run(run_dir: Path, *, finished: bool = True, base_model: str | None = None) -> Path:
    """A run folder as `archer train` + `archer eval` leave it, minus the model weights (see test_push for those).

    ``finished=False`` gives the bare minimum: a model and tokenizer config and nothing else (no run config, eval or
    plots).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    if not finished:
        (run_dir / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
        return run_dir
    config = yaml.safe_load((FIXTURE / "config.yaml").read_text())
    if base_model is not None:
        config["model"]["name_or_path"] = base_model
        config["data"]["dataset"] = "open-r1/DAPO-Math-17k-Processed"
        config["sft"] = None
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copy(FIXTURE / "train_results.json", run_dir / "train_results.json")
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": s / 10}) + "\n" for s in (1, 2)))
    (run_dir / "plots").mkdir(exist_ok=True)
    for name in ("reward.png", "entropy.png"):
        (run_dir / "plots" / name).write_bytes(PNG)
    results = json.loads((FIXTURE / "eval_results.json").read_text())
    results["model"] = str(run_dir)
    _write_results(run_dir / "eval" / "2026-11-27T10-00-00" / "results.json", results)
    return run_dir


def _write_results(path: Path, results: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results))
    return path


def _scores(card: ModelCard) -> dict[tuple[str, str], float]:
    return {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results or []}


def test_finished_run_card_parses_back_with_eval_results_in_model_index(tmp_path):
    run = make_run(tmp_path / "tiny-archer")
    path = write_card(run, repo_id="org/tiny-archer")
    assert path == run / "README.md"

    card = ModelCard.load(path)  # the Hub's own parser: metadata must round-trip
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "text-generation"
    assert data.license == "apache-2.0"
    assert {"archer", "rlvr", "grpo", "trl", "reasoning"} <= set(data.tags)
    assert data.base_model is None  # the tiny model is built from scratch
    assert data.model_name == "tiny-archer"
    assert _scores(card) == {
        ("arithmetic", "avg@8"): 71.25,
        ("arithmetic", "pass@1"): 71.25,
        ("arithmetic", "pass@8"): 93.5,
        ("arithmetic_hard", "avg@4"): 40.0,
        ("arithmetic_hard", "pass@4"): 62.5,
    }
    hard = next(r for r in data.eval_results if r.dataset_name == "arithmetic_hard" and r.metric_type == "avg@4")
    assert hard.dataset_type == "archer/arith-hard"  # the benchmark's Hub dataset when the results name one
    assert hard.dataset_revision == "abc123"
    assert hard.metric_args == {
        "backend": "transformers",
        "seed": 0,
        "dtype": "auto",
        "batch_size": 16,
        "temperature": 0.8,
        "top_p": 1.0,
        "max_new_tokens": 40,
        "suite": "tiny",
        "k": 4,
        "problems": 100,
    }
    assert hard.metric_name == "avg@4 (tiny suite, 100 problems, T=0.8, top_p=1.0, max new tokens=40)"

    text = card.text
    assert "https://arxiv.org/abs/2507.15778" in text
    assert "| arithmetic | tiny | avg@8 | 8 | 200 | 71.2 | `eval/2026-11-27T10-00-00` |" in text
    assert "- `eval/2026-11-27T10-00-00`: this model, suite `tiny` (arithmetic, arithmetic_hard); backend=" in text
    assert "| `learning_rate` | 0.0001 |" in text  # from the resolved config's trainer block
    assert "| `num_generations` | 8 |" in text
    assert "| `reasoning_clip` | 0.5, 0.5 |" in text
    assert "ratio clipped to [1-0.5, 1+0.5], KL weight 0." in text
    assert "64 completions (8 prompts × 8 responses)" in text
    assert "`beta`" not in text  # the objective block, not TRL's beta, sets the KL weights
    assert "Held-out accuracy on the training task (500 problems never trained on)" in text
    assert (
        "| avg@8, sampled (T=0.8, top_p=1.0, max new tokens=40; the paper's protocol, `make eval`) | 51.2% | 79.2% |"
        in text
    )
    assert "| greedy | 54.6% | 80.4% |" in text
    assert "![reward](plots/reward.png)" in text and "![entropy](plots/entropy.png)" in text
    assert 'model_id = "org/tiny-archer"' in text
    assert 'tokenizer("Compute 26+10-17."' in text  # no chat template: plain prompt
    assert "- **wall time:** 6.5 min" in text and "- **device-hours:** 0.11" in text
    assert "- trl 1.16.0" in text and "- lighteval 0.13.0" in text
    assert "@article{wang2025archer" in text and "@software{archer_rlvr" in text
    assert "\n\n\n" not in str(card)


def test_bare_run_renders_a_complete_card_without_eval_table(tmp_path):
    run = make_run(tmp_path / "bare", finished=False)
    card = ModelCard.load(write_card(run))
    assert card.data.eval_results is None
    assert "model-index" not in card.data.to_dict()
    assert card.data.tags and "archer" in card.data.tags
    text = card.text
    assert "No benchmark evaluation has been recorded" in text
    assert "| benchmark |" not in text and "Training curves" not in text and "Held-out" not in text
    for section in ("## How it was trained", "## Quick start", "## Limitations", "## Citation"):
        assert section in text
    assert f'model_id = "{run}"' in text  # no repo yet: the local folder


def test_tiny_run_compares_with_its_sft_warm_start_evaluated_in_sft_eval(tmp_path):
    run = make_run(tmp_path / "tiny-archer")
    results = json.loads((FIXTURE / "eval_results.json").read_text())
    results["model"] = str(run / "sft")
    results["tasks"]["arithmetic"]["metrics"]["avg@8"] = 51.25
    _write_results(run / "sft" / "eval" / "2026-11-27T09-00-00" / "results.json", results)
    text = ModelCard.load(write_card(run)).text
    assert "| benchmark | suite | metric | k | problems | tiny-archer | SFT warm start | Δ | eval folder |" in text
    assert "| arithmetic | tiny | avg@8 | 8 | 200 | **71.2** | 51.2 | +20.0 | `eval/2026-11-27T10-00-00` |" in text
    assert "- `sft/eval/2026-11-27T09-00-00`: SFT warm start, suite `tiny` (arithmetic, arithmetic_hard)" in text


def test_base_model_results_found_in_run_folder_give_a_comparison_column(tmp_path):
    run = make_run(tmp_path / "r1-archer", base_model=BASE_MODEL)
    base = json.loads((FIXTURE / "eval_results.json").read_text()) | {"model": BASE_MODEL}
    base["tasks"]["arithmetic"]["metrics"]["avg@8"] = 60.0
    _write_results(run / "eval" / "2026-11-27T09-00-00" / "results.json", base)

    card = ModelCard.load(write_card(run, repo_id="org/r1-archer"))
    assert card.data.base_model == BASE_MODEL
    assert card.data.datasets == ["open-r1/DAPO-Math-17k-Processed"]
    assert _scores(card)[("arithmetic", "avg@8")] == 71.25  # the run's own results, not the base's
    assert f"| r1-archer | {BASE_MODEL} | Δ | eval folder |" in card.text
    assert (
        "| arithmetic | tiny | avg@8 | 8 | 200 | **71.2** | 60.0 | +11.2 | `eval/2026-11-27T10-00-00` |" in card.text
    )
    assert f"[{BASE_MODEL}](https://huggingface.co/{BASE_MODEL})" in card.text
    assert "Compute 26+10-17." not in card.text  # not the arithmetic task: a math prompt instead


def test_explicit_base_results_file_wins(tmp_path):
    run = make_run(tmp_path / "run", base_model=BASE_MODEL)
    base = json.loads((FIXTURE / "eval_results.json").read_text()) | {"model": "my-base"}
    base["tasks"]["arithmetic_hard"]["metrics"]["pass@4"] = 70.0
    path = _write_results(tmp_path / "base.json", base)
    text = render_card(run, base_results=path).text
    assert (
        "| arithmetic_hard | tiny | pass@4 | 4 | 100 | **62.5** | 70.0 | -7.5 | `eval/2026-11-27T10-00-00` |" in text
    )
    assert f"- `{path}`: my-base, suite `tiny` (arithmetic, arithmetic_hard)" in text
    assert "| my-base |" in text


@pytest.mark.parametrize(("correction", "shown"), [(False, "off (as the paper's code)"), (True, "on (sequence_mask")])
def test_card_records_the_vllm_importance_sampling_correction(tmp_path, correction, shown):
    run = make_run(tmp_path / "run", base_model=BASE_MODEL)
    assert "importance-sampling correction" not in render_card(run).text  # no vLLM rollouts: nothing to record
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["trainer"].update(use_vllm=True, vllm_importance_sampling_correction=correction)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert f"- **vLLM importance-sampling correction:** {shown}" in render_card(run).text


def test_rendering_is_deterministic(tmp_path):
    run = make_run(tmp_path / "run")
    first = write_card(run).read_bytes()
    assert write_card(run).read_bytes() == first


def test_eval_reader_tolerates_schema_variants(tmp_path):
    path = _write_results(
        tmp_path / "results.json",
        {
            "model": "m",
            "tasks": [
                {"name": "aime24", "avg@64": 48.7, "pass@64": 83.3, "k": 64, "note": "text", "flag": True},
                {
                    "task": "math_500",
                    "metrics": {"avg@4": {"value": 90.8, "stderr": 1.2}, "bad": float("nan"), "x": {}},
                },
                {"name": "empty", "metrics": {}},
            ],
            "protocol": {"temperature": 0.8, "stop": ["</s>"]},
        },
    )
    results = read_eval_results(path)
    assert [t.name for t in results.tasks] == ["aime24", "math_500"]
    assert results.tasks[0].metrics == {"avg@64": 48.7, "pass@64": 83.3}
    assert results.tasks[0].k == 64
    assert results.tasks[1].metrics == {"avg@4": 90.8}
    assert results.protocol == {"temperature": 0.8}  # only scalar settings reach the card
    assert results.suite is None and results.versions == {}


def test_eval_reader_rejects_unreadable_files_with_the_path(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match=str(path)):
        read_eval_results(path)


def test_broken_results_in_run_folder_are_skipped_not_fatal(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "eval" / "2026-11-28T00-00-00").mkdir()
    (run / "eval" / "2026-11-28T00-00-00" / "results.json").write_text("[1, 2")
    assert _scores(ModelCard.load(write_card(run)))[("arithmetic", "avg@8")] == 71.25


def test_local_folder_start_is_not_a_hub_base_model(tmp_path):
    local = tmp_path / "some" / "model"
    local.mkdir(parents=True)
    run = make_run(tmp_path / "run", base_model=str(local))
    assert load_run(run).base_model is None
    assert card_data(load_run(run), None, None).base_model is None


def test_card_command_writes_readme_and_reports_user_errors(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["card", str(run), "--repo", "org/x"]) == 0
    assert "model card:" in capsys.readouterr().out
    assert 'model_id = "org/x"' in (run / "README.md").read_text()

    assert main(["card", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: MODEL=") and "\n" not in err

    (run / "config.yaml").write_text("model: [unclosed")
    assert main(["card", str(run)]) == 2
    err = capsys.readouterr().err
    assert "config.yaml: not valid YAML" in err and err.count("\n") == 1

    (run / "config.yaml").write_text("- a list\n")
    assert main(["card", str(run)]) == 2
    assert "config.yaml: expected a mapping" in capsys.readouterr().err

    (run / "config.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\x00")
    assert main(["card", str(run)]) == 2
    assert "config.yaml: YAML file is not UTF-8 text" in capsys.readouterr().err


def test_card_on_an_empty_folder_is_one_line_and_writes_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["card", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "neither a run folder" in err
    assert list(empty.iterdir()) == []


def test_card_command_defaults_to_the_newest_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["card"]) == 2
    assert "no run folder under outputs/" in capsys.readouterr().err
    old, new = make_run(tmp_path / "outputs" / "old"), make_run(tmp_path / "outputs" / "new")
    os.utime(old / "config.yaml", (1, 1))
    os.utime(old, (1, 1))
    assert main(["card"]) == 0
    assert (new / "README.md").is_file() and not (old / "README.md").exists()


# --------------------------------------------------------------------------------------------------------------
# The card reports whole benchmarks only, and compares like with like


def _base_results(model: str, problems: int, avg: float) -> dict:
    results = json.loads((FIXTURE / "eval_results.json").read_text()) | {"model": model}
    results["tasks"]["arithmetic"].update(num_problems=problems)
    results["tasks"]["arithmetic"]["metrics"]["avg@8"] = avg
    return results


@pytest.mark.slow
def test_limited_eval_then_card_reports_nothing_from_it(tmp_path, tiny_model_dir, capsys):
    """The newcomer's sequence: `archer eval --limit 20` on a run, then `archer card`. The 20-problem score must not
    reach the table or the Hub metadata, and must not be compared with the warm start's 500 problems."""
    run = tmp_path / "tiny-archer"
    shutil.copytree(tiny_model_dir, run)
    make_run(run)
    shutil.rmtree(run / "eval")  # no whole evaluation of the run yet
    _write_results(
        run / "sft" / "eval" / "20261201-090000" / "results.json", _base_results(str(run / "sft"), 500, 55.8)
    )

    assert main(["eval", "--model", str(run), "--limit", "20"]) == 0
    (limited,) = (run / "eval").iterdir()
    results = json.loads((limited / "results.json").read_text())
    assert results["limit"] == 20 and results["tasks"]["arithmetic"]["limited"] is True
    assert results["tasks"]["arithmetic"]["num_problems"] == 20

    assert main(["card", str(run)]) == 0
    card = ModelCard.load(run / "README.md")
    assert card.data.eval_results is None and "model-index" not in card.data.to_dict()
    assert "| benchmark |" not in card.text and "55.8" not in card.text
    assert "only smoke runs on part of the" in card.text
    assert f"which a card never reports: `eval/{limited.name}`" in card.text


def test_newest_whole_eval_wins_over_a_newer_limited_one(tmp_path):
    run = make_run(tmp_path / "run")  # a whole evaluation in eval/2026-11-27T10-00-00
    smoke = json.loads((FIXTURE / "eval_results.json").read_text()) | {"model": str(run), "limit": 20}
    smoke["tasks"]["arithmetic"].update(num_problems=20, limit=20, limited=True)
    smoke["tasks"]["arithmetic"]["metrics"]["avg@8"] = 90.62
    _write_results(run / "eval" / "2026-12-01T10-00-00" / "results.json", smoke)
    card = render_card(run)
    assert _scores(card)[("arithmetic", "avg@8")] == 71.25
    assert "90.6" not in card.text
    # arithmetic_hard was whole in the newer run too: its newest numbers come from there
    hard = [line for line in card.text.splitlines() if line.startswith("| arithmetic_hard | tiny | avg@4")]
    assert hard == ["| arithmetic_hard | tiny | avg@4 | 4 | 100 | 40.0 | `eval/2026-12-01T10-00-00` |"]


def test_schema_1_results_cannot_show_their_limit_and_are_left_out(tmp_path, caplog):
    run = make_run(tmp_path / "run")
    old = json.loads((run / "eval" / "2026-11-27T10-00-00" / "results.json").read_text())
    old["schema_version"] = 1
    for task in old["tasks"].values():
        del task["limited"], task["limit"]
    _write_results(run / "eval" / "2026-11-27T10-00-00" / "results.json", old)
    with caplog.at_level("WARNING", logger="archer.publish.card"):
        card = render_card(run)
    assert card.data.eval_results is None
    assert "written before archer eval recorded --limit" in caplog.text


def test_base_on_another_problem_count_gets_no_comparison(tmp_path):
    run = make_run(tmp_path / "r1-archer", base_model=BASE_MODEL)
    _write_results(run / "eval" / "2026-11-27T09-00-00" / "results.json", _base_results(BASE_MODEL, 500, 55.8))
    text = render_card(run).text
    assert "| arithmetic | tiny | avg@8 | 8 | 200 | **71.2** | – | – | `eval/2026-11-27T10-00-00` |" in text
    assert "55.8" not in text
    assert "| arithmetic_hard | tiny | avg@4 | 4 | 100 | **40.0** | 40.0 | +0.0 |" in text  # same k, count, sampling
