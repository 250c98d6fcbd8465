"""Hand-worked examples of the Archer objective (docs/method.md#objective), one per term, and the presets.

Ratios are set through old_logps = 0 and logps = log r; KL terms through ref_logps = logps + d.
"""

import math

import pytest
import torch

from archer.errors import UserError
from archer.objective import ObjectiveConfig, compute_objective

LN2, LN3 = math.log(2.0), math.log(3.0)
NO_KL = {"knowledge_kl": 0.0, "reasoning_kl": 0.0}


def t(rows, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


def objective(ratios, advantages, entropies, mask=None, d=None, **cfg):
    """Run the objective with r given directly; returns (output, gradient w.r.t. logps)."""
    ratios = t(ratios)
    logps = ratios.log().requires_grad_()
    mask = torch.ones_like(ratios) if mask is None else t(mask)
    ref = None if d is None else logps.detach() + t(d)
    out = compute_objective(
        logps, torch.zeros_like(ratios), ref, t(advantages), t(entropies), mask, ObjectiveConfig(**cfg)
    )
    (grad,) = torch.autograd.grad(out.loss, logps)
    return out, grad


# Five tokens whose 0.8-quantile threshold is 0 + 0.2 * (1 - 0) = 0.2: only the last is a reasoning token.
ENT5 = [[0.0, 0.0, 0.0, 0.0, 1.0]]


# --- steps 2-3: threshold and classes ---------------------------------------------------------------------------


def test_threshold_interpolates_and_class_is_strictly_above():
    # sorted [0.1 .. 0.5], rank 0.8 * 4 = 3.2: tau = 0.4 + 0.2 * 0.1 = 0.42; only 0.5 > 0.42
    out, _ = objective([[1.0] * 5], [1.0], [[0.3, 0.1, 0.5, 0.2, 0.4]], **NO_KL)
    assert out.metrics["entropy/threshold"] == pytest.approx(0.42)
    assert out.reasoning_mask.tolist() == [[False, False, True, False, False]]
    # rank 3.2 between two equal values: tau = 0.4 exactly, and tokens equal to tau are knowledge tokens
    out, _ = objective([[1.0] * 5], [1.0], [[0.1, 0.2, 0.3, 0.4, 0.4]], **NO_KL)
    assert out.metrics["entropy/threshold"] == pytest.approx(0.4)
    assert not out.reasoning_mask.any()
    assert out.metrics["reasoning/frac"] == 0.0


def test_threshold_ignores_padding():
    # valid [0.1, 0.5, 0.3]: rank 1.6, tau = 0.3 + 0.6 * 0.2 = 0.42; the padded 9.0 is neither counted nor classed
    out, _ = objective([[1.0] * 4], [1.0], [[0.1, 0.5, 0.3, 9.0]], mask=[[1, 1, 1, 0]], **NO_KL)
    assert out.metrics["entropy/threshold"] == pytest.approx(0.42)
    assert out.reasoning_mask.tolist() == [[False, True, False, False]]
    assert out.metrics["entropy/mean"] == pytest.approx(0.3)


def test_batch_scope_uses_one_threshold_over_all_valid_tokens():
    entropies = [[0.1, 0.2, 0.3, 0.0], [0.4, 0.5, 0.6, 0.7]]
    mask = [[1, 1, 1, 0], [1, 1, 1, 1]]
    # pooled [0.1 .. 0.7], rank 0.8 * 6 = 4.8: tau = 0.5 + 0.8 * 0.1 = 0.58 -> 0.6 and 0.7 are reasoning
    out, _ = objective([[1.0] * 4] * 2, [1.0, 1.0], entropies, mask=mask, quantile_scope="batch", **NO_KL)
    assert out.metrics["entropy/threshold"] == pytest.approx(0.58)
    assert out.reasoning_mask.tolist() == [[False] * 4, [False, False, True, True]]
    # per response: row 1 rank 1.6 -> 0.26 (0.3 above); row 2 rank 2.4 -> 0.64 (0.7 above)
    out, _ = objective([[1.0] * 4] * 2, [1.0, 1.0], entropies, mask=mask, **NO_KL)
    assert out.reasoning_mask.tolist() == [[False, False, True, False], [False, False, False, True]]
    assert out.metrics["entropy/threshold"] == pytest.approx((0.26 + 0.64) / 2)


def test_one_token_response_has_no_reasoning_token():
    out, grad = objective([[1.5]], [2.0], [[3.0]], **NO_KL)
    assert not out.reasoning_mask.any()
    assert out.metrics["entropy/threshold"] == pytest.approx(3.0)
    # knowledge clip 1.2 for A > 0: pg = -2 * 1.2, no gradient
    assert out.loss.item() == pytest.approx(-2.4)
    assert grad.item() == 0.0


# --- steps 4-6: ratio, clip per class and side, dual clip -------------------------------------------------------


def test_clip_high_per_class_and_gradient_of_a_reasoning_token_at_ratio_1_3():
    # A = +1; knowledge tokens clip at 1.2, the reasoning token (last) at 1.5
    ratios = [[1.3, 0.7, 1.0, 1.1, 1.3]]
    out, grad = objective(ratios, [1.0], ENT5, **NO_KL)
    assert out.reasoning_mask.tolist() == [[False, False, False, False, True]]
    # pg = -min(r, 1 + eps): -(1.2 + 0.7 + 1.0 + 1.1 + 1.3) / 5
    assert out.loss.item() == pytest.approx(-5.3 / 5)
    # the knowledge token at 1.3 is clipped (no gradient), the reasoning token at 1.3 is not: d pg / d logp = -A r
    torch.testing.assert_close(grad, t([[0.0, -0.7, -1.0, -1.1, -1.3]]) / 5)
    assert out.metrics["knowledge/clip_high_frac"] == pytest.approx(0.25)
    assert out.metrics["reasoning/clip_high_frac"] == 0.0
    assert out.metrics["knowledge/clip_low_frac"] == 0.0  # 0.7 < 0.8 but A > 0: the low side is not active
    assert out.metrics["reasoning/ratio_mean"] == pytest.approx(1.3)
    assert out.metrics["knowledge/ratio_mean"] == pytest.approx((1.3 + 0.7 + 1.0 + 1.1) / 4)
    # above 1.5 the reasoning token is clipped too
    out, grad = objective([[1.0, 1.0, 1.0, 1.0, 1.6]], [1.0], ENT5, **NO_KL)
    assert out.loss.item() == pytest.approx(-(4 + 1.5) / 5)
    assert grad[0, 4].item() == 0.0 and out.metrics["reasoning/clip_high_frac"] == 1.0


def test_clip_low_per_class():
    # A = -1: pg = max(r, 1 - eps); knowledge floor 0.8, reasoning floor 0.5
    out, grad = objective([[0.7, 1.3, 1.0, 1.1, 0.6]], [-1.0], ENT5, **NO_KL)
    assert out.loss.item() == pytest.approx((0.8 + 1.3 + 1.0 + 1.1 + 0.6) / 5)
    torch.testing.assert_close(grad, t([[0.0, 1.3, 1.0, 1.1, 0.6]]) / 5)
    assert out.metrics["knowledge/clip_low_frac"] == pytest.approx(0.25)
    assert out.metrics["reasoning/clip_low_frac"] == 0.0
    out, grad = objective([[1.0, 1.0, 1.0, 1.0, 0.4]], [-1.0], ENT5, **NO_KL)
    assert out.loss.item() == pytest.approx((4 + 0.5) / 5)
    assert grad[0, 4].item() == 0.0 and out.metrics["reasoning/clip_low_frac"] == 1.0


def test_asymmetric_clip_range():
    # knowledge (0.1, 0.3): [0.9, 1.3]; A = +1 clips 1.4 to 1.3; A = -1 lifts 0.85 to 0.9
    cfg = dict(knowledge_clip=(0.1, 0.3), reasoning_clip=(0.1, 0.3), **NO_KL)
    out, _ = objective([[1.4, 1.0]], [1.0], [[0.0, 0.0]], **cfg)
    assert out.loss.item() == pytest.approx(-(1.3 + 1.0) / 2)
    out, _ = objective([[0.85, 1.0]], [-1.0], [[0.0, 0.0]], **cfg)
    assert out.loss.item() == pytest.approx((0.9 + 1.0) / 2)


def test_dual_clip_caps_negative_advantage_tokens():
    # A = -2, c = 10: pg = min(max(2 r, 2 clip(r)), 2 * 10); r = 20 is capped at 20, r = 5 is not
    ratios, entropies = [[20.0, 5.0, 1.0]], [[0.0, 0.0, 0.0]]
    out, grad = objective(ratios, [-2.0], entropies, **NO_KL)
    assert out.loss.item() == pytest.approx((20.0 + 10.0 + 2.0) / 3)
    torch.testing.assert_close(grad, t([[0.0, 10.0, 2.0]]) / 3)
    assert out.metrics["dual_clip_frac"] == pytest.approx(1 / 3)
    out, grad = objective(ratios, [-2.0], entropies, dual_clip=None, **NO_KL)
    assert out.loss.item() == pytest.approx((40.0 + 10.0 + 2.0) / 3)
    assert grad[0, 0].item() == pytest.approx(40.0 / 3) and out.metrics["dual_clip_frac"] == 0.0
    # positive advantages are never dual-clipped
    out, _ = objective(ratios, [2.0], entropies, dual_clip=1.5, **NO_KL)
    assert out.loss.item() == pytest.approx(-(1.2 + 1.2 + 1.0) * 2 / 3)
    assert out.metrics["dual_clip_frac"] == 0.0


def test_log_ratio_clamp_at_20_stops_gradient():
    logps = t([[25.0, 0.0]]).requires_grad_()
    cfg = ObjectiveConfig(dual_clip=None, **NO_KL)
    out = compute_objective(logps, torch.zeros(1, 2, dtype=torch.float64), None, t([-1.0]), t([[0.0, 0.0]]),
                            torch.ones(1, 2), cfg)  # fmt: skip
    out.loss.backward()
    assert out.loss.item() == pytest.approx((math.exp(20.0) + 1.0) / 2)
    assert logps.grad.tolist() == [[0.0, 0.5]]


# --- step 7-8: KL and its normalisations --------------------------------------------------------------------------

# r = 1 and A = 0, so only KL remains. Knowledge tokens: d = [ln 2, 0, 0, 0] -> k = [1 - ln 2, 0, 0, 0];
# the reasoning token: d = ln 3 -> k = 3 - ln 3 - 1 = 2 - ln 3.
KL_D = [[LN2, 0.0, 0.0, 0.0, LN3]]
K_KNOW, K_REAS = 1 - LN2, 2 - LN3


def test_k3_per_class_with_class_normalisation():
    out, grad = objective([[1.0] * 5], [0.0], ENT5, d=KL_D, knowledge_kl=0.1, reasoning_kl=0.01)
    assert out.loss.item() == pytest.approx(0.1 * K_KNOW / 4 + 0.01 * K_REAS / 1)
    assert out.metrics["knowledge/kl"] == pytest.approx(K_KNOW / 4)
    assert out.metrics["reasoning/kl"] == pytest.approx(K_REAS)
    assert out.metrics["loss/kl"] == pytest.approx(out.loss.item()) and out.metrics["loss/policy"] == 0.0
    # d k / d logp = -(e^d - 1): -(2 - 1) for the first token, -(3 - 1) for the reasoning token
    torch.testing.assert_close(grad, t([[-0.1 * 1 / 4, 0.0, 0.0, 0.0, -0.01 * 2]]))


def test_k3_with_response_normalisation():
    out, _ = objective(
        [[1.0] * 5], [0.0], ENT5, d=KL_D, knowledge_kl=0.1, reasoning_kl=0.01, kl_normalization="response"
    )
    assert out.loss.item() == pytest.approx(0.1 * K_KNOW / 5 + 0.01 * K_REAS / 5)


def test_kl_with_an_empty_reasoning_class():
    # equal entropies: no reasoning token; the reasoning KL contributes 0 and reports 0.0
    out, _ = objective([[1.0] * 5], [0.0], [[0.5] * 5], d=KL_D, knowledge_kl=0.1, reasoning_kl=0.01)
    assert out.loss.item() == pytest.approx(0.1 * (K_KNOW + K_REAS) / 5)
    assert out.metrics["reasoning/kl"] == 0.0 and out.metrics["reasoning/ratio_mean"] == 0.0
    assert out.metrics["reasoning/clip_high_frac"] == 0.0


def test_kl_clamp_at_10_stops_gradient():
    # d = 5: e^5 - 6 = 142.4 is clamped to 10
    out, grad = objective([[1.0, 1.0]], [0.0], [[0.0, 0.0]], d=[[5.0, LN2]], knowledge_kl=1.0)
    assert out.loss.item() == pytest.approx((10.0 + K_KNOW) / 2)
    torch.testing.assert_close(grad, t([[0.0, -0.5]]))


def test_kl_weight_without_reference_is_an_error():
    with pytest.raises(ValueError, match="knowledge_kl=0.001 needs ref_logps"):
        objective([[1.0]], [1.0], [[0.0]])


def test_archer_defaults_on_a_full_example():
    # rho 0.8, eps 0.2 / 0.5, beta_k 0.001, beta_r 0, dual clip 10, class-normalised KL, seq-mean-token-mean.
    ratios = [[1.3, 0.7, 1.0, 1.0, 1.3], [0.6, 30.0, 1.0, 1.0, 1.0]]
    entropies = [[0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 5.0, 0.0]]
    mask = [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    d = [[LN2, 0.0, 0.0, 0.0, LN3], [0.0, 0.0, 0.0, LN3, 0.0]]
    out, _ = objective(ratios, [1.0, -0.5], entropies, mask=mask, d=d)
    # row 1 (A = 1): pg = -(1.2 + 0.7 + 1 + 1 + 1.3) / 5; KL 0.001 * (1 - ln 2) / 4 (reasoning KL weight 0)
    row1 = -5.2 / 5 + 0.001 * K_KNOW / 4
    # row 2 (A = -0.5), 4 tokens, threshold 0 + 0.4 * 5 = 2 -> token 4 is reasoning:
    # pg = 0.5 * [0.8, min(30, 10), 1, 1] (30 hits the dual clip), KL 0 on knowledge tokens
    row2 = 0.5 * (0.8 + 10.0 + 1.0 + 1.0) / 4
    assert out.loss.item() == pytest.approx((row1 + row2) / 2)
    assert out.metrics["dual_clip_frac"] == pytest.approx(1 / 9)
    assert out.metrics["reasoning/frac"] == pytest.approx(2 / 9)
    assert out.metrics["knowledge/clip_low_frac"] == pytest.approx(1 / 7)  # the 0.6 with A < 0
    assert out.metrics["knowledge/clip_high_frac"] == pytest.approx(1 / 7)  # the 1.3 with A > 0


# --- step 9: aggregations, empty rows ---------------------------------------------------------------------------

# r = 1 everywhere: pg_t = -A_i. Row 1 has 2 tokens (A = 1), row 2 has 4 tokens (A = 0.5).
AGG = dict(ratios=[[1.0] * 4] * 2, advantages=[1.0, 0.5], entropies=[[0.0] * 4] * 2, mask=[[1, 1, 0, 0], [1, 1, 1, 1]])


@pytest.mark.parametrize(
    ("aggregation", "max_len", "expected"),
    [
        ("seq-mean-token-mean", None, (-1.0 - 0.5) / 2),
        ("token-mean", None, (2 * -1.0 + 4 * -0.5) / 6),
        ("seq-mean-token-sum-norm", 8, (2 * -1.0 / 8 + 4 * -0.5 / 8) / 2),
    ],
)
def test_aggregations(aggregation, max_len, expected):
    out, grad = objective(**AGG, aggregation=aggregation, max_completion_length=max_len, **NO_KL)
    assert out.loss.item() == pytest.approx(expected)
    assert out.metrics["loss/policy"] == pytest.approx(expected)
    assert grad[0, 2:].abs().sum().item() == 0.0  # padding


def test_token_mean_class_kl_pools_the_micro_batch():
    d = [[LN2, 0.0, 0.0, 0.0], [LN2, LN2, 0.0, 0.0]]
    cfg = dict(aggregation="token-mean", knowledge_kl=0.1, advantages=[0.0, 0.0])
    out, _ = objective(AGG["ratios"], entropies=AGG["entropies"], mask=AGG["mask"], d=d, **cfg)
    assert out.loss.item() == pytest.approx(0.1 * 3 * K_KNOW / 6)  # 6 knowledge tokens in the micro-batch


def test_all_zero_rows_are_ignored():
    base, base_grad = objective(**AGG, **NO_KL)
    more = {k: v + [v[0]] for k, v in AGG.items()}
    more["mask"] = AGG["mask"] + [[0, 0, 0, 0]]
    more["advantages"] = AGG["advantages"] + [7.0]
    out, grad = objective(**more, **NO_KL)
    assert out.loss.item() == pytest.approx(base.loss.item())
    assert out.metrics == pytest.approx(base.metrics)
    torch.testing.assert_close(grad[:2], base_grad)
    assert grad[2].abs().sum().item() == 0.0
    # a micro-batch of empty rows only: zero loss, finite metrics
    out, grad = objective([[1.0, 1.0]], [1.0], [[0.0, 0.0]], mask=[[0, 0]], **NO_KL)
    assert out.loss.item() == 0.0 and grad.abs().sum().item() == 0.0
    assert all(math.isfinite(v) for v in out.metrics.values())


def test_padding_values_change_neither_loss_nor_gradient():
    mask = [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    ratios = [[1.3, 0.7, 1.1, 1.0, 1.0], [1.0, 1.2, 0.9, 1.6, 1.0]]
    entropies = [[0.3, 0.1, 0.2, 0.0, 0.0], [0.5, 0.1, 0.9, 0.3, 0.2]]
    d = [[0.1, -0.2, 0.3, 0.0, 0.0], [0.2, 0.1, 0.0, -0.1, 0.4]]
    base, base_grad = objective(ratios, [1.0, -1.0], entropies, mask=mask, d=d)
    junk_ratios = [[1.3, 0.7, 1.1, 1e6, 1e-6], ratios[1]]
    junk_entropies = [[0.3, 0.1, 0.2, 50.0, -3.0], entropies[1]]
    junk_d = [[0.1, -0.2, 0.3, 30.0, -40.0], d[1]]
    out, grad = objective(junk_ratios, [1.0, -1.0], junk_entropies, mask=mask, d=junk_d)
    assert out.loss.item() == pytest.approx(base.loss.item(), rel=1e-12)
    assert out.metrics == pytest.approx(base.metrics)
    torch.testing.assert_close(grad, base_grad)


# --- gradient plumbing and dtypes -------------------------------------------------------------------------------


def test_no_gradient_reaches_entropies_or_the_other_inputs():
    logps = torch.randn(2, 6, requires_grad=True)
    entropies = torch.rand(2, 6, requires_grad=True)
    old, ref = logps.detach().clone().requires_grad_(), torch.randn(2, 6, requires_grad=True)
    adv = torch.randn(2, requires_grad=True)
    out = compute_objective(logps, old, ref, adv, entropies, torch.ones(2, 6), ObjectiveConfig())
    out.loss.backward()
    assert logps.grad is not None
    assert entropies.grad is None and old.grad is None and ref.grad is None and adv.grad is None


def test_double_backward():
    # A = +1, r = [1.1, 0.9] inside the knowledge clip [0.8, 1.2], d = [ln 2, 0], beta_k = 0.1, two tokens:
    # d loss / d logp_t = (-A r_t - beta (e^d_t - 1)) / 2, and its derivative again (-A r_t + beta e^d_t) / 2.
    logps = t([[1.1, 0.9]]).log().requires_grad_()
    ref, adv, ent = logps.detach() + t([[LN2, 0.0]]), t([1.0]), t([[0.0, 0.0]])
    out = compute_objective(
        logps, torch.zeros(1, 2), ref, adv, ent, torch.ones(1, 2), ObjectiveConfig(knowledge_kl=0.1)
    )
    (grad,) = torch.autograd.grad(out.loss, logps, create_graph=True)
    (second,) = torch.autograd.grad(grad.sum(), logps)
    torch.testing.assert_close(grad.detach(), t([[-1.1 - 0.1 * 1.0, -0.9 - 0.0]]) / 2)
    torch.testing.assert_close(second, t([[-1.1 + 0.1 * 2.0, -0.9 + 0.1 * 1.0]]) / 2)


def test_double_backward_matches_finite_differences():
    gen = torch.Generator().manual_seed(0)
    logps = (-torch.rand(3, 6, generator=gen, dtype=torch.float64)).requires_grad_()
    old = logps.detach() + 0.05 * torch.randn(3, 6, generator=gen, dtype=torch.float64)  # r near 1: no clip
    ref = logps.detach() + 0.3 * torch.randn(3, 6, generator=gen, dtype=torch.float64)
    adv, ent = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64), torch.rand(3, 6, generator=gen)
    mask = torch.ones(3, 6)
    mask[2, 4:] = 0
    cfg = ObjectiveConfig(reasoning_kl=0.02)
    assert torch.autograd.gradgradcheck(lambda x: compute_objective(x, old, ref, adv, ent, mask, cfg).loss, (logps,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    gen = torch.Generator().manual_seed(0)
    logps64 = -torch.rand(3, 8, generator=gen, dtype=torch.float64)
    old64 = logps64 + 0.3 * torch.randn(3, 8, generator=gen, dtype=torch.float64)
    ref64 = logps64 + 0.3 * torch.randn(3, 8, generator=gen, dtype=torch.float64)
    adv = torch.randn(3, generator=gen, dtype=torch.float64)
    ent = torch.rand(3, 8, generator=gen, dtype=torch.float64)
    mask = torch.ones(3, 8)
    mask[0, 5:] = 0
    cast = [x.to(dtype) for x in (logps64, old64, ref64, adv, ent)]
    logps = cast[0].clone().requires_grad_()
    out = compute_objective(logps, *cast[1:], mask, ObjectiveConfig())
    out.loss.backward()
    assert out.loss.dtype == torch.promote_types(dtype, torch.float32)
    assert logps.grad.dtype == dtype and out.reasoning_mask.dtype == torch.bool
    # the same objective evaluated in float64 on the same (rounded) values
    exact = [x.to(dtype).double() for x in (logps64, old64, ref64, adv, ent)]
    exact_logps = exact[0].clone().requires_grad_()
    ref_out = compute_objective(exact_logps, *exact[1:], mask, ObjectiveConfig())
    ref_out.loss.backward()
    assert torch.equal(out.reasoning_mask, ref_out.reasoning_mask)
    assert out.loss.item() == pytest.approx(ref_out.loss.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(logps.grad.double(), exact_logps.grad.to(dtype).double(), rtol=1e-2, atol=1e-5)


def test_input_shape_errors():
    x = torch.zeros(2, 3)
    cfg = ObjectiveConfig(**NO_KL)
    with pytest.raises(ValueError, match="mask shape"):
        compute_objective(x, None, None, torch.zeros(2), x, torch.ones(2, 4), cfg)
    with pytest.raises(ValueError, match="advantages must be"):
        compute_objective(x, None, None, torch.zeros(3), x, torch.ones(2, 3), cfg)
    with pytest.raises(ValueError, match="logps must be"):
        compute_objective(torch.zeros(6), None, None, torch.zeros(6), torch.zeros(6), torch.ones(6), cfg)


# --- presets ----------------------------------------------------------------------------------------------------


def test_presets_and_their_values():
    assert list(ObjectiveConfig.PRESETS) == ["archer", "grpo", "dapo", "entropy_mask"]
    assert ObjectiveConfig.preset("archer") == ObjectiveConfig()
    dapo = ObjectiveConfig.preset("dapo")
    assert dapo.knowledge_bounds == dapo.reasoning_bounds == pytest.approx((0.8, 1.28))
    assert (dapo.knowledge_kl, dapo.reasoning_kl, dapo.dual_clip, dapo.aggregation) == (0.0, 0.0, None, "token-mean")
    assert ObjectiveConfig.preset("dapo", entropy_quantile=0.9).entropy_quantile == 0.9


def _preset(name, ratios, advantages, entropies, mask=None, d=None):
    cfg = ObjectiveConfig.preset(name).to_dict()
    return objective(ratios, advantages, entropies, mask=mask, d=d, **cfg)


def test_preset_grpo_one_clip_range_and_one_kl_over_all_tokens():
    # the reasoning token (last, r = 1.3) is clipped at 1.2 like the others; KL is beta * mean over all tokens
    d = [[LN2, 0.0, 0.0, 0.0, LN3]]
    out, grad = _preset("grpo", [[1.3, 1.0, 1.0, 1.0, 1.3]], [1.0], ENT5, d=d)
    expected = -(1.2 + 1 + 1 + 1 + 1.2) / 5 + 0.001 * (K_KNOW + K_REAS) / 5
    assert out.loss.item() == pytest.approx(expected)
    # both r = 1.3 tokens are clipped: only the KL gradient -beta (e^d - 1) / 5 is left on them
    assert grad[0, 0].item() == pytest.approx(-0.001 * 1 / 5) and grad[0, 4].item() == pytest.approx(-0.001 * 2 / 5)


def test_preset_dapo_clip_higher_token_mean_no_kl():
    ratios = [[1.3, 0.7, 1.0, 1.0], [1.3, 0.7, 1.0, 1.0]]
    mask = [[1, 1, 0, 0], [1, 1, 1, 1]]
    out, _ = _preset("dapo", ratios, [1.0, -1.0], [[0.0, 0.0, 0.0, 1.0]] * 2, mask=mask)
    # A = 1: -[min(1.3, 1.28), 0.7]; A = -1: [1.3, max(0.7, 0.8), 1, 1]; one mean over 6 tokens
    assert out.loss.item() == pytest.approx((-(1.28 + 0.7) + (1.3 + 0.8 + 1.0 + 1.0)) / 6)
    assert "knowledge/kl" not in out.metrics


def test_preset_entropy_mask_gradient_through_batch_top_tokens_only():
    ratios = [[1.0, 1.0, 1.0, 1.0], [1.0, 1.1, 1.0, 1.0]]
    entropies = [[0.1, 0.2, 0.0, 0.0], [0.9, 0.3, 0.4, 0.8]]
    mask = [[1, 1, 0, 0], [1, 1, 1, 1]]
    out, grad = _preset("entropy_mask", ratios, [2.0, 1.0], entropies, mask=mask)
    # pooled [0.1, 0.2, 0.3, 0.4, 0.8, 0.9]: rank 4 -> tau = 0.8; only 0.9 (row 2, token 1) is above it
    assert out.reasoning_mask.tolist() == [[False] * 4, [True, False, False, False]]
    # pg only on that token (r = 1, A = 1), divided by all 6 valid tokens
    assert out.loss.item() == pytest.approx(-1.0 / 6)
    expected_grad = torch.zeros(2, 4, dtype=torch.float64)
    expected_grad[1, 0] = -1.0 / 6
    torch.testing.assert_close(grad, expected_grad)


# --- configuration errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"entropy_quantile": 1.0}, "entropy_quantile must be in \\(0, 1\\)"),
        ({"quantile_scope": "global"}, "quantile_scope must be one of response, batch"),
        ({"kl_normalization": "token"}, "kl_normalization must be one of class, response"),
        ({"aggregation": "sum"}, "aggregation must be one of seq-mean-token-mean, token-mean"),
        ({"knowledge_clip": -0.1}, "knowledge_clip must be >= 0"),
        ({"reasoning_clip": (0.2, 0.3, 0.4)}, "reasoning_clip must be a number or a \\[low, high\\] pair"),
        ({"knowledge_kl": -1.0}, "knowledge_kl must be >= 0"),
        ({"dual_clip": 1.0}, "dual_clip must be > 1 or None"),
        ({"aggregation": "seq-mean-token-sum-norm"}, "needs objective.max_completion_length"),
        ({"max_completion_length": 0}, "max_completion_length must be a positive integer"),
        ({"pg_on_reasoning_only": "yes"}, "pg_on_reasoning_only must be true or false"),
        ({"entropy_quantile": "0.8"}, "entropy_quantile must be a number"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        ObjectiveConfig(**kwargs)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)


def test_preset_errors_are_one_line_value_errors():
    with pytest.raises(ValueError, match="unknown objective preset 'ppo'; valid: archer, grpo, dapo, entropy_mask"):
        ObjectiveConfig.preset("ppo")
    with pytest.raises(ValueError, match="unknown objective field 'beta'; valid: entropy_quantile"):
        ObjectiveConfig.preset("archer", beta=0.1)


def test_to_dict_round_trips_and_accepts_lists():
    cfg = ObjectiveConfig.preset("entropy_mask")
    as_dict = cfg.to_dict()
    assert as_dict["knowledge_clip"] == [0.2, 0.28]
    assert ObjectiveConfig(**as_dict) == cfg
    assert ObjectiveConfig(knowledge_clip=0.3).knowledge_clip == (0.3, 0.3)


def test_without_gradient_the_loss_and_metrics_are_the_same():
    args = ([[1.3, 0.7, 1.0, 1.1, 1.3]], [1.0], ENT5)
    with_grad, _ = objective(*args, d=KL_D, knowledge_kl=0.1)
    logps = t(args[0]).log()
    with torch.no_grad():
        out = compute_objective(logps, torch.zeros_like(logps), logps + t(KL_D), t(args[1]), t(args[2]),
                                torch.ones_like(logps), ObjectiveConfig(knowledge_kl=0.1))  # fmt: skip
    assert not out.loss.requires_grad
    assert out.loss.item() == pytest.approx(with_grad.loss.item())
    assert out.metrics == with_grad.metrics


@pytest.mark.parametrize(("rows", "length"), [(0, 5), (3, 0)])
@pytest.mark.parametrize("scope", ["response", "batch"])
def test_empty_micro_batch_shapes(rows, length, scope):
    logps = torch.zeros(rows, length, requires_grad=True)
    zeros = torch.zeros(rows, length)
    out = compute_objective(
        logps, None, None, torch.zeros(rows), zeros, zeros, ObjectiveConfig(quantile_scope=scope, **NO_KL)
    )
    out.loss.backward()
    assert out.loss.item() == 0.0 and logps.grad.shape == (rows, length)
    assert all(v == 0.0 for v in out.metrics.values())


def test_token_weights_scale_the_policy_gradient_term_only():
    torch.manual_seed(0)
    logps = (torch.randn(3, 5) * 0.1 - 1).requires_grad_()
    old = logps.detach() + 0.05 * torch.randn(3, 5)
    ref = logps.detach() + 0.05 * torch.randn(3, 5)
    adv, ent = torch.tensor([1.0, -0.5, 0.3]), torch.rand(3, 5)
    mask = torch.ones(3, 5)
    mask[2, 3:] = 0
    archer, no_kl = ObjectiveConfig.preset("archer"), ObjectiveConfig.preset("archer", knowledge_kl=0.0)
    base = compute_objective(logps, old, None, adv, ent, mask, no_kl).loss
    doubled = compute_objective(logps, old, None, adv, ent, mask, no_kl, token_weights=torch.full((3, 5), 2.0)).loss
    assert torch.allclose(doubled, 2 * base)

    weights = torch.ones(3, 5)
    weights[0, 1] = 0.0  # this token's policy-gradient term is switched off
    weights[2, 4] = float("nan")  # unscored padding: ignored
    out = compute_objective(logps, old, None, adv, ent, mask, no_kl, token_weights=weights)
    out.loss.backward()
    assert torch.isfinite(out.loss) and logps.grad[0, 1] == 0 and logps.grad[0, 0] != 0

    weighted = compute_objective(logps, old, ref, adv, ent, mask, archer, token_weights=weights).metrics
    plain = compute_objective(logps, old, ref, adv, ent, mask, archer).metrics
    assert weighted["knowledge/kl"] == plain["knowledge/kl"] and weighted["loss/kl"] == plain["loss/kl"]

    logps.grad = None  # sequence-level weights (B, 1) broadcast over the tokens
    per_seq = torch.tensor([[1.0], [0.0], [1.0]])
    compute_objective(logps, old, None, adv, ent, mask, no_kl, token_weights=per_seq).loss.backward()
    assert torch.all(logps.grad[1] == 0) and torch.any(logps.grad[0] != 0)
