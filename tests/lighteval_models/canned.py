"""A lighteval custom model (``lighteval custom canned tests/lighteval_models/canned.py ...``) that answers every
math problem with k fixed completions: the first right, the others wrong, so avg@k = 1/k and pass@k = 1 exactly."""

from __future__ import annotations

import tempfile

from lighteval.models.abstract_model import LightevalModel
from lighteval.models.model_output import ModelResponse
from lighteval.tasks.requests import Doc
from lighteval.utils.cache_management import SampleCache


class CannedModel(LightevalModel):
    def __init__(self, config) -> None:
        self.config = config
        # lighteval's sample cache, kept out of the home folder
        self._cache = SampleCache(config.model_copy(update={"cache_dir": tempfile.mkdtemp(prefix="lighteval-cache-")}))

    @property
    def tokenizer(self):
        return None

    @property
    def add_special_tokens(self) -> bool:
        return False

    @property
    def max_length(self) -> int:
        return 4096

    def greedy_until(self, docs: list[Doc]) -> list[ModelResponse]:
        responses = []
        for doc in docs:
            gold = doc.specific["gold"]
            right = f"<think>worked it out</think> The answer is \\boxed{{{gold}}}."
            wrong = "<think>guessing</think> \\boxed{-1}"
            responses.append(ModelResponse(text=[right] + [wrong] * (doc.num_samples - 1)))
        return responses

    def loglikelihood(self, docs: list[Doc]) -> list[ModelResponse]:
        raise NotImplementedError

    def loglikelihood_rolling(self, docs: list[Doc]) -> list[ModelResponse]:
        raise NotImplementedError
