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

from .cuda_graph import GraphCache, autocast_key, weights_key
from .quantizer import bernoulli_bits

# the reverse chain runs in chunks of tokens whose (rows x width) activations hold at most this many numbers
# each (64 MiB in float32): any batch samples in bounded memory; batches below it run in one piece
CHAIN_ELEMENTS = 2 ** 24
# on the CPU a chunk runs in tiles of tokens whose (rows x width) activations take this many bytes per thread,
# so they stay in the cores' L2 caches through the S steps instead of streaming from memory at every
# elementwise operation (measured: the shipped model's chain ~15 % faster at one thread, float32 and bf16)
CPU_TILE_BYTES = 2 ** 20
# an elementwise kernel runs a tensor in vector blocks of up to this many numbers (32 floats on AVX-512) and its last
# few numbers through scalar code that rounds differently (sigmoid, exp): chunks and tiles that start at a multiple of
# it meet, number for number, the code one piece meets, so how the tokens are split changes no bit of p0
VECTOR_BLOCK = 64
SCHEDULES = ("linear", "cos", "sigmoid")
OBJECTIVES = ("flip", "x0", "direct")
WEIGHTINGS = ("weighted", "plain")
# the authors' weighting of each objective's loss: their focal loss with alpha = -1 (wBCE) trains flip, with
# alpha = 0 (plain BCE) x0; "direct" (not in their code) keeps the flip arm's
DEFAULT_WEIGHTING = {"flip": "weighted", "x0": "plain", "direct": "weighted"}


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
            # with temperature tau (start 0, end 3, tau 0.8), clipped to [0, 1] as the authors do
            # (llama/bindiff/binarylatent.py, clip_min=0.0): k_T = 0, z_T is pure noise
            start, end, tau = 0.0, 3.0, 0.8
            v_start, v_end = (torch.sigmoid(torch.tensor(x / tau, dtype=torch.float64, device="cpu"))
                              for x in (start, end))
            v = torch.sigmoid((t / T * (end - start) + start) / tau)
            k = ((v_end - v) / (v_end - v_start)).clamp(0.0, 1.0).to(torch.float64)
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

    floor((T - 1) * j / (S - 1)) + 1 for j = 0..S-1, computed in integers: the floor of a float
    linspace lands one step low where the quotient is a whole number it rounds just under
    (T = 31, S = 23 is the first case), so the visited steps would hang on float rounding.
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
# Loss: weighted BCE ("wBCE") or plain BCE, and their focal variant
# ----------------------------------------------------------------------------------------------
def bit_loss(logits: torch.Tensor, target: torch.Tensor, weighting: str = "weighted",
             gamma: float = 0.0) -> torch.Tensor:
    """Per-bit BCE, weighted (wBCE) or plain.  logits, target (M, K) -> (M, K).

    "weighted": f = mean of the K target bits of a token; a 1-bit weighs (1 - f) + 1/K and a 0-bit
    f + 1/K, so the rare value of each token is not drowned (flips are rare at small t). "plain": every
    bit weighs 1. gamma > 0 multiplies by (1 - p_true)^gamma (focal loss).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {WEIGHTINGS}")
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if gamma > 0:
        p = torch.sigmoid(logits)
        p_true = p * target + (1 - p) * (1 - target)
        bce = bce * (1 - p_true) ** gamma
    if weighting == "plain":
        return bce
    f = target.mean(-1, keepdim=True)
    return (torch.where(target > 0.5, 1 - f, f) + 1.0 / target.shape[-1]) * bce


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


class FusedDenoiser:
    """The DenoiseMLP's forward for the S steps of one reverse chain, with the same rounding as the module's.

    What the module path does at every step and this does once or not at all: SiLU(c), which the adaLN
    layers of every block and of the final layer all read, is computed once per step instead of once per
    layer; the condition's embedding is summed with the step's timestep embedding into a reused buffer;
    the adaLN outputs land in buffers kept across steps and the elementwise work (1 + scale, modulate, SiLU,
    gate, residual) runs in place, so no step allocates the chain's largest activations. Every operation is
    the module's own, in the same order, so the logits are bit-identical to ``DenoiseMLP.forward_embedded``
    (tests/test_transcoder.py checks it).

        fused = FusedDenoiser(denoiser, c, t_emb)     # c (R, w) embedded conditions, t_emb (S, w)
        logits = fused(z_t, i)                        # z_t (M, K) with R = M or 2M (CFG) -> (R, K)
    """

    def __init__(self, denoiser: DenoiseMLP, c: torch.Tensor, t_emb: torch.Tensor):
        self.net, self.c, self.t_emb = denoiser, c, t_emb
        # (weight^T, bias) of every adaLN layer in c's dtype: under autocast c is bf16, and out= matmuls do not autocast
        layers = [m.adaLN_modulation[-1] for m in (*denoiser.blocks, denoiser.final_layer)]
        self.adaLN = [(layer.weight.to(c.dtype).t(), layer.bias.to(c.dtype)) for layer in layers]
        self.silu_c = torch.empty_like(c)                                                   # (R, w)
        self.mods = [c.new_empty(len(c), layer.out_features) for layer in layers]           # (R, 3w) or (R, 2w)

    def __call__(self, z_t: torch.Tensor, i: int) -> torch.Tensor:
        net = self.net
        F.silu(torch.add(self.c, self.t_emb[i], out=self.silu_c), inplace=True)          # SiLU(c + t_emb), once
        for (weight_t, bias), out in zip(self.adaLN, self.mods, strict=True):
            torch.addmm(bias, self.silu_c, weight_t, out=out)
        x = net.x_embedder((2 * z_t - 1).to(self.c.dtype).repeat(len(self.c) // len(z_t), 1))  # (R, w)
        for block, mods in zip(net.blocks, self.mods, strict=False):
            shift, scale, gate = mods.chunk(3, dim=-1)
            h = block.norm(x).mul_(scale.add_(1)).add_(shift)                              # modulate
            h = F.silu(block.mlp[0](h), inplace=True)
            x.add_(block.mlp[2](h).mul_(gate))                                              # gated residual
        shift, scale = self.mods[-1].chunk(2, dim=-1)
        final = net.final_layer
        return final.linear(final.norm_final(x).mul_(scale.add_(1)).add_(shift))


def cpu_tile_tokens(cond: torch.Tensor, per_token: int, K: int, width: int) -> int:
    """Tokens per tile of the reverse chain of cond (M, d): on the CPU, the fewest tiles of near-equal size with at
    most ``CPU_TILE_BYTES`` of activations per thread each (per_token numbers per token in each activation), in whole
    ``block_unit``s of tokens; elsewhere M (a GPU wants the whole batch)."""
    M = len(cond)
    if cond.device.type != "cpu":
        return M
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else cond.dtype
    unit = block_unit(K, width)
    most = max(unit, CPU_TILE_BYTES * torch.get_num_threads() // (per_token * dtype.itemsize) // unit * unit)
    near_equal = -(-M // -(-M // most))
    return -(-near_equal // unit) * unit            # rounded up to whole units: still at most ``most``


def block_unit(*numbers: int) -> int:
    """The fewest tokens whose rows of each of ``numbers`` (K bits, the denoiser's width) fill whole VECTOR_BLOCKs."""
    return math.lcm(*(VECTOR_BLOCK // math.gcd(n, VECTOR_BLOCK) for n in numbers))


# ----------------------------------------------------------------------------------------------
# The transcoder module
# ----------------------------------------------------------------------------------------------
class BinaryTranscoder(nn.Module):
    """p(z | h_i) for a token's K bits: training loss and the reverse chain (any subset of tokens)."""

    def __init__(self, K: int, cond_dim: int, width: int, blocks: int, T: int = 256,
                 schedule: str = "linear", objective: str = "flip", focal_gamma: float = 0.0,
                 weighting: str | None = None):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
        if weighting not in (None, *WEIGHTINGS):
            raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {WEIGHTINGS} (or None: the "
                             f"objective's own, {DEFAULT_WEIGHTING})")
        self.K, self.T, self.schedule, self.objective, self.focal_gamma = K, T, schedule, objective, focal_gamma
        self.weighting = weighting or DEFAULT_WEIGHTING[objective]
        self.denoiser_width = width
        if objective == "direct":
            self.denoiser = DirectHead(K, cond_dim, width)
        else:
            self.denoiser = DenoiseMLP(K, cond_dim, width, blocks)
        k, b, beta = bernoulli_schedule(schedule, T)
        self.register_buffer("k", k.float(), persistent=False)
        self.register_buffer("b", b.float(), persistent=False)
        # float64 host copies: the chain reads scalars of the schedule without touching the device
        self._k, self._b, self._beta = k.numpy(), b.numpy(), beta.numpy()
        # on CUDA, replay the fused chain from a graph captured once per (M, S, CFG, ...) (``_graphed_chain``)
        self.cuda_graphs = False
        self.graphs = GraphCache()

    # -- training ---------------------------------------------------------------------------
    def loss_draws(self, M: int, generator: torch.Generator | None = None,
                   device=None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The random draws of ``loss`` for M tokens: (t (M,) in 1..T, uniform (M, K)); (None, None) for "direct"."""
        if self.objective == "direct":
            return None, None
        t = torch.randint(1, self.T + 1, (M,), generator=generator, device=device)
        return t, torch.rand(M, self.K, generator=generator, device=device)

    def loss(self, z0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None,
             t: torch.Tensor | None = None, uniform: torch.Tensor | None = None):
        """Per-bit training loss for clean bits z0 (M, K) under conditions cond (M, d).

        Returns (loss (M, K), bce (M, K)); bce is the plain BCE of the implied z_0 logits.
        t (M,) in 1..T and uniform (M, K) make the forward draw explicit (both or neither); without them
        ``loss_draws`` draws both from ``generator``.
        """
        if self.objective == "direct":
            logits = self.denoiser(cond)
            return bit_loss(logits, z0, self.weighting, self.focal_gamma), F.binary_cross_entropy_with_logits(
                logits, z0, reduction="none")
        if (t is None) != (uniform is None):
            raise ValueError("give both t and uniform (an explicit forward draw) or neither")
        if t is None:
            t, uniform = self.loss_draws(len(z0), generator, z0.device)
        z_t = q_sample(z0, t, self.k, self.b, uniform=uniform)
        logits = self.denoiser(z_t, (t - 1).to(cond.dtype), cond)
        if self.objective == "flip":
            target = (z0 != z_t).to(z0.dtype)
            x0_logits = flip_to_x0_logits(logits, z_t)
        else:
            target, x0_logits = z0, logits
        bce = F.binary_cross_entropy_with_logits(x0_logits, z0, reduction="none")
        return bit_loss(logits, target, self.weighting, self.focal_gamma), bce

    def flip_probs(self, z0: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                   uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For clean bits z0 (M, K) noised to z_t at steps t (M,) with ``uniform`` (M, K): the predicted probability
        that each bit of z_t is flipped, P(z_0 != z_t), and whether it is (both (M, K)). Any objective but direct:
        x0's P(z_0 = 1) is read as a flip probability through z_t."""
        if self.objective == "direct":
            raise ValueError("the direct objective has no z_t: nothing is flipped")
        z_t = q_sample(z0, t, self.k, self.b, uniform=uniform)
        logits = self.denoiser(z_t, (t - 1).to(cond.dtype), cond)
        if self.objective == "x0":
            logits = flip_to_x0_logits(logits, z_t)             # the same map turns a z_0 logit into a flip logit
        return torch.sigmoid(logits.float()), (z0 != z_t).float()

    # -- sampling ---------------------------------------------------------------------------
    def _in_pieces(self, bounds: list[tuple[int, int]], cond: torch.Tensor, cond_null: torch.Tensor | None,
                   uniforms: torch.Tensor | None, **rest) -> torch.Tensor:
        """``sample`` on the tokens [a, b) of each (a, b) in bounds, concatenated."""
        return torch.cat([self.sample(cond[a:b], None if cond_null is None else cond_null[a:b],
                                      uniforms=None if uniforms is None else uniforms[:, a:b], **rest)
                          for a, b in bounds])

    def _denoiser_logits(self, c: torch.Tensor, t_emb: torch.Tensor, fused: bool):
        """logits(z_t (M, K), i) -> (R, K) for conditions c (R, w) at the i-th visited step: the fused chain
        step, or the module's plain forward (the readable definition, bit-identical)."""
        if fused:
            return FusedDenoiser(self.denoiser, c, t_emb)
        return lambda z_t, i: self.denoiser.forward_embedded(z_t.repeat(len(c) // len(z_t), 1), c + t_emb[i])

    def p0(self, logits: torch.Tensor, z_t: torch.Tensor, temperature: float) -> torch.Tensor:
        """P(z_0 = 1) from the denoiser's logits (flip form converted first)."""
        logits = logits / temperature
        if self.objective == "flip":
            logits = flip_to_x0_logits(logits, z_t)
        return torch.sigmoid(logits)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, cond_null: torch.Tensor | None = None, steps: int | None = None,
               temperature: float = 1.0, cfg: float = 1.0, generator: torch.Generator | None = None,
               uniforms: torch.Tensor | None = None, fused: bool = True) -> torch.Tensor:
        """Run the reverse chain for M tokens and return p0 (M, K) of the last step (t = 1).

        cond (M, d); cond_null (M, d) are the null-class conditions used for CFG when cfg != 1.
        uniforms (S, M, K): uniforms[0] draws z_T ~ Bernoulli(1/2), uniforms[i] the move after the
        i-th visited step. Without them the draws come from ``generator``. ``fused=False`` runs the denoiser
        module step by step instead of the fused chain (same bits, slower). Under bf16 autocast the denoiser
        runs in bf16 while the draws, p0 and the posterior stay in float32 (at least). More tokens than fit in
        ``CHAIN_ELEMENTS`` run chunk after chunk (with a generator, each chunk draws in turn); on the CPU a chunk
        runs tile after tile (``cpu_tile_tokens``), with the same draws and bit for bit the same p0 as one piece.
        On CUDA with ``cuda_graphs`` set, the fused chain is replayed from a CUDA graph (``_graphed_chain``), its
        uniforms drawn before it: the same p0 on the same uniforms, in one launch.
        """
        guided = cond_null is not None and cfg != 1.0
        per_token = self.denoiser_width * (1 + guided)          # numbers per token in each activation of the chain
        rest = dict(steps=steps, temperature=temperature, cfg=cfg, generator=generator, fused=fused)
        unit = block_unit(self.K, self.denoiser_width)
        chunk = max(unit, CHAIN_ELEMENTS // per_token // unit * unit)
        if len(cond) > chunk:               # bounded memory: the chain on consecutive chunks of tokens
            return self._in_pieces([(j, j + chunk) for j in range(0, len(cond), chunk)], cond, cond_null, uniforms,
                                   **rest)
        if self.objective == "direct":
            logits = self.denoiser(torch.cat([cond, cond_null]) if guided else cond)
            if guided:
                logits = cfg_mix(*logits.chunk(2), cfg)
            return torch.sigmoid(logits / temperature)

        ts = visited_steps(self.T, self.T if steps is None else steps)
        work = torch.promote_types(cond.dtype, torch.float32)    # bits, p0 and posterior: never below float32
        tile, M = cpu_tile_tokens(cond, per_token, self.K, self.denoiser_width), len(cond)
        graphed = fused and self.cuda_graphs and cond.device.type == "cuda"
        if uniforms is None and (tile < M or graphed):
            # all draws at once: tiles take their slices (the draws one piece makes step by step), a graph must not draw
            uniforms = torch.rand((len(ts), M, self.K), generator=generator, device=cond.device, dtype=work)
        if tile < M:
            return self._in_pieces([(a, min(M, a + tile)) for a in range(0, M, tile)], cond, cond_null, uniforms,
                                   **rest)
        if guided:
            cond = torch.cat([cond, cond_null])
        shape = (M, self.K)                 # M: the tokens, before the null half joined the batch

        def uniform(i):
            if uniforms is not None:
                return uniforms[i]
            return torch.rand(shape, generator=generator, device=cond.device, dtype=work)

        c = self.denoiser.embed_cond(cond)                                           # (M or 2M, w)
        t_emb = self.denoiser.embed_time(torch.as_tensor(ts - 1, device=cond.device))  # (S, w)
        chain = dict(ts=ts, cfg=cfg if guided else 1.0, temperature=temperature, work=work)
        if graphed:
            return self._graphed_chain(c, t_emb, uniforms, **chain)
        return self.reverse_chain(self._denoiser_logits(c, t_emb, fused), uniform, **chain)

    def _graphed_chain(self, c: torch.Tensor, t_emb: torch.Tensor, uniforms: torch.Tensor, **chain) -> torch.Tensor:
        """The fused chain replayed from the CUDA graph captured for its key (minibigr/cuda_graph.py): the same bits
        as the eager fused chain on the same uniforms (S, M, K), in one launch."""
        key = (len(c), *uniforms.shape, chain["cfg"], chain["temperature"], c.dtype, uniforms.dtype, autocast_key(),
               weights_key(self.denoiser))

        def run(c, t_emb, uniforms):
            return self.reverse_chain(FusedDenoiser(self.denoiser, c, t_emb), uniforms.__getitem__, **chain)

        return self.graphs(key, run, c, t_emb, uniforms)

    def reverse_chain(self, denoise, uniform, ts: np.ndarray, cfg: float, temperature: float,
                      work: torch.dtype) -> torch.Tensor:
        """p0 (M, K) at t = 1: the reverse chain over the visited steps ts, with denoise(z_t, i) -> logits (M or 2M,
        K) (the two CFG halves mixed with ``cfg`` when there are two) and uniform(i) -> (M, K), the i-th draw."""
        z_t = (uniform(0) < 0.5).to(work)                                            # z_T ~ Bernoulli(1/2)
        for i, t in enumerate(ts):
            logits = denoise(z_t, i).to(work)                                        # (M or 2M, K)
            if len(logits) > len(z_t):        # the conditional and null halves ran as one batch
                logits = cfg_mix(*logits.chunk(2), cfg)
            p0 = self.p0(logits, z_t, temperature)
            if i == len(ts) - 1:
                return p0
            t_prev = int(ts[i + 1])
            prob = posterior(p0, z_t, self._k[t_prev], self._b[t_prev], kernel_ratio(self._beta, t_prev, int(t)))
            z_t = (uniform(i + 1) < prob).to(work)
        raise AssertionError("unreachable: the chain always ends at t = 1")
