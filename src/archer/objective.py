"""The Archer objective (docs/method.md#objective) as one function of tensors; autograd differentiates it.

The body of ``compute_objective`` transcribes the numbered steps of docs/method.md, and its comments carry their numbers.
The baselines (GRPO, DAPO, the 80/20 entropy mask) are settings of the same function: ``ObjectiveConfig.preset``.
No TRL import: the trainer gathers the tensors and calls this.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import torch
from torch import Tensor

from archer.errors import UserError

QUANTILE_SCOPES = ("response", "batch")
KL_NORMALIZATIONS = ("class", "response")
AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
LOG_RATIO_BOUND = 20.0  # steps 4 and 7: log-ratios are clamped to [-20, 20]
KL_BOUND = 10.0  # step 7: the per-token k3 estimate is clamped to [-10, 10]
ClipRange = float | tuple[float, float]
_DAPO = {  # the "dapo" preset below
    "knowledge_clip": (0.2, 0.28),
    "reasoning_clip": (0.2, 0.28),
    "knowledge_kl": 0.0,
    "dual_clip": None,
    "aggregation": "token-mean",
}


class ObjectiveConfigError(UserError, ValueError):
    """An invalid objective setting: a ``ValueError`` for library callers, a ``UserError`` for the CLI."""


@dataclass
class ObjectiveConfig:
    """Settings of the dual-token objective. The defaults are the paper's Archer settings."""

    entropy_quantile: float = field(
        default=0.8, metadata={"help": "rho: tokens whose entropy is above this quantile are reasoning tokens."}
    )
    quantile_scope: str = field(
        default="response",
        metadata={"help": "'response': one threshold per response; 'batch': one over all valid tokens (80/20)."},
    )
    knowledge_clip: ClipRange = field(
        default=0.2,
        metadata={"help": "eps for knowledge tokens: float (symmetric) or (low, high); r clipped to [1-low, 1+high]."},
    )
    reasoning_clip: ClipRange = field(default=0.5, metadata={"help": "eps for reasoning tokens, as knowledge_clip."})
    knowledge_kl: float = field(default=0.001, metadata={"help": "beta_k: KL weight on knowledge tokens."})
    reasoning_kl: float = field(default=0.0, metadata={"help": "beta_r: KL weight on reasoning tokens."})
    dual_clip: float | None = field(
        default=10.0, metadata={"help": "c (> 1): caps the loss of negative-advantage tokens at -A*c; None disables."}
    )
    kl_normalization: str = field(
        default="class",
        metadata={
            "help": "'class': each class's KL is a mean over that class's tokens; 'response': the class's KL sum is "
            "normalised like the policy-gradient term (by |o_i| under seq-mean-token-mean, the paper's equation)."
        },
    )
    aggregation: str = field(
        default="seq-mean-token-mean",
        metadata={"help": "'seq-mean-token-mean' | 'token-mean' (DAPO) | 'seq-mean-token-sum-norm' (Dr. GRPO)."},
    )
    max_completion_length: int | None = field(
        default=None, metadata={"help": "The fixed divisor of seq-mean-token-sum-norm (required by it)."}
    )
    pg_on_reasoning_only: bool = field(
        default=False,
        metadata={"help": "Policy gradient through reasoning tokens only (the 80/20 entropy mask); KL unaffected."},
    )

    # Paper values (docs/method.md#variants); a preset lists only what differs from the defaults above.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "archer": {},
        # One clip range and one KL weight for every token. kl_normalization="response" makes the two classes'
        # KL add up to beta * mean over the response, GRPO's own term. beta = 0.001 (the reference code's default).
        "grpo": {"reasoning_clip": 0.2, "reasoning_kl": 0.001, "kl_normalization": "response", "dual_clip": None},
        # Clip-higher [1-0.2, 1+0.28] for every token, no KL, one token-mean over the micro-batch.
        "dapo": _DAPO,
        # DAPO plus a batch-scope threshold, with the policy gradient through the top-20% entropy tokens only.
        "entropy_mask": {**_DAPO, "quantile_scope": "batch", "pg_on_reasoning_only": True},
    }

    def __post_init__(self) -> None:
        rho = _number("entropy_quantile", self.entropy_quantile)
        if not 0.0 < rho < 1.0:
            raise ObjectiveConfigError(f"objective.entropy_quantile must be in (0, 1), got {rho}")
        _choice("quantile_scope", self.quantile_scope, QUANTILE_SCOPES)
        _choice("kl_normalization", self.kl_normalization, KL_NORMALIZATIONS)
        _choice("aggregation", self.aggregation, AGGREGATIONS)
        self.knowledge_clip = _clip_range("knowledge_clip", self.knowledge_clip)
        self.reasoning_clip = _clip_range("reasoning_clip", self.reasoning_clip)
        for name in ("knowledge_kl", "reasoning_kl"):
            if _number(name, getattr(self, name)) < 0:
                raise ObjectiveConfigError(f"objective.{name} must be >= 0, got {getattr(self, name)}")
        if self.dual_clip is not None and _number("dual_clip", self.dual_clip) <= 1.0:
            raise ObjectiveConfigError(f"objective.dual_clip must be > 1 or None, got {self.dual_clip}")
        length = self.max_completion_length
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise ObjectiveConfigError(f"objective.max_completion_length must be a positive integer, got {length!r}")
        if self.aggregation == "seq-mean-token-sum-norm" and length is None:
            raise ObjectiveConfigError(
                "objective.aggregation 'seq-mean-token-sum-norm' needs objective.max_completion_length"
            )
        if not isinstance(self.pg_on_reasoning_only, bool):
            raise ObjectiveConfigError(
                f"objective.pg_on_reasoning_only must be true or false, got {self.pg_on_reasoning_only!r}"
            )

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ObjectiveConfig:
        """The settings of a named method (archer, grpo, dapo, entropy_mask), with ``overrides`` applied on top."""
        if name not in cls.PRESETS:
            raise ObjectiveConfigError(f"unknown objective preset {name!r}; valid: {', '.join(cls.PRESETS)}")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in overrides:
            if key not in known:
                raise ObjectiveConfigError(f"unknown objective field {key!r}; valid: {', '.join(known)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    @property
    def knowledge_bounds(self) -> tuple[float, float]:
        """The ratio interval [1 - low, 1 + high] of knowledge tokens."""
        low, high = _pair(self.knowledge_clip)
        return 1.0 - low, 1.0 + high

    @property
    def reasoning_bounds(self) -> tuple[float, float]:
        """The ratio interval [1 - low, 1 + high] of reasoning tokens."""
        low, high = _pair(self.reasoning_clip)
        return 1.0 - low, 1.0 + high

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready values (clip ranges as [low, high] lists)."""
        return {
            **dataclasses.asdict(self),
            "knowledge_clip": [*_pair(self.knowledge_clip)],
            "reasoning_clip": [*_pair(self.reasoning_clip)],
        }


def _pair(clip: ClipRange) -> tuple[float, float]:
    """A clip range after ``__post_init__``, which turns a float into the pair (low, high)."""
    return cast(tuple[float, float], clip)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ObjectiveConfigError(f"objective.{name} must be a number, got {value!r}")
    return float(value)


def _choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ObjectiveConfigError(f"objective.{name} must be one of {', '.join(valid)}; got {value!r}")


def _clip_range(name: str, value: Any) -> tuple[float, float]:
    pair = tuple(value) if isinstance(value, list | tuple) else (value, value)
    if len(pair) != 2:
        raise ObjectiveConfigError(f"objective.{name} must be a number or a [low, high] pair, got {value!r}")
    low, high = (_number(name, v) for v in pair)
    if low < 0 or high < 0:
        raise ObjectiveConfigError(
            f"objective.{name} must be >= 0 (the ratio is clipped to [1-low, 1+high]), got {value!r}"
        )
    return low, high


@dataclass
class ObjectiveOutput:
    loss: Tensor  # 0-dim, differentiable w.r.t. logps
    reasoning_mask: Tensor  # (B, T) bool: the tokens classed as reasoning
    metrics: dict[str, float]  # see compute_objective


def compute_objective(
    logps: Tensor,
    old_logps: Tensor | None,
    ref_logps: Tensor | None,
    advantages: Tensor,
    entropies: Tensor,
    mask: Tensor,
    cfg: ObjectiveConfig,
    token_weights: Tensor | None = None,
) -> ObjectiveOutput:
    """The dual-token clipped objective of one micro-batch (a loss to minimise).

    Args:
        logps: (B, T) log-probs of the sampled tokens under the current policy; the only input with a gradient.
        old_logps: (B, T) log-probs under the policy that sampled the batch; None means ``logps.detach()`` (r = 1).
        ref_logps: (B, T) log-probs under the reference model; None is an error if a KL weight is > 0.
        advantages: (B,) one advantage per response.
        entropies: (B, T) entropy of the current policy at each position (no gradient flows into them).
        mask: (B, T), 1 on completion tokens and 0 on padding (bool, integer or float). A row that is all zero is
            ignored entirely. Padding positions of the other inputs may hold any finite values: they change
            neither the loss nor its gradient.
        cfg: the settings.
        token_weights: optional (B, T) or (B, 1) weights on each token's policy-gradient term, without gradient:
            TRL's importance-sampling correction for the mismatch between vLLM's sampling and the trainer's
            log-probs (NaN counts as 0). The KL term and the metrics are unweighted.

    Computed in float32 for half-precision inputs (float64 stays float64), with plain autograd: the loss supports
    double backward.

    Metrics (python floats over the valid tokens of the micro-batch; a class with no token reports 0.0):
        ``reasoning/frac``, ``entropy/mean``, ``entropy/threshold`` (mean of the per-response thresholds, or the
        batch threshold), ``{reasoning,knowledge}/clip_low_frac`` (A < 0 and r < 1 - low: the clip is active),
        ``{reasoning,knowledge}/clip_high_frac`` (A > 0 and r > 1 + high), ``{reasoning,knowledge}/ratio_mean``,
        ``{reasoning,knowledge}/kl`` (mean k3; only when ``ref_logps`` is given), ``dual_clip_frac`` (A < 0 and
        r > c), ``loss/policy`` and ``loss/kl`` (the two parts of the loss).
    """
    _check_inputs(logps, old_logps, ref_logps, advantages, entropies, mask, cfg)
    dtype = torch.promote_types(logps.dtype, torch.float32)
    valid = mask.bool()
    logp = logps.to(dtype)
    old = logp.detach() if old_logps is None else old_logps.detach().to(dtype)
    adv = advantages.detach().to(dtype)[:, None]  # A_i, (B, 1)

    # 1. The entropies e_t come with the log-probs (current policy, full vocabulary, temperature applied).
    entropy = entropies.detach().to(dtype)
    # 2. tau: the rho-quantile of the valid entropies with linear interpolation (torch.nanquantile, padding as NaN),
    #    of each response ("response" scope, (B, 1)) or of the whole micro-batch ("batch", (1, 1)); NaN if empty.
    padded = entropy.masked_fill(~valid, torch.nan)
    tau = _nanquantile(padded if cfg.quantile_scope == "response" else padded.reshape(1, -1), cfg.entropy_quantile)
    # 3. Reasoning tokens: e_t > tau, strictly (a one-token response has none); the other valid tokens: knowledge.
    reasoning = valid & (entropy > tau)
    knowledge = valid & ~reasoning

    # 4. r_t = exp(clamp(logp_t - old_logp_t, -20, 20)).
    ratio = torch.exp(torch.clamp(logp - old, -LOG_RATIO_BOUND, LOG_RATIO_BOUND))
    # 5. The clip interval [1 - eps_low, 1 + eps_high] of each token's class.
    (k_lower, k_upper), (r_lower, r_upper) = cfg.knowledge_bounds, cfg.reasoning_bounds
    lower = torch.full_like(ratio, k_lower).masked_fill(reasoning, r_lower)
    upper = torch.full_like(ratio, k_upper).masked_fill(reasoning, r_upper)
    # 6. pg_t = max(-A r_t, -A clip(r_t, lower, upper)), and where A < 0 the dual clip pg_t = min(pg_t, -A c).
    pg = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, lower, upper))
    if cfg.dual_clip is not None:
        pg = torch.where(adv < 0, torch.minimum(pg, -adv * cfg.dual_clip), pg)
    if token_weights is not None:
        pg = pg * torch.nan_to_num(token_weights.detach().to(dtype), nan=0.0)
    # 7. k3 KL: d_t = clamp(ref_logp_t - logp_t, -20, 20), k_t = clamp(exp(d_t) - d_t - 1, -10, 10)
    #    (expm1 keeps small KL values accurate in float32).
    kl = None
    if ref_logps is not None:
        d = torch.clamp(ref_logps.detach().to(dtype) - logp, -LOG_RATIO_BOUND, LOG_RATIO_BOUND)
        kl = torch.clamp(torch.expm1(d) - d, -KL_BOUND, KL_BOUND)

    # 8. L_i = mean_t pg_t + beta_k mean_{t in knowledge} k_t + beta_r mean_{t in reasoning} k_t (an empty class
    #    adds 0). 9. loss = mean of L_i over the responses (all-zero rows are none).
    #    Each mean is a sum over the tokens divided by a count: the variants change only the divisors.
    n_tokens = valid.sum(-1).to(dtype)  # |o_i|
    responses = (n_tokens > 0).sum().clamp(min=1)

    def aggregate(x: Tensor, members: Tensor, divisor: Tensor) -> Tensor:
        """Steps 8-9: mean_i sum_{t in members} x_t / divisor_i; under token-mean, one pooled sum / pooled divisor."""
        total = torch.where(members, x, 0.0)
        if cfg.aggregation == "token-mean":
            return total.sum() / divisor.sum().clamp(min=1)
        return (total.sum(-1) / divisor.clamp(min=1)).sum() / responses

    # seq-mean-token-sum-norm divides the policy term by a fixed length (max_completion_length) instead of |o_i|.
    fixed = cfg.max_completion_length if cfg.aggregation == "seq-mean-token-sum-norm" else None
    pg_divisor = torch.full_like(n_tokens, fixed) if fixed is not None else n_tokens
    pg_loss = aggregate(pg, reasoning if cfg.pg_on_reasoning_only else valid, pg_divisor)
    kl_loss = torch.zeros((), dtype=dtype, device=logps.device)
    for members, beta in ((knowledge, cfg.knowledge_kl), (reasoning, cfg.reasoning_kl)):
        if beta > 0:  # kl_normalization "class": the class's own count; "response": the policy term's divisor
            divisor = members.sum(-1).to(dtype) if cfg.kl_normalization == "class" else pg_divisor
            assert kl is not None  # _check_inputs: a KL weight > 0 needs ref_logps
            kl_loss = kl_loss + beta * aggregate(kl, members, divisor)

    with torch.no_grad():
        metrics = _metrics(
            valid, reasoning, knowledge, entropy, tau, ratio, lower, upper, adv, kl, pg_loss, kl_loss, cfg
        )
    return ObjectiveOutput(loss=pg_loss + kl_loss, reasoning_mask=reasoning, metrics=metrics)


def _nanquantile(x: Tensor, q: float) -> Tensor:
    """``torch.nanquantile`` along the last dimension, keeping it; NaN rows for an empty tensor (torch refuses one)."""
    if x.numel() == 0:
        return x.new_full((*x.shape[:-1], 1), torch.nan)
    return torch.nanquantile(x, q, dim=-1, keepdim=True)


def _metrics(valid, reasoning, knowledge, entropy, tau, ratio, lower, upper, adv, kl, pg_loss, kl_loss, cfg):
    """The metrics of ``compute_objective``: means over boolean masks, moved to the host in one transfer."""

    def mean(x: Tensor, where: Tensor) -> Tensor:  # mean of x over where's entries; 0 when there are none
        return torch.where(where, x, 0).sum().to(ratio.dtype) / where.sum().clamp(min=1)

    clip_low = (adv < 0) & (ratio < lower)
    clip_high = (adv > 0) & (ratio > upper)
    dual = (adv < 0) & (ratio > cfg.dual_clip) if cfg.dual_clip is not None else torch.zeros_like(valid)
    values = {
        "reasoning/frac": mean(reasoning, valid),
        "entropy/mean": mean(entropy, valid),
        "entropy/threshold": mean(tau, ~tau.isnan()),
        "dual_clip_frac": mean(dual, valid),
        "loss/policy": pg_loss,
        "loss/kl": kl_loss,
    }
    for name, members in (("reasoning", reasoning), ("knowledge", knowledge)):
        values[f"{name}/clip_low_frac"] = mean(clip_low, members)
        values[f"{name}/clip_high_frac"] = mean(clip_high, members)
        values[f"{name}/ratio_mean"] = mean(ratio, members)
        if kl is not None:
            values[f"{name}/kl"] = mean(kl, members)
    return dict(zip(values, torch.stack(list(values.values())).tolist(), strict=True))  # dict[str, float]


def _check_inputs(
    logps: Tensor,
    old_logps: Tensor | None,
    ref_logps: Tensor | None,
    advantages: Tensor,
    entropies: Tensor,
    mask: Tensor,
    cfg: ObjectiveConfig,
) -> None:
    if logps.dim() != 2:
        raise ValueError(f"logps must be (B, T), got shape {tuple(logps.shape)}")
    for name, tensor in (("old_logps", old_logps), ("ref_logps", ref_logps), ("entropies", entropies), ("mask", mask)):
        if tensor is not None and tensor.shape != logps.shape:
            raise ValueError(f"{name} shape {tuple(tensor.shape)} must equal logps shape {tuple(logps.shape)}")
    if advantages.shape != logps.shape[:1]:
        raise ValueError(f"advantages must be (B,) = {tuple(logps.shape[:1])}, got {tuple(advantages.shape)}")
    for name in ("knowledge_kl", "reasoning_kl"):
        if ref_logps is None and getattr(cfg, name) > 0:
            raise ValueError(f"{name}={getattr(cfg, name)} needs ref_logps (reference-model log-probs); got None")
