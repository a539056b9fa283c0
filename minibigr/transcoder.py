"""Binary transcoder: Bernoulli diffusion over one token's K bits, conditioned on h_i (docs/method.md §4).

Forward process     q(z_t | z_{t-1}) = Bernoulli(beta_t z_{t-1} + (1 - beta_t)/2)
Closed form         q(z_t | z_0)     = Bernoulli(k_t z_0 + b_t),  k_t = prod_{s<=t} beta_s,  b_t = (1 - k_t)/2
The denoiser sees (z_t, t - 1, h_i) and predicts, per bit, either the flip r = z_0 XOR z_t ("flip",
the paper's choice) or z_0 itself ("x0"). "direct" skips diffusion: one MLP head predicts z_0 from h_i.
Sampling runs the reverse chain on S <= T visited timesteps and returns p0 = P(z_0 = 1) of the last step.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .quantizer import bernoulli_bits

SCHEDULES = ("linear", "cos", "sigmoid")
OBJECTIVES = ("flip", "x0", "direct")


# ----------------------------------------------------------------------------------------------
# Schedules and the forward process
# ----------------------------------------------------------------------------------------------
def bernoulli_schedule(name: str, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(k, b, beta), float64 CPU tensors of length T + 1 indexed by t = 0..T; index 0 is the identity.

    Always on the CPU, even inside ``with torch.device("meta")``: a model built there still knows its schedule.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    t = torch.arange(T + 1, dtype=torch.float64, device="cpu")
    if name == "linear":
        beta = 1 - 1 / (T - t + 1)  # beta_T = 0, so k_T = 0 exactly: z_T is pure noise
        beta[0] = 1.0
        k = torch.cumprod(beta, 0)
    elif name in ("cos", "sigmoid"):
        if name == "cos":
            k = 0.5 + 0.5 * torch.cos(math.pi * t / T)
        else:
            # Binary Latent Diffusion's sigmoid schedule: gamma(t) from a sigmoid over [start, end]
            # with temperature tau (start 0, end 3, tau 0.8), clipped away from 0.
            start, end, tau = 0.0, 3.0, 0.8
            v_start, v_end = (torch.sigmoid(torch.tensor(x / tau, dtype=torch.float64, device="cpu"))
                              for x in (start, end))
            v = torch.sigmoid((t / T * (end - start) + start) / tau)
            k = ((v_end - v) / (v_end - v_start)).clamp(1e-9, 1.0).to(torch.float64)
        k[0] = 1.0
        beta = torch.ones_like(k)
        beta[1:] = k[1:] / k[:-1]
    else:
        raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
    b = (1 - k) / 2
    return k, b, beta


def q_probs(z0: torch.Tensor, t: torch.Tensor, k: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """P(z_t = 1 | z_0) = k_t z_0 + b_t.  z0 (M, K), t (M,) ints in 0..T -> (M, K)."""
    kt = k.to(z0.dtype)[t].unsqueeze(-1)
    bt = b.to(z0.dtype)[t].unsqueeze(-1)
    return kt * z0 + bt


def q_sample(z0: torch.Tensor, t: torch.Tensor, k: torch.Tensor, b: torch.Tensor,
             uniform: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """z_t ~ q(z_t | z_0).  z0 (M, K), t (M,) -> (M, K) float {0,1}."""
    return bernoulli_bits(q_probs(z0, t, k, b), uniform=uniform, generator=generator)


# ----------------------------------------------------------------------------------------------
# The reverse process
# ----------------------------------------------------------------------------------------------
def visited_steps(T: int, S: int) -> np.ndarray:
    """The S timesteps the reverse chain visits, descending from T to 1.

    floor((T - 1) * j / (S - 1)) + 1 for j = 0..S-1, computed in integers: a float linspace
    would round some exact integers down and visit a step twice (S = T must visit every step).
    """
    if not 1 <= S <= T:
        raise ValueError(f"diffusion steps S must be in 1..T={T}, got {S}")
    if S == 1:
        return np.array([1])
    j = np.arange(S)
    return ((T - 1) * j // (S - 1) + 1)[::-1].copy()


def kernel_ratio(beta: np.ndarray, t_prev: int, t: int) -> float:
    """r = prod_{s = t'+1..t} beta_s: the strided kernel Q(z_t | z_t' = v) = r [z_t = v] + (1 - r)/2."""
    return float(np.prod(beta[t_prev + 1:t + 1]))


def posterior(p0: torch.Tensor, z_t: torch.Tensor, k_prev: float, b_prev: float, r: float) -> torch.Tensor:
    """P(z_t' = 1 | z_t, p0) for t' < t, with the denoiser's belief p0 = P(z_0 = 1).

    u_v = [k_t' p0(v) + b_t'] * Q(z_t | z_t' = v) for v in {1, 0}; the answer is u_1 / (u_1 + u_0).
    p0, z_t (M, K) -> (M, K).
    """
    prior_1 = k_prev * p0 + b_prev
    prior_0 = k_prev * (1 - p0) + b_prev
    like_1 = r * z_t + (1 - r) / 2
    like_0 = r * (1 - z_t) + (1 - r) / 2
    u_1, u_0 = prior_1 * like_1, prior_0 * like_0
    return u_1 / (u_1 + u_0)


def flip_to_x0_logits(logits: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """A flip logit l says 'this bit of z_t is wrong'; as a z_0 logit that is l where z_t = 0, -l where z_t = 1."""
    return logits * (1 - 2 * z_t)


def cfg_mix(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on logits: l_u + g (l_c - l_u)."""
    return uncond + scale * (cond - uncond)


# ----------------------------------------------------------------------------------------------
# Loss: weighted BCE ("wBCE") and its focal variant
# ----------------------------------------------------------------------------------------------
def wbce_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 0.0) -> torch.Tensor:
    """Per-bit weighted BCE.  logits, target (M, K) -> (M, K).

    f = mean of the K target bits of a token; a 1-bit weighs (1 - f) + 1/K and a 0-bit f + 1/K, so
    the rare value of each token is not drowned (flips are rare at small t). gamma > 0 multiplies
    by (1 - p_true)^gamma (focal loss).
    """
    K = target.shape[-1]
    f = target.mean(-1, keepdim=True)
    weight = torch.where(target > 0.5, 1 - f, f) + 1.0 / K
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if gamma > 0:
        p = torch.sigmoid(logits)
        p_true = p * target + (1 - p) * (1 - target)
        bce = bce * (1 - p_true) ** gamma
    return weight * bce


# ----------------------------------------------------------------------------------------------
# The denoiser: a DiT-style MLP with adaLN, conditioned on c = Linear(h_i) + TimestepEmbed(t)
# ----------------------------------------------------------------------------------------------
def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal embedding [cos, sin] of (fractional) timesteps.  t (M,) -> (M, dim).

    Computed in float32 like the official code, or in float64 when the module runs in float64.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype, device=t.device) / half)
    args = t[:, None].to(dtype) * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        dtype = self.mlp[0].weight.dtype
        emb = timestep_embedding(t, self.freq_dim, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        return self.mlp(emb.to(dtype))


class DenoiseBlock(nn.Module):
    """LayerNorm -> adaLN shift/scale -> MLP -> gated residual."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(c).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, width: int, K: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, K)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DenoiseMLP(nn.Module):
    """logits (M, K) = DenoiseMLP(z_t (M, K), t_index (M,), cond (M, d)); t_index = t - 1.

    Split into embed_cond / embed_time / forward_embedded so the reverse chain embeds each
    condition once per call and each visited timestep once, not once per token per step.
    """

    def __init__(self, K: int, cond_dim: int, width: int, blocks: int):
        super().__init__()
        self.K = K
        self.x_embedder = nn.Linear(K, width)
        self.c_embedder = nn.Linear(cond_dim, width)
        self.t_embedder = TimestepEmbedder(width)
        self.blocks = nn.ModuleList([DenoiseBlock(width) for _ in range(blocks)])
        self.final_layer = FinalLayer(width, K)
        self.reset_parameters()

    def reset_parameters(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # zero-init every adaLN output and the final projection: each block starts as the identity
        # and the initial prediction is logit 0 (p = 1/2) for every bit.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def embed_cond(self, cond: torch.Tensor) -> torch.Tensor:
        """cond (M, d) -> (M, width)."""
        return self.c_embedder(cond)

    def embed_time(self, t_index: torch.Tensor) -> torch.Tensor:
        """t_index (M,) -> (M, width)."""
        return self.t_embedder(t_index)

    def forward_embedded(self, z_t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """z_t (M, K) in {0,1}, c (M, width) -> logits (M, K)."""
        x = self.x_embedder((2 * z_t - 1).to(c.dtype))
        for block in self.blocks:
            x = block(x, c)
        return self.final_layer(x, c)

    def forward(self, z_t: torch.Tensor, t_index: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(z_t, self.embed_cond(cond) + self.embed_time(t_index))


class DirectHead(nn.Module):
    """The "w/o Bernoulli denoising" ablation: logits of z_0 straight from h_i."""

    def __init__(self, K: int, cond_dim: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cond_dim, width), nn.SiLU(), nn.Linear(width, K))

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.net(cond)


# ----------------------------------------------------------------------------------------------
# The transcoder module
# ----------------------------------------------------------------------------------------------
class BinaryTranscoder(nn.Module):
    """p(z | h_i) for a token's K bits: training loss and the reverse chain (any subset of tokens)."""

    def __init__(self, K: int, cond_dim: int, width: int, blocks: int, T: int = 256,
                 schedule: str = "linear", objective: str = "flip", focal_gamma: float = 0.0):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
        self.K, self.T, self.schedule, self.objective, self.focal_gamma = K, T, schedule, objective, focal_gamma
        if objective == "direct":
            self.denoiser = DirectHead(K, cond_dim, width)
        else:
            self.denoiser = DenoiseMLP(K, cond_dim, width, blocks)
        k, b, beta = bernoulli_schedule(schedule, T)
        self.register_buffer("k", k.float(), persistent=False)
        self.register_buffer("b", b.float(), persistent=False)
        # float64 host copies: the chain reads scalars of the schedule without touching the device
        self._k, self._b, self._beta = k.numpy(), b.numpy(), beta.numpy()

    # -- training ---------------------------------------------------------------------------
    def loss(self, z0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None,
             t: torch.Tensor | None = None, uniform: torch.Tensor | None = None):
        """Per-bit training loss for clean bits z0 (M, K) under conditions cond (M, d).

        Returns (loss (M, K), bce (M, K)); bce is the plain BCE of the implied z_0 logits.
        t (M,) in 1..T and uniform (M, K) make the forward draw explicit.
        """
        if self.objective == "direct":
            logits = self.denoiser(cond)
            return wbce_loss(logits, z0, self.focal_gamma), F.binary_cross_entropy_with_logits(
                logits, z0, reduction="none")
        M = z0.shape[0]
        if t is None:
            t = torch.randint(1, self.T + 1, (M,), generator=generator, device=z0.device)
        z_t = q_sample(z0, t, self.k, self.b, uniform=uniform, generator=generator)
        logits = self.denoiser(z_t, (t - 1).to(cond.dtype), cond)
        if self.objective == "flip":
            target = (z0 != z_t).to(z0.dtype)
            x0_logits = flip_to_x0_logits(logits, z_t)
        else:
            target, x0_logits = z0, logits
        bce = F.binary_cross_entropy_with_logits(x0_logits, z0, reduction="none")
        return wbce_loss(logits, target, self.focal_gamma), bce

    # -- sampling ---------------------------------------------------------------------------
    def _guided_logits(self, z_t, c, cfg, guided):
        """Denoiser logits with CFG: the conditional and null halves of c run as one batch."""
        if not guided:
            return self.denoiser.forward_embedded(z_t, c)
        both = self.denoiser.forward_embedded(torch.cat([z_t, z_t]), c)
        cond, uncond = both.chunk(2)
        return cfg_mix(cond, uncond, cfg)

    def p0(self, logits: torch.Tensor, z_t: torch.Tensor, temperature: float) -> torch.Tensor:
        """P(z_0 = 1) from the denoiser's logits (flip form converted first)."""
        logits = logits / temperature
        if self.objective == "flip":
            logits = flip_to_x0_logits(logits, z_t)
        return torch.sigmoid(logits)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, cond_null: torch.Tensor | None = None, steps: int | None = None,
               temperature: float = 1.0, cfg: float = 1.0, generator: torch.Generator | None = None,
               uniforms: torch.Tensor | None = None) -> torch.Tensor:
        """Run the reverse chain for M tokens and return p0 (M, K) of the last step (t = 1).

        cond (M, d); cond_null (M, d) are the null-class conditions used for CFG when cfg != 1.
        uniforms (S, M, K): uniforms[0] draws z_T ~ Bernoulli(1/2), uniforms[i] the move after the
        i-th visited step. Without them the draws come from ``generator``.
        """
        guided = cond_null is not None and cfg != 1.0
        if guided:
            cond = torch.cat([cond, cond_null])
        if self.objective == "direct":
            logits = self.denoiser(cond)
            if guided:
                logits = cfg_mix(*logits.chunk(2), cfg)
            return torch.sigmoid(logits / temperature)

        S = self.T if steps is None else steps
        ts = visited_steps(self.T, S)
        M = cond.shape[0] // (2 if guided else 1)
        shape = (M, self.K)

        def uniform(i):
            if uniforms is not None:
                return uniforms[i]
            return torch.rand(shape, generator=generator, device=cond.device, dtype=cond.dtype)

        c = self.denoiser.embed_cond(cond)                                           # (M or 2M, w)
        t_emb = self.denoiser.embed_time(torch.as_tensor(ts - 1, device=cond.device))  # (S, w)
        z_t = (uniform(0) < 0.5).to(cond.dtype)
        for i, t in enumerate(ts):
            logits = self._guided_logits(z_t, c + t_emb[i], cfg, guided)
            p0 = self.p0(logits, z_t, temperature)
            if i == len(ts) - 1:
                return p0
            t_prev = int(ts[i + 1])
            prob = posterior(p0, z_t, self._k[t_prev], self._b[t_prev], kernel_ratio(self._beta, t_prev, int(t)))
            z_t = (uniform(i + 1) < prob).to(cond.dtype)
        raise AssertionError("unreachable: the chain always ends at t = 1")
