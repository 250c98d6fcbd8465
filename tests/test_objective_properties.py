"""Property tests of the Archer objective: it equals a literal transcription of docs/method.md#objective on random
inputs and configurations, and it is invariant to padding length and to row order."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from archer.objective import ObjectiveConfig, compute_objective


def reference_objective(logps, old_logps, ref_logps, advantages, entropies, mask, cfg):
    """docs/method.md#step-1 to #step-9 written out per response with plain autograd and torch.quantile; float64."""
    valid = mask.bool()
    rows = [i for i in range(logps.shape[0]) if valid[i].any()]
    if cfg.quantile_scope == "batch" and rows:
        batch_tau = torch.quantile(entropies[valid], cfg.entropy_quantile)
    per_row, terms = [], []
    for i in rows:
        v = valid[i]
        lp, ent, adv = logps[i][v], entropies[i][v], advantages[i]
        tau = torch.quantile(ent, cfg.entropy_quantile) if cfg.quantile_scope == "response" else batch_tau  # 2.
        reasoning = ent > tau  # 3.
        ratio = torch.exp(torch.clamp(lp - old_logps[i][v], -20, 20))  # 4.
        (k_lo, k_hi), (r_lo, r_hi) = cfg.knowledge_bounds, cfg.reasoning_bounds  # 5.
        lo = torch.where(reasoning, torch.tensor(r_lo, dtype=lp.dtype), k_lo)
        hi = torch.where(reasoning, torch.tensor(r_hi, dtype=lp.dtype), k_hi)
        pg = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, lo, hi))  # 6.
        if cfg.dual_clip is not None and adv < 0:
            pg = torch.minimum(pg, -adv * cfg.dual_clip)
        kl = torch.zeros_like(lp)
        if ref_logps is not None:  # 7.
            d = torch.clamp(ref_logps[i][v] - lp, -20, 20)
            kl = torch.clamp(torch.exp(d) - d - 1, -10, 10)
        if cfg.pg_on_reasoning_only:
            pg = pg * reasoning
        terms.append((pg, kl, reasoning, ratio, adv))
        n = len(lp)
        if cfg.aggregation != "token-mean":  # 8.
            norm = n if cfg.aggregation == "seq-mean-token-mean" else cfg.max_completion_length
            loss_i = pg.sum() / norm
            for members, beta in ((~reasoning, cfg.knowledge_kl), (reasoning, cfg.reasoning_kl)):
                if cfg.kl_normalization == "class":
                    loss_i = loss_i + (beta * kl[members].mean() if members.any() else 0.0)
                else:
                    loss_i = loss_i + beta * kl[members].sum() / norm
            per_row.append(loss_i)
    if not rows:
        loss = logps.sum() * 0
    elif cfg.aggregation != "token-mean":
        loss = torch.stack(per_row).mean()  # 9.
    else:
        pg, kl, reasoning = (torch.cat([t[j] for t in terms]) for j in range(3))
        loss = pg.sum() / len(pg)
        for members, beta in ((~reasoning, cfg.knowledge_kl), (reasoning, cfg.reasoning_kl)):
            if cfg.kl_normalization == "class":
                loss = loss + (beta * kl[members].mean() if members.any() else 0.0)
            else:
                loss = loss + beta * kl[members].sum() / len(pg)
    return loss, terms


def reference_metrics(terms, cfg):
    def frac(x):
        return float(x.detach().double().mean()) if len(x) else 0.0

    out = {}
    for name, pick in (("reasoning", lambda r: r), ("knowledge", lambda r: ~r)):
        ratio = torch.cat([t[3][pick(t[2])] for t in terms]) if terms else torch.zeros(0)
        kl = torch.cat([t[1][pick(t[2])] for t in terms]) if terms else torch.zeros(0)
        lows, highs = [], []
        for _, _, reasoning, r, adv in terms:
            lo, hi = cfg.reasoning_bounds if name == "reasoning" else cfg.knowledge_bounds
            sel = r[pick(reasoning)]
            lows.append((sel < lo) & (adv < 0))
            highs.append((sel > hi) & (adv > 0))
        out[f"{name}/clip_low_frac"] = frac(torch.cat(lows)) if terms else 0.0
        out[f"{name}/clip_high_frac"] = frac(torch.cat(highs)) if terms else 0.0
        out[f"{name}/ratio_mean"] = frac(ratio)
        out[f"{name}/kl"] = frac(kl)
    reasoning = torch.cat([t[2] for t in terms]) if terms else torch.zeros(0, dtype=torch.bool)
    out["reasoning/frac"] = frac(reasoning)
    dual = [(t[3] > cfg.dual_clip) & (t[4] < 0) for t in terms] if cfg.dual_clip is not None else []
    out["dual_clip_frac"] = frac(torch.cat(dual)) if dual else 0.0
    return out


