"""Model FLOPs of one GRPO trainer step, and a GPU's dense bf16 peak, for MFU = FLOPs / (time x peak).

Counted per step, for a decoder with N matmul parameters (every weight but the input embedding, which is a lookup),
L layers, width d, on B sequences of P prompt + C completion tokens (S = P + C):

    generation (forward, one token at a time)       2 N B C   + attention  4 L d B (S^2 - P^2) / 2
    reference model forward (when beta > 0)         2 N B S   + attention  4 L d B S^2 / 2
    policy forward + backward (the training pass)   6 N B S   + attention 12 L d B S^2 / 2

Attention counts QK^T and AV (2 d FLOPs each per query-key pair and layer in the forward pass, three times that
forward and backward) over the causal half of the S x S pairs. Recomputation (activation checkpointing) is not counted, as
usual for MFU. Dense bf16 peaks are the vendors' figures without sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass

# Dense bf16 tensor-core peak, TFLOP/s, by a substring of torch.cuda.get_device_name() (first match wins).
BF16_PEAK_TFLOPS = (
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM / NVL
    ("H800", 989.0),
    ("H20", 148.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("RTX 6000 Ada", 364.0),
    ("A6000", 155.0),
    ("V100", 125.0),  # fp16 (no bf16 tensor cores)
)


def peak_tflops(device_name: str) -> float | None:
    for key, value in BF16_PEAK_TFLOPS:
        if key in device_name:
            return value
    return None


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


def step_flops(shape: Shape, sequences: int, prompt: float, completion: float, with_reference: bool) -> float:
    """Model FLOPs of one step (generation + reference forward + policy forward/backward), as documented above."""
    n, layers, d, b = shape.matmul_params, shape.layers, shape.hidden, sequences
    s = prompt + completion
    attn_pairs = s * s / 2  # causal
    generation = 2 * n * b * completion + 4 * layers * d * b * (s * s - prompt * prompt) / 2
    reference = (2 * n * b * s + 4 * layers * d * b * attn_pairs) if with_reference else 0.0
    training = 6 * n * b * s + 12 * layers * d * b * attn_pairs
    return generation + reference + training
