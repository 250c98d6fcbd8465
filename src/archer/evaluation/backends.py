"""Generation backends: vLLM (through lighteval's ``VLLMModel``) on GPUs, plain transformers otherwise.

Both take the same token ids (the runner formats prompts once) and return k completions per prompt, decoded
without special tokens as TRL decodes them during training. Neither goes through lighteval's sample cache,
which is keyed on the model config rather than the weights.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tqdm.auto import tqdm

from archer.errors import UserError

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "transformers", "vllm")


@dataclass(frozen=True)
class Sampling:
    k: int
    temperature: float
    top_p: float
    max_new_tokens: int


@dataclass(frozen=True)
class BackendOptions:
    dtype: str = field(default="auto", metadata={"help": "weights dtype: auto, float32, bfloat16, float16"})
    batch_size: int = field(default=16, metadata={"help": "transformers: problems per generate() call"})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM: GPUs per model replica"})
    data_parallel_size: int = field(default=1, metadata={"help": "vLLM: model replicas (through ray)"})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM: fraction of GPU memory"})
    max_model_length: int | None = field(default=None, metadata={"help": "vLLM: context length (prompt + output)"})
    seed: int = field(default=1234, metadata={"help": "sampling seed"})


class Backend(Protocol):
    name: str
    tokenizer: object

    def generate(self, prompts: Sequence[list[int]], sampling: Sampling, desc: str) -> list[list[str]]: ...


def vllm_available() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def select_backend(requested: str = "auto") -> str:
    """``auto``: vLLM when it is installed and a GPU is visible, transformers otherwise."""
    if requested not in BACKENDS:
        raise UserError(f"--backend {requested!r}: valid: {', '.join(BACKENDS)}")
    if requested == "vllm" and not vllm_available():
        raise UserError("--backend vllm: vLLM is not installed or no GPU is visible; use --backend transformers")
    if requested == "auto":
        return "vllm" if vllm_available() else "transformers"
    return requested


class TransformersBackend:
    """``model.generate`` on left-padded batches of prompts, k samples per prompt."""

    name = "transformers"

    def __init__(self, model: str, options: BackendOptions):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.options = options
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = "auto" if options.dtype == "auto" else getattr(torch, options.dtype)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device).eval()

    def generate(self, prompts: Sequence[list[int]], sampling: Sampling, desc: str) -> list[list[str]]:
        import torch

        torch.manual_seed(self.options.seed)
        greedy = sampling.temperature == 0
        kwargs = {"do_sample": False} if greedy else {"do_sample": True, "temperature": sampling.temperature}
        if not greedy:
            kwargs |= {"top_p": sampling.top_p, "top_k": 0}
        out: list[list[str]] = []
        with tqdm(total=len(prompts), desc=desc, unit="problem") as bar:
            for start in range(0, len(prompts), self.options.batch_size):
                batch = [{"input_ids": ids} for ids in prompts[start : start + self.options.batch_size]]
                inputs = self.tokenizer.pad(batch, return_tensors="pt").to(self.device)
                with torch.inference_mode():
                    ids = self.model.generate(
                        **inputs,
                        max_new_tokens=sampling.max_new_tokens,
                        num_return_sequences=sampling.k,
                        pad_token_id=self.tokenizer.pad_token_id,
                        **kwargs,
                    )
                texts = self.tokenizer.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
                out.extend(texts[i : i + sampling.k] for i in range(0, len(texts), sampling.k))
                bar.update(len(batch))
        return out


def vllm_model_config(model: str, options: BackendOptions, sampling: Sampling, cache_dir: str):
    """lighteval's ``VLLMModelConfig`` for one task's protocol (the sampling parameters live in the config)."""
    from lighteval.models.model_input import GenerationParameters
    from lighteval.models.vllm.vllm_model import VLLMModelConfig

    return VLLMModelConfig(
        model_name=model,
        dtype="bfloat16" if options.dtype == "auto" else options.dtype,
        tensor_parallel_size=options.tensor_parallel_size,
        data_parallel_size=options.data_parallel_size,
        gpu_memory_utilization=options.gpu_memory_utilization,
        max_model_length=options.max_model_length,
        seed=options.seed,
        cache_dir=cache_dir,
        generation_parameters=GenerationParameters(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_new_tokens=sampling.max_new_tokens,
            seed=options.seed,
        ),
    )


class VLLMBackend:
    """lighteval's ``VLLMModel`` (tensor / data parallel), fed the runner's token ids directly."""

    name = "vllm"

    def __init__(self, model: str, options: BackendOptions, cache_dir: str):
        from transformers import AutoTokenizer

        self.model_path, self.options, self.cache_dir = model, options, cache_dir
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self._model = None  # lighteval's VLLMModel, built on first use

    def _engine(self, sampling: Sampling):
        from lighteval.models.vllm.vllm_model import VLLMModel

        config = vllm_model_config(self.model_path, self.options, sampling, self.cache_dir)
        if self._model is None:
            self._model = VLLMModel(config)
        # The engine is built once; each task's sampling parameters are read from the config at generate time.
        self._model.config = config
        self._model._cache = None  # lighteval's sample cache is keyed on the config, not the weights: never use it
        return self._model

    def generate(self, prompts: Sequence[list[int]], sampling: Sampling, desc: str) -> list[list[str]]:
        logger.info("%s: %d problems x %d samples on vLLM", desc, len(prompts), sampling.k)
        outputs = self._engine(sampling)._generate(
            inputs=list(prompts), max_new_tokens=sampling.max_new_tokens, stop_tokens=[], num_samples=sampling.k
        )
        return [[o.text for o in output.outputs] for output in outputs]
