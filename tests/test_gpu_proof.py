"""The GPU proof script (bench/gpu/): its CPU form runs end to end (as CI runs it), its MFU arithmetic, its scripts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from paths import ROOT

GPU = ROOT / "bench" / "gpu"
sys.path.insert(0, str(GPU))

import mfu  # noqa: E402


def test_step_flops_follow_the_documented_formula():
    shape = mfu.Shape(matmul_params=1, layers=1, hidden=1)
    # B=1, P=0, C=2 (S=2): generation 2*2 + 4*(4-0)/2 = 12; reference 2*2 + 4*4/2 = 12; training 6*2 + 12*4/2 = 36
    assert mfu.step_flops(shape, 1, 0, 2, with_reference=True) == 60
    assert mfu.step_flops(shape, 1, 0, 2, with_reference=False) == 48
    assert mfu.step_flops(shape, 3, 0, 2, with_reference=True) == 180  # linear in the number of sequences


def test_peak_lookup_by_device_name():
    assert mfu.peak_tflops("NVIDIA H200") == 989.0
    assert mfu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert mfu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert mfu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert mfu.peak_tflops("Some Future Accelerator") is None


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


@pytest.mark.slow
def test_cpu_form_runs_every_part_and_says_so(tmp_path):
    out = tmp_path / "proof.md"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, str(GPU / "proof.py"), "--device", "cpu", "--steps", "1", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "CPU form (no GPU): SMALLER SHAPES" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| part")]
    parts = {row.split("|")[1].strip(): row for row in rows}
    assert set(parts) == {"a", "b", "c", "d"}
    ratios = [row for row in rows if row.rstrip(" |").split("|")[-2].strip().endswith("x")]
    assert any("no DeepSpeed): Archer / stock GRPO" in r for r in ratios)
    assert any("DeepSpeed ZeRO-3, 1 process): Archer / stock GRPO" in r for r in ratios)
    assert any("compute_objective" in r for r in ratios)
    assert any("the objective's share of an Archer trainer step" in r for r in ratios)
    assert "skipped" in parts["c"] and "vLLM is not importable" in parts["c"]
    assert "FAILED" not in text and "timed out" not in text
