"""Peak memory of archer.ops.token_logps_and_entropy (chunked) against the naive log_softmax + entropy.

Rows (see bench/run.py for the contract): each side runs in a fresh interpreter, alternately, and the medians of
their peak resident memory are compared. (The objective's own cost is measured where it matters, as its share of
a trainer step: bench/bench_trainer.py.)

    .venv/bin/python bench/bench_ops.py [--quick]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

VOCAB = 151_936  # Qwen2 / DeepSeek-R1-Distill-Qwen vocabulary


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
    if quick:
        return [_memory_row(rows=8, vocab=4096, repeats=1)]
    return [_memory_row(rows=512, vocab=VOCAB, repeats=3)]


if __name__ == "__main__":
    from run import standalone

    sys.exit(standalone(run))
