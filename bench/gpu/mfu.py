"""Model FLOPs of a GRPO rollout's phases, and the GPUs' dense bf16 peaks, for MFU = FLOPs / (time x peak).

Counted for a decoder with N matmul parameters (every weight but the input embedding, which is a lookup), L layers,
width d, on B sequences of P prompt + C completion tokens (S = P + C):

    decode (generation, one token at a time)          2 N B C   + attention  4 L d B (S^2 - P^2) / 2
    one scoring forward (reference or old log-probs)  2 N B S   + attention  4 L d B S^2 / 2
    training pass, per epoch over the rollout         6 N B S   + attention 12 L d B S^2 / 2

Attention counts QK^T and AV (2 d FLOPs each per query-key pair and layer in the forward pass, three times that
forward and backward) over the causal half of the S x S pairs. Recomputation (activation checkpointing) is not counted, as
usual for MFU. Peaks are the vendors' dense bf16 tensor-core figures, without sparsity (half the "with sparsity" one).
"""

from __future__ import annotations

from dataclasses import dataclass

# One table for the GPUs the proof may meet: (a substring of torch.cuda.get_device_name(), first match wins; the
# device tool's kind lending it, or ""; dense bf16 TFLOP/s). Order matters: "H100 NVL" before "H100".
DEVICES = (
    ("GB200", "", 2500.0),
    ("B200", "", 2250.0),
    ("H200 NVL", "", 835.0),
    ("H200", "nvidia-h200", 989.0),  # SXM
    ("GH200", "", 989.0),
    ("H100 NVL", "", 835.0),  # 1,671 with sparsity
    ("H100 PCIe", "", 756.0),
    ("H100", "nvidia-h100-x1", 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
    ("H800", "", 989.0),
    ("H20", "", 148.0),
    ("A100", "", 312.0),
    ("A800", "", 312.0),
    ("L40S", "", 362.0),
    ("L40", "", 181.0),
    ("L4", "", 121.0),
    ("A10G", "", 70.0),
    ("A10", "", 125.0),
    ("RTX 4090", "", 165.0),
    ("RTX 6000 Ada", "", 364.0),
    ("A6000", "", 155.0),
    ("V100", "", 125.0),  # fp16 (no bf16 tensor cores)
)


def peak_tflops(device_name: str) -> float | None:
    for key, _kind, value in DEVICES:
        if key in device_name:
            return value
    return None


def lent_kinds() -> dict[str, float]:
    """The device tool's kinds and their peaks (from DEVICES)."""
    return {kind: value for _key, kind, value in DEVICES if kind}


@dataclass(frozen=True)
class Shape:
    matmul_params: int  # every parameter but the input embedding
    layers: int
    hidden: int

    @classmethod
    def of(cls, model) -> Shape:
        embedding = model.get_input_embeddings().weight
        total = sum(p.numel() for p in model.parameters())
        tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is embedding
        # A tied LM head reuses the embedding matrix as a matmul weight: count it once, as the head.
        matmul = total if tied else total - embedding.numel()
        return cls(matmul, model.config.num_hidden_layers, model.config.hidden_size)


def decode_flops(shape: Shape, sequences: int, prompt: float, completion: float) -> float:
    s = prompt + completion
    return (
        2 * shape.matmul_params * sequences * completion
        + 4 * shape.layers * shape.hidden * sequences * (s * s - prompt * prompt) / 2
    )


def forward_flops(shape: Shape, sequences: int, prompt: float, completion: float) -> float:
    s = prompt + completion
    return 2 * shape.matmul_params * sequences * s + 4 * shape.layers * shape.hidden * sequences * s * s / 2


def training_flops(shape: Shape, sequences: int, prompt: float, completion: float, epochs: int = 1) -> float:
    return 3 * epochs * forward_flops(shape, sequences, prompt, completion)


def step_flops(shape: Shape, sequences: int, prompt: float, completion: float, with_reference: bool) -> float:
    """Model FLOPs of one step (decode + reference forward + one training epoch), as documented above."""
    reference = forward_flops(shape, sequences, prompt, completion) if with_reference else 0.0
    return (
        decode_flops(shape, sequences, prompt, completion)
        + reference
        + training_flops(shape, sequences, prompt, completion)
    )
