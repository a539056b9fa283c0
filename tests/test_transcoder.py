"""The PyTorch Bernoulli transcoder against the NumPy + Numba reference, plus its properties (docs/method.md §4).

Equivalence tests run the PyTorch side in float64 and feed both sides the same explicit uniforms.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minibigr import transcoder as mt
from reference import transcoder as rt

seeds = st.integers(0, 2**32 - 1)
# Chunks and tiles of the chain give one piece's p0 bit for bit where the CPU's kernels do not depend on how many
# rows they get: so on AVX-512 CPUs (measured). On AVX2 CPUs (this project's AMD VMs) the matrix kernels change with
# the row count and a last float bit can move, so there the pieces are held to float rounding.
BIT_EXACT = torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def assert_same_p0(pieces: torch.Tensor, whole: torch.Tensor) -> None:
    if BIT_EXACT:
        assert torch.equal(pieces, whole)
    else:
        torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-6)
schedules = st.sampled_from(mt.SCHEDULES)
objectives = st.sampled_from(["flip", "x0"])


def close(actual, desired, atol=0.0):
    np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=atol)


@st.composite
def steps(draw, max_T=256):
    """(T, S) with 1 <= S <= T <= max_T; small values drawn often."""
    T = draw(st.integers(1, max_T))
    return T, draw(st.integers(1, T))


def random_transcoder(seed, K, cond_dim, width, blocks, T, schedule, objective, std):
    """A float64 BinaryTranscoder whose every parameter (the zero-initialised adaLN and output layers
    included) is N(0, std^2), and its denoiser's state dict as NumPy arrays for the reference."""
    torch.manual_seed(seed)
    model = mt.BinaryTranscoder(K, cond_dim, width, blocks, T=T, schedule=schedule, objective=objective).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model, {name: v.numpy() for name, v in model.denoiser.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# Schedules and the forward process
# ----------------------------------------------------------------------------------------------
@settings(deadline=None, max_examples=80)
@given(name=schedules, T=st.integers(1, 256))
def test_schedules_match_reference(name, T):
    for ours, ref in zip(mt.bernoulli_schedule(name, T), rt.bernoulli_schedule(name, T), strict=True):
        assert ours.dtype == torch.float64 and ours.shape == (T + 1,)
        close(ours.numpy(), ref)


@settings(deadline=None, max_examples=60)
@given(name=schedules, T=st.integers(1, 256))
def test_schedule_properties(name, T):
    k, b, beta = (x.numpy() for x in mt.bernoulli_schedule(name, T))
    assert k[0] == 1 and b[0] == 0 and beta[0] == 1
    assert np.all(np.diff(k) <= 0) and np.all((beta >= 0) & (beta <= 1))
    close(k, np.cumprod(beta))
    close(b[1:], beta[1:] * b[:-1] + (1 - beta[1:]) / 2, atol=1e-15)
    if name == "linear":
        assert k[-1] == 0.0 and b[-1] == 0.5
        assert np.all(np.diff(k) < 0)
        close(k, 1 - np.arange(T + 1) / T, atol=1e-15)


def test_unknown_schedule_and_bad_T_raise():
    for schedule in (mt.bernoulli_schedule, rt.bernoulli_schedule):
        with pytest.raises(ValueError, match="unknown schedule"):
            schedule("quadratic", 10)
        with pytest.raises(ValueError, match="T must be"):
            schedule("linear", 0)


@settings(deadline=None, max_examples=80)
@given(seed=seeds, name=schedules, T=st.integers(1, 256), M=st.integers(1, 32), K=st.integers(1, 32))
def test_q_sample_matches_reference(seed, name, T, M, K):
    rng = np.random.default_rng(seed)
    z0 = (rng.random((M, K)) < 0.5).astype(np.float64)
    t = rng.integers(0, T + 1, M)
    u = rng.random((M, K))
    k, b, _ = rt.bernoulli_schedule(name, T)
    k_t, b_t, _ = mt.bernoulli_schedule(name, T)
    z0_t, t_t, u_t = torch.from_numpy(z0), torch.from_numpy(t), torch.from_numpy(u)
    close(mt.q_probs(z0_t, t_t, k_t, b_t).numpy(), rt.q_probs(z0, t, k, b))
    np.testing.assert_array_equal(mt.q_sample(z0_t, t_t, k_t, b_t, uniform=u_t).numpy(), rt.q_sample(z0, t, k, b, u))
    # z = [u < p]: a uniform equal to the probability draws 0, so P(z = 1) is p for u ~ U[0, 1)
    assert not rt.q_sample(z0, t, k, b, rt.q_probs(z0, t, k, b)).any()
    assert not mt.q_sample(z0_t, t_t, k_t, b_t, uniform=mt.q_probs(z0_t, t_t, k_t, b_t)).any()


@settings(deadline=None, max_examples=12)
@given(seed=seeds, name=schedules, T=st.integers(1, 256))
def test_q_sample_frequencies_match_k_z0_plus_b(seed, name, T):
    """The empirical frequency of z_t = 1 is k_t z_0 + b_t within a Bernstein bound (failure odds 1e-9 a bit)."""
    n, K = 4000, 16
    g = torch.Generator().manual_seed(seed)
    k, b, _ = mt.bernoulli_schedule(name, T)
    z0 = (torch.rand(1, K, generator=g) < 0.5).double().expand(n, K)
    t = torch.full((n,), int(torch.randint(1, T + 1, (1,), generator=g)))
    freq = mt.q_sample(z0, t, k, b, generator=g).mean(0).numpy()
    p = (k[t[0]] * z0[0] + b[t[0]]).numpy()
    log_term = math.log(2 / 1e-9)
    bound = np.sqrt(2 * p * (1 - p) * log_term / n) + 2 * log_term / (3 * n)
    assert np.all(np.abs(freq - p) <= bound)


# ----------------------------------------------------------------------------------------------
# The reverse process
# ----------------------------------------------------------------------------------------------
@settings(deadline=None, max_examples=80)
@given(TS=steps())
def test_visited_steps_match_reference(TS):
    T, S = TS
    ours = mt.visited_steps(T, S)
    np.testing.assert_array_equal(ours, rt.visited_steps(T, S))
    assert ours[0] == (T if S > 1 else 1) and ours[-1] == 1 and len(set(ours.tolist())) == S
    assert np.all(np.diff(ours) < 0)
    if S == T:
        np.testing.assert_array_equal(ours, np.arange(T, 0, -1))


def test_visited_steps_reject_bad_S():
    for visited in (mt.visited_steps, rt.visited_steps):
        for S in (0, 11):
            with pytest.raises(ValueError, match="diffusion steps"):
                visited(10, S)


@settings(deadline=None, max_examples=80)
@given(seed=seeds, name=schedules, TS=steps(), M=st.integers(1, 16), K=st.integers(1, 32))
def test_posterior_matches_reference(seed, name, TS, M, K):
    T, _ = TS
    rng = np.random.default_rng(seed)
    t = int(rng.integers(1, T + 1))
    t_prev = int(rng.integers(0, t))
    p0 = rng.random((M, K))
    z_t = (rng.random((M, K)) < 0.5).astype(np.float64)
    k, b, beta = rt.bernoulli_schedule(name, T)
    ours = mt.posterior(torch.from_numpy(p0), torch.from_numpy(z_t), k[t_prev], b[t_prev],
                        mt.kernel_ratio(beta, t_prev, t))
    close(ours.numpy(), rt.posterior(p0, z_t, k[t_prev], b[t_prev], rt.strided_kernel(beta, t_prev, t)))


def brute_force_posterior(p0, z_t, beta, t_prev, t):
    """P(z_t' = 1 | z_t) by summing over every path z_0, ..., z_{t-1} of the one-step chain."""
    def step(s, a, c):  # P(z_s = c | z_{s-1} = a)
        return beta[s] * (a == c) + (1 - beta[s]) / 2

    mass = {0: 0.0, 1: 0.0}
    for path in itertools.product((0, 1), repeat=t):
        z = (*path, z_t)
        weight = p0 if z[0] == 1 else 1 - p0
        for s in range(1, t + 1):
            weight *= step(s, z[s - 1], z[s])
        mass[z[t_prev]] += weight
    return mass[1] / (mass[0] + mass[1])


@settings(deadline=None, max_examples=80)
@given(seed=seeds, name=schedules, T=st.integers(1, 9))
def test_posterior_is_bayes_over_the_chain(seed, name, T):
    rng = np.random.default_rng(seed)
    t = int(rng.integers(1, T + 1))
    t_prev = int(rng.integers(0, t))
    k, b, beta = rt.bernoulli_schedule(name, T)
    p0 = np.array([[0.0, 1.0, *rng.random(6)]] * 2)
    z_t = np.array([[0.0] * 8, [1.0] * 8])
    expected = np.array([[brute_force_posterior(p, z, beta, t_prev, t) for p, z in zip(pr, zr, strict=True)]
                         for pr, zr in zip(p0, z_t, strict=True)])
    ours = mt.posterior(torch.from_numpy(p0), torch.from_numpy(z_t), k[t_prev], b[t_prev],
                        mt.kernel_ratio(beta, t_prev, t))
    close(ours.numpy(), expected, atol=1e-12)
    close(rt.posterior(p0, z_t, k[t_prev], b[t_prev], rt.strided_kernel(beta, t_prev, t)), expected, atol=1e-12)


@settings(deadline=None, max_examples=80)
@given(seed=seeds, name=schedules, TS=steps(), M=st.integers(1, 16), K=st.integers(1, 32), objective=objectives,
       temperature=st.floats(0.25, 4.0))
def test_reverse_step_matches_reference(seed, name, TS, M, K, objective, temperature):
    T, _ = TS
    rng = np.random.default_rng(seed)
    t = int(rng.integers(1, T + 1))
    t_prev = int(rng.integers(0, t))
    logits = rng.normal(size=(M, K)) * 3
    z_t = (rng.random((M, K)) < 0.5).astype(np.float64)
    u = rng.random((M, K))
    k, b, beta = rt.bernoulli_schedule(name, T)
    # the PyTorch step as BinaryTranscoder.sample takes it
    model = mt.BinaryTranscoder(K, 2, 4, 0, T=T, schedule=name, objective=objective).double()
    p0 = model.p0(torch.from_numpy(logits), torch.from_numpy(z_t), temperature)
    prob = mt.posterior(p0, torch.from_numpy(z_t), k[t_prev], b[t_prev], mt.kernel_ratio(beta, t_prev, t))
    z_prev = (torch.from_numpy(u) < prob).double()
    flip, Q = objective == "flip", rt.strided_kernel(beta, t_prev, t)
    p0_r = rt.x0_probs(logits, z_t, temperature, flip)
    close(p0.numpy(), p0_r)
    np.testing.assert_array_equal(z_prev.numpy(), rt.reverse_step(logits, z_t, temperature, flip, k[t_prev],
                                                                  b[t_prev], Q, u))
    # z_t' = [u < posterior]: a uniform equal to the posterior draws 0
    at_threshold = rt.posterior(p0_r, z_t, k[t_prev], b[t_prev], Q)
    assert not rt.reverse_step(logits, z_t, temperature, flip, k[t_prev], b[t_prev], Q, at_threshold).any()


@settings(deadline=None, max_examples=30)
@given(seed=seeds, name=schedules, M=st.integers(1, 300), K=st.integers(1, 32), objective=objectives,
       temperature=st.floats(0.25, 4.0), order=st.sampled_from("CF"))
def test_reverse_step_is_x0_probs_then_posterior_then_draw(seed, name, M, K, objective, temperature, order):
    """The blocked kernel gives exactly the bits of the unfused steps, over many blocks (up to ~20 of
    BLOCK bits, the last one ragged) and for C- or Fortran-ordered inputs; half the uniforms sit
    exactly at the posterior, where [u < posterior] draws 0."""
    T = 256
    rng = np.random.default_rng(seed)
    t = int(rng.integers(1, T + 1))
    t_prev = int(rng.integers(0, t))
    k, b, beta = rt.bernoulli_schedule(name, T)
    Q = rt.strided_kernel(beta, t_prev, t)
    logits = rng.normal(size=(M, K)) * 3
    z_t = (rng.random((M, K)) < 0.5).astype(np.float64)
    flip = objective == "flip"
    prob = rt.posterior(rt.x0_probs(logits, z_t, temperature, flip), z_t, k[t_prev], b[t_prev], Q)
    u = np.where(rng.random((M, K)) < 0.5, prob, rng.random((M, K)))
    logits, z_t, u = (np.asarray(x, order=order) for x in (logits, z_t, u))
    z_prev = rt.reverse_step(logits, z_t, temperature, flip, k[t_prev], b[t_prev], Q, u)
    np.testing.assert_array_equal(z_prev, (u < prob).astype(np.float64))


def test_reverse_step_rejects_bad_input():
    k, b, beta = rt.bernoulli_schedule("linear", 10)
    Q, x = rt.strided_kernel(beta, 3, 5), np.zeros((4, 6))
    with pytest.raises(ValueError, match="same shape"):
        rt.reverse_step(x, x, 1.0, True, k[3], b[3], Q, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="temperature"):
        rt.reverse_step(x, x, 0.0, True, k[3], b[3], Q, x)


# ----------------------------------------------------------------------------------------------
# The denoiser and the whole chain
# ----------------------------------------------------------------------------------------------
@settings(deadline=None, max_examples=60)
@given(seed=seeds, n=st.integers(1, 16), dim=st.integers(1, 300), t_max=st.sampled_from([1.0, 256.0]))
def test_timestep_embedding_matches_reference(seed, n, dim, t_max):
    t = np.random.default_rng(seed).random(n) * t_max
    ours = mt.timestep_embedding(torch.from_numpy(t), dim, dtype=torch.float64).numpy()
    close(ours, rt.timestep_embedding(t, dim), atol=1e-12)


@settings(deadline=None, max_examples=100)
@given(seed=seeds, M=st.integers(1, 16), K=st.integers(1, 32), cond_dim=st.integers(1, 8),
       width=st.integers(2, 24), blocks=st.integers(0, 3), std=st.sampled_from([0.003, 0.3, 1.0]))
def test_denoiser_matches_reference(seed, M, K, cond_dim, width, blocks, std):
    model, params = random_transcoder(seed, K, cond_dim, width, blocks, 256, "linear", "flip", std)
    rng = np.random.default_rng(seed)
    z_t = (rng.random((M, K)) < 0.5).astype(np.float64)
    t_index = rng.integers(0, 256, M)
    cond = rng.normal(size=(M, cond_dim))
    with torch.no_grad():
        ours = model.denoiser(torch.from_numpy(z_t), torch.from_numpy(t_index), torch.from_numpy(cond))
    close(ours.numpy(), rt.denoise(params, z_t, t_index, cond), atol=1e-12)


@settings(deadline=None, max_examples=120)
@given(seed=seeds, TS=steps(), M=st.integers(1, 12), K=st.integers(1, 32), cond_dim=st.integers(1, 8),
       width=st.integers(2, 16), blocks=st.integers(0, 3), name=schedules, objective=objectives,
       temperature=st.floats(0.5, 2.0), cfg=st.sampled_from([1.0, 0.0, 2.5]))
def test_reverse_chain_matches_reference(seed, TS, M, K, cond_dim, width, blocks, name, objective,
                                         temperature, cfg):
    T, S = TS
    model, params = random_transcoder(seed, K, cond_dim, width, blocks, T, name, objective, 0.3)
    rng = np.random.default_rng(seed)
    cond, cond_null = rng.normal(size=(M, cond_dim)), rng.normal(size=(M, cond_dim))
    uniforms = rng.random((S, M, K))
    ours = model.sample(torch.from_numpy(cond), torch.from_numpy(cond_null), steps=S, temperature=temperature,
                        cfg=cfg, uniforms=torch.from_numpy(uniforms))
    ref = rt.reverse_chain(params, cond, uniforms, T, S, schedule=name, objective=objective, cond_null=cond_null,
                           temperature=temperature, cfg=cfg)
    close(ours.numpy(), ref)


@settings(deadline=None, max_examples=60)
@given(seed=seeds, TS=steps(max_T=64), M=st.integers(1, 40), K=st.integers(1, 32), width=st.integers(2, 48),
       blocks=st.integers(0, 3), objective=objectives, temperature=st.sampled_from([1.0, 0.7]),
       cfg=st.sampled_from([1.0, 0.0, 3.0]), precision=st.sampled_from(["float32", "float64", "bf16 autocast"]))
def test_fused_chain_is_bit_identical_to_the_module_path(seed, TS, M, K, width, blocks, objective, temperature,
                                                         cfg, precision):
    """The fused reverse chain (SiLU(c) once, in-place buffers) and the denoiser module run step by step
    give the same p0 bit for bit, so the same tokens, on the same uniforms; under bf16 autocast too."""
    T, S = TS
    dtype = torch.float64 if precision == "float64" else torch.float32
    model, _ = random_transcoder(seed, K, 8, width, blocks, T, "linear", objective, 0.3)
    model = model.to(dtype)
    g = torch.Generator().manual_seed(seed)
    cond, cond_null = torch.randn(M, 8, generator=g, dtype=dtype), torch.randn(M, 8, generator=g, dtype=dtype)
    uniforms = torch.rand(S, M, K, generator=g, dtype=dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16 autocast"):
        fused, plain = (model.sample(cond, cond_null, steps=S, temperature=temperature, cfg=cfg, uniforms=uniforms,
                                     fused=f) for f in (True, False))
    assert torch.equal(fused, plain)


def chain_rows(monkeypatch) -> list[int]:
    """From now on, the rows of every fused chain that starts (both CFG halves count) are appended to the list."""
    sizes = []
    original = mt.FusedDenoiser.__init__

    def counting_init(self, denoiser, c, t_emb):
        sizes.append(len(c))
        original(self, denoiser, c, t_emb)
    monkeypatch.setattr(mt.FusedDenoiser, "__init__", counting_init)
    return sizes


def test_large_batches_run_the_chain_in_chunks_of_bounded_size(monkeypatch):
    """With room for 5 tokens per chunk (CFG doubles the rows), 13 tokens of K = 16 bits and denoiser width 8 run as
    8 + 5 (whole vector blocks of both): the p0 of one piece on the same uniforms (bit for bit where BIT_EXACT)."""
    model, _ = random_transcoder(3, 16, 4, 8, 2, 16, "linear", "flip", 0.3)
    model = model.float()
    g = torch.Generator().manual_seed(0)
    cond, cond_null = torch.randn(13, 4, generator=g), torch.randn(13, 4, generator=g)
    uniforms = torch.rand(8, 13, 16, generator=g)
    whole = model.sample(cond, cond_null, steps=8, cfg=2.0, uniforms=uniforms)
    sizes = chain_rows(monkeypatch)
    monkeypatch.setattr(mt, "CHAIN_ELEMENTS", 5 * 8 * 2)
    chunked = model.sample(cond, cond_null, steps=8, cfg=2.0, uniforms=uniforms)
    assert sizes == [16, 10]                     # rows per chain: both CFG halves of 8 and 5 tokens
    assert_same_p0(chunked, whole)


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_cpu_tiles_give_the_draws_and_p0_of_one_piece(monkeypatch, cfg):
    """With room for 5 tokens per CPU tile, 13 tokens of K = 16 bits and denoiser width 8 run as 8 + 5 (whole vector
    blocks of 64 numbers): from the same generator seed they draw the uniforms one piece draws step by step, so p0
    is the same."""
    model, _ = random_transcoder(5, 16, 4, 8, 2, 16, "linear", "flip", 0.3)
    g = torch.Generator().manual_seed(0)
    cond, cond_null = (torch.randn(13, 4, generator=g, dtype=torch.float64) for _ in range(2))
    guided = cfg != 1.0

    def sample():
        return model.sample(cond, cond_null, steps=8, cfg=cfg, generator=torch.Generator().manual_seed(1))

    monkeypatch.setattr(mt, "CPU_TILE_BYTES", 10 ** 9)
    whole = sample()
    sizes = chain_rows(monkeypatch)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr(mt, "CPU_TILE_BYTES", 5 * 8 * (1 + guided) * 8)     # 5 tokens x width 8 x CFG rows x 8 bytes
    tiled = sample()
    assert sizes == [n * (1 + guided) for n in (8, 5)]
    assert_same_p0(tiled, whole)


@pytest.mark.parametrize("K", [16, 24, 5])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_cpu_tiles_give_bit_identical_p0_in_float32(monkeypatch, K, cfg):
    """Elementwise kernels run a tensor in vector blocks and its last few numbers through scalar code that rounds
    differently (sigmoid): tiles start where one piece's vector blocks do, so in float32 every bit of p0 is the
    same as one piece's, not only close, for any room per tile (here 9 tokens, then 13), where BIT_EXACT."""
    model = random_transcoder(7, K, 8, 32, 2, 64, "linear", "flip", 0.3)[0].float()
    g = torch.Generator().manual_seed(0)
    cond, cond_null = (torch.randn(101, 8, generator=g) for _ in range(2))
    uniforms = torch.rand(12, 101, K, generator=g)
    guided = cfg != 1.0
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr(mt, "CPU_TILE_BYTES", 10 ** 9)
    whole = model.sample(cond, cond_null, steps=12, cfg=cfg, uniforms=uniforms)
    for room in (9, 13):
        sizes = chain_rows(monkeypatch)
        monkeypatch.setattr(mt, "CPU_TILE_BYTES", room * 32 * (1 + guided) * 4)  # tokens x width x CFG rows x bytes
        tiled = model.sample(cond, cond_null, steps=12, cfg=cfg, uniforms=uniforms)
        assert len(sizes) > 1 and sum(sizes) == 101 * (1 + guided)
        assert_same_p0(tiled, whole)


@settings(deadline=None, max_examples=100)
@given(seed=seeds, name=schedules, T=st.integers(1, 256), M=st.integers(1, 16), K=st.integers(1, 32),
       cond_dim=st.integers(1, 8), width=st.integers(2, 16), blocks=st.integers(0, 2), objective=objectives,
       gamma=st.sampled_from([0.0, 0.5, 2.0]), weighting=st.sampled_from([None, "weighted", "plain"]))
def test_training_loss_matches_reference(seed, name, T, M, K, cond_dim, width, blocks, objective, gamma, weighting):
    model, params = random_transcoder(seed, K, cond_dim, width, blocks, T, name, objective, 0.3)
    model.focal_gamma = gamma
    model.weighting = weighting or mt.DEFAULT_WEIGHTING[objective]
    rng = np.random.default_rng(seed)
    z0 = (rng.random((M, K)) < rng.random()).astype(np.float64)
    cond = rng.normal(size=(M, cond_dim))
    t = rng.integers(1, T + 1, M)
    u = rng.random((M, K))
    with torch.no_grad():
        loss, bce = model.loss(torch.from_numpy(z0), torch.from_numpy(cond), t=torch.from_numpy(t),
                               uniform=torch.from_numpy(u))
    # the module keeps a device copy of the schedule; the reference loss is handed the same numbers
    loss_r, bce_r = rt.transcoder_loss(params, z0, cond, t, u, model.k.numpy(), model.b.numpy(), objective, gamma,
                                       weighting)
    # atol: torch's BCE is log(1 + e^-|l|) without log1p, which loses relative precision below ~1e-10
    close(loss.numpy(), loss_r, atol=1e-10)
    close(bce.numpy(), bce_r, atol=1e-10)


def hand_loss_setup(objective, weighting=None):
    """A small fixed batch: 2 tokens of 4 bits at t = 1 and t = 3 with explicit uniforms, and the denoiser's
    logits on the z_t those uniforms give (computed here by hand from the schedule)."""
    model, _ = random_transcoder(7, 4, 3, 8, 1, 4, "linear", objective, 0.5)
    model.weighting = weighting or mt.DEFAULT_WEIGHTING[objective]
    z0 = torch.tensor([[1.0, 0, 0, 1], [0, 0, 1, 1]], dtype=torch.float64)
    cond = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], dtype=torch.float64)
    t = torch.tensor([1, 3])
    u = torch.tensor([[0.1, 0.9, 0.5, 0.95], [0.3, 0.2, 0.8, 0.6]], dtype=torch.float64)
    # linear schedule, T = 4: beta_t = 1 - 1/(5 - t) -> k_1 = 3/4, k_3 = 3/4 * 2/3 * 1/2 = 1/4; b = (1 - k)/2
    k = torch.tensor([[0.75], [0.25]], dtype=torch.float64)
    z_t = (u < k * z0 + (1 - k) / 2).double()
    with torch.no_grad():
        logits = model.denoiser(z_t, (t - 1).double(), cond)
        loss, _ = model.loss(z0, cond, t=t, uniform=u)
    return z0, z_t, logits, loss