configs = st.builds(
    ObjectiveConfig,
    entropy_quantile=st.sampled_from([0.5, 0.8, 0.9]),
    quantile_scope=st.sampled_from(["response", "batch"]),
    knowledge_clip=st.sampled_from([0.2, (0.2, 0.28)]),
    reasoning_clip=st.sampled_from([0.5, (0.3, 0.6), 0.2]),
    knowledge_kl=st.sampled_from([0.0, 0.001, 0.1]),
    reasoning_kl=st.sampled_from([0.0, 0.05]),
    dual_clip=st.sampled_from([None, 3.0, 10.0]),
    kl_normalization=st.sampled_from(["class", "response"]),
    aggregation=st.sampled_from(["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]),
    max_completion_length=st.just(9),
    pg_on_reasoning_only=st.booleans(),
)


@st.composite
def batches(draw, max_rows=4, max_len=7):
    rows, length = draw(st.integers(1, max_rows)), draw(st.integers(1, max_len))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    shape = (rows, length)
    logps = -3 * torch.rand(shape, generator=gen, dtype=torch.float64)
    log_ratio = torch.randn(shape, generator=gen, dtype=torch.float64) * draw(st.sampled_from([0.1, 0.5, 2.0]))
    if draw(st.booleans()):  # a few extreme ratios: the +-20 clamp and the dual clip
        log_ratio[0, 0] = draw(st.sampled_from([-25.0, 25.0, 3.0]))
    d = torch.randn(shape, generator=gen, dtype=torch.float64) * draw(st.sampled_from([0.1, 1.0, 3.0]))
    if draw(st.booleans()):  # ties in the entropies
        entropies = torch.randint(0, 3, shape, generator=gen).double()
    else:
        entropies = 2 * torch.rand(shape, generator=gen, dtype=torch.float64)
    if draw(st.booleans()):  # right padding, as the trainer pads
        lengths = torch.randint(0, length + 1, (rows,), generator=gen)
        mask = (torch.arange(length)[None] < lengths[:, None]).long()
    else:
        mask = (torch.rand(shape, generator=gen) < 0.7).long()
    advantages = torch.randint(-2, 3, (rows,), generator=gen).double() * draw(st.sampled_from([0.5, 1.0]))
    return {
        "logps": logps,
        "old_logps": logps - log_ratio,
        "ref_logps": logps + d,
        "advantages": advantages,
        "entropies": entropies,
        "mask": mask,
    }


def _run(batch, cfg):
    logps = batch["logps"].clone().requires_grad_()
    args = {k: v for k, v in batch.items() if k != "logps"}
    out = compute_objective(logps, cfg=cfg, **args)
    (grad,) = torch.autograd.grad(out.loss, logps)
    return out, grad


@settings(max_examples=300, deadline=None)
@given(batch=batches(), cfg=configs)
def test_equals_the_literal_transcription(batch, cfg):
    out, grad = _run(batch, cfg)
    logps = batch["logps"].clone().requires_grad_()
    args = {k: v for k, v in batch.items() if k != "logps"}
    expected, terms = reference_objective(logps, cfg=cfg, **args)
    (expected_grad,) = torch.autograd.grad(expected, logps, allow_unused=True)
    expected_grad = torch.zeros_like(logps) if expected_grad is None else expected_grad
    torch.testing.assert_close(out.loss, expected.detach(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)
    for metric, value in reference_metrics(terms, cfg).items():
        assert abs(out.metrics[metric] - value) <= 1e-9 * max(1.0, abs(value)), metric
    valid = batch["mask"].bool()
    assert not (out.reasoning_mask & ~valid).any()
    assert int(out.reasoning_mask.sum()) == sum(int(t[2].sum()) for t in terms)


@settings(max_examples=100, deadline=None)
@given(batch=batches(), cfg=configs, extra=st.integers(1, 5), seed=st.integers(0, 1000))
def test_invariant_to_padding_length(batch, cfg, extra, seed):
    gen = torch.Generator().manual_seed(seed)
    rows = batch["mask"].shape[0]
    padded = {}
    for key, value in batch.items():
        if key == "advantages":
            padded[key] = value
        elif key == "mask":
            padded[key] = torch.cat([value, torch.zeros(rows, extra, dtype=value.dtype)], dim=1)
        else:  # junk, finite values in the new padding
            padded[key] = torch.cat([value, 5 * torch.randn(rows, extra, generator=gen, dtype=value.dtype)], dim=1)
    out, grad = _run(batch, cfg)
    out_padded, grad_padded = _run(padded, cfg)
    torch.testing.assert_close(out_padded.loss, out.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_padded[:, : grad.shape[1]], grad, rtol=1e-12, atol=1e-12)
    assert not grad_padded[:, grad.shape[1] :].any()
    assert out_padded.metrics.keys() == out.metrics.keys()
    for key, value in out.metrics.items():
        assert abs(out_padded.metrics[key] - value) <= 1e-9 * max(1.0, abs(value)), key


@settings(max_examples=100, deadline=None)
@given(batch=batches(), cfg=configs, data=st.data())
def test_invariant_to_row_order(batch, cfg, data):
    rows = batch["mask"].shape[0]
    perm = torch.tensor(data.draw(st.permutations(range(rows))))
    out, grad = _run(batch, cfg)
    out_perm, grad_perm = _run({k: v[perm] for k, v in batch.items()}, cfg)
    torch.testing.assert_close(out_perm.loss, out.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_perm, grad[perm], rtol=1e-12, atol=1e-12)
    assert torch.equal(out_perm.reasoning_mask, out.reasoning_mask[perm])


@settings(max_examples=100, deadline=None)
@given(batch=batches(), aggregation=st.sampled_from(["seq-mean-token-mean", "token-mean"]), cfg=configs)
def test_ratio_one_without_kl_is_the_advantage_weighted_mean(batch, aggregation, cfg):
    cfg = ObjectiveConfig(**{**cfg.to_dict(), "aggregation": aggregation, "pg_on_reasoning_only": False})
    batch = {**batch, "old_logps": None, "ref_logps": None}
    cfg = ObjectiveConfig(**{**cfg.to_dict(), "knowledge_kl": 0.0, "reasoning_kl": 0.0})
    out, _ = _run(batch, cfg)
    lengths = batch["mask"].sum(-1).double()
    adv = batch["advantages"]
    if aggregation == "seq-mean-token-mean":
        nonempty = lengths > 0
        expected = -adv[nonempty].mean() if nonempty.any() else torch.zeros((), dtype=torch.float64)
    else:
        expected = -(adv * lengths).sum() / lengths.sum().clamp(min=1)
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=1e-12)
