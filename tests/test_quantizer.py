"""The PyTorch binary quantizer against the NumPy reference, plus its own properties (docs/method.md §1.1)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minibigr import quantizer as mq
from reference import quantizer as rq

SETTINGS = settings(deadline=None, max_examples=100)
seeds = st.integers(0, 2**32 - 1)


def probabilities(rng, shape):
    """Probabilities with some exact 0, 1/2 and 1 among them (the edges of the comparisons)."""
    p = rng.random(shape)
    edges = rng.random(shape) < 0.1
    p[edges] = rng.choice([0.0, 0.5, 1.0], size=int(edges.sum()))
    return p


@SETTINGS
@given(seed=seeds, B=st.integers(1, 3), C=st.integers(1, 8), K=st.integers(1, 32), D=st.integers(1, 16),
       h=st.integers(1, 5), w=st.integers(1, 5), scale=st.sampled_from([0.1, 1.0, 30.0]))
def test_module_forward_matches_reference(seed, B, C, K, D, h, w, scale):
    torch.manual_seed(seed)
    module = mq.BinaryQuantizer(C, K, D).double()
    feats = torch.randn(B, C, h, w, dtype=torch.float64) * scale
    weight, bias = module.proj[0].weight.detach().numpy(), module.proj[0].bias.detach().numpy()
    embed = module.embed.weight.detach().numpy()
    for deterministic in (False, True):
        q, z, p, reg = module(feats, deterministic=deterministic, generator=torch.Generator().manual_seed(seed))
        # the module draws torch.rand(p.shape) from its generator: the same uniforms, made explicit
        u = torch.rand(p.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
        q_r, z_r, p_r, reg_r = rq.forward(feats.numpy(), weight, bias, embed, uniform=u,
                                          deterministic=deterministic)
        np.testing.assert_allclose(p.detach().numpy(), p_r, rtol=1e-5, atol=0)
        np.testing.assert_array_equal(z.numpy(), z_r)
        np.testing.assert_allclose(q.detach().numpy(), q_r, rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(reg.item(), reg_r, rtol=1e-5, atol=0)


@SETTINGS
@given(seed=seeds, shape=st.lists(st.integers(1, 6), min_size=1, max_size=4))
def test_bits_match_reference(seed, shape):
    rng = np.random.default_rng(seed)
    p = probabilities(rng, shape)
    u = rng.random(shape)
    u.flat[::3] = p.flat[::3]  # u == p is a 0 bit in both: z = [u < p]
    p_t, u_t = torch.from_numpy(p), torch.from_numpy(u)
    np.testing.assert_array_equal(mq.bernoulli_bits(p_t, uniform=u_t).numpy(), rq.bernoulli_bits(p, u))
    np.testing.assert_array_equal(mq.threshold_bits(p_t).numpy(), rq.threshold_bits(p))
    for deterministic in (False, True):
        np.testing.assert_array_equal(mq.quantize(p_t, deterministic, uniform=u_t).numpy(),
                                      rq.quantize(p, deterministic, uniform=u))


@SETTINGS
@given(seed=seeds, n=st.integers(1, 64), scale=st.sampled_from([1.0, 10.0, 100.0]))
def test_sigmoid_matches_torch(seed, n, scale):
    x = np.random.default_rng(seed).normal(size=n) * scale
    np.testing.assert_allclose(rq.sigmoid(x), torch.sigmoid(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=0)


@SETTINGS
@given(seed=seeds, B=st.integers(1, 3), K=st.integers(1, 32), D=st.integers(1, 16), h=st.integers(1, 4),
       w=st.integers(1, 4))
def test_codes_and_regulariser_match_reference(seed, B, K, D, h, w):
    rng = np.random.default_rng(seed)
    p = probabilities(rng, (B, K, h, w))
    z = rq.bernoulli_bits(p, rng.random(p.shape))
    embed = rng.normal(size=(K, D))
    z_st = mq.straight_through(torch.from_numpy(z), torch.from_numpy(p)).numpy()
    np.testing.assert_array_equal(z_st, rq.straight_through(z, p))
    np.testing.assert_allclose(mq.bits_to_codes(torch.from_numpy(z_st), torch.from_numpy(embed)).numpy(),
                               rq.bits_to_codes(z_st, embed), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(mq.code_regularizer(torch.from_numpy(p)).item(), rq.code_regularizer(p),
                               rtol=1e-5, atol=0)


@SETTINGS
@given(seed=seeds, n=st.integers(1, 50), K=st.integers(1, 62))
def test_pack_unpack_match_reference_and_round_trip(seed, n, K):
    bits = (np.random.default_rng(seed).random((n, K)) < 0.5).astype(np.float64)
    ids = mq.pack_bits(torch.from_numpy(bits))
    ids_r = rq.pack_bits(bits)
    np.testing.assert_array_equal(ids.numpy(), ids_r)
    np.testing.assert_array_equal(mq.unpack_bits(ids, K).numpy(), bits)
    np.testing.assert_array_equal(rq.unpack_bits(ids_r, K), bits)
    # distinct codes get distinct ids
    assert len(np.unique(ids_r)) == len(np.unique(bits, axis=0))


def test_pack_takes_up_to_62_bits():
    ones = np.ones((1, 62))
    assert mq.pack_bits(torch.from_numpy(ones)).item() == rq.pack_bits(ones)[0] == 2**62 - 1
    with pytest.raises(ValueError, match="62"):
        mq.pack_bits(torch.zeros(2, 63))
    with pytest.raises(ValueError, match="62"):
        rq.pack_bits(np.zeros((2, 63)))


@SETTINGS
@given(seed=seeds, K=st.integers(1, 32), D=st.integers(1, 8))
def test_straight_through_gradient_is_the_gradient_through_p(seed, K, D):
    """d/dlogits of a loss on z_st equals d/dlogits of the same loss on p; the value stays z."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, K, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    embed = torch.randn(K, D, generator=g, dtype=torch.float64)
    target = torch.randn(2, D, 3, 3, generator=g, dtype=torch.float64)
    z = mq.bernoulli_bits(torch.sigmoid(logits).detach(), generator=g)
    z_st = mq.straight_through(z, torch.sigmoid(logits))
    torch.testing.assert_close(z_st.detach(), z, rtol=0, atol=1e-15)  # z + p - p: z up to rounding
    (grad_st,) = torch.autograd.grad((mq.bits_to_codes(z_st, embed) * target).sum(), logits)
    (grad_p,) = torch.autograd.grad((mq.bits_to_codes(torch.sigmoid(logits), embed) * target).sum(), logits)
    assert grad_p.abs().sum() > 0
    torch.testing.assert_close(grad_st, grad_p, rtol=1e-12, atol=0)
