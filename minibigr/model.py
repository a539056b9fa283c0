"""BiGR: masked modeling of binary tokens with a Bernoulli-diffusion transcoder (SPEC §1.2-§1.7).

    model = BiGR(BiGRConfig.preset("tiny-32"))
    loss, stats = model.loss(tokens, labels)          # training: tokens (B, N, K) in {0,1}
    tokens = model.generate(labels)                   # sampling with the config's recommended settings
    feats = model.features(tokens)                    # (B, d) representation for a linear probe

The backbone (minibigr.backbone) turns [class token] + tokens into one condition h_i per token;
the transcoder (minibigr.transcoder) models that token's K bits given h_i; the sampler
(minibigr.sampler) reveals tokens most-certain first.
"""

from __future__ import annotations

import dataclasses
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .backbone import Backbone
from .checkpoint import WEIGHTS_NAME, load_checkpoint, load_strict, save_checkpoint
from .sampler import CFG_SCHEDULES, GUMBEL_SCHEDULES, ORDERS, cfg_scale, masked_after, sample_tokens
from .transcoder import OBJECTIVES, SCHEDULES, BinaryTranscoder

SAMPLING_FIELDS = ("num_iter", "cfg", "cfg_schedule", "gumbel", "gumbel_schedule", "order", "diffusion_steps",
                   "temperature")


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------
@dataclass
class BiGRConfig:
    """Sizes, training regularisation and recommended sampling settings of a BiGR model.

    The defaults are the authors' BiGR-L-d24 (ImageNet 256x256, 16x16 tokens of 24 bits).
    """

    # data
    K: int = 24                      # bits per token (the official "binary_size" / code length)
    num_classes: int = 1000          # C; label C is the null class
    num_tokens: int = 256            # N image tokens, a square h x w grid in raster order
    # backbone
    dim: int = 1024
    n_layer: int = 24
    n_head: int = 16
    multiple_of: int = 256           # SwiGLU hidden = 2/3 * 4d rounded up to this
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    token_dropout: float = 0.1
    resid_dropout: float = 0.1
    ffn_dropout: float = 0.1
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    class_dropout: float = 0.1
    use_adaLN: bool = True
    # transcoder
    transcoder_width: int = 1024
    transcoder_blocks: int = 3
    T: int = 256
    schedule: str = "linear"
    objective: str = "flip"
    focal_gamma: float = 0.0
    # recommended sampling settings (what generate() uses when an argument is None)
    num_iter: int = 20
    cfg: float = 2.5
    cfg_schedule: str = "constant"
    gumbel: float = 0.17
    gumbel_schedule: str = "constant"
    order: str = "entropy"
    diffusion_steps: int = 100
    temperature: float = 1.0

    def __post_init__(self):
        problems = []
        grid = math.isqrt(self.num_tokens) if self.num_tokens > 0 else 0
        if grid < 1 or grid * grid != self.num_tokens:
            problems.append(f"num_tokens {self.num_tokens} is not a square grid of tokens")
        if self.dim % self.n_head:
            problems.append(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        elif (self.dim // self.n_head) % 4:
            problems.append(f"head_dim {self.dim // self.n_head} must be divisible by 4 (2-D rotary)")
        for name, value, allowed in [("schedule", self.schedule, SCHEDULES), ("objective", self.objective, OBJECTIVES),
                                     ("order", self.order, ORDERS), ("cfg_schedule", self.cfg_schedule, CFG_SCHEDULES),
                                     ("gumbel_schedule", self.gumbel_schedule, GUMBEL_SCHEDULES)]:
            if value not in allowed:
                problems.append(f"{name} {value!r} is not one of {allowed}")
        for name in ("token_dropout", "resid_dropout", "ffn_dropout", "attn_dropout", "drop_path", "class_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("K", "num_classes", "n_layer", "T", "num_iter", "transcoder_width", "multiple_of"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.diffusion_steps <= self.T:
            problems.append(f"diffusion_steps must be in 1..T={self.T}, got {self.diffusion_steps}")
        if problems:
            raise ValueError("invalid BiGRConfig: " + "; ".join(problems))

    def sampling_defaults(self) -> dict:
        """The recommended sampling settings, as keyword arguments of ``BiGR.generate``."""
        return {name: getattr(self, name) for name in SAMPLING_FIELDS}

    @property
    def grid(self) -> int:
        """h = w of the token grid."""
        return math.isqrt(self.num_tokens)

    @classmethod
    def preset(cls, name: str, **overrides) -> BiGRConfig:
        """A named configuration (see ``PRESETS``), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown BiGR preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BiGRConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown BiGRConfig fields {unknown}")
        return cls(**d)


# The published models (ImageNet 256x256, B-AE d24: 16x16 tokens of 24 bits) with the paper's
# recommended sampling settings, and small models for 32x32 and 64x64 data.
PRESETS: dict[str, dict] = {
    "BiGR-L": dict(K=24, num_classes=1000, num_tokens=256, dim=1024, n_layer=24, n_head=16,
                   transcoder_blocks=3, transcoder_width=1024, num_iter=20, gumbel=0.17),
    "BiGR-XL": dict(K=24, num_classes=1000, num_tokens=256, dim=1280, n_layer=36, n_head=20,
                    transcoder_blocks=6, transcoder_width=1280, num_iter=25, gumbel=0.25),
    "BiGR-XXL": dict(K=24, num_classes=1000, num_tokens=256, dim=1536, n_layer=48, n_head=24,
                     transcoder_blocks=8, transcoder_width=1536, num_iter=25, gumbel=0.30),
    # 32x32 images -> 8x8 tokens of 16 bits, 10 classes; trains on a 2-core CPU in about 30 minutes
    # Sampling defaults chosen on the shipped Fashion-MNIST model (200 samples, seed 1; FD and class
    # accuracy under the project's classifier): CFG 3 with a nearly greedy order (Gumbel 0.03) beat
    # CFG 2 / Gumbel 0.1 on both (FD 6.31 vs 6.47, accuracy 0.87 vs 0.85) at the cost of recall.
    "tiny-32": dict(K=16, num_classes=10, num_tokens=64, dim=128, n_layer=4, n_head=4, multiple_of=64,
                    transcoder_blocks=2, transcoder_width=256, num_iter=10, cfg=3.0, gumbel=0.03,
                    diffusion_steps=50),
    # tiny-32 twice as wide: the shipped Fashion-MNIST model (GPU-trained). Width and epochs, not depth,
    # lifted its linear probe above raw pixels (README, "Shipped model").
    "wide-32": dict(K=16, num_classes=10, num_tokens=64, dim=256, n_layer=4, n_head=4, multiple_of=64,
                    transcoder_blocks=2, transcoder_width=256, num_iter=10, cfg=3.0, gumbel=0.03,
                    diffusion_steps=50),
    # CIFAR-10 size, for a GPU
    "small-32": dict(K=16, num_classes=10, num_tokens=64, dim=384, n_layer=8, n_head=6, multiple_of=128,
                     transcoder_blocks=3, transcoder_width=512, num_iter=12, cfg=2.0, gumbel=0.1,
                     diffusion_steps=100),
    # ImageNet 64x64 -> 16x16 tokens of 24 bits, 1000 classes
    "small-64": dict(K=24, num_classes=1000, num_tokens=256, dim=512, n_layer=12, n_head=8, multiple_of=128,
                     transcoder_blocks=3, transcoder_width=768, num_iter=20, cfg=2.5, gumbel=0.17,
                     diffusion_steps=100),
}


# ----------------------------------------------------------------------------------------------
# Masked modeling helpers (SPEC §1.3)
# ----------------------------------------------------------------------------------------------
def mask_count(s: int, N: int) -> int:
    """n_mask = max(1, floor(N cos(pi/2 * s/N))) for a draw s in 0..N-1."""
    return max(1, math.floor(N * math.cos(math.pi / 2 * s / N)))


def random_mask(B: int, N: int, n_mask: int, generator: torch.Generator | None = None,
                device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly n_mask random positions per sample: (mask (B, N) bool True = masked, idx (B, n_mask))."""
    idx = torch.rand(B, N, generator=generator, device=device).argsort(dim=1)[:, :n_mask]
    mask = torch.zeros(B, N, dtype=torch.bool, device=device).scatter_(1, idx, True)
    return mask, idx


def drop_labels(labels: torch.Tensor, p: float, null_class: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by the null class with probability p (classifier-free guidance training)."""
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, null_class), labels)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows idx of every sample, flattened.  x (B, N, D), idx (B, n) -> (B * n, D)."""
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1])).flatten(0, 1)


def masked_positions(mask: torch.Tensor, n: int) -> torch.Tensor:
    """The positions of the masked tokens, ascending, when every row has exactly n.  (B, N) -> (B, n)."""
    return mask.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :n]


