"""Reference binary transcoder (docs/method.md §4): Bernoulli diffusion over one token's K bits, float64.

One forward step     q(z_t | z_{t-1}) = Bernoulli(beta_t z_{t-1} + (1 - beta_t)/2)
Closed form          q(z_t | z_0)     = Bernoulli(k_t z_0 + b_t),  k_t = prod_{s<=t} beta_s
Reverse step t -> t' P(z_t' = 1 | z_t, p0) = u_1 / (u_1 + u_0),
                     u_v = [k_t' p0(v) + b_t'] Q(z_t | z_t' = v)
where Q is built here as the explicit product of the one-step kernels t'+1..t (a loop, not the
closed form the PyTorch code uses), so the two implementations check each other.
The denoiser is a NumPy forward pass over a DenoiseMLP state dict (name -> ndarray).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .quantizer import sigmoid

SIGMOID_START, SIGMOID_END, SIGMOID_TAU, SIGMOID_CLIP = 0.0, 3.0, 0.8, 0.0
LAYER_NORM_EPS = 1e-6


# ----------------------------------------------------------------------------------------------
# Schedules and the forward process
# ----------------------------------------------------------------------------------------------
def bernoulli_schedule(name: str, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(k, b, beta), float64 arrays of length T + 1 indexed by t = 0..T; index 0 is the identity.

    b follows its own recursion b_t = beta_t b_{t-1} + (1 - beta_t)/2, not (1 - k_t)/2.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    t = np.arange(T + 1, dtype=np.float64)
    if name == "linear":
        beta = np.ones(T + 1)
        beta[1:] = (T - t[1:]) / (T - t[1:] + 1)
        k = np.cumprod(beta)
    elif name == "cos":
        k = 0.5 + 0.5 * np.cos(math.pi * t / T)
    elif name == "sigmoid":
        v_start = 1 / (1 + math.exp(-SIGMOID_START / SIGMOID_TAU))
        v_end = 1 / (1 + math.exp(-SIGMOID_END / SIGMOID_TAU))
        v = sigmoid((t / T * (SIGMOID_END - SIGMOID_START) + SIGMOID_START) / SIGMOID_TAU)
        k = np.clip((v_end - v) / (v_end - v_start), SIGMOID_CLIP, 1.0)
    else:
        raise ValueError(f"unknown schedule {name!r}; choose one of ('linear', 'cos', 'sigmoid')")
    if name != "linear":
        k[0] = 1.0
        beta = np.ones(T + 1)
        beta[1:] = k[1:] / k[:-1]
    b = np.zeros(T + 1)
    for s in range(1, T + 1):
        b[s] = beta[s] * b[s - 1] + (1 - beta[s]) / 2
    return k, b, beta


def q_probs(z0: np.ndarray, t: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(z_t = 1 | z_0) = k_t z_0 + b_t.  z0 (M, K), t (M,) -> (M, K)."""
    return k[t][:, None] * z0 + b[t][:, None]


