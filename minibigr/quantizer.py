"""Binary quantizer of the B-AE tokenizer (docs/method.md §1.1).

An encoder feature map becomes K independent Bernoulli probabilities per token,
p = sigmoid(conv1x1(h)); the code is z ~ Bernoulli(p) while training (or [p > 1/2]
when deterministic). Gradients flow through p with the straight-through estimator
z_st = z + p - stopgrad(p). The decoder sees q = sum_k z_k E_k, a product with a
learned K x emb_dim matrix E: a bias-free linear map of the K bits, not a lookup of one row
(E is an nn.Embedding's weight only because the authors' checkpoint stores it under that name).
"""

from __future__ import annotations

import torch
from torch import nn

DRAWS = ("threshold", "bernoulli")            # the two ways to read bits from probabilities, by name


def bernoulli_bits(p: torch.Tensor, uniform: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """z ~ Bernoulli(p) as a float {0,1} tensor of p's shape.

    ``uniform`` (same shape as p, values in [0,1)) makes the draw explicit: z = [u < p].
    """
    if uniform is None:
        uniform = torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype)
    return (uniform < p).to(p.dtype)


def threshold_bits(p: torch.Tensor) -> torch.Tensor:
    """Deterministic code z = [p > 1/2]."""
    return (p > 0.5).to(p.dtype)


def quantize(p: torch.Tensor, deterministic: bool = False, uniform: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Bits from probabilities: threshold when deterministic, else Bernoulli."""
    if deterministic:
        return threshold_bits(p)
    return bernoulli_bits(p, uniform=uniform, generator=generator)


def straight_through(z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """z_st = z + p - stopgrad(p): the value of z, the gradient of p."""
    return z + p - p.detach()


def code_regularizer(p: torch.Tensor) -> torch.Tensor:
    """mean p(1-p): pushes probabilities towards 0 or 1 (weight 0 in the authors' defaults)."""
    return (p * (1 - p)).mean()


def bits_to_codes(bits: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """q = sum_k z_k E_k.

    bits (B, K, h, w), embed E (K, D) -> (B, D, h, w).
    """
    return torch.einsum("bkhw,kd->bdhw", bits, embed)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """K bits (last dim, bit k has weight 2^k) -> int64 token ids. K <= 62."""
    K = bits.shape[-1]
    if K > 62:
        raise ValueError(f"pack_bits supports at most 62 bits per token, got K={K}")
    weights = 2 ** torch.arange(K, device=bits.device, dtype=torch.int64)
    return (bits.to(torch.int64) * weights).sum(-1)


def unpack_bits(ids: torch.Tensor, K: int) -> torch.Tensor:
    """Inverse of pack_bits: int64 ids (...) -> float bits (..., K)."""
    shifts = torch.arange(K, device=ids.device, dtype=torch.int64)
    return ((ids.unsqueeze(-1) >> shifts) & 1).to(torch.float32)


def code_usage(bits: torch.Tensor) -> dict[str, float]:
    """Statistics of how a set of codes uses the 2^K code space.

    bits (..., K) -> bit balance (mean of each bit, averaged), its worst bit, the number of
    distinct codes, their share of the codes seen, and the empirical entropy in bits
    (K bits is the ceiling; log2(number of codes seen) is the ceiling for this sample).
    """
    K = bits.shape[-1]
    flat = bits.reshape(-1, K)
    ids = pack_bits(flat)
    _, counts = torch.unique(ids, return_counts=True)
    freq = counts.double() / counts.sum()
    bit_mean = flat.double().mean(0)
    return {
        "K": K,
        "tokens": int(flat.shape[0]),
        "distinct_codes": int(counts.numel()),
        "distinct_fraction": float(counts.numel() / flat.shape[0]),
        "entropy_bits": float(-(freq * freq.log2()).sum()),
        "bit_mean": float(bit_mean.mean()),
        "most_unbalanced_bit": float((bit_mean - 0.5).abs().max() + 0.5),
    }


class BinaryQuantizer(nn.Module):
    """Conv 1x1 to K logits, sigmoid, bits, straight-through, and the K x emb_dim code matrix.

    Parameter names follow the official checkpoint (``proj.0`` is the conv, ``embed`` the matrix).
    """

    def __init__(self, in_dim: int, K: int, emb_dim: int):
        super().__init__()
        self.K = K
        self.proj = nn.Sequential(nn.Conv2d(in_dim, K, 1), nn.Sigmoid())
        self.embed = nn.Embedding(K, emb_dim)

    def probs(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, in_dim, h, w) -> p (B, K, h, w)."""
        return self.proj(h)

    def codes(self, bits: torch.Tensor) -> torch.Tensor:
        """bits (B, K, h, w) -> decoder input (B, emb_dim, h, w)."""
        return bits_to_codes(bits, self.embed.weight)

    def forward(self, h: torch.Tensor, deterministic: bool = False,
                generator: torch.Generator | None = None):
        """h (B, in_dim, h, w) -> (q (B, emb_dim, h, w), bits (B, K, h, w), p, regulariser)."""
        p = self.probs(h)
        z = quantize(p.detach(), deterministic=deterministic, generator=generator)
        q = self.codes(straight_through(z, p))
        return q, z, p, code_regularizer(p)
