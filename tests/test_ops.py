"""archer.ops: the chunked log-prob/entropy op against the naive one."""

import pytest
import torch

from archer.ops import token_logps_and_entropy


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
