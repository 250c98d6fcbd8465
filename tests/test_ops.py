"""archer.ops: the masked quantile against torch.nanquantile, the chunked log-prob/entropy op against the naive one."""

import functools

import pytest
import torch

from archer import ops
from archer.ops import _order_statistics, masked_quantile, token_logps_and_entropy


def _nanquantile(values: torch.Tensor, valid: torch.Tensor, q: float) -> torch.Tensor:
    return torch.nanquantile(values.masked_fill(~valid, torch.nan), q, dim=-1)


@pytest.fixture(params=["per-row", "padded", "padded-kthvalue"])
def selection(request, monkeypatch):
    """Run a test through every selection path of masked_quantile (kthvalue is the path off CPU)."""
    monkeypatch.setattr(ops, "_ROW_LOOP_MIN_LENGTH", 0 if request.param == "per-row" else 10**9)
    if request.param == "padded-kthvalue":
        monkeypatch.setattr(ops, "_order_statistics", functools.partial(ops._order_statistics, use_numpy=False))
    return request.param


@pytest.mark.parametrize("seed", range(40))
def test_masked_quantile_equals_nanquantile(seed, selection):
    gen = torch.Generator().manual_seed(seed)
    rows, length = int(torch.randint(1, 7, (1,), generator=gen)), int(torch.randint(1, 50, (1,), generator=gen))
    if seed % 2:  # many ties
        values = torch.randint(0, 4, (rows, length), generator=gen).float() / 3
    else:
        values = torch.rand(rows, length, generator=gen)
    valid = torch.rand(rows, length, generator=gen) < 0.7
    valid[0] = False  # an empty row
    if rows > 1:
        valid[1] = False
        valid[1, -1] = True  # a one-entry row
    q = [0.8, 0.5, 0.0, 1.0, float(torch.rand(1, generator=gen))][seed % 5]
    expected = _nanquantile(values, valid, q)
    got = masked_quantile(values, valid, q)
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got[~got.isnan()], expected[~expected.isnan()])


def test_masked_quantile_interpolates_between_order_statistics(selection):
    values = torch.tensor([[0.5, 0.1, 0.4, 0.2, 0.3, 7.0]])
    valid = torch.tensor([[True, True, True, True, True, False]])
    # rank 0.8 * (5 - 1) = 3.2: 0.4 + 0.2 * (0.5 - 0.4)
    assert masked_quantile(values, valid, 0.8).item() == pytest.approx(0.42)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_masked_quantile_dtypes(dtype, selection):
    gen = torch.Generator().manual_seed(0)
    values = torch.rand(4, 33, generator=gen).to(dtype)
    valid = torch.rand(4, 33, generator=gen) < 0.8
    got = masked_quantile(values, valid, 0.8)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(got, _nanquantile(values.to(got.dtype), valid, 0.8))


def test_masked_quantile_accepts_integer_and_float_masks(selection):
    gen = torch.Generator().manual_seed(1)
    values, valid = torch.rand(3, 20, generator=gen), torch.rand(3, 20, generator=gen) < 0.5
    expected = masked_quantile(values, valid, 0.8)
    assert torch.equal(masked_quantile(values, valid.long(), 0.8), expected)
    assert torch.equal(masked_quantile(values, valid.float(), 0.8), expected)


def test_order_statistics_numpy_and_torch_paths_agree():
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 10, (5, 40), generator=gen).float()
    expected = x.sort(dim=-1).values
    for k in (0, 17, 38, 39):
        for use_numpy in (True, False):
            lo, hi = _order_statistics(x, k, use_numpy=use_numpy)
            assert torch.equal(lo, expected[:, k])
            assert torch.equal(hi, expected[:, min(k + 1, 39)])


def test_masked_quantile_rejects_q_outside_unit_interval():
    with pytest.raises(ValueError, match="q must be in"):
        masked_quantile(torch.rand(2, 3), torch.ones(2, 3, dtype=torch.bool), 1.5)


def _naive(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    logp_all = torch.log_softmax(logits.double() / temperature, dim=-1)
    logps = logp_all.gather(-1, ids[..., None]).squeeze(-1)
    return logps, -(logp_all.exp() * logp_all).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", [1, 3, None, 1000])
def test_token_logps_and_entropy_match_naive_values_and_gradient(temperature, chunk_size):
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(2, 5, 11, generator=gen, dtype=torch.float64)).requires_grad_()
    ids = torch.randint(0, 11, (2, 5), generator=gen)
    upstream = torch.randn(2, 5, generator=gen, dtype=torch.float64)

    logps, entropy = token_logps_and_entropy(logits, ids, temperature=temperature, chunk_size=chunk_size)
    (grad,) = torch.autograd.grad((logps * upstream).sum(), logits)
    ref_logps, ref_entropy = _naive(logits, ids, temperature)
    (ref_grad,) = torch.autograd.grad((ref_logps * upstream).sum(), logits)

    assert logps.dtype == torch.float64 and logps.shape == (2, 5)
    torch.testing.assert_close(logps, ref_logps, rtol=0, atol=1e-12)
    torch.testing.assert_close(entropy, ref_entropy, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)
    assert not entropy.requires_grad


def test_token_logps_and_entropy_float32_and_bfloat16():
    gen = torch.Generator().manual_seed(3)
    logits32 = 4 * torch.randn(3, 7, 50, generator=gen)
    ids = torch.randint(0, 50, (3, 7), generator=gen)
    ref_logps, ref_entropy = _naive(logits32, ids, 1.0)
    logps, entropy = token_logps_and_entropy(logits32, ids, chunk_size=4)
    torch.testing.assert_close(logps.double(), ref_logps, rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy.double(), ref_entropy, rtol=0, atol=1e-5)

    logits16 = logits32.bfloat16().requires_grad_()
    logps16, entropy16 = token_logps_and_entropy(logits16, ids, chunk_size=4)
    assert logps16.dtype == torch.float32  # accumulated in float32
    ref16_logps, ref16_entropy = _naive(logits16.detach().float(), ids, 1.0)  # same bf16 values, exact maths
    torch.testing.assert_close(logps16.double(), ref16_logps, rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy16.double(), ref16_entropy, rtol=0, atol=1e-5)
    logps16.sum().backward()
    assert logits16.grad.dtype == torch.bfloat16 and logits16.grad.shape == logits16.shape


def test_token_logps_and_entropy_without_grad_and_input_untouched():
    logits = torch.randn(4, 9)
    before = logits.clone()
    logps, entropy = token_logps_and_entropy(logits, torch.arange(4), chunk_size=2)
    assert not logps.requires_grad and torch.equal(logits, before)
    ref_logps, ref_entropy = _naive(logits, torch.arange(4), 1.0)
    torch.testing.assert_close(logps.double(), ref_logps, rtol=0, atol=1e-6)


def test_token_logps_and_entropy_errors():
    with pytest.raises(ValueError, match="temperature"):
        token_logps_and_entropy(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="token_ids shape"):
        token_logps_and_entropy(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        token_logps_and_entropy(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), chunk_size=0)
