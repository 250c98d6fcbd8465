"""Tensor ops the objective and the trainer share: chunked token log-probs + entropy, and a masked row quantile.

Both are exact (no approximation) and differ from the obvious one-liners only in cost:

- ``token_logps_and_entropy`` never materialises a full (B, T, V) float32 tensor besides the input (and, in the
  backward pass, the gradient of the input itself, which has to exist): it walks over chunks of rows.
- ``masked_quantile`` equals ``torch.nanquantile`` with padding set to NaN, but selects two order statistics per
  row instead of sorting every row, which is what makes the per-response entropy threshold cheap.
"""

from __future__ import annotations

import numpy as np
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


# On CPU, rows at least this long are selected one at a time with numpy, on their valid entries only; shorter rows
# (where the per-row Python overhead would dominate) in one vectorised selection over the padded matrix.
_ROW_LOOP_MIN_LENGTH = 1024


def _order_statistics(x: Tensor, k: int, use_numpy: bool | None = None) -> tuple[Tensor, Tensor]:
    """The k-th and (k+1)-th smallest entries (0-based) of every row of a 2-D tensor (the last one repeats at the end).

    ``use_numpy`` defaults to True for CPU tensors.
    """
    if use_numpy if use_numpy is not None else x.device.type == "cpu":
        # numpy's introselect is about twice as fast as torch.kthvalue on CPU. After partitioning at k, everything
        # right of k is >= the k-th value, so the (k+1)-th smallest is the minimum of that part.
        part = np.partition(x.numpy(), k, axis=-1)
        nxt = part[:, k + 1 :].min(axis=-1) if k + 1 < x.shape[-1] else part[:, k]
        return torch.from_numpy(part[:, k].copy()), torch.from_numpy(np.ascontiguousarray(nxt))
    k1 = min(k + 1, x.shape[-1] - 1)
    return torch.kthvalue(x, k + 1, dim=-1).values, torch.kthvalue(x, k1 + 1, dim=-1).values


def _select_per_row(x: Tensor, valid_f: Tensor, count: Tensor, below: Tensor) -> tuple[Tensor, Tensor]:
    """CPU: the below-th and next order statistics of each row's valid entries (0 for an empty row)."""
    values, valid = x.numpy(), valid_f.numpy()
    lo, hi = np.zeros(x.shape[0], dtype=values.dtype), np.zeros(x.shape[0], dtype=values.dtype)
    for i, (n, k) in enumerate(zip(count.long().tolist(), below.long().tolist(), strict=True)):
        if n == 0:
            continue
        row = values[i, :n] if valid[i, :n].all() else values[i, valid[i] != 0]  # right padding: a view
        part = np.partition(row, k)
        lo[i], hi[i] = part[k], (part[k + 1 :].min() if k + 1 < n else part[k])
    return torch.from_numpy(lo), torch.from_numpy(hi)


def _select_padded(x: Tensor, valid_f: Tensor, below: Tensor) -> tuple[Tensor, Tensor] | None:
    """The same in one selection over the padded matrix; None if float rounding makes the trick inapplicable."""
    # Move each row's below-th smallest valid value to one shared index k: the row's first (k - below) padding
    # slots get -big (they sort first), its other padding slots +big. A row has T - count >= k - below such slots.
    k = int(below.max())
    padding = 1.0 - valid_f
    if bool((k - below > padding.sum(-1)).any()):  # only reachable through float rounding with q near 1
        return None
    big = torch.finfo(x.dtype).max
    side = torch.cumsum(padding, dim=-1).sub_((k - below)[:, None] + 0.5).sign_()  # -1 first, +1 after
    filled = (x * valid_f).addcmul_(side, padding, value=big)
    # hi is the next valid value, or +big when there is none (then the interpolation weight is 0).
    return _order_statistics(filled, k)


def masked_quantile(values: Tensor, valid: Tensor, q: float) -> Tensor:
    """Linearly interpolated ``q``-quantile of each row's valid entries; NaN for a row with none.

    Equals ``torch.nanquantile(values.masked_fill(~valid, nan), q, dim=-1)`` (same ranks, same ``lerp``), but costs
    one selection per row instead of a sort. No gradient flows. Half-precision input is computed in float32.

    Args:
        values: (R, T) float tensor; entries outside ``valid`` may hold anything finite.
        valid: (R, T) mask, nonzero where the entry counts.
        q: the quantile, in [0, 1].

    Returns:
        (R,) tensor in float32 (float64 for float64 input).
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    x = values.detach().to(_accumulation_dtype(values.dtype))
    if x.shape[-1] == 0 or x.shape[0] == 0:
        return torch.full(x.shape[:-1], torch.nan, dtype=x.dtype, device=x.device)
    valid_f = valid.to(x.dtype) if valid.dtype in (torch.bool, x.dtype) else (valid != 0).to(x.dtype)
    count = valid_f.sum(-1)
    # Ranks exactly as torch computes them: q (in x's dtype) * (count - 1); the value below sits at floor(rank).
    ranks = torch.tensor(q, dtype=x.dtype, device=x.device) * (count - 1).clamp(min=0)
    below = ranks.floor()
    if x.device.type == "cpu" and x.shape[-1] >= _ROW_LOOP_MIN_LENGTH:
        order_stats = _select_per_row(x, valid_f, count, below)
    else:
        order_stats = _select_padded(x, valid_f, below)
        if order_stats is None:
            return torch.nanquantile(x.masked_fill(valid_f == 0, torch.nan), q, dim=-1)
    lo, hi = (t.to(x.device) for t in order_stats)
    out = torch.lerp(lo, hi, ranks - below)
    return torch.where(count > 0, out, torch.nan)
