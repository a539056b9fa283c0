"""Reference entropy-ordered sampler (docs/method.md §5), NumPy float64 + a Numba top-k kernel.

All N tokens start masked (given tokens excepted). At step i = 1..I the predictor gives p (B, N, K);
each masked token is scored by its certainty in [0, 1] (the mean bit entropy as a confidence, or the
authors' confidence; higher = first), Gumbel noise g G is added,
and the best masked tokens of each row are revealed, bits = [u < p], until floor(n cos(pi/2 i/I))
remain masked. Gumbel G (I, B, N) and uniforms u (I, B, N, K) are explicit arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numba import njit

ORDERS = ("entropy", "confidence", "random", "raster")

# predict(tokens (B, N, K), mask (B, N) bool True = masked, step i in 1..I) -> p (B, N, K)
Predictor = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------
def masked_after(n: np.ndarray, i: int, num_iter: int, schedule: str = "cosine") -> np.ndarray:
    """floor(n r_i) per row in float64, r_i = cos(pi/2 i/I) ("cosine") or 1 - i/I ("linear").

    n (B,) -> (B,) int64. The cosine is clipped at 0: at i = I the rounded angle can pass pi/2 by an ulp.
    """
    if schedule == "cosine":
        ratio = max(0.0, math.cos(math.pi / 2 * i / num_iter))
    elif schedule == "linear":
        ratio = 1 - i / num_iter
    else:
        raise ValueError(f"unknown mask schedule {schedule!r}; choose one of ('cosine', 'linear')")
    return np.floor(n.astype(np.float64) * ratio).astype(np.int64)


def gumbel_scale(g: float, schedule: str, i: int, num_iter: int) -> float:
    """Gumbel temperature at step i: "constant" g, "down" g (1 - i/I), "up" g i/I."""
    factor = {"constant": 1.0, "down": 1 - i / num_iter, "up": i / num_iter}
    if schedule not in factor:
        raise ValueError(f"unknown gumbel schedule {schedule!r}; choose one of {tuple(factor)}")
    return g * factor[schedule]


def cfg_scale(g: float, schedule: str, i: int, num_iter: int) -> float:
    """CFG scale at step i: "constant" g, "linear" from 1 at i = 0 to g at i = I."""
    if schedule == "constant":
        return g
    if schedule == "linear":
        return 1 + (g - 1) * i / num_iter
    raise ValueError(f"unknown cfg schedule {schedule!r}; choose one of ('constant', 'linear')")


# ----------------------------------------------------------------------------------------------
# Scores: higher = more certain = revealed first
# ----------------------------------------------------------------------------------------------
def _xlogx(x: np.ndarray) -> np.ndarray:
    """x log x with the limit 0 at x = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(x), 0.0)


def bit_entropy(p: np.ndarray) -> np.ndarray:
    """H(p) = -[p log p + (1 - p) log(1 - p)] of each bit, in nats."""
    return -(_xlogx(p) + _xlogx(1 - p))


def inverse_bit_entropy(h: np.ndarray) -> np.ndarray:
    """q in [0, 1/2] with H(q) = h by bisection: the interval halved once per mantissa bit of float64, twice more."""
    lo, hi = np.zeros_like(h), np.full_like(h, 0.5)
    for _ in range(np.finfo(np.float64).nmant + 2):
        mid = (lo + hi) / 2
        below = bit_entropy(mid) < h
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return (lo + hi) / 2


def entropy_certainty(p: np.ndarray) -> np.ndarray:
    """1 - 2 q with H(q) = mean_k H(p_k): the confidence of one bit of the token's mean bit entropy.
    p (B, N, K) -> (B, N)."""
    return 1 - 2 * inverse_bit_entropy(bit_entropy(p).mean(-1))


def confidence(p: np.ndarray) -> np.ndarray:
    """mean_k |p_k - 1/2| * 2.  p (B, N, K) -> (B, N)."""
    return np.abs(p - 0.5).mean(-1) * 2


