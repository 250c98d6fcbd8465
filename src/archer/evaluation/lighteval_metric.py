"""The lighteval metric of Archer's tasks: avg@k and unbiased pass@k, graded by the project's rewards.

The metric names are fixed, ``avg@k`` and ``pass@k``, and k lives in the metric (``ArcherSampling(k=64)`` in
lighteval's task config log): lighteval averages a task group (``archer:_average``) and the run (``all``) by
metric name, so names carrying k (``avg@64``, ``avg@4``) made every task report zero rows for every other k.
``archer eval`` writes its own results with k in the name (``avg@64`` in results.json), one task at a time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from lighteval.metrics.metrics_sample import SampleLevelComputation, SamplingMetric
from lighteval.metrics.utils.metric_utils import SampleLevelMetricGrouping
from lighteval.models.model_output import ModelResponse
from lighteval.tasks.requests import Doc, SamplingMethod

from archer.evaluation.grading import grade
from archer.evaluation.metrics import pass_at_k

METRIC_NAMES = ("avg@k", "pass@k")


class ArcherSampling(SamplingMetric, SampleLevelComputation):
    """Grades the k sampled completions of a doc with ``archer.evaluation.grading.grade`` (per ``doc.specific``)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def __repr__(self) -> str:  # what lighteval logs for the task's metric: the k behind avg@k and pass@k
        return f"ArcherSampling(k={self.k})"

    __str__ = __repr__

    def num_samples(self) -> int:
        return self.k

    def compute(self, doc: Doc, model_response: ModelResponse, **kwargs: Any) -> dict[str, float]:
        # Raw text, not lighteval's reasoning-stripped text: the rewards find the answer after </think> themselves.
        texts = model_response.text[: self.k]
        scores = [s.score for s in grade(doc.specific or {}, texts)]  # our tasks' docs all carry one
        correct = sum(1 for s in scores if s >= 1.0)
        return {"avg@k": float(np.mean(scores)), "pass@k": pass_at_k(len(scores), correct, self.k)}


def sampling_metric(k: int) -> SampleLevelMetricGrouping:
    """A lighteval metric reporting ``avg@k`` and ``pass@k``; it makes lighteval draw k samples per problem."""
    names = list(METRIC_NAMES)
    return SampleLevelMetricGrouping(
        metric_name=names,
        # lighteval annotates it dict[str, Callable], but it holds bools (as in lighteval's own metrics)
        higher_is_better=dict.fromkeys(names, True),  # type: ignore[arg-type]
        category=SamplingMethod.GENERATIVE,
        sample_level_fn=ArcherSampling(k),
        corpus_level_fn=dict.fromkeys(names, np.mean),
    )
