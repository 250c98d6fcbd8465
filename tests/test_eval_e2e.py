"""End to end: `archer eval` (what `make eval` runs) on a locally built tiny model, transformers backend, offline."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from paths import ROOT

from archer.cli import main
from archer.evaluation.metrics import aggregate

MODULE = ROOT / "eval" / "archer_tasks.py"
pytestmark = pytest.mark.slow


def save_tiny(path: Path, seed: int, heldout: int = 6, sft_steps: int = 0) -> Path:
    from archer import tiny
    from archer.data.arithmetic import ArithmeticTask

    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, tiny.TinyModelConfig(), seed=seed)
    if sft_steps:  # a few steps: the model now writes differently from its random initialisation
        tiny.run_sft(
            model, tokenizer, ArithmeticTask(), tiny.SFTConfig(steps=sft_steps, batch_size=16, warmup_steps=0)
        )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "config.yaml").write_text(f"data:\n  task: {{heldout_seed: 4242}}\n  heldout_examples: {heldout}\n")
    return path


def write_suite(path: Path, body: str) -> Path:
    path.write_text(f"name: {path.stem}\nmodule: {MODULE}\n{body}")
    return path


def run_dirs(model_dir: Path) -> list[Path]:
    return sorted(p for p in (model_dir / "eval").iterdir()) if (model_dir / "eval").exists() else []


def test_default_make_eval_on_newest_run(workdir, capsys):
    older = save_tiny(workdir / "outputs" / "old-run", seed=1)
    run = save_tiny(workdir / "outputs" / "tiny-archer", seed=0)
    os.utime(older / "config.json", (1, 1))  # the older run must not be picked
    assert main(["eval", "--suite", str(ROOT / "eval" / "suites" / "tiny.yaml"), "--limit", "3"]) == 0
    assert not run_dirs(older)
    (out,) = run_dirs(run)
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 2 and results["limit"] == 3
    assert (results["model"], results["local_model"]) == (str(Path("outputs") / "tiny-archer"), True)
    assert results["suite"] == "tiny" and results["protocol"]["backend"] == "transformers"
    assert {"lighteval", "transformers", "torch", "python"} <= set(results["versions"])
    task = results["tasks"]["arithmetic"]
    k = task["k"]
    assert task["num_problems"] == 3 and task["num_samples"] == 3 * k and task["prompt_style"] == "raw"
    assert task["dataset"] == "generated"

    details = [json.loads(line) for line in (out / task["details"]).read_text().splitlines()]
    assert len(details) == 3
    from archer.data.arithmetic import ArithmeticTask
    from archer.rewards import math_reward

    # the trainer's held-out problems of this run (its config.yaml), graded by the training reward
    problems = ArithmeticTask(heldout_seed=4242).heldout(6)[:3]
    assert [d["prompt"] for d in details] == [p.prompt for p in problems]
    for row, problem in zip(details, problems, strict=True):
        assert len(row["completions"]) == k and row["gold"] == problem.solution
        regraded = [float(r or 0.0) for r in math_reward(row["completions"], solution=[row["gold"]] * k)]
        assert row["scores"] == regraded
    assert task["metrics"] == pytest.approx(aggregate([d["scores"] for d in details], [1, 4]))
    table = (out / "results.md").read_text()
    assert "| arithmetic | 8 | 3 |" in table
    assert table in capsys.readouterr().out


def test_each_run_decodes_its_own_checkpoint(workdir):
    model = save_tiny(workdir / "outputs" / "ckpt", seed=0)
    suite = write_suite(
        workdir / "greedy.yaml",
        "defaults: {temperature: 0, max_new_tokens: 12, prompt_style: raw}\ntasks: [arithmetic]\n",
    )

    def completions() -> list[str]:
        out = run_dirs(model)[-1]
        return [json.loads(line)["completions"][0] for line in (out / "details" / "arithmetic.jsonl").open()]

    assert main(["eval", "--model", str(model), "--suite", str(suite)]) == 0
    first = completions()
    assert main(["eval", "--model", str(model), "--suite", str(suite)]) == 0
    assert completions() == first and len(run_dirs(model)) == 2  # greedy: same weights, same text; fresh folder
    save_tiny(model, seed=0, sft_steps=40)  # new weights, same config
    assert main(["eval", "--model", str(model), "--suite", str(suite)]) == 0
    assert len(run_dirs(model)) == 3 and completions() != first


def test_hub_style_output_dir_for_non_run_models(workdir):
    model = save_tiny(workdir / "elsewhere" / "m", seed=0)
    suite = write_suite(
        workdir / "s.yaml", "defaults: {k: 2, max_new_tokens: 8, prompt_style: raw}\ntasks: [arithmetic]\n"
    )
    out_parent = workdir / "results"
    assert main(["eval", "--model", str(model), "--suite", str(suite), "--output-dir", str(out_parent)]) == 0
    (out,) = list(out_parent.iterdir())
    assert out.name.startswith("s-") and (out / "results.json").is_file()


@pytest.mark.sandbox
def test_benchmark_tasks_from_local_copies(workdir):
    """AIME24 and LiveCodeBench v5 rows in their real schema, given as local files (offline), through the runner."""
    data = ROOT / "tests" / "data" / "eval"
    model = save_tiny(workdir / "outputs" / "run", seed=0)
    body = (
        "defaults: {k: 2, max_new_tokens: 8, prompt_style: raw}\n"
        f"tasks:\n  - {{task: aime24, data: {data / 'aime24.jsonl'}}}\n  - lcb_v5\n"
    )
    suite = write_suite(workdir / "bench.yaml", body)
    argv = ["eval", "--model", str(model), "--suite", str(suite), "--data", f"lcb_v5={data / 'lcb.jsonl'}"]
    assert main(argv) == 0
    (out,) = run_dirs(model)
    tasks = json.loads((out / "results.json").read_text())["tasks"]
    assert tasks["aime24"]["num_problems"] == 3 and tasks["aime24"]["dataset"] == str(data / "aime24.jsonl")
    assert tasks["lcb_v5"]["num_problems"] == 1  # only the row inside v5's release window
    (row,) = [json.loads(line) for line in (out / "details" / "lcb_v5.jsonl").open()]
    assert row["problem_id"] == "abc370_a" and row["gold"] == "3 tests" and len(row["completions"]) == 2
    assert tasks["lcb_v5"]["metrics"] == pytest.approx(aggregate([row["scores"]]))


@pytest.mark.parametrize(
    ("suite_body", "args", "message"),
    [
        ("tasks: [{task: aime26}]", [], "unknown task 'aime26'"),
        ("tasks: [{task: arithmetic, k: many}]", [], "tasks[0].k: expected int, got 'many'"),
        (
            "tasks: [arithmetic]",
            ["--model", "outputs/no-such-run"],
            "--model outputs/no-such-run: no such model folder",
        ),
        ("tasks: [arithmetic]", ["--backend", "tpu"], "--backend 'tpu'"),
        ("tasks: [arithmetic]", ["--data", "aime26=x.jsonl"], "--data aime26: unknown task"),
        ("tasks: [{task: aime24, data: missing.jsonl}]", [], "does not exist"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(workdir, capsys, suite_body, args, message):
    model = save_tiny(workdir / "outputs" / "run", seed=0)
    suite = write_suite(workdir / "bad.yaml", suite_body)
    before = sorted(p for p in workdir.rglob("*"))
    argv = ["eval", "--suite", str(suite), *args]
    if "--model" not in args:
        argv += ["--model", str(model)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert sorted(p for p in workdir.rglob("*")) == before


def test_a_killed_or_stopped_eval_resumes_and_gives_the_uninterrupted_results(workdir):
    """A real `archer eval` killed (SIGKILL) or stopped (SIGTERM) mid-way; the same command skips the finished task
    and writes the same results as an uninterrupted run (the timings and start time aside)."""
    data = ROOT / "tests" / "data" / "eval"
    model = save_tiny(workdir / "outputs" / "run", seed=0, heldout=200)
    suite = write_suite(
        workdir / "three.yaml",
        "defaults: {k: 2, max_new_tokens: 8, prompt_style: raw}\n"
        f"tasks:\n  - {{task: aime24, data: {data / 'aime24.jsonl'}}}\n"
        "  - {task: arithmetic, k: 8, max_new_tokens: 40}\n"  # 200 problems x 8 samples: seconds on CPU
        f"  - {{task: math_500, data: {data / 'math500.jsonl'}}}\n",
    )
    cmd = [sys.executable, "-m", "archer.cli", "eval", "--model", str(model), "--suite", str(suite)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def finished() -> list[Path]:
        return [p for p in run_dirs(model) if not p.name.endswith(".partial")]

    def interrupt(sig: int) -> tuple[int, str]:
        with open(workdir / "err.txt", "w") as err:
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=err)
            deadline = time.time() + 600
            while not list((model / "eval").glob("*.partial/tasks/aime24.json")):
                assert proc.poll() is None and time.time() < deadline, (workdir / "err.txt").read_text()[-3000:]
                time.sleep(0.02)
            proc.send_signal(sig)
            return proc.wait(600), (workdir / "err.txt").read_text()

    def compare(reference: Path, resumed: Path) -> None:
        assert sorted(p.name for p in resumed.rglob("*")) == sorted(p.name for p in reference.rglob("*"))
        for name in ("results.md", "details/aime24.jsonl", "details/arithmetic.jsonl", "details/math_500.jsonl"):
            assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name

        def stable(path: Path) -> dict:
            results = json.loads(path.read_text())
            for key in ("started_at", "wall_time_s"):
                results.pop(key)
            for task in results["tasks"].values():
                task.pop("generation_s")
            return results

        assert stable(resumed / "results.json") == stable(reference / "results.json")

    reference = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]
    (ref,) = finished()

    for sig, code in ((signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 75)):
        status, err = interrupt(sig)
        assert status == code, err[-3000:]
        if sig == signal.SIGTERM:
            assert "stopped by SIGTERM: the tasks finished so far are kept; run the same command" in err
        (partial,) = (model / "eval").glob("*.partial")
        assert sorted(p.name for p in (partial / "tasks").iterdir()) == ["aime24.json"]  # stopped mid-arithmetic
        resumed = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resuming the unfinished run {partial}" in resumed.stderr
        assert "1 of 3 tasks done, arithmetic, math_500 to do" in resumed.stderr
        (new,) = [p for p in finished() if p != ref and p.name == partial.name.removesuffix(".partial")]
        assert not list((model / "eval").glob("*.partial"))
        compare(ref, new)