def perturbed_scores(p: np.ndarray, order: str, gumbel: float, G: np.ndarray) -> np.ndarray:
    """Certainty + gumbel G.  p (B, N, K), G (B, N) -> (B, N).

    "random" is G alone, "raster" the position -n (left to right, top to bottom, no noise).
    """
    if order == "entropy":
        return entropy_certainty(p) + gumbel * G
    if order == "confidence":
        return confidence(p) + gumbel * G
    if order == "random":
        return G.astype(np.float64)
    if order == "raster":
        return -np.broadcast_to(np.arange(p.shape[1], dtype=np.float64), p.shape[:2])
    raise ValueError(f"unknown order {order!r}; choose one of {ORDERS}")


@njit(cache=True)
def select(scores: np.ndarray, mask: np.ndarray, n_reveal: np.ndarray) -> np.ndarray:
    """The n_reveal[b] highest-scoring masked tokens of each row; ties go to the lower index.

    scores (B, N) float64, mask (B, N) bool, n_reveal (B,) int64 -> (B, N) bool.
    Per row, one left-to-right pass over the masked tokens keeps the best n in a list sorted by
    score; a token enters only if strictly better than the last kept one (an equal score came
    earlier, so it wins). The masked positions are gathered first without a branch (whether a
    token is masked is a coin flip to the branch predictor), and the list holds the kept scores
    next to their positions, so the pass compares without indirect loads.
    """
    B, N = scores.shape
    chosen = np.zeros((B, N), dtype=np.bool_)
    masked = np.empty(N, dtype=np.int64)
    best = np.empty(N, dtype=np.int64)
    best_score = np.empty(N)
    for row in range(B):
        n = n_reveal[row]
        if n <= 0:
            continue
        count = 0
        for j in range(N):
            masked[count] = j
            count += mask[row, j]
        kept = 0
        for c in range(count):
            j = masked[c]
            s = scores[row, j]
            if kept == n:
                if not s > best_score[n - 1]:
                    continue
                pos = n - 1
            else:
                pos = kept
                kept += 1
            while pos > 0 and best_score[pos - 1] < s:
                best[pos], best_score[pos] = best[pos - 1], best_score[pos - 1]
                pos -= 1
            best[pos], best_score[pos] = j, s
        for r in range(kept):
            chosen[row, best[r]] = True
    return chosen


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------
def sample_tokens(predict: Predictor, tokens: np.ndarray, given: np.ndarray | None, num_iter: int,
                  gumbels: np.ndarray, uniforms: np.ndarray, order: str = "entropy", gumbel: float = 0.0,
                  gumbel_schedule: str = "constant", deterministic: bool = False,
                  mask_schedule: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Iterative unmasking.  tokens (B, N, K) (values of the given tokens), given (B, N) bool or None,
    gumbels (I, B, N), uniforms (I, B, N, K).

    Returns (tokens (B, N, K) float {0,1}, revealed_at (B, N) int64: the step that revealed each
    token, 0 for given tokens).
    """
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {ORDERS}")
    B, N, K = tokens.shape
    mask = np.ones((B, N), dtype=bool) if given is None else ~given
    tokens = np.where(mask[..., None], 0.0, tokens)
    n_start = mask.sum(1)
    revealed_at = np.zeros((B, N), dtype=np.int64)
    for i in range(1, num_iter + 1):
        p = np.asarray(predict(tokens, mask, i), dtype=np.float64)
        scores = perturbed_scores(p, order, gumbel_scale(gumbel, gumbel_schedule, i, num_iter), gumbels[i - 1])
        n_reveal = mask.sum(1) - masked_after(n_start, i, num_iter, mask_schedule)
        chosen = select(np.ascontiguousarray(scores), mask, n_reveal.astype(np.int64))
        bits = (p > 0.5) if deterministic else (uniforms[i - 1] < p)
        tokens = np.where(chosen[..., None], bits, tokens)
        mask = mask & ~chosen
        revealed_at[chosen] = i
    return tokens, revealed_at
