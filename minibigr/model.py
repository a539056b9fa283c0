"""BiGR: masked modeling of binary tokens with a Bernoulli-diffusion transcoder (docs/method.md §2-§7).

    model = BiGR(BiGRConfig.preset("tiny-32"))
    loss, stats = model.loss(tokens, labels)          # training: tokens (B, N, K) in {0,1}
    tokens = model.generate(labels)                   # sampling with the config's recommended settings
    feats = model.features(tokens)                    # (B, d) representation for a linear probe

The backbone (minibigr.backbone) turns [class token] + tokens into one condition h_i per token;
the transcoder (minibigr.transcoder) models that token's K bits given h_i; the sampler
(minibigr.sampler) reveals tokens most-certain first.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .backbone import Backbone
from .checkpoint import Checkpointed
from .config import BiGRConfig
from .sampler import Callback, SamplingConfig, cfg_scale, masked_after, sample_tokens
from .transcoder import BinaryTranscoder

# generate runs the backbone on chunks of images whose hidden states (images x (1 + N) x d, both CFG halves) hold at
# most this many numbers (128 MiB in float32; a block's peak is a few times that): any batch samples in bounded
# memory; batches below it (1008 images of the shipped model with CFG, 63 of BiGR-L) run in one piece
GENERATE_ELEMENTS = 2 ** 25


# ----------------------------------------------------------------------------------------------
# Masked modeling helpers (docs/method.md §3)
# ----------------------------------------------------------------------------------------------
def mask_count(s: int, N: int) -> int:
    """n_mask = max(1, floor(N cos(pi/2 * s/N))) for a draw s in 0..N-1."""
    return max(1, math.floor(N * math.cos(math.pi / 2 * s / N)))


def spread_mask_counts(N: int, n: int) -> list[int]:
    """n mask counts at s = (j + 1/2) N / n, j = 0..n-1: the schedule covered evenly by a few fixed steps (for
    measurements that must not depend on which counts a few random draws give)."""
    return [mask_count(int((j + 0.5) * N / n), N) for j in range(n)]


def random_mask(B: int, N: int, n_mask: int, generator: torch.Generator | None = None,
                device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly n_mask random positions per sample: (mask (B, N) bool True = masked, idx (B, n_mask))."""
    idx = torch.rand(B, N, generator=generator, device=device).argsort(dim=1)[:, :n_mask]
    return positions_mask(idx, N), idx


def positions_mask(idx: torch.Tensor, N: int) -> torch.Tensor:
    """The mask (B, N) bool that is True at the positions idx (B, n)."""
    return torch.zeros(idx.shape[0], N, dtype=torch.bool, device=idx.device).scatter_(1, idx, True)


def label_drops(B: int, p: float, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """(B,) bool: which labels become the null class, each with probability p (classifier-free guidance training)."""
    return torch.rand(B, generator=generator, device=device) < p


@dataclass
class LossDraws:
    """Every random draw of one training step (docs/method.md §3, §4.2), made before the step.

    Given them, ``BiGR.loss`` is deterministic (dropout aside), so ``torch.compile`` captures it whole: a
    generator drawn from inside the step would break the graph at every draw.
    """

    drop: torch.Tensor                  # (B,) bool: the label becomes the null class
    idx: torch.Tensor                   # (B, n_mask) the masked positions
    t: torch.Tensor | None              # (B * n_mask,) transcoder timesteps in 1..T (None: direct objective)
    uniform: torch.Tensor | None        # (B * n_mask, K) uniforms of the forward draw z_t ~ q(z_t | z_0)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows idx of every sample, flattened.  x (B, N, D), idx (B, n) -> (B * n, D)."""
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1])).flatten(0, 1)


def masked_positions(mask: torch.Tensor, n: int) -> torch.Tensor:
    """The positions of the masked tokens, ascending, when every row has exactly n.  (B, N) -> (B, n)."""
    return mask.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :n]


# ----------------------------------------------------------------------------------------------
# Sampling helpers (docs/method.md §5)
# ----------------------------------------------------------------------------------------------
def masked_counts(given: torch.Tensor | None, N: int, s: SamplingConfig) -> list[int] | None:
    """How many tokens are still masked before each step 1..I and after the last (0) when every row generates
    the same number (the usual case), else None. Known on the host, these counts let every step gather a fixed
    number of tokens without a device sync.  given (B, N) bool or None (everything is generated)."""
    if given is None:
        n = N
    else:
        per_row = (~given).sum(1)
        if len(per_row) == 0 or not bool((per_row == per_row[0]).all()):
            return None
        n = int(per_row[0])
    return [int(masked_after(torch.tensor([n]), i, s.num_iter, s.mask_schedule)) for i in range(s.num_iter + 1)]


