"""Reference binary quantizer (docs/method.md §1.1), NumPy float64.

p = sigmoid(conv1x1(h)); z = [u < p] for explicit uniforms u (or [p > 1/2] when deterministic);
the straight-through value z + p - p; decoder input q = sum_k z_k E_k with the K x D matrix E.
"""

from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x), written with e^-|x| so that neither branch overflows."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def probs(h: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The 1x1 conv then sigmoid.  h (B, C, h, w), weight (K, C, 1, 1), bias (K,) -> p (B, K, h, w)."""
    logits = np.einsum("bchw,kc->bkhw", h, weight[:, :, 0, 0]) + bias[None, :, None, None]
    return sigmoid(logits)


def bernoulli_bits(p: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """z ~ Bernoulli(p) from uniforms in [0, 1): z = [u < p], float {0,1}."""
    return (uniform < p).astype(np.float64)


def threshold_bits(p: np.ndarray) -> np.ndarray:
    """Deterministic code z = [p > 1/2]."""
    return (p > 0.5).astype(np.float64)


def quantize(p: np.ndarray, deterministic: bool = False, uniform: np.ndarray | None = None) -> np.ndarray:
    """Bits from probabilities: threshold when deterministic, else Bernoulli from ``uniform``."""
    if deterministic:
        return threshold_bits(p)
    return bernoulli_bits(p, uniform)


def straight_through(z: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The forward value of z + p - stopgrad(p) (its gradient is the gradient of p)."""
    return z + p - p


def code_regularizer(p: np.ndarray) -> float:
    """mean p(1 - p)."""
    return float(np.mean(p * (1 - p)))


def bits_to_codes(bits: np.ndarray, embed: np.ndarray) -> np.ndarray:
    """q = sum_k z_k E_k.  bits (B, K, h, w), embed (K, D) -> (B, D, h, w)."""
    return np.einsum("bkhw,kd->bdhw", bits, embed)


def forward(h: np.ndarray, weight: np.ndarray, bias: np.ndarray, embed: np.ndarray,
            uniform: np.ndarray | None = None, deterministic: bool = False):
    """The quantizer module: h (B, C, h, w) -> (q (B, D, h, w), bits (B, K, h, w), p, regulariser)."""
    p = probs(h, weight, bias)
    z = quantize(p, deterministic=deterministic, uniform=uniform)
    return bits_to_codes(straight_through(z, p), embed), z, p, code_regularizer(p)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """K bits (last axis; bit k weighs 2^k) -> int64 ids, K <= 62."""
    K = bits.shape[-1]
    if K > 62:
        raise ValueError(f"pack_bits supports at most 62 bits per token, got K={K}")
    ids = np.zeros(bits.shape[:-1], dtype=np.int64)
    for k in range(K):
        ids += bits[..., k].astype(np.int64) << k
    return ids


def unpack_bits(ids: np.ndarray, K: int) -> np.ndarray:
    """Inverse of pack_bits: int64 ids (...) -> float bits (..., K)."""
    return ((ids[..., None] >> np.arange(K, dtype=np.int64)) & 1).astype(np.float64)
