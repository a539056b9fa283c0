"""The PyTorch entropy-ordered sampler against the NumPy + Numba reference, plus its properties
(docs/method.md §5).

Both loops get the same predictor (a fixed NumPy function of the tokens, the mask and the step),
the same Gumbel draws (I, B, N) and the same uniforms (I, B, N, K).
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minibigr import sampler as ms
from reference import quantizer as rq
from reference import sampler as rs

SETTINGS = settings(deadline=None, max_examples=80)
seeds = st.integers(0, 2**32 - 1)
orders = st.sampled_from(ms.ORDERS)
gumbel_schedules = st.sampled_from(ms.GUMBEL_SCHEDULES)
cfg_schedules = st.sampled_from(ms.CFG_SCHEDULES)


def probabilities(rng, shape, tied):
    """p (B, N, K): random, or (tied) every token a copy of one of three K-vectors, so that scores tie exactly."""
    if not tied:
        return rq.sigmoid(rng.normal(size=shape) * 3)
    B, N, K = shape
    pool = rq.sigmoid(rng.normal(size=(3, K)) * 3)
    return pool[rng.integers(0, 3, (B, N))]


def make_predictor(rng, shape, tied, cfg, cfg_schedule, num_iter, cfg_scale):
    """A fixed predictor: per-token logits plus a per-row context from the revealed tokens and the step,
    conditional and unconditional halves mixed with the path's own cfg_scale."""
    B, N, K = shape
    base = np.log(probabilities(rng, shape, tied))
    mix = rng.normal(size=(K, K))
    null_shift = rng.normal(size=K)

    def predict(tokens, mask, i):
        context = tokens.sum(1) / N @ mix + 0.1 * i + mask.mean(1)[:, None]  # (B, K), the same for a whole row
        cond = base + context[:, None, :]
        uncond = cond + null_shift
        return rq.sigmoid(uncond + cfg_scale(cfg, cfg_schedule, i, num_iter) * (cond - uncond))

    return predict


def torch_predictor(predict):
    """The NumPy predictor for the PyTorch loop; where the loop says it uses only the chosen tokens' p (a blind
    order), every other p is NaN, so that reading one would change the tokens."""

    def torch_predict(tokens, mask, i, chosen):
        p = torch.from_numpy(predict(tokens.numpy(), mask.numpy(), i))
        if chosen is not None:
            assert not (chosen & ~mask).any()
            p = p.masked_fill(~chosen[..., None], float("nan"))
        return p

    return torch_predict


# ----------------------------------------------------------------------------------------------
# Schedules and scores
# ----------------------------------------------------------------------------------------------
@SETTINGS
@given(seed=seeds, B=st.integers(1, 8), num_iter=st.integers(1, 64), schedule=st.sampled_from(ms.MASK_SCHEDULES))
def test_mask_schedule_matches_reference(seed, B, num_iter, schedule):
    n = np.random.default_rng(seed).integers(0, 4097, B)
    ratio = {"cosine": lambda i: math.cos(math.pi / 2 * i / num_iter), "linear": lambda i: 1 - i / num_iter}[schedule]
    previous = n
    for i in range(num_iter + 1):
        ours = ms.masked_after(torch.from_numpy(n), i, num_iter, schedule).numpy()
        np.testing.assert_array_equal(ours, rs.masked_after(n, i, num_iter, schedule))
        if i < num_iter:
            np.testing.assert_array_equal(ours, [math.floor(v * ratio(i)) for v in n])
        assert np.all(ours <= previous)
        previous = ours
    assert np.all(previous == 0)  # none left masked, and never a negative count


@SETTINGS
@given(g=st.floats(0.0, 5.0), gumbel_schedule=gumbel_schedules, cfg_schedule=cfg_schedules,
       num_iter=st.integers(1, 64), data=st.data())