def plain_bce(logits, target):
    """-[y log p + (1 - y) log(1 - p)], p = sigmoid(l): the textbook form (compare with atol 1e-12, as log(1 - p)
    loses relative precision where p is within 1e-12 of 1)."""
    p = torch.sigmoid(logits)
    return -(target * torch.log(p) + (1 - target) * torch.log(1 - p))


def test_x0_loss_is_plain_bce_of_its_logits_against_z0():
    """The authors train x0 with their focal loss at alpha = 0: plain BCE, no per-token weight."""
    z0, _, logits, loss = hand_loss_setup("x0")
    close(loss.numpy(), plain_bce(logits, z0).numpy(), atol=1e-12)


def test_flip_loss_is_the_authors_weighted_bce_of_the_flip_target():
    """alpha = -1: each token's rare target value weighs 1 - f (f = the token's mean target), the common one f,
    and every bit 1/K more."""
    z0, z_t, logits, loss = hand_loss_setup("flip")
    r = (z0 != z_t).double()
    f = r.mean(-1, keepdim=True)
    weight = r * (1 - f) + (1 - r) * f + 1 / 4
    close(loss.numpy(), (weight * plain_bce(logits, r)).numpy(), atol=1e-12)


def test_the_other_weighting_stays_available_for_both_objectives():
    z0, _, logits, loss = hand_loss_setup("x0", "weighted")
    f = z0.mean(-1, keepdim=True)
    close(loss.numpy(), ((z0 * (1 - f) + (1 - z0) * f + 1 / 4) * plain_bce(logits, z0)).numpy(), atol=1e-12)
    z0, z_t, logits, loss = hand_loss_setup("flip", "plain")
    close(loss.numpy(), plain_bce(logits, (z0 != z_t).double()).numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="loss weighting 'focal'"):
        mt.BinaryTranscoder(4, 3, 8, 1, weighting="focal")


