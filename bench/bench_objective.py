"""Cost of the Archer objective against a plain clipped GRPO loss, and memory of the chunked log-prob op.

Rows (see bench/run.py for the contract): ours and the reference are timed interleaved in this process, after a
warm-up, and compared by their medians. Timings use one intra-op thread so that a busy shared machine does not
turn thread synchronisation into noise; the peak-memory rows run each side in a fresh interpreter.

    .venv/bin/python bench/bench_objective.py [--quick]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from archer.objective import ObjectiveConfig, compute_objective  # noqa: E402
from archer.ops import masked_quantile  # noqa: E402

VOCAB = 151_936  # Qwen2 / DeepSeek-R1-Distill-Qwen vocabulary


def plain_grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor):
    """The usual clipped surrogate with one token-mean (as TRL's GRPO loss with beta = 0): the reference."""
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - 0.2, 1 + 0.2)
    adv = advantages[:, None]
    per_token = -torch.min(ratio * adv, clipped * adv)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def _batch(batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A micro-batch like the trainer's: right-padded responses of random lengths, a reused rollout (r != 1)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 4, length + 1, (batch,), generator=gen)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    logps = -torch.rand(batch, length, generator=gen) * 3
    return {
        "logps": logps,
        "old_logps": logps + 0.2 * torch.randn(batch, length, generator=gen),
        "ref_logps": logps + 0.2 * torch.randn(batch, length, generator=gen),
        "advantages": torch.randn(batch, generator=gen),
        "entropies": torch.empty(batch, length).exponential_(1.0, generator=gen),
        "mask": mask,
    }


def _interleaved(
    ours: Callable[[], object], reference: Callable[[], object], repeats: int
) -> tuple[float, float, float]:
    """Median wall seconds of each, measured alternately after a warm-up of both, and the ratio of median CPU
    seconds of this thread (less sensitive to other processes on a shared machine)."""
    for _ in range(3):
        ours()
        reference()
    wall: tuple[list[float], list[float]] = ([], [])
    cpu: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for side, fn in enumerate((ours, reference)):
            start, start_cpu = time.perf_counter(), time.thread_time()
            fn()
            wall[side].append(time.perf_counter() - start)
            cpu[side].append(time.thread_time() - start_cpu)
    cpu_ratio = statistics.median(cpu[0]) / max(statistics.median(cpu[1]), 1e-9)
    return statistics.median(wall[0]), statistics.median(wall[1]), cpu_ratio


def _objective_rows(batch: int, length: int, repeats: int) -> list[dict]:
    data = _batch(batch, length)
    cfg = ObjectiveConfig.preset("archer")
    mask_f = data["mask"].float()

    def ours() -> None:
        logps = data["logps"].detach().requires_grad_()
        compute_objective(
            logps, data["old_logps"], data["ref_logps"], data["advantages"], data["entropies"], data["mask"], cfg
        ).loss.backward()

    def reference() -> None:
        logps = data["logps"].detach().requires_grad_()
        plain_grpo_loss(logps, data["old_logps"], data["advantages"], mask_f).backward()

    def quantile() -> None:
        masked_quantile(data["entropies"], data["mask"], cfg.entropy_quantile)

    def nanquantile() -> None:
        torch.nanquantile(data["entropies"].masked_fill(data["mask"] == 0, torch.nan), cfg.entropy_quantile, dim=-1)

    t_ours, t_ref, cpu_ours = _interleaved(ours, reference, repeats)
    t_quantile, t_objective, cpu_quantile = _interleaved(quantile, ours, repeats)
    t_masked, t_nan, cpu_masked = _interleaved(quantile, nanquantile, max(3, repeats // 4))
    shape = f"B={batch} T={length} float32"
    return [
        {
            "figure": f"compute_objective (archer, fwd+bwd, with metrics) vs plain clipped GRPO loss, {shape}",
            "ours": f"{t_ours * 1e3:.3f} ms",
            "reference": f"{t_ref * 1e3:.3f} ms",
            "ratio": t_ours / t_ref,
            "target": "<= 1.3x",
            "note": f"reference: exp/clamp/min, one token-mean, autograd backward (TRL's GRPO loss, beta=0); "
            f"CPU-time ratio {cpu_ours:.2f}",
        },
        {
            "figure": f"share of the entropy-quantile step in compute_objective, {shape}",
            "ours": f"{t_quantile * 1e3:.3f} ms (masked_quantile)",
            "reference": f"{t_objective * 1e3:.3f} ms (whole objective)",
            "ratio": t_quantile / t_objective,
            "target": "< 0.5 (must not dominate)",
            "note": f"per-response 0.8-quantile of the entropies, padding excluded; CPU-time share {cpu_quantile:.2f}",
        },
        {
            "figure": f"masked_quantile vs torch.nanquantile (padding as NaN), {shape}",
            "ours": f"{t_masked * 1e3:.3f} ms",
            "reference": f"{t_nan * 1e3:.3f} ms",
            "ratio": t_masked / t_nan,
            "target": None,
            "note": f"equal values (tests/test_ops.py); one selection per row, not a sort; CPU-time ratio {cpu_masked:.2f}",
        },
    ]


# Run in a fresh interpreter: peak resident memory above the inputs, for one forward + backward.
_MEMORY_PROBE = """
import json, resource, sys, torch
sys.path.insert(0, {src!r})
from archer.ops import token_logps_and_entropy
torch.manual_seed(0)
rows, vocab, naive = {rows}, {vocab}, {naive}
logits = torch.randn(1, rows, vocab, requires_grad=True)
ids = torch.randint(0, vocab, (1, rows))
def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024
before = rss_kib()
if naive:
    logp_all = torch.log_softmax(logits, dim=-1)
    logps = logp_all.gather(-1, ids[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).detach()
else:
    logps, entropy = token_logps_and_entropy(logits, ids)
logps.sum().backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"peak_mib": (peak - before) / 1024, "input_mib": logits.numel() * 4 / 2**20}}))
"""


def _peak_memory(rows: int, vocab: int, naive: bool) -> dict[str, float]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    code = _MEMORY_PROBE.format(src=src, rows=rows, vocab=vocab, naive=naive)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _memory_row(rows: int, vocab: int, repeats: int) -> dict:
    ours, naive = [], []
    for _ in range(repeats):  # alternate the two sides
        ours.append(_peak_memory(rows, vocab, naive=False)["peak_mib"])
        naive.append(_peak_memory(rows, vocab, naive=True)["peak_mib"])
    m_ours, m_naive = statistics.median(ours), statistics.median(naive)
    input_mib = rows * vocab * 4 / 2**20
    return {
        "figure": f"peak memory of token_logps_and_entropy vs naive log_softmax + entropy, 1x{rows}, V={vocab}, fwd+bwd",
        "ours": f"{m_ours:.0f} MiB",
        "reference": f"{m_naive:.0f} MiB",
        "ratio": m_ours / m_naive,
        "target": None,
        "note": f"peak RSS above the float32 logits ({input_mib:.0f} MiB), which includes their gradient (same size)",
    }


def run(quick: bool = False) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if quick:
            rows = _objective_rows(batch=2, length=256, repeats=5)
            rows.append(_memory_row(rows=8, vocab=4096, repeats=1))
            return rows
        rows = _objective_rows(batch=16, length=4096, repeats=200)
        rows += _objective_rows(batch=16, length=8192, repeats=100)[:1]
        rows.append(_memory_row(rows=512, vocab=VOCAB, repeats=3))
        return rows
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    from run import standalone

    sys.exit(standalone(run))
