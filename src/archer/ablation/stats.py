"""Means with 95 % Student-t intervals over seeds (small samples: the t quantile, not 1.96)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# Student-t 97.5 % quantiles by degrees of freedom (two-sided 95 % intervals); 1.96 beyond the table.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 25: 2.060, 30: 2.042}  # fmt: skip


def t975(n: int) -> float:
    """The Student-t 97.5 % quantile with ``n - 1`` degrees of freedom (for a 95 % interval of a mean of n)."""
    df = n - 1
    if df < 1:
        return math.nan
    if df in T975:
        return T975[df]
    below = max(k for k in T975 if k < df) if df < 30 else None
    return T975[below] if below is not None else 1.96


def mean_ci(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval (nan with fewer than two values); None and nan are skipped."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return math.nan, math.nan
    if len(kept) < 2:
        return kept[0], math.nan
    return statistics.mean(kept), t975(len(kept)) * statistics.stdev(kept) / math.sqrt(len(kept))
