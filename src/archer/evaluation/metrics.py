"""avg@k and unbiased pass@k over per-sample scores (one list of k scores per problem)."""

from __future__ import annotations

from collections.abc import Sequence
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: ``1 - C(n-c, k) / C(n, k)``.

    Not "any of the first k": every subset of size k of the n samples counts (Chen et al., 2021).
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


def avg_at_k(scores: Sequence[float]) -> float:
    """Mean score of one problem's samples (pass@1 averaged over the k samples)."""
    if not scores:
        raise ValueError("avg@k needs at least one sample")
    return sum(scores) / len(scores)


def aggregate(
    scores_per_problem: Sequence[Sequence[float]], pass_ks: Sequence[int] = (), scale: float = 100.0
) -> dict[str, float]:
    """Task-level metrics in percent (``scale=1``: fractions): ``avg@n`` and unbiased ``pass@j`` for n and every j
    in ``pass_ks``.

    Every problem must carry the same number n of samples. A sample counts as correct for pass@j only when
    its score is 1 (a partial score never passes).
    """
    if not scores_per_problem:
        raise ValueError("no problems to aggregate")
    n = len(scores_per_problem[0])
    if any(len(scores) != n for scores in scores_per_problem):
        raise ValueError(f"every problem needs the same number of samples ({n})")
    ks = sorted({n, *pass_ks})
    totals = {f"avg@{n}": 0.0} | {f"pass@{j}": 0.0 for j in ks}
    for scores in scores_per_problem:
        correct = sum(1 for s in scores if s >= 1.0)
        totals[f"avg@{n}"] += avg_at_k(scores)
        for j in ks:
            totals[f"pass@{j}"] += pass_at_k(n, correct, j)
    return {name: scale * total / len(scores_per_problem) for name, total in totals.items()}
