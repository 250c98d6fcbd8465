"""The lighteval metric of Archer's tasks: avg@k and unbiased pass@k, graded by the project's rewards."""

from __future__ import annotations

import numpy as np
from lighteval.metrics.metrics_sample import SampleLevelComputation, SamplingMetric
from lighteval.metrics.utils.metric_utils import SampleLevelMetricGrouping
from lighteval.models.model_output import ModelResponse
from lighteval.tasks.requests import Doc, SamplingMethod

from archer.evaluation.grading import grade
from archer.evaluation.metrics import pass_at_k


class ArcherSampling(SamplingMetric, SampleLevelComputation):
    """Grades the k sampled completions of a doc with ``archer.evaluation.grading.grade`` (per ``doc.specific``)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def num_samples(self) -> int:
        return self.k

    def compute(self, doc: Doc, model_response: ModelResponse, **kwargs) -> dict[str, float]:
        # Raw text, not lighteval's reasoning-stripped text: the rewards find the answer after </think> themselves.
        texts = model_response.text[: self.k]
        scores = [s.score for s in grade(doc.specific, texts)]
        correct = sum(1 for s in scores if s >= 1.0)
        return {f"avg@{self.k}": float(np.mean(scores)), f"pass@{self.k}": pass_at_k(len(scores), correct, self.k)}


def sampling_metric(k: int) -> SampleLevelMetricGrouping:
    """A lighteval metric reporting ``avg@k`` and ``pass@k``; it makes lighteval draw k samples per problem."""
    names = [f"avg@{k}", f"pass@{k}"]
    return SampleLevelMetricGrouping(
        metric_name=names,
        higher_is_better=dict.fromkeys(names, True),
        category=SamplingMethod.GENERATIVE,
        sample_level_fn=ArcherSampling(k),
        corpus_level_fn=dict.fromkeys(names, np.mean),
    )