@contextmanager
def eval_mode(module: nn.Module):
    """Temporarily switch off dropout (and restore the previous mode afterwards)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------
class BiGR(nn.Module):
    def __init__(self, config: BiGRConfig):
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        self.transcoder = BinaryTranscoder(config.K, config.dim, config.transcoder_width, config.transcoder_blocks,
                                           config.T, config.schedule, config.objective, config.focal_gamma)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    # -- input checks -----------------------------------------------------------------------
    def _check_tokens(self, tokens: torch.Tensor) -> int:
        c = self.config
        if tokens.ndim != 3 or tokens.shape[1:] != (c.num_tokens, c.K):
            raise ValueError(f"tokens must be (B, N={c.num_tokens}, K={c.K}), got {tuple(tokens.shape)}")
        return tokens.shape[0]

    def _check_labels(self, labels: torch.Tensor, B: int, check_range: bool = True) -> torch.Tensor:
        if not torch.is_tensor(labels) or labels.is_floating_point() or labels.shape != (B,):
            shape = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
            raise ValueError(f"labels must be an integer tensor of shape ({B},), got {shape}")
        if check_range and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.null_class):
            raise ValueError(f"labels must be in 0..{self.null_class} ({self.null_class} = null class)")
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

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None):
        """Masked-modeling loss of one batch: (loss, stats).

        In training mode labels become the null class with probability ``class_dropout``. One
        s ~ U{0..N-1} per batch sets n_mask = max(1, floor(N cos(pi/2 s/N))); every sample masks
        exactly n_mask random positions, and the transcoder loss is averaged over those positions
        and the K bits. stats: loss and bce (detached tensors), mask_rate and n_mask (numbers).
        """
        B = self._check_tokens(tokens)
        labels = self._check_labels(labels, B, check_range=False)
        N, device = self.config.num_tokens, tokens.device
        if self.training and self.config.class_dropout > 0:
            labels = drop_labels(labels, self.config.class_dropout, self.null_class, generator)
        s = int(torch.randint(0, N, (1,), generator=generator, device=device))
        n_mask = mask_count(s, N)
        mask, idx = random_mask(B, N, n_mask, generator, device)
        h = self.backbone(tokens, labels, mask)                                   # (B, N, d)
        cond = gather_tokens(h, idx)                                              # (B * n_mask, d)
        z0 = gather_tokens(tokens, idx).to(self.backbone.tok_embeddings.weight.dtype)
        loss_bits, bce = self.transcoder.loss(z0, cond, generator=generator)      # (M, K) each
        loss = loss_bits.mean()
        return loss, {"loss": loss.detach(), "bce": bce.mean().detach(), "mask_rate": n_mask / N,
                      "n_mask": n_mask}

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
    def generate(self, labels: torch.Tensor, num_iter: int | None = None, cfg: float | None = None,
                 gumbel: float | None = None, order: str | None = None, diffusion_steps: int | None = None,
                 temperature: float | None = None, cfg_schedule: str | None = None,
                 gumbel_schedule: str | None = None, deterministic: bool = False,
                 generator: torch.Generator | None = None, tokens: torch.Tensor | None = None,
                 given: torch.Tensor | None = None, class_mix: tuple | None = None,
                 mask_schedule: str = "cosine", return_order: bool = False):
        """Sample tokens (B, N, K) in {0,1} for labels (B,); None means the config's recommended value.

        CFG runs the conditional and null-class backbone passes as one batch, then the transcoder's
        reverse chain only for the tokens that are still masked. ``tokens`` + ``given`` (B, N) bool
        keep the given tokens fixed (inpainting and friends). ``class_mix`` = (labels2, alpha) uses
        the class embedding alpha e(labels) + (1 - alpha) e(labels2); the null class stays null.
        ``mask_schedule`` "linear" reveals n/I tokens per step instead of the cosine schedule.
        With ``return_order`` also returns revealed_at (B, N): the step 1..I that revealed each
        token, 0 for given ones.
        """
        c = self.config
        num_iter = c.num_iter if num_iter is None else num_iter
        cfg = c.cfg if cfg is None else cfg
        gumbel = c.gumbel if gumbel is None else gumbel
        order = c.order if order is None else order
        steps = c.diffusion_steps if diffusion_steps is None else diffusion_steps
        temperature = c.temperature if temperature is None else temperature
        cfg_schedule = c.cfg_schedule if cfg_schedule is None else cfg_schedule
        gumbel_schedule = c.gumbel_schedule if gumbel_schedule is None else gumbel_schedule
        if cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"unknown cfg schedule {cfg_schedule!r}; choose one of {CFG_SCHEDULES}")
        if num_iter < 1:
            raise ValueError(f"num_iter must be >= 1, got {num_iter}")

        B = labels.shape[0] if torch.is_tensor(labels) else 0
        labels = self._check_labels(labels, B)
        device, dtype = labels.device, self.backbone.tok_embeddings.weight.dtype
        N, K = c.num_tokens, c.K
        if tokens is None:
            if given is not None:
                raise ValueError("given needs the tokens it refers to")
            tokens = torch.zeros(B, N, K, device=device, dtype=dtype)
        elif self._check_tokens(tokens) != B:
            raise ValueError(f"tokens have batch {tokens.shape[0]}, labels {B}")
        if given is not None and (given.shape != (B, N) or given.dtype != torch.bool):
            raise ValueError(f"given must be a bool tensor of shape ({B}, {N}), got {given.dtype} {tuple(given.shape)}")

        class_spec = labels if class_mix is None else (labels, class_mix[0], class_mix[1])
        guided = cfg != 1.0
        with eval_mode(self):
            cond = self.backbone.embed_class(class_spec, B)                           # (B, d)
            if guided:
                null = self.backbone.embed_class(torch.full_like(labels, self.null_class), B)
                cond = torch.cat([cond, null])                                          # (2B, d)

            # every row has the same number of tokens to generate (the usual case): the number
            # still masked before each step is known on the host, so gathers have a fixed size
            n_start = N if given is None else (~given).sum(1)
            if torch.is_tensor(n_start):
                n_start = int(n_start[0]) if bool((n_start == n_start[0]).all()) else None
            counts = None if n_start is None else [
                int(masked_after(torch.tensor([n_start]), i - 1, num_iter, mask_schedule))
                for i in range(1, num_iter + 1)]

            def predict(tok: torch.Tensor, mask: torch.Tensor, i: int) -> torch.Tensor:
                p = torch.full((B, N, K), 0.5, device=device, dtype=dtype)
                if counts is not None and counts[i - 1] == 0:
                    return p
                if guided:
                    h = self.backbone(torch.cat([tok, tok]), cond, torch.cat([mask, mask]))
                else:
                    h = self.backbone(tok, cond, mask)
                h_cond, h_null = h[:B], (h[B:] if guided else None)
                g = cfg_scale(cfg, cfg_schedule, i, num_iter)
                if counts is not None:
                    idx = masked_positions(mask, counts[i - 1])                        # (B, n)
                    p_masked = self.transcoder.sample(
                        gather_tokens(h_cond, idx), None if h_null is None else gather_tokens(h_null, idx),
                        steps=steps, temperature=temperature, cfg=g, generator=generator)
                    return p.scatter_(1, idx[..., None].expand(-1, -1, K), p_masked.view(B, -1, K).to(dtype))
                p_masked = self.transcoder.sample(h_cond[mask], None if h_null is None else h_null[mask],
                                                  steps=steps, temperature=temperature, cfg=g, generator=generator)
                p[mask] = p_masked.to(dtype)
                return p

            out, revealed_at = sample_tokens(predict, tokens.to(dtype), given, num_iter=num_iter, order=order,
                                             gumbel=gumbel, gumbel_schedule=gumbel_schedule,
                                             deterministic=deterministic, mask_schedule=mask_schedule,
                                             generator=generator)
        return (out, revealed_at) if return_order else out

    # -- representations --------------------------------------------------------------------
    @torch.no_grad()
    def features(self, tokens: torch.Tensor, layer: int | None = None,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        """Image representation (B, d) (SPEC §1.6): the backbone on the unmasked tokens with the null
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

    # -- persistence ------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` (weights only) into ``directory``."""
        save_checkpoint(self, self.config.to_dict(), directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> BiGR:
        """Load a model written by ``save_pretrained`` (in eval mode); a config that does not fit the
        weights is an error."""
        config, state = load_checkpoint(directory)
        model = cls(BiGRConfig.from_dict(config))
        load_strict(model, state, os.path.join(os.fspath(directory), WEIGHTS_NAME))
        return model.to(device).eval()