def masked_probs(transcoder: BinaryTranscoder, h: torch.Tensor, mask: torch.Tensor, count: int | None,
                 generator: torch.Generator | None = None, **chain) -> torch.Tensor:
    """p (B, N, K): the transcoder's reverse chain (``chain``: steps, temperature, cfg) for the masked tokens,
    1/2 for the others.

    h (B, N, d), or (2B, N, d) with the null class's conditions in the second half (CFG). ``count`` is the
    number of masked tokens in every row when they all have the same (a fixed-size gather, no device sync),
    or None (boolean indexing). Both run the chain on the same tokens in the same order (row by row,
    ascending position), so on the same generator they give the same p.
    """
    B, N = mask.shape
    h_cond, h_null = h[:B], (h[B:] if len(h) > B else None)
    p = torch.full((B, N, transcoder.K), 0.5, device=h.device, dtype=torch.promote_types(h.dtype, torch.float32))
    if count is None:
        p_masked = transcoder.sample(h_cond[mask], None if h_null is None else h_null[mask], generator=generator,
                                     **chain)
        p[mask] = p_masked.to(p.dtype)
        return p
    idx = masked_positions(mask, count)                                               # (B, count)
    p_masked = transcoder.sample(gather_tokens(h_cond, idx), None if h_null is None else gather_tokens(h_null, idx),
                                 generator=generator, **chain)                        # (B * count, K)
    return p.scatter_(1, idx[..., None].expand(-1, -1, transcoder.K), p_masked.view(B, count, -1).to(p.dtype))


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------
@contextmanager
def eval_mode(module: nn.Module):
    """Temporarily switch off dropout (and restore the previous mode afterwards)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


class BiGR(Checkpointed, nn.Module):
    """The whole generative model: backbone + transcoder, with training loss, sampler and features.

    ``save_pretrained(dir)`` / ``BiGR.from_pretrained(dir, device)`` store it as config.json + model.safetensors.
    """

    config_class = BiGRConfig

    def __init__(self, config: BiGRConfig):
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        self.transcoder = BinaryTranscoder(config.K, config.dim, config.transcoder_width, config.transcoder_blocks,
                                           config.T, config.schedule, config.objective, config.focal_gamma,
                                           config.loss_weighting)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    # -- input checks -----------------------------------------------------------------------
    def _check_tokens(self, tokens: torch.Tensor) -> int:
        c = self.config
        if tokens.ndim != 3 or tokens.shape[1:] != (c.num_tokens, c.K):
            raise ValueError(f"tokens must be (B, N={c.num_tokens}, K={c.K}), got {tuple(tokens.shape)}")
        return tokens.shape[0]

    def _check_labels(self, labels: torch.Tensor, B: int, check_range: bool = True,
                      allow_null: bool = True) -> torch.Tensor:
        if not torch.is_tensor(labels) or labels.is_floating_point() or labels.shape != (B,):
            shape = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
            raise ValueError(f"labels must be an integer tensor of shape ({B},), got {shape}")
        top = self.null_class if allow_null else self.null_class - 1
        if check_range and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > top):
            if allow_null:
                raise ValueError(f"labels must be in 0..{self.null_class} ({self.null_class} = null class)")
            raise ValueError(f"labels must be in 0..{top}; {self.null_class} is the null class (no class: the "
                             "unconditional model), which generate samples only when asked by name: "
                             "allow_null=True (a pipeline: the label 'null')")
        return labels.long()

    # -- forward and training ---------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, labels, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Transcoder conditions h (B, N, d).  tokens (B, N, K), labels (B,), mask (B, N) bool True = masked.

        ``labels`` may also be a class mix (y1, y2, alpha) or class embeddings (B, d).
        """
        B = self._check_tokens(tokens)
        if torch.is_tensor(labels) and not labels.is_floating_point():
            labels = self._check_labels(labels, B)
        return self.backbone(tokens, labels, mask)

    def loss_draws(self, B: int, generator: torch.Generator | None = None, device=None,
                   n_mask: int | None = None) -> LossDraws:
        """The random draws of one training step on B samples (labels are dropped in training mode only).

        One s ~ U{0..N-1} per batch sets n_mask = max(1, floor(N cos(pi/2 s/N))) unless ``n_mask`` is given;
        every sample masks exactly n_mask random positions.
        """
        N, p = self.config.num_tokens, self.config.class_dropout
        drop = (label_drops(B, p, generator, device) if self.training and p > 0
                else torch.zeros(B, dtype=torch.bool, device=device))
        if n_mask is None:
            n_mask = mask_count(int(torch.randint(0, N, (1,), generator=generator, device=device)), N)
        elif not 1 <= n_mask <= N:
            raise ValueError(f"n_mask must be in 1..{N}, got {n_mask}")
        _, idx = random_mask(B, N, n_mask, generator, device)
        return LossDraws(drop, idx, *self.transcoder.loss_draws(B * n_mask, generator, device))

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None,
             draws: LossDraws | None = None):
        """Masked-modeling loss of one batch: (loss, stats).

        The random draws are ``draws`` (see ``loss_draws``), or drawn here from ``generator``. Dropped labels
        become the null class; the transcoder loss is averaged over the masked positions and the K bits.
        stats: loss and bce (detached tensors), n_mask (masked tokens per sample).
        """
        if draws is None:
            draws = self.loss_draws(self._check_tokens(tokens), generator, tokens.device)
        z0, cond = self.masked_targets(tokens, labels, draws)                               # (B * n_mask, K / d)
        loss_bits, bce = self.transcoder.loss(z0, cond, t=draws.t, uniform=draws.uniform)   # (B * n_mask, K) each
        loss = loss_bits.mean()
        return loss, {"loss": loss.detach(), "bce": bce.mean().detach(), "n_mask": draws.idx.shape[1]}

    def masked_targets(self, tokens: torch.Tensor, labels: torch.Tensor,
                       draws: LossDraws) -> tuple[torch.Tensor, torch.Tensor]:
        """The clean bits z0 (B * n_mask, K) of the masked tokens of ``draws`` and their conditions h (B * n_mask, d):
        what the transcoder learns from (dropped labels become the null class)."""
        B = self._check_tokens(tokens)
        labels = self._check_labels(labels, B, check_range=False)
        labels = torch.where(draws.drop, self.null_class, labels)                          # (B,)
        mask = positions_mask(draws.idx, self.config.num_tokens)                           # (B, N)
        # the conditions of the masked tokens only: the backbone's last block runs its queries there alone
        cond = self.backbone(tokens, labels, mask, positions=draws.idx).flatten(0, 1)      # (B * n_mask, d)
        z0 = gather_tokens(tokens, draws.idx).to(self.backbone.tok_embeddings.weight.dtype)  # (B * n_mask, K)
        return z0, cond

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups with the official rule: decay every parameter of >= 2 dimensions (weight
        matrices, embedding tables, mask vector, position embedding, ada_gss) except the transcoder's;
        no decay on biases, norm weights and other 1-D parameters, nor on anything in the transcoder.
        """
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if p.ndim < 2 or name.endswith(".bias") or name.startswith("transcoder."):
                no_decay.append(p)
            else:
                decay.append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    # -- generation -------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, labels: torch.Tensor, *, generator: torch.Generator | None = None,
                 tokens: torch.Tensor | None = None, given: torch.Tensor | None = None, class_mix: tuple | None = None,
                 callback: Callback | None = None, allow_null: bool = False, **overrides) -> torch.Tensor:
        """Sample tokens (B, N, K) in {0,1} for labels (B,) (docs/method.md §5).

        The settings are ``self.config.sampling`` with any SamplingConfig field overridden by keyword.
        ``tokens`` + ``given`` (B, N) bool keep the given tokens fixed (the zero-shot apps); ``class_mix`` =
        (labels2, alpha) conditions on alpha e(labels) + (1 - alpha) e(labels2); ``callback(step)`` sees a
        ``sampler.SamplingStep`` after every step (tokens, masks, p). Labels are classes 0..C-1; the null class C
        (unconditional samples) only with ``allow_null=True``.
        """
        s = self.config.sampling.replace(**overrides)
        labels, tokens, class_mix = self._check_generate(labels, tokens, given, class_mix, allow_null)
        B, guided = len(labels), s.cfg != 1.0
        if B == 0:                                       # an empty batch: nothing to sample
            return tokens
        bf16 = torch.autocast(labels.device.type, dtype=torch.bfloat16, enabled=s.precision == "bfloat16")
        with eval_mode(self), bf16:
            # class embeddings of the rows, and with CFG the null class's (B, d) each
            cond = self.backbone.embed_class(labels if class_mix is None else (labels, *class_mix), B)
            null = self.backbone.embed_class(torch.full_like(labels, self.null_class), B) if guided else None
            # tokens still masked before each step and after the last, when the host can know them (fixed-size gathers)
            counts = masked_counts(given, self.config.num_tokens, s)

            def predict(tokens: torch.Tensor, mask: torch.Tensor, i: int, chosen: torch.Tensor | None) -> torch.Tensor:
                # the tokens that need p: the still-masked ones, or only those a blind order chose
                rows = mask if chosen is None else chosen
                count = None if counts is None else counts[i - 1] - (0 if chosen is None else counts[i])
                if count == 0:                           # nothing to predict in any row
                    return torch.full_like(tokens, 0.5)
                # the conditions h_i of every token, then the transcoder's reverse chain for those tokens: p (B, N, K)
                return self._token_probs(tokens, mask, rows, count, cond, null, generator, steps=s.diffusion_steps,
                                         temperature=s.temperature, cfg=cfg_scale(s.cfg, s.cfg_schedule, i, s.num_iter))

            # reveal the most certain tokens first, over num_iter steps
            return sample_tokens(predict, tokens, given, s, generator=generator, callback=callback)

    def _token_probs(self, tokens: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, count: int | None,
                     cond: torch.Tensor, null: torch.Tensor | None, generator: torch.Generator | None,
                     **chain) -> torch.Tensor:
        """p (B, N, K) of the tokens ``rows`` (B, N) bool (1/2 elsewhere) of tokens (B, N, K) masked by mask (B, N).

        The backbone's conditions for the class embeddings cond (B, d) and, with CFG, the null class's null (B, d)
        in one pass, then ``masked_probs`` (count, chain as there). Chunk after chunk of images whose hidden states
        hold at most ``GENERATE_ELEMENTS`` numbers, so any batch runs in bounded memory (the chain bounds its own);
        with a generator, each chunk's chain draws in turn.
        """
        B, guided = len(tokens), null is not None
        chunk = max(1, GENERATE_ELEMENTS // ((1 + guided) * (1 + self.config.num_tokens) * self.config.dim))
        probs = []
        for a in range(0, B, chunk):
            b = min(B, a + chunk)
            c = cond[a:b] if null is None else torch.cat([cond[a:b], null[a:b]])            # (R, d): R = b - a, or 2x
            h = self.backbone(tokens[a:b].repeat(1 + guided, 1, 1), c, mask[a:b].repeat(1 + guided, 1))  # (R, N, d)
            probs.append(masked_probs(self.transcoder, h, rows[a:b], count, generator, **chain))   # (b - a, N, K)
        return torch.cat(probs)

    def _check_generate(self, labels, tokens, given, class_mix,
                        allow_null: bool) -> tuple[torch.Tensor, torch.Tensor, tuple | None]:
        """generate's inputs checked: (labels (B,) int64, tokens (B, N, K) in the model's dtype, class_mix with its
        labels2 checked as labels are)."""
        B = labels.shape[0] if torch.is_tensor(labels) and labels.ndim else 0
        labels = self._check_labels(labels, B, allow_null=allow_null)
        N, K, dtype = self.config.num_tokens, self.config.K, self.backbone.tok_embeddings.weight.dtype
        if tokens is None:
            if given is not None:
                raise ValueError("given needs the tokens it refers to")
            tokens = torch.zeros(B, N, K, device=labels.device, dtype=dtype)
        elif self._check_tokens(tokens) != B:
            raise ValueError(f"tokens have batch {tokens.shape[0]}, labels {B}")
        if given is not None and (given.shape != (B, N) or given.dtype != torch.bool):
            raise ValueError(f"given must be a bool tensor of shape ({B}, {N}), got {given.dtype} {tuple(given.shape)}")
        if class_mix is not None:
            class_mix = (self._check_labels(class_mix[0], B, allow_null=allow_null), *class_mix[1:])
        return labels, tokens.to(dtype), class_mix

    # -- representations --------------------------------------------------------------------
    @torch.no_grad()
    def features(self, tokens: torch.Tensor, layer: int | None = None,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        """Image representation (B, d) (docs/method.md §6): the backbone on the unmasked tokens with the null
        class (unless labels are given), hidden states after block ``layer`` (0-based as the official
        layer_index, negative counts from the end; default (n_layer - 1) // 2, i.e. after half the
        blocks), class token dropped, averaged over the N tokens.
        """
        B = self._check_tokens(tokens)
        n_layer = self.config.n_layer
        layer = (n_layer - 1) // 2 if layer is None else layer
        if not -n_layer <= layer < n_layer:
            raise ValueError(f"layer must be in {-n_layer}..{n_layer - 1}, got {layer}")
        if labels is None:
            labels = torch.full((B,), self.null_class, dtype=torch.long, device=tokens.device)
        labels = self._check_labels(labels, B)
        with eval_mode(self):
            h = self.backbone(tokens, labels, None, layer=layer % n_layer)    # (B, N, d)
        return h.float().mean(1)
