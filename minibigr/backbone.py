"""The BiGR backbone: a bidirectional Llama over [class token] + N binary tokens (docs/method.md §2).

    tokens (B, N, K) --Linear(K -> d)--> token embeddings (masked ones -> one learned mask vector)
    [class embedding; token embeddings] -> token dropout -> n_layer blocks -> RMSNorm
    -> drop the class token -> + learned per-position embedding -> h (B, N, d)

A block is pre-norm RMSNorm -> full (non-causal) self-attention with 2-D rotary positions ->
residual, RMSNorm -> SwiGLU MLP -> residual. With adaLN the class embedding also gives every block
shift / scale / gate through one shared Linear(d -> 6d) plus a learned per-block offset ``ada_gss``.

Parameter names follow the authors' code, so an official state dict maps onto this module with
only a prefix (see minibigr.official).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import BiGRConfig


def find_multiple(n: int, k: int) -> int:
    """The smallest multiple of k that is >= n."""
    return n if n % k == 0 else n + k - n % k


def ffn_hidden_dim(dim: int, multiple_of: int) -> int:
    """SwiGLU hidden width: 2/3 of 4d, rounded up to a multiple of ``multiple_of`` (Llama)."""
    return find_multiple(int(2 * (4 * dim) / 3), multiple_of)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


# ----------------------------------------------------------------------------------------------
# 2-D rotary position embedding
# ----------------------------------------------------------------------------------------------
def rope_2d(grid: int, head_dim: int, base: float = 10000.0, n_cls: int = 1) -> torch.Tensor:
    """(cos, sin) of the rotations, (n_cls + grid^2, head_dim / 2, 2), for interleaved pairs (x[2j], x[2j+1]).

    The first head_dim / 4 pairs turn with the row index, the last head_dim / 4 with the column
    index, each at frequencies base^(-2m / (head_dim / 2)). Tokens are in raster order. The class
    rows are zero, not the identity: this zeroes the class token's query and key, exactly like the
    authors' code, whose weights were trained with that. The table is real, not complex, so that
    ``module.to(dtype)`` casts it like any buffer instead of dropping the sines; it is computed on
    the CPU, also inside ``with torch.device("meta")``.
    """
    if head_dim % 4:
        raise ValueError(f"2-D rotary needs head_dim divisible by 4, got {head_dim}")
    half = head_dim // 2
    cpu = dict(dtype=torch.float32, device="cpu")
    freqs = 1.0 / base ** (torch.arange(0, half, 2, **cpu)[: half // 2] / half)    # (head_dim/4,)
    angle = torch.outer(torch.arange(grid, **cpu), freqs)                           # (grid, hd/4)
    grid_angle = torch.cat([
        angle[:, None, :].expand(grid, grid, -1),    # rows
        angle[None, :, :].expand(grid, grid, -1),    # columns
    ], dim=-1).flatten(0, 1)                          # (grid^2, head_dim/2)
    cls = torch.zeros(n_cls, half, device="cpu")
    return torch.stack([torch.cat([cls, grid_angle.cos()]), torch.cat([cls, grid_angle.sin()])], dim=-1)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of the last dim, in float32.  x (..., L, hd), rope (L, hd/2, 2) from rope_2d.

    Each pair is the complex number x[2j] + i x[2j+1] times cos + i sin: one kernel each way (forward
    and backward) where rotating the real halves takes six."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))                # (..., L, hd/2)
    return torch.view_as_real(pairs * torch.view_as_complex(rope.float())).flatten(-2).type_as(x)


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """x / rms(x) * weight, normalised in float32 and cast back before the weight (as Llama)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Attention(nn.Module):
    """Multi-head self-attention over the whole sequence (no mask: every token sees every token)."""

    def __init__(self, dim: int, n_head: int, attn_dropout: float = 0.0, resid_dropout: float = 0.0):
        super().__init__()
        if dim % n_head:
            raise ValueError(f"dim {dim} is not divisible by n_head {n_head}")
        self.dim, self.n_head, self.head_dim = dim, n_head, dim // n_head
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)   # rows: all q heads, then k, then v
        self.wo = nn.Linear(dim, dim, bias=False)
        self.attn_dropout = attn_dropout
        self.resid_dropout = nn.Dropout(resid_dropout)

    def qkv(self, x: torch.Tensor, rope: torch.Tensor):
        """Rotated q, k and plain v, each (B, H, L, head_dim).  x (B, L, d), rope (L, head_dim / 2, 2)."""
        B, L, _ = x.shape
        q, k, v = self.wqkv(x).view(B, L, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return apply_rope(q, rope), apply_rope(k, rope), v

    def forward(self, x: torch.Tensor, rope: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, d), or (B, n, d) with only the queries of ``rows`` (B, n): keys and values still come from all L."""
        B = x.shape[0]
        q, k, v = self.qkv(x, rope)                                               # (B, H, L, hd) each
        if rows is not None:
            q = q.gather(2, rows[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1]))   # (B, H, n, hd)
        # no attn_mask and is_causal=False: the fused (flash / memory-efficient) kernels apply
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.resid_dropout(self.wo(y.transpose(1, 2).reshape(B, q.shape[2], self.dim)))


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for a whole sample with probability p."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, n_head: int, ffn_hidden: int, norm_eps: float = 1e-5,
                 attn_dropout: float = 0.0, resid_dropout: float = 0.0, ffn_dropout: float = 0.0,
                 drop_path: float = 0.0, use_adaLN: bool = True):
        super().__init__()
        self.attention = Attention(dim, n_head, attn_dropout, resid_dropout)
        self.feed_forward = FeedForward(dim, ffn_hidden, ffn_dropout)
        self.attention_norm = RMSNorm(dim, norm_eps)
        self.ffn_norm = RMSNorm(dim, norm_eps)
        self.drop_path = DropPath(drop_path)
        # per-block offset added to the shared adaLN output; (1, 1, 6, d) as in the official weights.
        # Divided in place: out of place, the op on the meta device (from_pretrained) imports torch._dynamo, 2 s
        self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, dim).div_(dim ** 0.5)) if use_adaLN else None

    def forward(self, x: torch.Tensor, mod: torch.Tensor | None, rope: torch.Tensor,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, d) -> (B, L, d); mod (B, 1, 6, d) from the shared adaLN, or None without adaLN.
        With ``rows`` (B, n) only those rows' outputs (B, n, d): every row still serves as key and value."""
        x_out = x if rows is None else x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))   # (B, n, d)
        if mod is None:
            h = x_out + self.drop_path(self.attention(self.attention_norm(x), rope, rows))
            return h + self.drop_path(self.feed_forward(self.ffn_norm(h)))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (mod + self.ada_gss).unbind(2)
        h = x_out + gate_msa * self.drop_path(
            self.attention(modulate(self.attention_norm(x), shift_msa, scale_msa), rope, rows))
        return h + gate_mlp * self.drop_path(
            self.feed_forward(modulate(self.ffn_norm(h), shift_mlp, scale_mlp)))