def q_sample(z0: np.ndarray, t: np.ndarray, k: np.ndarray, b: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """z_t ~ q(z_t | z_0) from uniforms: [u < k_t z_0 + b_t].  -> (M, K) float {0,1}."""
    return (uniform < q_probs(z0, t, k, b)).astype(np.float64)


# ----------------------------------------------------------------------------------------------
# The reverse process
# ----------------------------------------------------------------------------------------------
def visited_steps(T: int, S: int) -> np.ndarray:
    """floor((T - 1) j / (S - 1)) + 1 for j = 0..S-1, descending from T to 1 (integer arithmetic)."""
    if not 1 <= S <= T:
        raise ValueError(f"diffusion steps S must be in 1..T={T}, got {S}")
    if S == 1:
        return np.array([1], dtype=np.int64)
    return np.array([(T - 1) * j // (S - 1) + 1 for j in range(S - 1, -1, -1)], dtype=np.int64)


@njit(cache=True)
def strided_kernel(beta: np.ndarray, t_prev: int, t: int) -> np.ndarray:
    """Q[v, z] = P(z_t = z | z_t' = v): the product of the one-step 2x2 kernels t'+1, ..., t.

    One step: P(z_s = z | z_{s-1} = v) = beta_s [z = v] + (1 - beta_s)/2.
    """
    Q = np.eye(2)
    for s in range(t_prev + 1, t + 1):
        stay = beta[s] + (1 - beta[s]) / 2
        move = (1 - beta[s]) / 2
        Q = Q @ np.array([[stay, move], [move, stay]])
    return Q


@njit(inline="always")
def _posterior_one(p0: float, like_1: float, like_0: float, k_prev: float, b_prev: float) -> float:
    """P(z_t' = 1 | z_t, p0) for one bit, given like_v = Q[v, z_t] = Q(z_t | z_t' = v)."""
    u_1 = (k_prev * p0 + b_prev) * like_1
    u_0 = (k_prev * (1 - p0) + b_prev) * like_0
    return u_1 / (u_1 + u_0)


@njit(cache=True)
def posterior(p0: np.ndarray, z_t: np.ndarray, k_prev: float, b_prev: float, Q: np.ndarray) -> np.ndarray:
    """P(z_t' = 1 | z_t, p0) per bit.  p0, z_t (M, K), Q (2, 2) from strided_kernel -> (M, K)."""
    M, K = p0.shape
    out = np.empty((M, K))
    for m in range(M):
        for j in range(K):
            z = int(z_t[m, j])
            out[m, j] = _posterior_one(p0[m, j], Q[1, z], Q[0, z], k_prev, b_prev)
    return out


@njit(inline="always")
def _x0_logit(logit: float, z_t: float, temperature: float, flip: bool) -> float:
    """The z_0 logit. A flip logit says 'this bit of z_t is wrong': as a z_0 logit it is l where
    z_t = 0 and -l where z_t = 1."""
    x = logit / temperature
    if flip:
        x = x * (1 - 2 * z_t)
    return x


@njit(inline="always")
def _sigmoid(x: float, e: float) -> float:
    """sigmoid(x) from e = exp(-|x|): no overflow and no data-dependent branch."""
    return (1.0 if x >= 0 else e) / (1 + e)


@njit(cache=True)
def x0_probs(logits: np.ndarray, z_t: np.ndarray, temperature: float, flip: bool) -> np.ndarray:
    """p0 = P(z_0 = 1).  logits, z_t (M, K) -> (M, K)."""
    M, K = logits.shape
    out = np.empty((M, K))
    for m in range(M):
        for j in range(K):
            x = _x0_logit(logits[m, j], z_t[m, j], temperature, flip)
            out[m, j] = _sigmoid(x, math.exp(-abs(x)))
    return out


BLOCK = 512  # bits per block of reverse_step: its buffers stay in L1


@njit(cache=True, error_model="numpy")
def reverse_step(logits: np.ndarray, z_t: np.ndarray, temperature: float, flip: bool, k_prev: float,
                 b_prev: float, Q: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """One move t -> t': p0 from the logit, the posterior, the draw; the arithmetic of x0_probs and posterior.

    logits, z_t, uniform (M, K) -> z_t' = [u < P(z_t' = 1 | z_t, p0)] (M, K) float {0,1}.

    The move is bound by one scalar exp per bit: LLVM has no vector exp here (no SVML), and another
    exp could move p0 by an ulp and with it a draw. So the bits, flattened, go through in blocks,
    and everything but the exp sits in loops that LLVM vectorises: one loop for the exp argument
    -|x|, the scalar exp loop, one loop for p0, posterior and draw. What lets those loops vectorise:
    error_model="numpy" (no zero-division check, a branch per bit; the divisors are a nonzero
    temperature, 1 + e >= 1 and u_1 + u_0, at least about b_t' > 0 on every move of the chain),
    selects instead of indexing Q by z_t, the block-local index j (an index like i - start could
    be negative to Numba, whose wraparound for that is a branch), and helpers that Numba inlines
    itself (inline="always"): one loaded from Numba's cache would be an opaque call to LLVM.
    """
    if z_t.shape != logits.shape or uniform.shape != logits.shape:
        raise ValueError("logits, z_t and uniform must have the same shape (M, K)")
    if temperature == 0:
        raise ValueError("temperature must be nonzero")
    M, K = logits.shape
    z_prev = np.empty((M, K))
    logit_f = np.ascontiguousarray(logits).reshape(-1)  # views, unless an input is not C-contiguous
    z_f = np.ascontiguousarray(z_t).reshape(-1)
    u_f = np.ascontiguousarray(uniform).reshape(-1)
    z_prev_f = z_prev.reshape(-1)
    q10, q11, q00, q01 = Q[1, 0], Q[1, 1], Q[0, 0], Q[0, 1]  # Q[v, z]
    e = np.empty(BLOCK)
    for start in range(0, M * K, BLOCK):
        stop = min(start + BLOCK, M * K)
        logit, z, u, out = logit_f[start:stop], z_f[start:stop], u_f[start:stop], z_prev_f[start:stop]
        for j in range(stop - start):
            e[j] = -abs(_x0_logit(logit[j], z[j], temperature, flip))
        for j in range(stop - start):
            e[j] = math.exp(e[j])
        for j in range(stop - start):
            p0 = _sigmoid(_x0_logit(logit[j], z[j], temperature, flip), e[j])
            one = z[j] > 0.5
            prob = _posterior_one(p0, q11 if one else q10, q01 if one else q00, k_prev, b_prev)
            out[j] = 1.0 if u[j] < prob else 0.0
    return z_prev


def cfg_mix(cond: np.ndarray, uncond: np.ndarray, scale: float) -> np.ndarray:
    """Classifier-free guidance on logits: l_u + g (l_c - l_u)."""
    return uncond + scale * (cond - uncond)


# ----------------------------------------------------------------------------------------------
# Loss: weighted or plain BCE, and the focal variant
# ----------------------------------------------------------------------------------------------
def bce_with_logits(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    """-[y log sigmoid(l) + (1 - y) log(1 - sigmoid(l))] = max(l, 0) - l y + log(1 + e^-|l|)."""
    return np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits)))


def focal_bce(logits: np.ndarray, target: np.ndarray, gamma: float = 0.0) -> np.ndarray:
    """Per-bit BCE, times (1 - p_true)^gamma when gamma > 0 (focal).  logits, target (M, K) -> (M, K)."""
    loss = bce_with_logits(logits, target)
    if gamma > 0:
        p = sigmoid(logits)
        p_true = np.where(target > 0.5, p, 1 - p)
        loss = loss * (1 - p_true) ** gamma
    return loss


def wbce_loss(logits: np.ndarray, target: np.ndarray, gamma: float = 0.0) -> np.ndarray:
    """Per-bit wBCE: a 1-bit weighs (1 - f) + 1/K, a 0-bit f + 1/K, f = mean of the token's K target bits.

    gamma > 0 makes it focal.  logits, target (M, K) -> (M, K).
    """
    f = target.mean(-1, keepdims=True)
    return (np.where(target > 0.5, 1 - f, f) + 1 / target.shape[-1]) * focal_bce(logits, target, gamma)


# ----------------------------------------------------------------------------------------------
# The denoiser: NumPy forward of DenoiseMLP from its state dict
# ----------------------------------------------------------------------------------------------
def linear(params: dict, name: str, x: np.ndarray) -> np.ndarray:
    return x @ params[f"{name}.weight"].T + params[f"{name}.bias"]


def silu(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(x)


def layer_norm(x: np.ndarray, eps: float = LAYER_NORM_EPS) -> np.ndarray:
    """LayerNorm over the last axis without affine parameters (biased variance)."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def timestep_embedding(t: np.ndarray, dim: int = 256, max_period: float = 10000.0) -> np.ndarray:
    """[cos(t f_j), sin(t f_j)] with f_j = max_period^(-j/half), j < half = dim // 2 (zero pad if odd)."""
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half) / half)
    args = np.asarray(t, dtype=np.float64)[:, None] * freqs[None]
    emb = np.concatenate([np.cos(args), np.sin(args)], axis=-1)
    if dim % 2:
        emb = np.concatenate([emb, np.zeros_like(emb[:, :1])], axis=-1)
    return emb


def num_blocks(params: dict) -> int:
    return sum(1 for name in params if name.startswith("blocks.") and name.endswith(".mlp.0.weight"))


def embed_cond(params: dict, cond: np.ndarray) -> np.ndarray:
    """cond (M, d) -> (M, width)."""
    return linear(params, "c_embedder", cond)


def embed_time(params: dict, t_index: np.ndarray) -> np.ndarray:
    """Sinusoidal embedding -> Linear, SiLU, Linear.  t_index (M,) -> (M, width)."""
    emb = timestep_embedding(t_index, params["t_embedder.mlp.0.weight"].shape[1])
    return linear(params, "t_embedder.mlp.2", silu(linear(params, "t_embedder.mlp.0", emb)))


def denoise_embedded(params: dict, z_t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """z_t (M, K) in {0,1}, c (M, width) -> logits (M, K)."""
    x = linear(params, "x_embedder", 2 * z_t - 1)
    for j in range(num_blocks(params)):
        shift, scale, gate = np.split(linear(params, f"blocks.{j}.adaLN_modulation.1", silu(c)), 3, axis=-1)
        h = layer_norm(x) * (1 + scale) + shift
        x = x + gate * linear(params, f"blocks.{j}.mlp.2", silu(linear(params, f"blocks.{j}.mlp.0", h)))
    shift, scale = np.split(linear(params, "final_layer.adaLN_modulation.1", silu(c)), 2, axis=-1)
    return linear(params, "final_layer.linear", layer_norm(x) * (1 + scale) + shift)


def denoise(params: dict, z_t: np.ndarray, t_index: np.ndarray, cond: np.ndarray) -> np.ndarray:
    """logits (M, K) = DenoiseMLP(z_t (M, K), t_index (M,), cond (M, d)); t_index = t - 1."""
    return denoise_embedded(params, z_t, embed_cond(params, cond) + embed_time(params, t_index))


# ----------------------------------------------------------------------------------------------
# Training loss and the full reverse chain
# ----------------------------------------------------------------------------------------------
def transcoder_loss(params: dict, z0: np.ndarray, cond: np.ndarray, t: np.ndarray, uniform: np.ndarray,
                    k: np.ndarray, b: np.ndarray, objective: str = "flip", gamma: float = 0.0,
                    weighting: str | None = None):
    """Per-bit training loss at explicit t (M,) in 1..T and uniforms (M, K).

    Returns (BCE of the denoiser's own target (M, K): wBCE or plain, by default wBCE for flip and plain for
    x0 as the authors train them; plain BCE of the implied z_0 logits (M, K)).
    """
    z_t = q_sample(z0, t, k, b, uniform)
    logits = denoise(params, z_t, t - 1, cond)
    if objective == "flip":
        target = (z0 != z_t).astype(np.float64)
        x0_logits = np.where(z_t > 0.5, -logits, logits)
    elif objective == "x0":
        target, x0_logits = z0, logits
    else:
        raise ValueError(f"unknown objective {objective!r}; the reference has 'flip' and 'x0'")
    weighting = weighting or {"flip": "weighted", "x0": "plain"}[objective]
    loss = wbce_loss(logits, target, gamma) if weighting == "weighted" else focal_bce(logits, target, gamma)
    return loss, bce_with_logits(x0_logits, z0)


def reverse_chain(params: dict, cond: np.ndarray, uniforms: np.ndarray, T: int, S: int,
                  schedule: str = "linear", objective: str = "flip", cond_null: np.ndarray | None = None,
                  temperature: float = 1.0, cfg: float = 1.0) -> np.ndarray:
    """Run the reverse chain over the S visited steps and return p0 (M, K) of the last one (t = 1).

    cond, cond_null (M, d); uniforms (S, M, K): uniforms[0] draws z_T ~ Bernoulli(1/2) and
    uniforms[i] the move after the i-th visited step. CFG with scale cfg uses cond_null.
    """
    if objective not in ("flip", "x0"):
        raise ValueError(f"unknown objective {objective!r}; the reference has 'flip' and 'x0'")
    if uniforms.shape != (S, cond.shape[0], params["x_embedder.weight"].shape[1]):
        raise ValueError(f"uniforms must have shape (S, M, K), got {uniforms.shape}")
    flip = objective == "flip"
    guided = cond_null is not None and cfg != 1.0
    k, b, beta = bernoulli_schedule(schedule, T)
    ts = visited_steps(T, S)
    c = embed_cond(params, cond)
    c_null = embed_cond(params, cond_null) if guided else None
    t_emb = embed_time(params, ts - 1)
    z_t = (uniforms[0] < 0.5).astype(np.float64)
    for i, t in enumerate(ts):
        logits = denoise_embedded(params, z_t, c + t_emb[i])
        if guided:
            logits = cfg_mix(logits, denoise_embedded(params, z_t, c_null + t_emb[i]), cfg)
        if i == len(ts) - 1:
            return x0_probs(logits, z_t, temperature, flip)
        t_prev = int(ts[i + 1])
        Q = strided_kernel(beta, t_prev, int(t))
        z_t = reverse_step(logits, z_t, temperature, flip, k[t_prev], b[t_prev], Q, uniforms[i + 1])
    raise AssertionError("unreachable: the chain always ends at t = 1")