def test_gumbel_and_cfg_schedules_match_reference(g, gumbel_schedule, cfg_schedule, num_iter, data):
    i = data.draw(st.integers(0, num_iter))
    np.testing.assert_allclose(ms.gumbel_scale(g, gumbel_schedule, i, num_iter),
                               rs.gumbel_scale(g, gumbel_schedule, i, num_iter), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(ms.cfg_scale(g, cfg_schedule, i, num_iter),
                               rs.cfg_scale(g, cfg_schedule, i, num_iter), rtol=1e-5, atol=1e-12)


def test_unknown_schedules_and_orders_raise():
    for lib in (ms, rs):
        with pytest.raises(ValueError, match="gumbel schedule"):
            lib.gumbel_scale(1.0, "sideways", 1, 10)
        with pytest.raises(ValueError, match="cfg schedule"):
            lib.cfg_scale(1.0, "sideways", 1, 10)
        with pytest.raises(ValueError, match="mask schedule"):
            lib.masked_after(np.array([4]) if lib is rs else torch.tensor([4]), 1, 10, "sideways")
        with pytest.raises(ValueError, match="unknown order"):
            lib.perturbed_scores(np.full((1, 2, 3), 0.5), "spiral", 0.0, np.zeros((1, 2)))


@SETTINGS
@given(seed=seeds, B=st.integers(1, 4), N=st.integers(1, 64), K=st.integers(1, 32), order=orders,
       gumbel=st.sampled_from([0.0, 0.17, 1.0]), tied=st.booleans())
def test_scores_match_reference(seed, B, N, K, order, gumbel, tied):
    rng = np.random.default_rng(seed)
    p = probabilities(rng, (B, N, K), tied)
    p[..., 0] = rng.choice([0.0, 0.5, 1.0])                  # x log x at its edges
    G = rng.gumbel(size=(B, N))
    p_t = torch.from_numpy(p)
    # H is flat at the coin flip (H(1/2 - d) = ln 2 - 2 d^2 + ...), so one ulp of the mean entropy moves its inverse
    # by about sqrt(eps) there: the entropy score is compared to 1e-7 absolute
    np.testing.assert_allclose(ms.entropy_certainty(p_t).numpy(), rs.entropy_certainty(p), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ms.confidence(p_t).numpy(), rs.confidence(p), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(ms.perturbed_scores(p_t, order, gumbel, torch.from_numpy(G)).numpy(),
                               rs.perturbed_scores(p, order, gumbel, G), rtol=1e-5, atol=1e-7)
    # both certainties live on one scale: 1 for certain bits, 0 for coin flips, in [0, 1] between
    certain = np.where(rng.random((B, N, K)) < 0.5, 0.0, 1.0)
    for lib, x in ((rs, p), (ms, p_t)):
        for score in (lib.entropy_certainty, lib.confidence):
            assert np.all(np.asarray(score(x)) >= -1e-12) and np.all(np.asarray(score(x)) <= 1 + 1e-12)
    assert np.all(rs.entropy_certainty(certain) == 1) and np.all(rs.confidence(certain) == 1)
    np.testing.assert_allclose(rs.entropy_certainty(np.full((B, N, K), 0.5)), 0.0, atol=1e-7)
    assert np.all(rs.confidence(np.full((B, N, K), 0.5)) == 0)
    # the entropy score is the confidence of one bit of the token's mean bit entropy: equal to the confidence
    # when all K bits are equally certain (q or 1 - q each), and falling as the mean bit entropy rises
    q = rng.uniform(0, 0.5, (B, N, 1))
    same = np.where(rng.random((B, N, K)) < 0.5, q, 1 - q)
    np.testing.assert_allclose(rs.entropy_certainty(same), rs.confidence(same), rtol=0, atol=1e-7)
    np.testing.assert_allclose(ms.entropy_certainty(torch.from_numpy(same)).numpy(), rs.confidence(same), atol=1e-7)
    mean_entropy = rs.bit_entropy(p).mean(-1).ravel()
    by_entropy = rs.entropy_certainty(p).ravel()[np.argsort(mean_entropy, kind="stable")]
    assert np.all(np.diff(by_entropy) <= 1e-12)


@SETTINGS
@given(q=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=64))
def test_inverse_bit_entropy_inverts_the_entropy_on_the_lower_half(q):
    q = np.array(q)
    for lib, x in ((rs, q), (ms, torch.from_numpy(q))):
        back = np.asarray(lib.inverse_bit_entropy(lib.bit_entropy(x)))
        np.testing.assert_allclose(back, q, atol=1e-7)                 # sqrt(eps) where H is flat, at q = 1/2
        np.testing.assert_allclose(np.asarray(lib.bit_entropy(torch.from_numpy(back) if lib is ms else back)),
                                   np.asarray(lib.bit_entropy(x)), atol=1e-14)
    # float32, as the sampler runs it: the score to float32's own resolution away from the coin flip
    q32 = torch.from_numpy(q).float()
    np.testing.assert_allclose(ms.inverse_bit_entropy(ms.bit_entropy(q32)).numpy(), q, atol=1e-3)


@settings(deadline=None, max_examples=200)
@given(seed=seeds, B=st.integers(1, 6), N=st.integers(1, 64), levels=st.sampled_from([2, 4, 1000]))
def test_selection_matches_reference(seed, B, N, levels):
    """Few score levels force ties: both must break them towards the lower index."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, (B, N)).astype(np.float64)
    mask = rng.random((B, N)) < rng.random()
    n_reveal = rng.integers(0, mask.sum(1) + 2)
    chosen = rs.select(scores, mask, n_reveal)
    ours = ms.select(torch.from_numpy(scores), torch.from_numpy(mask), torch.from_numpy(n_reveal)).numpy()
    np.testing.assert_array_equal(ours, chosen)
    for row in range(B):
        assert chosen[row].sum() == min(n_reveal[row], mask[row].sum()) and not np.any(chosen[row] & ~mask[row])
        # exactly the first n_reveal masked tokens of a stable descending sort
        masked = np.flatnonzero(mask[row])
        first = masked[np.argsort(-scores[row, masked], kind="stable")[:n_reveal[row]]]
        np.testing.assert_array_equal(np.flatnonzero(chosen[row]), np.sort(first))


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------
@settings(deadline=None, max_examples=300)
@given(seed=seeds, B=st.integers(1, 3), N=st.integers(1, 48), K=st.integers(1, 32), num_iter=st.integers(1, 12),
       order=orders, gumbel=st.sampled_from([0.0, 0.17, 2.0]), gumbel_schedule=gumbel_schedules,
       cfg=st.sampled_from([1.0, 2.5]), cfg_schedule=cfg_schedules, mask_schedule=st.sampled_from(ms.MASK_SCHEDULES),
       with_given=st.booleans(), deterministic=st.booleans(), tied=st.booleans())
def test_sampling_loop_matches_reference(seed, B, N, K, num_iter, order, gumbel, gumbel_schedule, cfg, cfg_schedule,
                                         mask_schedule, with_given, deterministic, tied):
    rng = np.random.default_rng(seed)
    predict_args = (rng, (B, N, K), tied, cfg, cfg_schedule, num_iter)
    state = rng.bit_generator.state
    predict_ref = make_predictor(*predict_args, rs.cfg_scale)
    rng.bit_generator.state = state
    predict_ours = torch_predictor(make_predictor(*predict_args, ms.cfg_scale))
    tokens = (rng.random((B, N, K)) < 0.5).astype(np.float64)
    given_mask = rng.random((B, N)) < 0.3 if with_given else None
    gumbels, uniforms = rng.gumbel(size=(num_iter, B, N)), rng.random((num_iter, B, N, K))
    given_ours = None if given_mask is None else torch.from_numpy(given_mask)
    settings = ms.SamplingConfig(num_iter=num_iter, order=order, gumbel=gumbel, gumbel_schedule=gumbel_schedule,
                                 deterministic=deterministic, mask_schedule=mask_schedule)
    reveal = ms.RevealOrder()
    ours = ms.sample_tokens(predict_ours, torch.from_numpy(tokens), given_ours, settings,
                            gumbels=torch.from_numpy(gumbels), uniforms=torch.from_numpy(uniforms), callback=reveal)
    revealed_at = reveal.revealed_at
    ref, revealed_at_ref = rs.sample_tokens(predict_ref, tokens, given_mask, num_iter, gumbels, uniforms,
                                            order=order, gumbel=gumbel, gumbel_schedule=gumbel_schedule,
                                            deterministic=deterministic, mask_schedule=mask_schedule)
    np.testing.assert_array_equal(ours.numpy(), ref)
    np.testing.assert_array_equal(revealed_at.numpy(), revealed_at_ref)


def run_loop(lib, p, given_mask, tokens, num_iter, rng, uniforms=None, **options):
    """Either loop with a predictor that always returns p; options (order, gumbel, ...) default as in the library."""
    B, N, K = p.shape
    gumbels = rng.gumbel(size=(num_iter, B, N))
    uniforms = rng.random((num_iter, B, N, K)) if uniforms is None else uniforms
    if lib is rs:
        return rs.sample_tokens(lambda *_: p, tokens, given_mask, num_iter, gumbels, uniforms, **options)
    reveal = ms.RevealOrder()
    settings = ms.SamplingConfig(num_iter=num_iter, **{"gumbel": 0.0, **options})     # the reference's defaults
    out = ms.sample_tokens(lambda *_: torch.from_numpy(p), torch.from_numpy(tokens), torch.from_numpy(given_mask),
                           settings, gumbels=torch.from_numpy(gumbels), uniforms=torch.from_numpy(uniforms),
                           callback=reveal)
    return out.numpy(), reveal.revealed_at.numpy()


@SETTINGS
@given(seed=seeds, B=st.integers(1, 3), N=st.integers(1, 64), K=st.integers(1, 16), num_iter=st.integers(1, 16),
       order=orders, gumbel=st.sampled_from([0.0, 0.5]), deterministic=st.booleans(), lib=st.sampled_from([ms, rs]))
def test_loop_reveals_everything_on_schedule_and_keeps_given_tokens(seed, B, N, K, num_iter, order, gumbel,
                                                                    deterministic, lib):
    rng = np.random.default_rng(seed)
    p = probabilities(rng, (B, N, K), tied=False)
    given_mask = rng.random((B, N)) < 0.3
    tokens = (rng.random((B, N, K)) < 0.5).astype(np.float64)
    options = dict(order=order, gumbel=gumbel, deterministic=deterministic)
    out, revealed_at = run_loop(lib, p, given_mask, tokens, num_iter, rng, **options)
    np.testing.assert_array_equal(out[given_mask], tokens[given_mask])
    assert np.all(revealed_at[given_mask] == 0) and np.all(revealed_at[~given_mask] >= 1)
    assert np.all(revealed_at <= num_iter) and set(np.unique(out)) <= {0.0, 1.0}
    if deterministic:
        np.testing.assert_array_equal(out[~given_mask], (p[~given_mask] > 0.5))
    else:  # bits = [u < p]: uniforms equal to p draw 0
        out, _ = run_loop(lib, p, given_mask, tokens, num_iter, rng, uniforms=np.stack([p] * num_iter), **options)
        assert not out[~given_mask].any()
    n = (~given_mask).sum(1)
    for i in range(1, num_iter + 1):
        expected = rs.masked_after(n, i - 1, num_iter) - rs.masked_after(n, i, num_iter)
        np.testing.assert_array_equal((revealed_at == i).sum(1), expected)


@SETTINGS
@given(seed=seeds, B=st.integers(1, 3), N=st.integers(2, 64), K=st.integers(1, 16), num_iter=st.integers(2, 16),
       lib=st.sampled_from([ms, rs]))
def test_entropy_order_reveals_lowest_entropy_first(seed, B, N, K, num_iter, lib):
    rng = np.random.default_rng(seed)
    p = probabilities(rng, (B, N, K), tied=False)
    given_mask = np.zeros((B, N), dtype=bool)
    _, revealed_at = run_loop(lib, p, given_mask, np.zeros((B, N, K)), num_iter, rng, order="entropy")  # no Gumbel
    H = rs.bit_entropy(p).mean(-1)
    for row in range(B):
        by_entropy = revealed_at[row][np.argsort(H[row])]
        assert np.all(np.diff(by_entropy) >= 0)


@SETTINGS
@given(seed=seeds, B=st.integers(1, 3), N=st.integers(2, 64), K=st.integers(1, 16), num_iter=st.integers(2, 16),
       order=st.sampled_from(["entropy", "confidence", "raster"]), lib=st.sampled_from([ms, rs]))
def test_equal_certainty_reveals_in_raster_order(seed, B, N, K, num_iter, order, lib):
    rng = np.random.default_rng(seed)
    p = np.broadcast_to(probabilities(rng, (1, 1, K), tied=False), (B, N, K)).copy()
    given_mask = np.zeros((B, N), dtype=bool)
    _, revealed_at = run_loop(lib, p, given_mask, np.zeros((B, N, K)), num_iter, rng, order=order, gumbel=0.0)
    assert np.all(np.diff(revealed_at, axis=1) >= 0)
