"""The Archer objective (ARCHER.md, "The objective, exactly"), as one pure function of tensors.

``compute_objective`` follows the numbered steps of ARCHER.md; the comments in its body carry the same numbers.
The baselines (GRPO, DAPO, the 80/20 entropy mask) are settings of the same function: ``ObjectiveConfig.preset``.
No TRL import: the trainer gathers the tensors and calls this.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from archer.errors import UserError
from archer.ops import masked_quantile

QUANTILE_SCOPES = ("response", "batch")
KL_NORMALIZATIONS = ("class", "response")
AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
LOG_RATIO_BOUND = 20.0  # steps 4 and 7: log-ratios are clamped to [-20, 20]
KL_BOUND = 10.0  # step 7: the per-token k3 estimate is clamped to [-10, 10]


class ObjectiveConfigError(UserError, ValueError):
    """An invalid objective setting: a ``ValueError`` for library callers, a ``UserError`` for the CLI."""


ClipRange = float | tuple[float, float]


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

    # Paper values (ARCHER.md "Variants"); a preset lists only what differs from the defaults above.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "archer": {},
        # One clip range and one KL weight for every token. kl_normalization="response" makes the two classes'
        # KL add up to beta * mean over the response, GRPO's own term. beta = 0.001 (the reference code's default).
        "grpo": {
            "reasoning_clip": 0.2,
            "reasoning_kl": 0.001,
            "kl_normalization": "response",
            "dual_clip": None,
        },
        # Clip-higher [1-0.2, 1+0.28] for every token, no KL, one token-mean over the micro-batch.
        "dapo": {
            "knowledge_clip": (0.2, 0.28),
            "reasoning_clip": (0.2, 0.28),
            "knowledge_kl": 0.0,
            "dual_clip": None,
            "aggregation": "token-mean",
        },
        # DAPO plus a batch-scope threshold, with the policy gradient through the top-20% entropy tokens only.
        "entropy_mask": {
            "knowledge_clip": (0.2, 0.28),
            "reasoning_clip": (0.2, 0.28),
            "knowledge_kl": 0.0,
            "dual_clip": None,
            "aggregation": "token-mean",
            "quantile_scope": "batch",
            "pg_on_reasoning_only": True,
        },
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
    def preset_names(cls) -> list[str]:
        return list(cls.PRESETS)

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
        low, high = self.knowledge_clip
        return 1.0 - low, 1.0 + high

    @property
    def reasoning_bounds(self) -> tuple[float, float]:
        """The ratio interval [1 - low, 1 + high] of reasoning tokens."""
        low, high = self.reasoning_clip
        return 1.0 - low, 1.0 + high

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready values (clip ranges as [low, high] lists)."""
        out = dataclasses.asdict(self)
        out["knowledge_clip"] = list(self.knowledge_clip)
        out["reasoning_clip"] = list(self.reasoning_clip)
        return out


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
        token_weights: optional (B, T) weights on each token's policy-gradient term, without gradient: TRL's
            importance-sampling correction for the mismatch between vLLM's sampling and the trainer's log-probs.
            The KL term and the metrics are unweighted.

    Computed in float32 for half-precision inputs (float64 stays float64). The gradient is computed in the same
    pass as the loss (see ``_LossWithGradient``), so the loss supports one backward, not double backward.

    Metrics (python floats over the valid tokens of the micro-batch; a class with no token reports 0.0):
        ``reasoning/frac``, ``entropy/mean``, ``entropy/threshold`` (mean of the per-response thresholds, or the
        batch threshold), ``{reasoning,knowledge}/clip_low_frac`` (A < 0 and r < 1 - low: the clip is active),
        ``{reasoning,knowledge}/clip_high_frac`` (A > 0 and r > 1 + high), ``{reasoning,knowledge}/ratio_mean``,
        ``{reasoning,knowledge}/kl`` (mean k3; only when ``ref_logps`` is given), ``dual_clip_frac`` (A < 0 and
        r > c), ``loss/policy`` and ``loss/kl`` (the two parts of the loss).
    """
    _check_inputs(logps, old_logps, ref_logps, advantages, entropies, mask, cfg)
    dtype = torch.promote_types(logps.dtype, torch.float32)
    valid, valid_f = mask.bool(), mask.to(dtype)
    n_tokens = valid_f.sum(-1, keepdim=True)  # |o_i|, (B, 1)
    nonempty = n_tokens > 0  # all-zero rows get zero weight in every term below
    logp = logps.detach().to(dtype)
    old = logp if old_logps is None else old_logps.detach().to(dtype)
    adv = torch.where(nonempty, advantages.detach().to(dtype)[:, None], 0.0)  # (B, 1)

    # 1. Entropies e_t are given (current policy, full vocabulary, temperature applied); no gradient flows.
    entropies = entropies.detach().to(dtype)
    # 2. Threshold tau: the rho-quantile, linearly interpolated, of each response's valid entropies
    #    (quantile_scope="response"), or of all valid entropies of the micro-batch ("batch").
    if cfg.quantile_scope == "response":
        tau = masked_quantile(entropies, valid_f, cfg.entropy_quantile)[:, None]  # (B, 1)
    else:
        flat = entropies[valid][None]
        tau = masked_quantile(flat, torch.ones_like(flat), cfg.entropy_quantile)[:, None]  # (1, 1)
    # 3. A token is a reasoning token iff e_t > tau, strictly (so a one-token response has none).
    reasoning = (entropies > tau) & valid
    reasoning_f = reasoning.to(dtype)
    knowledge_f = valid_f - reasoning_f

    # 4. r_t = exp(clamp(logp_t - old_logp_t, -20, 20)); padding gets r = 1. (Intermediate (B, T) tensors are
    #    computed in place or dropped early below: on CPU, fresh memory costs page faults.)
    log_ratio = (logp - old).mul_(valid_f)
    unclamped = log_ratio.abs() <= LOG_RATIO_BOUND if _beyond(log_ratio, LOG_RATIO_BOUND) else None  # rare
    ratio = log_ratio.clamp_(-LOG_RATIO_BOUND, LOG_RATIO_BOUND).exp_()
    # 5-6. pg_t = max(-A r, -A clip(r, 1 - low, 1 + high)) with the clip range of the token's class, then
    #    min(pg_t, -A c) where A < 0 (dual clip). Since -A x is monotone in x, this is pg_t = -A clamp(r, lower,
    #    upper) with [lower, upper] = [0, 1 + high] for A > 0 and [1 - low, c] for A < 0; its derivative in
    #    logp_t is -A r_t where r_t lies inside [lower, upper], else 0.
    lower, upper = _active_bounds(adv, reasoning_f, cfg)
    clipped = torch.clamp(ratio, lower, upper)
    del lower, upper
    clip_side = (clipped - ratio).sign_()  # +1: lower bound active, -1: upper bound active, 0: inside
    inside = clip_side.abs().neg_().add_(1.0)  # 1 where the clamp is not active (padding included)
    # 7. k3 KL toward the reference: d_t = clamp(ref_logp_t - logp_t, -20, 20), k_t = clamp(e^d - d - 1, -10, 10);
    #    its derivative in logp_t is -(e^d - 1) where neither clamp is active.
    kl = expm1_d = kl_inside = None
    if ref_logps is not None:
        d = (ref_logps.detach().to(dtype) - logp).mul_(valid_f).clamp_(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
        expm1_d = torch.expm1(d)
        kl = expm1_d - d  # k >= 0; a clamped d gives k > 10, so the k clamp also covers d's
        del d
        if bool(kl.max() > KL_BOUND):
            kl_inside = kl <= KL_BOUND
            kl.clamp_(-KL_BOUND, KL_BOUND)

    # 8-9. Per-response means, then the mean over responses, written as one weight per token (see _weights):
    #    loss = sum_t w_t pg_t + sum_t v_t k_t.
    pg_weight, kl_weight = _weights(valid_f, reasoning_f, knowledge_f, n_tokens, nonempty, cfg)
    if token_weights is not None:
        pg_weight = pg_weight * torch.nan_to_num(token_weights.detach().to(dtype), nan=0.0)  # NaN: unscored padding
    weighted_adv = pg_weight * -adv
    pg_loss = torch.dot(weighted_adv.reshape(-1), clipped.reshape(-1))
    del pg_weight, clipped
    use_kl = kl is not None and (cfg.knowledge_kl > 0 or cfg.reasoning_kl > 0)
    kl_loss = torch.dot(kl_weight.reshape(-1), kl.reshape(-1)) if use_kl else None
    loss = pg_loss if kl_loss is None else pg_loss + kl_loss
    if logps.requires_grad and torch.is_grad_enabled():
        grad = (weighted_adv * ratio).mul_(inside)
        if unclamped is not None:  # no gradient where the clamp of step 4 is active
            grad.mul_(unclamped)
        if use_kl:
            kl_grad = kl_weight * expm1_d
            if kl_inside is not None:
                kl_grad.mul_(kl_inside)
            grad.sub_(kl_grad)
        loss = _LossWithGradient.apply(logps, loss, grad)

    with torch.no_grad():
        metrics = _metrics(
            valid_f, reasoning_f, knowledge_f, entropies, tau, nonempty, ratio, clip_side, inside, adv, kl, pg_loss,
            kl_loss,
        )  # fmt: skip
    return ObjectiveOutput(loss=loss, reasoning_mask=reasoning, metrics=metrics)


class _LossWithGradient(torch.autograd.Function):
    """A loss value whose gradient w.r.t. ``logps`` was computed with it: the backward pass is one multiply.

    The objective is elementwise in ``logps``, so its derivative is a (B, T) tensor that costs a few more
    elementwise ops in the forward pass, instead of an autograd graph of some twenty ops and their backward.
    """

    @staticmethod
    def forward(ctx, logps: Tensor, loss: Tensor, grad: Tensor) -> Tensor:
        ctx.save_for_backward(grad)
        ctx.logps_dtype = logps.dtype
        return loss.clone()

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(ctx.logps_dtype), None, None


def _beyond(x: Tensor, bound: float) -> bool:
    """Whether any |x| exceeds ``bound``: one reduction, so that the mask handling it is built only when needed."""
    if not x.numel():
        return False
    lowest, highest = torch.aminmax(x)
    return bool(lowest < -bound) or bool(highest > bound)


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
    if ref_logps is None:
        for name in ("knowledge_kl", "reasoning_kl"):
            if getattr(cfg, name) > 0:
                raise ValueError(f"{name}={getattr(cfg, name)} needs ref_logps (reference-model log-probs); got None")


def _active_bounds(adv: Tensor, reasoning_f: Tensor, cfg: ObjectiveConfig) -> tuple[Tensor, Tensor]:
    """[lower, upper] of step 6: (B, 1) when both classes share one clip range, else (B, T)."""
    positive, negative = (adv > 0).to(adv.dtype), (adv < 0).to(adv.dtype)
    cap = torch.finfo(adv.dtype).max if cfg.dual_clip is None else cfg.dual_clip

    def per_response(interval: tuple[float, float]) -> tuple[Tensor, Tensor]:
        floor, ceiling = interval  # [1 - low, 1 + high]
        return floor * negative, ceiling * positive + cap * (1.0 - positive)

    k_lower, k_upper = per_response(cfg.knowledge_bounds)
    if cfg.knowledge_bounds == cfg.reasoning_bounds:
        return k_lower, k_upper
    r_lower, r_upper = per_response(cfg.reasoning_bounds)
    return (reasoning_f * (r_lower - k_lower)).add_(k_lower), (reasoning_f * (r_upper - k_upper)).add_(k_upper)


def _weights(
    valid_f: Tensor,
    reasoning_f: Tensor,
    knowledge_f: Tensor,
    n_tokens: Tensor,
    nonempty: Tensor,
    cfg: ObjectiveConfig,
) -> tuple[Tensor, Tensor | None]:
    """Per-token weights w, v with loss = sum_t w_t pg_t + sum_t v_t k_t: steps 8-9 for every variant.

    seq-mean-token-mean      w = 1 / (|o_i| R)     R = number of non-empty responses
    seq-mean-token-sum-norm  w = 1 / (L_max R)     L_max = max_completion_length
    token-mean               w = 1 / N             N = number of valid tokens of the micro-batch
    KL "response": v = beta_class * w (the class's KL sum normalised like the policy-gradient term).
    KL "class": v = beta_class / (n_class,i R), or beta_class / N_class under token-mean, where n_class,i
    (N_class) counts the class's tokens in response i (in the micro-batch); an empty class gets no weight.
    pg_on_reasoning_only then zeroes w on knowledge tokens (the KL weights are unaffected).
    """
    responses = nonempty.sum().to(valid_f.dtype).clamp(min=1)
    if cfg.aggregation == "token-mean":
        pg_weight = valid_f / n_tokens.sum().clamp(min=1)
    elif cfg.aggregation == "seq-mean-token-mean":
        pg_weight = valid_f * (1.0 / (n_tokens.clamp(min=1) * responses))
    else:
        pg_weight = valid_f * (1.0 / (float(cfg.max_completion_length) * responses))

    beta_k, beta_r = cfg.knowledge_kl, cfg.reasoning_kl
    kl_weight = None
    if beta_k == beta_r == 0:
        pass  # no KL term
    elif cfg.kl_normalization == "response":
        kl_weight = pg_weight * beta_k if beta_k == beta_r else pg_weight * (beta_k + (beta_r - beta_k) * reasoning_f)
    else:
        for members, beta in ((knowledge_f, beta_k), (reasoning_f, beta_r)):
            if beta == 0:
                continue
            if cfg.aggregation == "token-mean":
                term = members * (beta / members.sum().clamp(min=1))
            else:
                term = members * (beta / (members.sum(-1, keepdim=True).clamp(min=1) * responses))
            kl_weight = term if kl_weight is None else kl_weight + term

    if cfg.pg_on_reasoning_only:
        pg_weight = pg_weight * reasoning_f
    return pg_weight, kl_weight


def _metrics(
    valid_f: Tensor,
    reasoning_f: Tensor,
    knowledge_f: Tensor,
    entropies: Tensor,
    tau: Tensor,
    nonempty: Tensor,
    ratio: Tensor,
    clip_side: Tensor,
    inside: Tensor,
    adv: Tensor,
    kl: Tensor | None,
    pg_loss: Tensor,
    kl_loss: Tensor | None,
) -> dict[str, float]:
    """All metrics as reductions stacked into one tensor, moved to the host once.

    Per-response clip counts come from sums of clip_side (raised - lowered) and of inside (n - raised - lowered),
    where "raised" is the lower bound being active (A < 0 and r < 1 - low) and "lowered" the upper one (A > 0 and
    r > 1 + high: the clip, or A < 0 and r > c: the dual clip).
    """
    dtype = ratio.dtype
    flat = lambda x: x.reshape(-1)  # noqa: E731
    scratch = torch.empty_like(ratio)  # one buffer for the per-response dot products (faster than bmm on CPU)
    row_dot = lambda a, b: torch.mul(a, b, out=scratch).sum(-1)  # noqa: E731
    positive, negative = (adv > 0).to(dtype).view(-1), (adv < 0).to(dtype).view(-1)
    n_reasoning, n_valid = reasoning_f.sum(-1), valid_f.sum(-1)
    outside_r = n_reasoning - row_dot(inside, reasoning_f)  # raised + lowered, per response
    outside_all = n_valid - row_dot(inside, valid_f)
    side_r, side_all = row_dot(clip_side, reasoning_f), clip_side.sum(-1)  # raised - lowered (0 on padding)
    raised_r, raised_all = (outside_r + side_r) / 2, (outside_all + side_all) / 2
    lowered_r, lowered_all = (outside_r - side_r) / 2, (outside_all - side_all) / 2
    zero = torch.zeros((), dtype=dtype, device=ratio.device)
    # mean threshold over the non-empty responses (the batch threshold repeats: its mean is itself)
    threshold = torch.where(nonempty, tau, 0.0).sum() / nonempty.sum().clamp(min=1)
    sums = torch.stack(
        [
            n_valid.sum(),
            n_reasoning.sum(),
            raised_all.sum(),
            raised_r.sum(),
            torch.dot(lowered_all, positive),
            torch.dot(lowered_r, positive),
            torch.dot(lowered_all, negative),
            torch.dot(flat(ratio), flat(knowledge_f)),
            torch.dot(flat(ratio), flat(reasoning_f)),
            zero if kl is None else torch.dot(flat(kl), flat(knowledge_f)),
            zero if kl is None else torch.dot(flat(kl), flat(reasoning_f)),
            torch.dot(flat(entropies), flat(valid_f)),
            threshold,
            pg_loss.detach(),
            zero if kl_loss is None else kl_loss.detach(),
        ]
    ).tolist()
    n, r_n, low, r_low, high, r_high, dual, k_ratio, r_ratio, k_kl, r_kl, ent_sum, tau_mean, pg, kl_part = sums
    k_n = n - r_n

    def frac(num: float, den: float) -> float:
        return num / den if den > 0 else 0.0

    metrics = {
        "reasoning/frac": frac(r_n, n),
        "entropy/mean": frac(ent_sum, n),
        "entropy/threshold": tau_mean,
        "reasoning/clip_low_frac": frac(r_low, r_n),
        "reasoning/clip_high_frac": frac(r_high, r_n),
        "knowledge/clip_low_frac": frac(low - r_low, k_n),
        "knowledge/clip_high_frac": frac(high - r_high, k_n),
        "reasoning/ratio_mean": frac(r_ratio, r_n),
        "knowledge/ratio_mean": frac(k_ratio, k_n),
        "dual_clip_frac": frac(dual, n),
        "loss/policy": pg,
        "loss/kl": kl_part,
    }
    if kl is not None:
        metrics["reasoning/kl"] = frac(r_kl, r_n)
        metrics["knowledge/kl"] = frac(k_kl, k_n)
    return metrics
