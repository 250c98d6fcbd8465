"""Chunked token log-probs + entropy: exact, and different from the obvious one-liner only in cost.

``token_logps_and_entropy`` never materialises a full (B, T, V) float32 tensor besides the input (and, in the
backward pass, the gradient of the input itself, which has to exist): it walks over chunks of rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Rows per chunk are chosen so that one float32 chunk holds about this many elements (16 MiB).
_CHUNK_ELEMENTS = 1 << 22


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half precision inputs, the input dtype otherwise (float32, float64)."""
    return torch.promote_types(dtype, torch.float32)


class _TokenLogpsAndEntropy(torch.autograd.Function):
    """Forward and backward both walk over chunks of rows; only (N,) vectors are saved besides the input."""

    @staticmethod
    def forward(ctx, logits: Tensor, token_ids: Tensor, temperature: float, chunk_size: int):
        vocab = logits.shape[-1]
        flat = logits.reshape(-1, vocab)
        ids = token_ids.reshape(-1)
        acc = _accumulation_dtype(logits.dtype)
        n = flat.shape[0]
        logps = torch.empty(n, dtype=acc, device=logits.device)
        entropy = torch.empty(n, dtype=acc, device=logits.device)
        lse = torch.empty(n, dtype=acc, device=logits.device)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            x = flat[start:stop].to(acc)  # an alias when logits are already in `acc`: never written to
            if temperature != 1.0:
                x = x / temperature
            chunk_lse = torch.logsumexp(x, dim=-1)
            probs = (x - chunk_lse[:, None]).exp_()
            # H = -sum p log p = lse - sum p x, with the dot product as a batched matmul (no chunk-sized temporary).
            entropy[start:stop] = chunk_lse - (probs.unsqueeze(1) @ x.unsqueeze(2)).view(-1)
            logps[start:stop] = x.gather(1, ids[start:stop, None]).view(-1) - chunk_lse
            lse[start:stop] = chunk_lse
        ctx.save_for_backward(logits, token_ids, lse)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        shape = logits.shape[:-1]
        logps, entropy = logps.view(shape), entropy.view(shape)
        ctx.mark_non_differentiable(entropy)
        return logps, entropy

    @staticmethod
    def backward(ctx, grad_logps: Tensor, _grad_entropy: Tensor | None):
        logits, token_ids, lse = ctx.saved_tensors
        temperature, chunk_size = ctx.temperature, ctx.chunk_size
        vocab = logits.shape[-1]
        flat = logits.reshape(-1, vocab)
        ids = token_ids.reshape(-1)
        grad_out = grad_logps.reshape(-1).to(lse.dtype)
        grad_logits = torch.empty_like(flat)
        # d logp_t / d x = onehot(token) - softmax(x), and x = logits / temperature.
        for start in range(0, flat.shape[0], chunk_size):
            stop = min(start + chunk_size, flat.shape[0])
            x = flat[start:stop].to(lse.dtype)
            if temperature != 1.0:
                x = x / temperature
            grad = (x - lse[start:stop, None]).exp_().mul_(-grad_out[start:stop, None])
            grad.scatter_add_(1, ids[start:stop, None], grad_out[start:stop, None])
            if temperature != 1.0:
                grad.div_(temperature)
            grad_logits[start:stop] = grad
        return grad_logits.view(logits.shape), None, None, None


def token_logps_and_entropy(
    logits: Tensor, token_ids: Tensor, temperature: float = 1.0, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Log-prob of ``token_ids`` and full-vocabulary entropy under ``softmax(logits / temperature)``.

    Args:
        logits: (..., V) scores, any float dtype; may require grad.
        token_ids: (...) integer ids of the tokens whose log-prob is wanted.
        temperature: the sampling temperature the logits are divided by (> 0).
        chunk_size: rows of the flattened (N, V) logits processed at once; by default about 4M elements per chunk.

    Returns:
        ``(logps, entropy)``, both of shape ``logits.shape[:-1]``, in float32 (float64 for float64 logits).
        ``logps`` carries gradient to ``logits``; ``entropy`` carries none.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if token_ids.shape != logits.shape[:-1]:
        raise ValueError(
            f"token_ids shape {tuple(token_ids.shape)} must equal logits shape {tuple(logits.shape[:-1])}"
        )
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // logits.shape[-1])
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _TokenLogpsAndEntropy.apply(logits, token_ids.long(), float(temperature), int(chunk_size))
