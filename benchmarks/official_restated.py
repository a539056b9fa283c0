"""The authors' BiGR (github haoosz/BiGR: llama/gpt.py, llama/bindiff/binarylatent.py) restated for timing.

Written from scratch in this project's words, but keeping every choice of the authors' code that makes it
fast or slow, because ``benchmarks/vs_official.py`` times it against minibigr:

- sampling: the transcoder's reverse chain runs for all N tokens of every image at every unmasking step;
  the chain embeds the condition and the timestep again at each of its S steps; each strided move builds
  its kernel from one-step kernels, one elementwise pass per skipped timestep; ``.item()`` reads the
  timestep on the host; the Gumbel noise is drawn by NumPy and copied in; the chosen tokens are gathered
  through Python lists of indices and their bits are written one bit at a time;
- training: the mask comes from sorting noise (redrawn until every row masks the same count), masked
  positions are overwritten through ``nonzero`` indices, attention gets an all-true boolean mask tensor,
  rotary embedding rotates pairs with ``stack``, RMSNorm runs in float32, and the transcoder's loss is
  computed for every token and then averaged over the masked ones.

The module names follow the authors' state dict, so ``official.to_official_bigr(model, with_duplicates=False)``
loads into it strictly. Only what the benchmark needs is here: class-conditional sampling with CFG and the
training loss (flip or x0 objective, adaLN backbone), in eval and train mode. docs/method.md §4-§5 state the
algorithm both implement.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minibigr.backbone import ffn_hidden_dim, modulate
from minibigr.transcoder import DenoiseBlock, FinalLayer, TimestepEmbedder, bernoulli_schedule


# ----------------------------------------------------------------------------------------------
# The denoiser (their DenoiseModel): embeds condition and timestep inside every call. Its blocks, final
# layer and timestep embedder are theirs too, layer for layer: minibigr's own modules serve here.
# ----------------------------------------------------------------------------------------------
class DenoiseModel(nn.Module):
    def __init__(self, K: int, cond_dim: int, width: int, blocks: int):
        super().__init__()
        self.K = K
        self.t_embedder = TimestepEmbedder(width)
        self.x_embedder = nn.Linear(K, width)
        self.c_embedder = nn.Linear(cond_dim, width)
        self.blocks = nn.ModuleList([DenoiseBlock(width) for _ in range(blocks)])
        self.final_layer = FinalLayer(width, K)

    def forward(self, x, t, cond):
        x = self.x_embedder((x * 1.0 - 0.5) * 2.0)
        c = self.c_embedder(cond) + self.t_embedder(t)
        for block in self.blocks:
            x = block(x, c)
        return self.final_layer(x, c)

    def forward_with_cfg(self, x, t, cond, cfg_scale):
        """x holds the conditional rows twice; both halves run, then the first half's logits are guided."""
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half]), t, cond)
        cond_out, uncond_out = out.split(len(out) // 2)
        guided = uncond_out + cfg_scale * (cond_out - uncond_out)
        return torch.cat([guided, guided])


# ----------------------------------------------------------------------------------------------
# Bernoulli diffusion (their BinaryDiffusion + noise scheduler)
# ----------------------------------------------------------------------------------------------
class NoiseScheduler(nn.Module):
    def __init__(self, T: int):
        super().__init__()
        k, b, beta = bernoulli_schedule("linear", T)
        for name, value in (("k_final", k), ("b_final", b), ("beta", beta), ("cumbeta", torch.cumprod(beta, 0))):
            self.register_buffer(name, value.float())

    def one_step(self, x, t):
        """P(z_t = 1 | z_{t-1} = x) for one timestep t (a tensor of per-row timesteps)."""
        beta = self.beta[t].unsqueeze(-1)
        return beta * x + (1 - beta) / 2

    def forward(self, x0, t):
        """P(z_t = 1 | z_0 = x0)."""
        return self.k_final[t].unsqueeze(-1) * x0 + self.b_final[t].unsqueeze(-1)


class BinaryDiffusion(nn.Module):
    def __init__(self, denoiser: DenoiseModel, T: int, flip: bool):
        super().__init__()
        self._denoise_fn, self.T, self.flip = denoiser, T, flip
        self.scheduler = NoiseScheduler(T)

    def loss(self, z0, cond):
        """Per-bit loss and BCE for every row of z0 (M, K): their focal loss with alpha = -1, gamma = 0."""
        t = torch.randint(1, self.T + 1, (z0.shape[0],), device=z0.device)
        z_t = torch.bernoulli(self.scheduler(z0, t))
        logits = self._denoise_fn(z_t, t - 1, cond)
        if self.flip:
            target = (z_t != z0).float()
            x0_logits = z_t * -logits + (1 - z_t) * logits
        else:
            target, x0_logits = z0, logits
        alpha = target.mean(-1, keepdim=True)
        weight = target * (1 - alpha) + (1 - target) * alpha + 1.0 / target.shape[-1]
        loss = weight * F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return loss, F.binary_cross_entropy_with_logits(x0_logits, z0, reduction="none")

    def strided_kernel(self, z_t, t, t_prev):
        """P(z_t = observed | z_t' = v) for v = 1, 0, by applying the one-step kernels t'+1..t in turn."""
        from_1, from_0 = torch.ones_like(z_t), torch.zeros_like(z_t)
        for s in range(t_prev + 1, t + 1):
            steps = torch.full((z_t.shape[0],), s, device=z_t.device, dtype=torch.long)
            from_1, from_0 = self.scheduler.one_step(from_1, steps), self.scheduler.one_step(from_0, steps)
        return z_t * from_1 + (1 - z_t) * (1 - from_1), z_t * from_0 + (1 - z_t) * (1 - from_0)

    @torch.no_grad()
    def sample(self, cond, steps: int, cfg_scale: float, temp: float = 1.0, draw=torch.bernoulli):
        """p0 of the last step for conditions cond (M, d); with CFG, cond holds [cond; null] and the
        conditional half's p0 (M / 2, K) comes back. ``draw(p)`` makes bits (theirs: torch.bernoulli)."""
        M = cond.shape[0]
        z_t = draw(torch.full((M, self._denoise_fn.K), 0.5, device=cond.device))
        visited = np.arange(1, self.T + 1)
        if steps != self.T:
            visited = visited[np.array(np.linspace(0.0, 1.0, steps) * (self.T - 1), dtype=int)]
        for i in reversed(range(len(visited))):
            t = torch.full((M,), int(visited[i]), device=cond.device, dtype=torch.long)
            if cfg_scale > 1.0:
                logits = self._denoise_fn.forward_with_cfg(z_t, t - 1, cond, cfg_scale)
            else:
                logits = self._denoise_fn(z_t, t - 1, cond)
            logits = logits / temp
            if self.flip:
                logits = z_t * -logits + (1 - z_t) * logits
            p0 = torch.sigmoid(logits)
            if t[0].item() == 1:
                return p0[: M // 2] if cfg_scale > 1.0 else p0
            t_prev = int(visited[i - 1])
            like_1, like_0 = self.strided_kernel(z_t, int(t[0].item()), t_prev)
            prior_1 = self.scheduler(p0, torch.full_like(t, t_prev))
            u_1, u_0 = prior_1 * like_1, (1 - prior_1) * like_0
            z_t = draw(u_1 / (u_1 + u_0))
        raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------
# The backbone (their Transformer with adaLN)
# ----------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rotary_2d(grid: int, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """(1 + grid^2, head_dim / 2, 2) cos/sin pairs; the class token's row is zero (as theirs)."""
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    f = torch.outer(torch.arange(grid), freqs)
    f = torch.cat([f[:, None].expand(-1, grid, -1), f[None].expand(grid, -1, -1)], dim=-1)
    cache = torch.stack([torch.cos(f), torch.sin(f)], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(1, head_dim // 2, 2), cache])


def apply_rotary(x, freqs):
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    freqs = freqs.view(1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack([xs[..., 0] * freqs[..., 0] - xs[..., 1] * freqs[..., 1],
                       xs[..., 1] * freqs[..., 0] + xs[..., 0] * freqs[..., 1]], dim=-1)
    return out.flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int, resid_dropout: float):
        super().__init__()
        self.dim, self.n_head, self.head_dim = dim, n_head, dim // n_head
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.resid_dropout = nn.Dropout(resid_dropout)

    def forward(self, x, freqs, mask):
        B, L, _ = x.shape
        q, k, v = self.wqkv(x).split([self.dim, self.dim, self.dim], dim=-1)
        q, k, v = (t.view(B, L, self.n_head, self.head_dim) for t in (q, k, v))
        q, k = apply_rotary(q, freqs), apply_rotary(k, freqs)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)
        return self.resid_dropout(self.wo(y.transpose(1, 2).contiguous().view(B, L, self.dim)))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.w1, self.w3 = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, n_head: int, hidden: int, eps: float, dropout: float):
        super().__init__()
        self.attention = Attention(dim, n_head, dropout)
        self.feed_forward = FeedForward(dim, hidden, dropout)
        self.attention_norm, self.ffn_norm = RMSNorm(dim, eps), RMSNorm(dim, eps)
        self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, dim))

    def forward(self, x, cond_adaln, freqs, mask):
        shift1, scale1, gate1, shift2, scale2, gate2 = (cond_adaln + self.ada_gss).unbind(2)
        h = x + gate1 * self.attention(modulate(self.attention_norm(x), shift1, scale1), freqs, mask)
        return h + gate2 * self.feed_forward(modulate(self.ffn_norm(h), shift2, scale2))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)
        self.num_classes, self.dropout_prob = num_classes, dropout_prob

    def forward(self, labels, train: bool):
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels).unsqueeze(1)


