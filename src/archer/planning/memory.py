"""Memory per GPU of a training process (ZeRO accounting) and how many sequences a vLLM engine's KV cache holds."""

from __future__ import annotations

from dataclasses import dataclass

from archer.errors import UserError
from archer.planning.model_shape import ModelShape

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DEFAULT_GPU_MEMORY_GIB = 80.0
# Resident CUDA context, NCCL buffers, allocator fragmentation: a flat allowance per GPU.
OVERHEAD_GIB = 3.0


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU, by item (an estimate: the order of magnitude and what dominates, not an allocator trace)."""

    items: dict[str, float]
    gpu_memory_bytes: float
    alternating: tuple[str, ...] = ()  # items never resident together (vLLM asleep while training): count the largest

    @property
    def total(self) -> float:
        always = sum(v for k, v in self.items.items() if k not in self.alternating)
        return always + max((self.items[k] for k in self.alternating), default=0.0)

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_memory_bytes

    def format(self) -> list[str]:
        width = max(len(k) for k in self.items)
        lines = [
            f"  {k:<{width}}  {v / GIB:8.2f} GiB" + ("  (one at a time)" if k in self.alternating else "")
            for k, v in self.items.items()
        ]
        verdict = "fits" if self.fits else "DOES NOT FIT"
        lines.append(
            f"  {'total':<{width}}  {self.total / GIB:8.2f} GiB of {self.gpu_memory_bytes / GIB:.0f} ({verdict})"
        )
        return lines


def estimate_memory(
    shape: ModelShape,
    *,
    world_size: int,
    zero_stage: int,
    micro_batch: int,
    sequence_length: int,
    dtype_bytes: int = 2,
    activation_bytes: int | None = None,
    gradient_checkpointing: bool = True,
    grad_bytes: int | None = None,
    reduce_bucket_bytes: float = 0.0,
    reference_model: bool = False,
    vllm_colocate_fraction: float | None = None,
    vllm_sleep_mode: bool = False,
    gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
) -> MemoryEstimate:
    """Memory per GPU of one training process.

    Model states follow the ZeRO paper's mixed-precision Adam accounting: weights in the training dtype
    (``dtype_bytes``), gradients in their accumulation dtype (``grad_bytes``, default ``dtype_bytes``: DeepSpeed's
    ``data_types.grad_accum_dtype`` fp32 makes it 4), plus 12 bytes per parameter (fp32 master copy, Adam m and v)
    when the weights are 16-bit, 8 (m, v) when they are fp32 (their own master copy). ``reduce_bucket_bytes`` is
    ZeRO's gradient reduction bucket (its ``reduce_bucket_size`` elements in the communication dtype), allocated
    whole. Activations are in ``activation_bytes`` (the compute dtype; default ``dtype_bytes``). Stage 0 (DDP) replicates all of it; stage 2 shards gradients and optimizer state over
    ``world_size``; stage 3 also shards the weights and gathers about two blocks (the running layer and the
    prefetched one) at a time. Activations: with gradient checkpointing one hidden state per layer is kept and one
    layer is recomputed at a time, without it every layer's intermediates live until backward (attention through
    SDPA / flash kernels: no seq^2 term). TRL computes log-probs and entropies in chunks, so the logits are not
    counted. A colocated vLLM engine reserves its ``gpu_memory_utilization`` share of the GPU; in sleep mode (TRL
    uses level 2: weights and KV cache released) it is never resident together with the activations.
    """
    if zero_stage not in (0, 2, 3):
        raise UserError(f"ZeRO stage {zero_stage}: plan for 0 (DDP), 2 or 3")
    p = shape.num_parameters
    shard_states = world_size if zero_stage >= 2 else 1
    shard_weights = world_size if zero_stage == 3 else 1
    optimizer_bytes = 12 if dtype_bytes < 4 else 8
    items: dict[str, float] = {"weights": p * dtype_bytes / shard_weights}
    if zero_stage == 3:
        largest_block = max(shape.layer_parameters, shape.embedding_parameters)
        items["weights gathered (ZeRO-3)"] = 2 * largest_block * dtype_bytes
    items["gradients"] = p * (grad_bytes or dtype_bytes) / shard_states
    if reduce_bucket_bytes:
        items["gradient reduce bucket"] = reduce_bucket_bytes
    items["optimizer states"] = p * optimizer_bytes / shard_states
    if reference_model:
        items["reference model"] = p * dtype_bytes / shard_weights
    tokens = micro_batch * sequence_length
    h = shape.hidden_size
    act = activation_bytes or dtype_bytes
    per_layer = tokens * (4 * h + shape.q_dim + 2 * shape.kv_dim + 3 * shape.intermediate_size) * act
    if gradient_checkpointing:
        items["activations"] = shape.num_layers * tokens * h * act + 2 * per_layer
    else:
        items["activations"] = shape.num_layers * per_layer
    items["CUDA context, buffers"] = OVERHEAD_GIB * GIB
    alternating: tuple[str, ...] = ()
    if vllm_colocate_fraction:
        items["vLLM (colocate)"] = vllm_colocate_fraction * gpu_memory_gib * GIB
        if vllm_sleep_mode:
            alternating = ("activations", "vLLM (colocate)")
    return MemoryEstimate(items=items, gpu_memory_bytes=gpu_memory_gib * GIB, alternating=alternating)


def vllm_sequences_in_cache(
    shape: ModelShape, *, reserved_bytes: float, tensor_parallel: int, max_model_length: int, dtype_bytes: int = 2
) -> float:
    """How many full-length sequences a vLLM engine's KV cache holds, given the memory reserved for it.

    Raises UserError when the weights alone do not fit the reservation or not one full-length sequence fits (vLLM
    refuses to start in both cases).
    """
    weights = shape.num_parameters * dtype_bytes / tensor_parallel
    activations = 1.0 * GIB  # vLLM's profiling pass and CUDA graphs: about a GiB on these model sizes
    cache = reserved_bytes - weights - activations
    per_sequence = shape.kv_cache_bytes_per_token(dtype_bytes) * max_model_length / tensor_parallel
    if cache <= 0 or cache < per_sequence:
        raise UserError(
            f"vLLM: {reserved_bytes / GIB:.1f} GiB reserved cannot hold the weights ({weights / GIB:.1f} GiB) and the "
            f"KV cache of one {max_model_length}-token sequence ({per_sequence / GIB:.2f} GiB); raise "
            "vllm_gpu_memory_utilization or vllm_tensor_parallel_size, or lower vllm_max_model_length"
        )
    return cache / per_sequence
