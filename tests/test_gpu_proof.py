"""The GPU proof script (bench/gpu/): its CPU form runs end to end (as CI runs it), its MFU arithmetic, its scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from paths import ROOT

GPU = ROOT / "bench" / "gpu"
sys.path.insert(0, str(GPU))

import mfu  # noqa: E402
import proof  # noqa: E402
import wheelset  # noqa: E402


def test_step_flops_follow_the_documented_formula():
    shape = mfu.Shape(matmul_params=1, layers=1, hidden=1)
    # B=1, P=0, C=2 (S=2): generation 2*2 + 4*(4-0)/2 = 12; reference 2*2 + 4*4/2 = 12; training 6*2 + 12*4/2 = 36
    assert mfu.step_flops(shape, 1, 0, 2, with_reference=True) == 60
    assert mfu.step_flops(shape, 1, 0, 2, with_reference=False) == 48
    assert mfu.step_flops(shape, 3, 0, 2, with_reference=True) == 180  # linear in the number of sequences


def test_peak_lookup_by_device_name():
    assert mfu.peak_tflops("NVIDIA H200") == 989.0
    assert mfu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert mfu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0  # the lent nvidia-h100-x1
    assert mfu.peak_tflops("NVIDIA H100 NVL") == 835.0  # not the SXM's 989
    assert mfu.peak_tflops("NVIDIA H200 NVL") == 835.0
    assert mfu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert mfu.peak_tflops("Some Future Accelerator") is None
    assert mfu.lent_kinds() == {"nvidia-h200": 989.0, "nvidia-h100-x1": 989.0}


def test_phase_flops_add_up_to_a_step():
    shape = mfu.Shape(matmul_params=10, layers=2, hidden=3)
    step = mfu.step_flops(shape, 4, 5, 7, with_reference=True)
    parts = (
        mfu.decode_flops(shape, 4, 5, 7)
        + 2 * mfu.forward_flops(shape, 4, 5, 7)
        + 2 * mfu.forward_flops(shape, 4, 5, 7)
    )
    assert step == parts  # training = 3 forwards
    assert mfu.training_flops(shape, 4, 5, 7, epochs=3) == 3 * mfu.training_flops(shape, 4, 5, 7)


def test_shape_counts_matmul_parameters():
    from archer import tiny

    tokenizer = tiny.build_tokenizer()
    tied = tiny.build_model(tokenizer)  # tied embeddings: the matrix counts once, as the LM head
    untied = tiny.build_model(tokenizer, tiny.TinyModelConfig(tie_word_embeddings=False))
    total = sum(p.numel() for p in tied.parameters())
    assert mfu.Shape.of(tied).matmul_params == total
    assert mfu.Shape.of(untied).matmul_params == sum(p.numel() for p in untied.parameters()) - len(tokenizer) * 64
    assert (mfu.Shape.of(tied).layers, mfu.Shape.of(tied).hidden) == (2, 64)


def test_scripts_parse_and_run_sh_names_a_missing_folder(tmp_path):
    for script in ("run.sh", "fetch_wheels.sh"):
        subprocess.run(["bash", "-n", str(GPU / script)], check=True)
    done = subprocess.run(["bash", str(GPU / "run.sh"), str(tmp_path / "nope")], capture_output=True, text=True)
    assert done.returncode == 2 and "no such wheel folder" in done.stderr
    done = subprocess.run(["bash", str(GPU / "run.sh"), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "holds no wheel" in done.stderr


def test_wheel_set_carries_our_pins_and_nothing_the_machine_has():
    ours, carried, machine = (wheelset.read_pins(path) for path in (GPU / "requirements.txt", wheelset.WHEELS_TXT,
                                                                     wheelset.MACHINE_TXT))  # fmt: skip
    for name, version in ours.items():
        assert carried.get(name) == version, name
    assert {name for name in carried if name in machine} == {"transformers"}  # 5.24 over the machine's 5.17
    assert machine["torch"] == "2.11.0" and machine["transformers"] == "5.17.0"
    assert "vllm" not in carried and "lighteval" not in carried  # ~400 MB: part (c) is skipped there
    assert wheelset.built_from_source() == {"deepspeed"}


def test_plan_fits_the_device_calls():
    """Each call's budget leaves room under the run tool's limits: the first call under 2 minutes, both under 5."""
    assert proof.BUDGET_S[("cuda", "first")] <= 120
    assert proof.BUDGET_S[("cuda", "first")] + proof.BUDGET_S[("cuda", "rest")] <= 300
    needs = proof.NEEDS_S
    assert needs["model"] + needs["first"] <= proof.BUDGET_S[("cuda", "first")]
    assert sum(needs[j] for j in ("model", "objective", "archer", "grpo", "zero3")) <= proof.BUDGET_S[("cuda", "rest")]
    assert proof.plan_processes("rest", "cuda") == [
        [j] for j in ("model", "objective", "archer", "grpo", "zero3", "eval")
    ]
    assert proof.plan_processes("all", "cpu") == [["model", "objective", "archer", "grpo"], ["zero3"], ["eval"]]


def test_child_env_keeps_the_callers_pythonpath(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/tmp/archer-proof-site")
    paths = proof.child_env()["PYTHONPATH"].split(os.pathsep)
    assert paths == [str(ROOT / "src"), "/tmp/archer-proof-site"]


def test_the_planner_estimate_of_the_gpu_form():
    """What the proof sizes itself by: the dry run's estimate for the GPU form, one trainer per process."""
    from archer.planning.dry_run import estimate_recipe_memory
    from archer.recipe import load_recipe_for_plan

    form = proof.Form.for_device("cuda")
    overrides = proof.recipe_overrides(form, "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "/tmp/x", 7)
    recipe = load_recipe_for_plan(proof.RECIPE, overrides)
    plain = estimate_recipe_memory(recipe, 1, zero_stage=0, gpu_memory_gib=79.2)
    zero3 = estimate_recipe_memory(recipe, 1, zero_stage=3, gpu_memory_gib=79.2)
    gib = 2**30
    assert plain.items["weights"] / gib == pytest.approx(6.62, abs=0.05)  # fp32 (the precision plan)
    assert 30 < plain.total / gib < 45 and plain.fits  # one trainer: ~37 GiB
    assert 2 * plain.total / gib > 0.9 * 79.2  # two in one process would not leave room: one per process
    assert zero3.items["weights"] / gib == pytest.approx(3.31, abs=0.05) and zero3.fits  # bf16 under DeepSpeed


def test_merge_makes_one_table_of_both_calls(tmp_path):
    first = proof.Report(tmp_path / "first.md", {"started": 0.0, "form": "GPU form", "budget_s": 110, "part": "first",
                                                   "command": "proof.py --part first", "peak": "989", "machine": "H100"})  # fmt: skip
    first.add(proof.row("0", "wheel install (run.sh, --part first)", "9 s"))
    rest = proof.Report(tmp_path / "rest.md", {"started": 1.0, "form": "GPU form", "budget_s": 175, "part": "rest",
                                                 "command": "proof.py --part rest", "peak": "989", "machine": "H100"})  # fmt: skip
    rest.add(
        proof.row("c", "eval", "skipped"), proof.row("a", "training pass: Archer / stock GRPO", "1 s", "1 s", 1.0)
    )
    assert (
        "| 0 | wheel install (run.sh, --part first) | 9 s |" in (tmp_path / "first.md").read_text()
    )  # written as it goes
    assert proof.merge([first.jsonl, rest.jsonl], tmp_path / "proof.md") == 0
    text = (tmp_path / "proof.md").read_text()
    assert "`proof.py --part first`" in text and "`proof.py --part rest`" in text
    parts = [
        line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "figure" not in line
    ]
    assert parts == ["0", "a", "c"]


def _table(path):
    text = path.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| part")]
    return text, rows


def _ratios(rows):
    return [r for r in rows if r.rstrip(" |").split("|")[-2].strip().endswith("x")]


@pytest.mark.slow
def test_cpu_form_runs_every_part_and_says_so(tmp_path):
    out = tmp_path / "proof.md"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, str(GPU / "proof.py"), "--device", "cpu", "--replays", "1", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text, rows = _table(out)
    assert "CPU form (no GPU): SMALLER SHAPES" in text
    parts = {row.split("|")[1].strip() for row in rows}
    assert parts == {"0", "a", "b", "c", "d"}
    for trainer in ("Archer", "stock GRPO", "Archer, DeepSpeed ZeRO-3 (1 process)"):
        for phase in ("decode", "scoring", "training pass", "peak GPU memory, measured / the planner's estimate"):
            assert any(f"| {trainer}: {phase}" in r for r in rows), (trainer, phase)
    ratios = _ratios(rows)
    assert any("training pass: Archer / stock GRPO" in r for r in ratios)
    assert any("compute_objective" in r for r in ratios)
    assert any("the objective's share of the Archer training pass" in r for r in ratios)
    assert any(r.startswith("| c |") and "skipped" in r for r in rows)
    assert "FAILED" not in text and "timed out" not in text
    assert out.with_suffix(".jsonl").is_file() and out.with_suffix(".log").is_file()


def _machine_site(site: Path) -> list[str]:
    """A folder of links to this interpreter's installed distributions that the lent machine has too
    (bench/gpu/machine.txt): the rehearsal's stand-in for the machine's site-packages."""
    from importlib.metadata import distributions

    machine = wheelset.read_pins(wheelset.MACHINE_TXT)
    site.mkdir(parents=True)
    linked = []
    for dist in distributions():
        name = wheelset.norm(dist.metadata["Name"] or "")
        if name not in machine or name == "pip" or not dist.files:
            continue
        linked.append(name)
        for top in {Path(str(f)).parts[0] for f in dist.files}:
            source = Path(str(dist.locate_file(top)))
            if top.startswith("..") or top in ("bin", "__pycache__") or not source.exists():
                continue
            if not (site / top).exists():
                (site / top).symlink_to(source)
    return linked


def _wheels(python_version: str) -> Path:
    """wheels.txt's wheels for ``python_version``, from the cache that ``make test`` fills before the tests
    (``python bench/gpu/wheelset.py fetch``: the network is reached there, never here)."""
    folder = wheelset.cache_folder(python_version)
    assert (folder / "complete").is_file(), (
        f"no wheel set for Python {python_version} in {folder}: `make test` fetches it first "
        "(or run `python bench/gpu/wheelset.py fetch`)"
    )
    return folder


@pytest.mark.slow
def test_rehearsal_of_the_device_calls_on_a_bare_machine(tmp_path):
    """The two device calls, rehearsed: a fresh venv holding only what the lent machine has (machine.txt, as this
    interpreter has it: CPU torch, ...), the carried wheels installed by run.sh as the device README says (--no-deps
    --target, PYTHONPATH kept), then --part first and --part rest in the CPU form, and their merged table."""
    for version in ("3.12", f"{sys.version_info.major}.{sys.version_info.minor}"):
        assert wheelset.check(_wheels(version), version) == [], version  # the lent machines' set, this Python's
    wheels = _wheels(f"{sys.version_info.major}.{sys.version_info.minor}")
    # Named site-packages as the machine's is: dill (datasets' fingerprints) pickles modules found elsewhere by
    # value, and pyarrow's then fail (MonthDayNano).
    linked = _machine_site(tmp_path / "machine" / "site-packages")
    assert {"torch", "transformers", "accelerate", "numpy"} <= set(linked)
    assert not {"trl", "datasets", "deepspeed", "math-verify", "vllm", "archer-rlvr"} & set(linked)
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    Path(purelib, "machine.pth").write_text(str(tmp_path / "machine" / "site-packages") + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # The install's place is kept between runs (run.sh installs again: the stamp is removed), and so is a build folder
    # of its own: DeepSpeed's ZeRO-3 on a CPU JIT-builds a shared-memory op, rebuilt whenever its include paths change
    # (a new place, or the dev venv's DeepSpeed sharing the folder), which takes minutes here.
    prefix = wheels.with_name(wheels.name + "-prefix")
    (prefix / "site-packages" / ".proof-wheels").unlink(missing_ok=True)
    env.update(PYTHON=str(python), PROOF_PREFIX=str(prefix), HF_HUB_OFFLINE="1")
    env["TORCH_EXTENSIONS_DIR"] = str(prefix / "torch_extensions")
    missing = subprocess.run([python, "-c", "import trl"], env=env, capture_output=True, text=True)
    assert missing.returncode != 0  # the venv alone lacks what the wheels bring
    for part in ("first", "rest"):
        done = subprocess.run(
            ["bash", str(GPU / "run.sh"), str(wheels), "--device", "cpu", "--part", part, "--replays", "1",
             "--out", str(tmp_path / f"{part}.md")],
            env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    merged = tmp_path / "proof.md"
    subprocess.run([python, str(GPU / "proof.py"), "--merge", str(tmp_path / "first.jsonl"),
                    str(tmp_path / "rest.jsonl"), "--out", str(merged)], env=env, check=True, capture_output=True)  # fmt: skip
    text, rows = _table(merged)
    assert "FAILED" not in text and "timed out" not in text
    assert {row.split("|")[1].strip() for row in rows} == {"0", "a", "b", "c", "d"}
    install = next(r for r in rows if "wheel install (run.sh, --part first)" in r)
    assert f"{len(wheelset.read_pins(wheelset.WHEELS_TXT))} wheels" in install and "--no-deps" in install
    reinstall = next(r for r in rows if "wheel install (run.sh, --part rest)" in r)
    assert "already in" in reinstall  # the second call on the same machine skips the install
    assert "transformers 5.24.0" in text and "trl 1.16.0" in text  # the carried versions, not the machine's
    assert any(r.startswith("| 0 | Archer: training pass") for r in rows)  # the first call's trainer rollout
    assert any("training pass: Archer / stock GRPO" in r for r in _ratios(rows))