class OfficialBiGR(nn.Module):
    """The authors' Transformer for a minibigr config (adaLN backbone, flip or x0 transcoder)."""

    def __init__(self, config):
        super().__init__()
        c = config
        if not c.use_adaLN or c.objective == "direct" or c.schedule != "linear":
            raise ValueError("the restatement covers the published setup: adaLN, linear schedule, flip or x0")
        self.config, self.num_classes, self.N = c, c.num_classes, c.num_tokens
        self.cls_embedding = LabelEmbedder(c.num_classes, c.dim, c.class_dropout)
        self.mask_tok = nn.Parameter(torch.zeros(1, c.dim))
        self.tok_embeddings = nn.Linear(c.K, c.dim)
        self.tok_dropout = nn.Dropout(c.token_dropout)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))
        hidden = ffn_hidden_dim(c.dim, c.multiple_of)
        self.layers = nn.ModuleList([TransformerBlock(c.dim, c.n_head, hidden, c.norm_eps, c.resid_dropout)
                                     for _ in range(c.n_layer)])
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, c.num_tokens, c.dim))
        self.denoise_mlp = DenoiseModel(c.K, c.dim, c.transcoder_width, c.transcoder_blocks)
        self.diffusion_processor = BinaryDiffusion(self.denoise_mlp, c.T, flip=c.objective == "flip")
        self.register_buffer("freqs_cis", rotary_2d(math.isqrt(c.num_tokens), c.dim // c.n_head), persistent=False)

    def random_mask(self, B: int, device, n: int | None = None) -> torch.Tensor:
        """Their training mask: one cosine-drawn count per batch (or n), positions from sorted noise (float, 1 =
        masked)."""
        if n is None:
            step = torch.randint(0, self.N, (1,))
            n = torch.maximum(torch.Tensor([1]), torch.floor(self.N * torch.cos(math.pi / 2 * step / self.N)))
            n = int(n.item())
        while True:
            noise = torch.rand(B, self.N, device=device)
            cutoff = torch.sort(noise, dim=1)[0][:, n - 1:n]
            mask = (noise <= cutoff).float()
            if mask.sum() == B * n:
                return mask

    def conditions(self, tokens, labels, mask):
        """Backbone pass: h (B, N, d) after the final norm and position embedding."""
        cond = self.cls_embedding(labels, train=self.training)
        x = self.tok_embeddings(tokens)
        rows, cols = mask.nonzero(as_tuple=True)
        x[rows, cols, :] = self.mask_tok.to(x.dtype)
        h = self.tok_dropout(torch.cat([cond, x], dim=1))
        ada = self.adaLN(cond).reshape(cond.shape[0], 1, 6, -1)
        attn_mask = torch.ones((h.shape[1], h.shape[1]), dtype=torch.bool, device=h.device)
        for layer in self.layers:
            h = layer(h, ada, self.freqs_cis, attn_mask)
        return self.norm(h).float()[:, 1:].contiguous() + self.diffusion_pos_embed_learned

    def loss(self, tokens, labels, n_mask: int | None = None):
        """Training loss of one batch: the transcoder on every token, averaged over the masked ones (n_mask per
        sample: drawn as they draw it, unless given)."""
        B, N, K = tokens.shape
        mask = self.random_mask(B, tokens.device, n_mask)
        h = self.conditions(tokens, labels, mask)
        loss_all, _ = self.diffusion_processor.loss(tokens.reshape(-1, K), h.reshape(-1, h.shape[-1]))
        weight = mask.unsqueeze(-1).repeat_interleave(K, dim=-1)
        return (loss_all.reshape(B, N, K) * weight).sum() / weight.sum()

    @torch.no_grad()
    def generate(self, labels, num_iter: int, cfg_scale: float, gumbel_temp: float, steps: int,
                 temp: float = 1.0, draw=torch.bernoulli) -> torch.Tensor:
        """Their generate_with_cfg: confidence order, constant schedules, tokens (B, N, K). ``draw(p)`` makes
        every bit of the chain and of the revealed tokens (theirs: torch.bernoulli; [p > 1/2] makes the
        whole loop deterministic, for comparing outputs)."""
        B, N, K, device = labels.shape[0], self.N, self.config.K, labels.device
        cond = torch.cat([labels, torch.full_like(labels, self.num_classes)]) if cfg_scale > 1.0 else labels
        seq = torch.empty((B, N, K), device=device)
        masked = torch.ones((B, N), dtype=torch.bool, device=device)
        old = N
        for step in range(num_iter):
            new = math.floor(np.cos(math.pi / 2.0 * (step + 1) / num_iter) * N)
            predict_len, old = old - new, new
            both = 2 if cfg_scale > 1.0 else 1
            h = self.conditions(torch.cat([seq] * both), cond, torch.cat([masked] * both))
            pred = self.diffusion_processor.sample(h.reshape(-1, h.shape[-1]), steps, cfg_scale, temp, draw)
            pred = pred.reshape(B, N, K)
            confidence = (torch.abs(pred - 0.5) * 2.0).mean(-1)
            confidence[(~masked).nonzero(as_tuple=True)] = float("-inf")
            confidence = confidence + torch.Tensor(gumbel_temp * np.random.gumbel(size=confidence.shape)).to(device)
            top = torch.topk(confidence, k=predict_len, dim=1)[1]
            indices = (torch.arange(B).repeat_interleave(predict_len).tolist(), top.reshape(-1).tolist())
            pred[indices] = torch.log((pred[indices] + 1e-8) / (1 - pred[indices] + 1e-8))
            for bit in range(K):
                bits = draw(torch.sigmoid(pred[indices][:, bit]))
                for j, value in enumerate(bits):
                    seq[indices[0][j], indices[1][j], bit] = value
            masked[indices] = False
        return seq
