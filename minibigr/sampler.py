"""Entropy-ordered sampling (SPEC §1.5): reveal the most certain tokens first.

All N tokens start masked. At step i = 1..I a predictor gives p (B, N, K) for every token; each
still-masked token is scored by its certainty, the scores are perturbed with Gumbel noise, and the
best tokens are revealed (bits ~ Bernoulli(p)) until only floor(n * cos(pi/2 * i/I)) stay masked.
Tokens that are given (inpainting) never change and are never counted.

The loop runs on the device without host syncs: counts, ranks and selections are all tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .quantizer import quantize

ORDERS = ("entropy", "confidence", "random", "raster")
GUMBEL_SCHEDULES = ("constant", "down", "up")
CFG_SCHEDULES = ("constant", "linear")

# predict(tokens (B, N, K), mask (B, N) bool True = masked, step i in 1..I) -> p (B, N, K)
Predictor = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------
MASK_SCHEDULES = ("cosine", "linear")


def mask_ratio(i: int, num_iter: int, schedule: str = "cosine") -> float:
    """Fraction of tokens still masked after step i: cos(pi/2 * i/I) (generation), or 1 - i/I
    ("linear", which enrichment uses: its groups are small and already surrounded by context)."""
    if schedule == "cosine":
        # clipped at 0: at i = I the rounded angle can land an ulp past pi/2 (I = 13, 26, 47, ...)
        # and floor(n * -6e-17) would leave -1 tokens masked
        return max(0.0, math.cos(math.pi / 2 * i / num_iter))
    if schedule == "linear":
        return 1 - i / num_iter
    raise ValueError(f"unknown mask schedule {schedule!r}; choose one of {MASK_SCHEDULES}")


def masked_after(n: torch.Tensor, i: int, num_iter: int, schedule: str = "cosine") -> torch.Tensor:
    """floor(n * ratio(i)) per row.  n (B,) int64 -> (B,) int64."""
    return torch.floor(n.to(torch.float64) * mask_ratio(i, num_iter, schedule)).to(torch.int64)


def gumbel_scale(g: float, schedule: str, i: int, num_iter: int) -> float:
    """Gumbel temperature at step i: constant g, "down" g (1 - i/I), "up" g i/I."""
    if schedule == "constant":
        return g
    if schedule == "down":
        return g * (1 - i / num_iter)
    if schedule == "up":
        return g * i / num_iter
    raise ValueError(f"unknown gumbel schedule {schedule!r}; choose one of {GUMBEL_SCHEDULES}")


def cfg_scale(g: float, schedule: str, i: int, num_iter: int) -> float:
    """CFG scale at step i: constant g, or "linear" 1 + (g - 1) i/I."""
    if schedule == "constant":
        return g
    if schedule == "linear":
        return 1 + (g - 1) * i / num_iter
    raise ValueError(f"unknown cfg schedule {schedule!r}; choose one of {CFG_SCHEDULES}")


# ----------------------------------------------------------------------------------------------
# Scores: higher = more certain = revealed first
# ----------------------------------------------------------------------------------------------
def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """H = -sum_k [p_k log p_k + (1 - p_k) log(1 - p_k)] (nats).  p (B, N, K) -> (B, N)."""
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)).sum(-1)


def confidence(p: torch.Tensor) -> torch.Tensor:
    """The official code's certainty: mean_k |p_k - 1/2| * 2.  p (B, N, K) -> (B, N)."""
    return (p - 0.5).abs().mean(-1) * 2


def gumbel_noise(shape, generator: torch.Generator | None = None, device=None,
                 dtype=torch.float32) -> torch.Tensor:
    """G ~ Gumbel(0, 1) = -log(-log u)."""
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    neg_log_u = (-torch.log(u.clamp_min(tiny))).clamp_min(tiny)
    return -torch.log(neg_log_u)


def perturbed_scores(p: torch.Tensor, order: str, gumbel: float, G: torch.Tensor) -> torch.Tensor:
    """Certainty + gumbel * G per token.  p (B, N, K), G (B, N) -> (B, N).

    "random" is pure Gumbel noise (a uniformly random order whatever the temperature);
    "raster" reveals positions left to right, top to bottom, and ignores the noise.
    """
    if order == "entropy":
        return -binary_entropy(p) + gumbel * G
    if order == "confidence":
        return confidence(p) + gumbel * G
    if order == "random":
        return G
    if order == "raster":
        N = p.shape[1]
        return -torch.arange(N, device=p.device, dtype=p.dtype).expand(p.shape[0], N)
    raise ValueError(f"unknown order {order!r}; choose one of {ORDERS}")


def select(scores: torch.Tensor, mask: torch.Tensor, n_reveal: torch.Tensor) -> torch.Tensor:
    """The n_reveal[b] highest-scoring masked tokens of each row.

    scores (B, N), mask (B, N) bool, n_reveal (B,) int64 -> (B, N) bool. Ties go to the lower index
    (stable sort), so any implementation that sorts stably picks the same tokens.
    """
    scores = scores.masked_fill(~mask, float("-inf"))
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return (rank < n_reveal[:, None]) & mask


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_tokens(predict: Predictor, tokens: torch.Tensor, given: torch.Tensor | None = None,
                  num_iter: int = 20, order: str = "entropy", gumbel: float = 0.0,
                  gumbel_schedule: str = "constant", deterministic: bool = False, mask_schedule: str = "cosine",
                  generator: torch.Generator | None = None, gumbels: torch.Tensor | None = None,
                  uniforms: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy-ordered (or other) iterative unmasking.

    tokens (B, N, K): values of the given tokens (the rest are ignored); given (B, N) bool marks
    tokens to keep (None: generate everything). gumbels (I, B, N) and uniforms (I, B, N, K) make
    the Gumbel and Bernoulli draws explicit; otherwise they come from ``generator``.
    Returns (tokens (B, N, K) in {0,1}, revealed_at (B, N) int64: the step 1..I that revealed each
    token, 0 for given tokens).
    """
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {ORDERS}")
    if num_iter < 1:
        raise ValueError(f"num_iter must be >= 1, got {num_iter}")
    B, N, K = tokens.shape
    if given is None:
        given = torch.zeros(B, N, dtype=torch.bool, device=tokens.device)
    mask = ~given
    tokens = tokens.masked_fill(mask[..., None], 0.0)
    n_start = mask.sum(1)                                           # (B,)
    revealed_at = torch.zeros(B, N, dtype=torch.int64, device=tokens.device)
    for i in range(1, num_iter + 1):
        p = predict(tokens, mask, i)                                # (B, N, K)
        G = gumbels[i - 1] if gumbels is not None else gumbel_noise(
            (B, N), generator=generator, device=p.device, dtype=p.dtype)
        scores = perturbed_scores(p, order, gumbel_scale(gumbel, gumbel_schedule, i, num_iter), G)
        n_reveal = mask.sum(1) - masked_after(n_start, i, num_iter, mask_schedule)
        chosen = select(scores, mask, n_reveal)                     # (B, N)
        u = uniforms[i - 1] if uniforms is not None else None
        bits = quantize(p, deterministic=deterministic, uniform=u, generator=generator)
        tokens = torch.where(chosen[..., None], bits, tokens)
        mask = mask & ~chosen
        revealed_at = torch.where(chosen, i, revealed_at)
    return tokens, revealed_at