class LabelEmbedder(nn.Module):
    """C + 1 class embeddings; row C is the null class of classifier-free guidance."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


# ----------------------------------------------------------------------------------------------
# The backbone
# ----------------------------------------------------------------------------------------------
class Backbone(nn.Module):
    """h (B, N, d) = Backbone(tokens (B, N, K), labels, mask (B, N) bool True = masked).

    ``labels`` is one of: int labels (B,) in 0..C (C = null); a class mix (y1, y2, alpha) giving
    alpha e(y1) + (1 - alpha) e(y2), alpha a float or (B,); or class embeddings (B, d) directly.
    """

    def __init__(self, config: BiGRConfig):
        super().__init__()
        c = config
        self.K, self.num_tokens, self.dim, self.num_classes = c.K, c.num_tokens, c.dim, c.num_classes
        self.cls_embedding = LabelEmbedder(c.num_classes, c.dim)
        self.mask_tok = nn.Parameter(torch.randn(1, c.dim))
        self.tok_embeddings = nn.Linear(c.K, c.dim)
        self.tok_dropout = nn.Dropout(c.token_dropout)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim)) if c.use_adaLN else None
        hidden = ffn_hidden_dim(c.dim, c.multiple_of)
        drop_paths = torch.linspace(0, c.drop_path, c.n_layer, device="cpu").tolist()
        self.layers = nn.ModuleList([
            TransformerBlock(c.dim, c.n_head, hidden, c.norm_eps, c.attn_dropout, c.resid_dropout,
                             c.ffn_dropout, dp, c.use_adaLN)
            for dp in drop_paths
        ])
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, c.num_tokens, c.dim))
        self.register_buffer("rope", rope_2d(math.isqrt(c.num_tokens), c.dim // c.n_head, c.rope_base),
                             persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        if self.adaLN is not None:
            # every block starts from its own ada_gss offset alone
            nn.init.zeros_(self.adaLN[-1].weight)
            nn.init.zeros_(self.adaLN[-1].bias)
        nn.init.normal_(self.diffusion_pos_embed_learned, std=0.02)

    def embed_class(self, labels, batch: int) -> torch.Tensor:
        """Class-token embeddings (B, d) from labels, a mix (y1, y2, alpha), or embeddings."""
        if isinstance(labels, tuple):
            if len(labels) != 3:
                raise ValueError("a class mix is (y1, y2, alpha)")
            y1, y2, alpha = labels
            e1, e2 = self.cls_embedding(y1), self.cls_embedding(y2)
            if torch.is_tensor(alpha):
                alpha = alpha.to(e1.dtype).reshape(-1, 1)
            emb = alpha * e1 + (1 - alpha) * e2
        elif torch.is_tensor(labels) and labels.is_floating_point():
            emb = labels
        elif torch.is_tensor(labels):
            emb = self.cls_embedding(labels)
        else:
            raise TypeError(f"labels must be a tensor or a (y1, y2, alpha) tuple, got {type(labels).__name__}")
        if emb.shape != (batch, self.dim):
            raise ValueError(f"class embeddings have shape {tuple(emb.shape)}, expected ({batch}, {self.dim})")
        return emb

    def forward(self, tokens: torch.Tensor, labels, mask: torch.Tensor | None = None,
                layer: int | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Transcoder conditions h (B, N, d); with ``layer`` (0-based block index) the raw hidden
        states after that block instead (no final norm, no position embedding), class token dropped.
        With ``positions`` (B, n) the conditions of those tokens only, (B, n, d): the last block then
        computes queries, MLP and norm there alone (what training reads: the masked tokens).
        """
        if tokens.ndim != 3 or tokens.shape[1:] != (self.num_tokens, self.K):
            raise ValueError(f"tokens must be (B, {self.num_tokens}, {self.K}), got {tuple(tokens.shape)}")
        B = tokens.shape[0]
        if layer is not None and not 0 <= layer < len(self.layers):
            raise ValueError(f"layer must be a block index in 0..{len(self.layers) - 1}, got {layer}")
        if mask is not None and mask.shape != (B, self.num_tokens):
            raise ValueError(f"mask must be ({B}, {self.num_tokens}) bool, got {tuple(mask.shape)}")
        if positions is not None and (layer is not None or positions.ndim != 2 or len(positions) != B
                                      or positions.is_floating_point()):
            raise ValueError(f"positions must be integer ({B}, n) and come without layer, got "
                             f"{positions.dtype} {tuple(positions.shape)}")
        cond = self.embed_class(labels, B)                                          # (B, d)
        x = self.tok_embeddings(tokens.to(self.tok_embeddings.weight.dtype))       # (B, N, d)
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_tok.to(x.dtype), x)
        x = self.tok_dropout(torch.cat([cond[:, None].to(x.dtype), x], dim=1))     # (B, 1 + N, d)
        mod = None if self.adaLN is None else self.adaLN(cond).view(B, 1, 6, self.dim)
        last = len(self.layers) - 1
        for i, block in enumerate(self.layers):
            rows = positions + 1 if positions is not None and i == last else None   # row 0 is the class token
            x = block(x, mod, self.rope, rows)
            if i == layer:
                return x[:, 1:]
        if positions is not None:
            return self.norm(x) + self.diffusion_pos_embed_learned[0][positions]   # (B, n, d)
        return self.norm(x)[:, 1:] + self.diffusion_pos_embed_learned