@settings(deadline=None, max_examples=80)
@given(seed=seeds, M=st.integers(1, 16), K=st.integers(1, 32), gamma=st.sampled_from([0.0, 0.5, 2.0, 3.0]))
def test_wbce_matches_reference(seed, M, K, gamma):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(M, K)) * 4
    target = (rng.random((M, K)) < rng.random()).astype(np.float64)
    ours = mt.bit_loss(torch.from_numpy(logits), torch.from_numpy(target), "weighted", gamma).numpy()
    close(ours, rt.wbce_loss(logits, target, gamma))
    plain = mt.bit_loss(torch.from_numpy(logits), torch.from_numpy(target), "plain", gamma).numpy()
    close(plain, rt.focal_bce(logits, target, gamma))
    f = target.mean(-1, keepdims=True)  # the rare value of a token weighs more, and every bit at least 1/K
    close(rt.wbce_loss(np.zeros((M, K)), target) / math.log(2), np.where(target > 0.5, 1 - f, f) + 1 / K)


def test_defaults_match_and_bad_input_raises():
    """Default settings agree (linear schedule, flip, temperature 1, no CFG, gamma 0); z_T = [u < 1/2]."""
    model, params = random_transcoder(0, 4, 2, 8, 1, 10, "linear", "flip", 0.3)
    rng = np.random.default_rng(0)
    cond, z0 = rng.normal(size=(3, 2)), (rng.random((3, 4)) < 0.5).astype(np.float64)
    uniforms = rng.random((5, 3, 4))
    uniforms[0, 0] = 0.5
    ours = model.sample(torch.from_numpy(cond), steps=5, uniforms=torch.from_numpy(uniforms))
    close(ours.numpy(), rt.reverse_chain(params, cond, uniforms, T=10, S=5))
    ours = model.sample(torch.from_numpy(cond), steps=1, uniforms=torch.from_numpy(uniforms[:1]))  # p0 of z_T
    close(ours.numpy(), rt.reverse_chain(params, cond, uniforms[:1], T=10, S=1))
    t, u = rng.integers(1, 11, 3), rng.random((3, 4))
    loss, _ = model.loss(torch.from_numpy(z0), torch.from_numpy(cond), t=torch.from_numpy(t),
                         uniform=torch.from_numpy(u))
    close(loss.detach().numpy(), rt.transcoder_loss(params, z0, cond, t, u, model.k.numpy(), model.b.numpy())[0])
    with pytest.raises(ValueError, match="both t and uniform"):       # half an explicit draw is a mistake
        model.loss(torch.from_numpy(z0), torch.from_numpy(cond), t=torch.from_numpy(t))
    with pytest.raises(ValueError, match="uniforms"):
        rt.reverse_chain(params, cond, np.zeros((5, 3, 3)), T=10, S=5)
    with pytest.raises(ValueError, match="objective"):
        rt.reverse_chain(params, cond, uniforms, T=10, S=5, objective="direct")
    with pytest.raises(ValueError, match="objective"):
        rt.transcoder_loss(params, z0, cond, t, u, model.k.numpy(), model.b.numpy(), objective="direct")
