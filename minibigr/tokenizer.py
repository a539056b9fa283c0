"""Binary tokenizer: the B-AE (binary autoencoder) of BiGR (SPEC §1.1).

image (B, C, H, W) in [0,1] --Encoder--> h (B, emb_dim, h, w) --BinaryQuantizer--> p, bits (B, K, h, w)
bits --sum_k z_k E_k--> q (B, emb_dim, h, w) --Generator--> image (B, C, H, W)

The network is the VQGAN-style conv ResNet of the authors' code (GroupNorm(32, eps 1e-6) + SiLU residual
blocks, stride-2 downsampling, single-head self-attention at low resolution). Module and parameter names
follow the official checkpoints (``encoder.blocks.*``, ``quantize.proj.0``, ``quantize.embed``,
``generator.blocks.*``) so that ``minibigr.official.load_bae`` is a plain strict load.

Image range: the public API always takes and returns images in [0,1]. Inside, the network sees
``config.image_range``: "unit" ([0,1], what the official B-AE was trained on) or "symmetric" ([-1,1], the
VQGAN convention); the mapping happens in ``encode*`` / ``decode`` / ``forward``.

Training pieces (VQGAN recipe): PatchDiscriminator, hinge_d_loss, generator_adv_loss, adaptive_weight,
diff_augment and an LPIPS perceptual loss that runs only on VGG16 + LPIPS weights the user supplies.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import WEIGHTS_NAME, load_checkpoint, load_strict, save_checkpoint
from .quantizer import BinaryQuantizer, quantize

IMAGE_RANGES = ("unit", "symmetric")
NORM_GROUPS = 32  # GroupNorm(32, eps 1e-6) everywhere, as the official `normalize`


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------
@dataclass
class TokenizerConfig:
    """B-AE hyper-parameters. Defaults are the official 256x256 d24 tokenizer."""

    image_size: int = 256
    in_channels: int = 3                # 3 for RGB; 1 for grayscale data (decode returns 1 channel)
    nf: int = 128                       # base width; level i has nf * ch_mult[i] channels
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # one entry per resolution; len - 1 downsamplings
    res_blocks: int = 2                 # residual blocks per level in the encoder
    attn_resolutions: tuple[int, ...] = (16,)   # feature-map sizes that get self-attention
    emb_dim: int = 256                  # encoder output / code embedding width
    K: int = 24                         # code length: bits per token
    norm_first: bool = True             # generator starts with a GroupNorm on the codes (BiGR: on)
    gen_mul: float = 1.0                # generator has int(res_blocks * gen_mul) blocks per level
    image_range: str = "unit"           # range the network sees: "unit" [0,1] or "symmetric" [-1,1]
    # training (VQGAN recipe, official values)
    ndf: int = 64                       # PatchGAN base width
    disc_layers: int = 3                # PatchGAN stride-2 layers
    disc_start: int = 30001             # step at which the GAN loss switches on
    disc_weight_max: float = 1.0        # clip of the adaptive GAN weight
    perceptual_weight: float = 1.0      # LPIPS weight (used only when LPIPS weights are supplied)
    code_weight: float = 0.0            # weight of the mean p(1-p) code regulariser
    diff_aug: bool = False              # DiffAugment (color, translation) before the discriminator

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        if self.image_range not in IMAGE_RANGES:
            raise ValueError(f"image_range must be one of {IMAGE_RANGES}, got {self.image_range!r}")
        if self.in_channels < 1 or self.K < 1 or self.res_blocks < 1 or not self.ch_mult:
            raise ValueError(f"in_channels, K, res_blocks must be >= 1 and ch_mult non-empty; got "
                             f"in_channels={self.in_channels}, K={self.K}, res_blocks={self.res_blocks}, "
                             f"ch_mult={self.ch_mult}")
        down = 2 ** (len(self.ch_mult) - 1)
        if self.image_size % down:
            raise ValueError(f"image_size {self.image_size} is not divisible by {down} "
                             f"(2^(len(ch_mult) - 1) for ch_mult={self.ch_mult})")
        widths = {self.nf * m for m in (1, *self.ch_mult)} | ({self.emb_dim} if self.norm_first else set())
        bad = sorted(c for c in widths if c % NORM_GROUPS)
        if bad:
            raise ValueError(f"GroupNorm({NORM_GROUPS}) needs channel counts divisible by {NORM_GROUPS}; "
                             f"got {bad} (from nf={self.nf}, ch_mult={self.ch_mult}, emb_dim={self.emb_dim})")
        if int(self.res_blocks * self.gen_mul) < 1:
            raise ValueError(f"res_blocks * gen_mul must be >= 1, got {self.res_blocks} * {self.gen_mul}")

    @property
    def latent_size(self) -> int:
        """Side h = w of the token grid."""
        return self.image_size // 2 ** (len(self.ch_mult) - 1)

    @property
    def num_tokens(self) -> int:
        """N = h * w tokens per image."""
        return self.latent_size ** 2

    @property
    def gen_res_blocks(self) -> int:
        return int(self.res_blocks * self.gen_mul)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ch_mult"], d["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TokenizerConfig:
        if not isinstance(d, dict):
            raise ValueError(f"a TokenizerConfig is a JSON object / dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TokenizerConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides) -> TokenizerConfig:
        """A named configuration (see PRESETS), with any field overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown tokenizer preset {name!r}; presets: {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})


# Small data: DiffAugment on, GAN from disc_start; no LPIPS at 32x32 (VGG features of such small
# images say little), LPIPS at 64x64 when the trainer is given its weight files.
PRESETS: dict[str, dict] = {
    # The published ImageNet 256x256 tokenizers: 16x16 tokens of 24 or 32 bits.
    "official-256": {},
    "official-256-d32": dict(K=32),
    # 32x32 grayscale (Fashion-MNIST padded from 28): 8x8 tokens of 16 bits; trains on a laptop CPU.
    # L1 alone gives ~23 dB test PSNR after 32k images (Adam 2e-3, batch 32, linear decay); the GAN
    # starts late so that a 20-30 minute CPU run is a pure reconstruction run.
    "fashion-mnist-32": dict(image_size=32, in_channels=1, nf=32, ch_mult=(1, 2, 2), res_blocks=1,
                             attn_resolutions=(8,), emb_dim=64, K=16, ndf=32, disc_layers=2, disc_start=10001,
                             perceptual_weight=0.0, diff_aug=True),
    # 32x32 RGB (CIFAR-10): 8x8 tokens.
    "cifar-32": dict(image_size=32, nf=64, ch_mult=(1, 2, 2), res_blocks=2, attn_resolutions=(8,),
                     emb_dim=128, K=24, ndf=64, disc_layers=2, disc_start=5001, perceptual_weight=0.0,
                     diff_aug=True),
    # 64x64 RGB (ImageNet 64x64): 8x8 tokens, or 16x16 tokens with the "-16" variant.
    "imagenet-64": dict(image_size=64, nf=64, ch_mult=(1, 2, 2, 2), res_blocks=2, attn_resolutions=(8,),
                        emb_dim=128, K=32, ndf=64, disc_layers=3, disc_start=5001, perceptual_weight=1.0,
                        diff_aug=True),
    "imagenet-64-16": dict(image_size=64, nf=64, ch_mult=(1, 2, 2), res_blocks=2, attn_resolutions=(16,),
                           emb_dim=128, K=24, ndf=64, disc_layers=3, disc_start=5001, perceptual_weight=1.0,
                           diff_aug=True),
}


# ----------------------------------------------------------------------------------------------
# Building blocks (names as in the official checkpoints)
# ----------------------------------------------------------------------------------------------
def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """x + conv(SiLU(norm(conv(SiLU(norm(x)))))); a 1x1 ``conv_out`` maps the skip when widths differ.

    ``conv_out`` exists even when in == out (it is in the official state dict) but is then unused.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.in_ch, self.out_ch = in_ch, out_ch
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_out = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.conv_out(x) if self.in_ch != self.out_ch else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, 1x1 convs for q, k, v and the output."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = group_norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).reshape(B, 1, C, H * W).transpose(2, 3) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        return x + self.proj_out(out.transpose(2, 3).reshape(B, C, H, W))


class Downsample(nn.Module):
    """3x3 stride-2 conv after padding one zero row/column at the bottom/right (H -> H/2)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level_blocks(blocks: list, in_ch: int, out_ch: int, n: int, attn: bool) -> int:
    """Append n residual blocks (each followed by attention if attn) and return the output width."""
    for _ in range(n):
        blocks.append(ResBlock(in_ch, out_ch))
        in_ch = out_ch
        if attn:
            blocks.append(AttnBlock(in_ch))
    return in_ch


def _middle_blocks(blocks: list, ch: int) -> None:
    blocks += [ResBlock(ch, ch), AttnBlock(ch), ResBlock(ch, ch)]


class Encoder(nn.Module):
    """(B, in_channels, S, S) -> (B, emb_dim, S / 2^(L-1), S / 2^(L-1)); a flat ``blocks`` list."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(cfg.in_channels, cfg.nf, 3, padding=1)]
        ch, res = cfg.nf, cfg.image_size
        for i, mult in enumerate(cfg.ch_mult):
            ch = _level_blocks(blocks, ch, cfg.nf * mult, cfg.res_blocks, res in cfg.attn_resolutions)
            if i != len(cfg.ch_mult) - 1:
                blocks.append(Downsample(ch))
                res //= 2
        _middle_blocks(blocks, ch)
        blocks += [group_norm(ch), nn.Conv2d(ch, cfg.emb_dim, 3, padding=1)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class Generator(nn.Module):
    """The decoder: (B, emb_dim, h, w) codes -> (B, in_channels, S, S); mirror of the encoder."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        ch, res = cfg.nf * cfg.ch_mult[-1], cfg.latent_size
        blocks: list[nn.Module] = [group_norm(cfg.emb_dim)] if cfg.norm_first else []
        blocks.append(nn.Conv2d(cfg.emb_dim, ch, 3, padding=1))
        _middle_blocks(blocks, ch)
        for i in reversed(range(len(cfg.ch_mult))):
            ch = _level_blocks(blocks, ch, cfg.nf * cfg.ch_mult[i], cfg.gen_res_blocks,
                               res in cfg.attn_resolutions)
            if i != 0:
                blocks.append(Upsample(ch))
                res *= 2
        blocks += [group_norm(ch), nn.Conv2d(ch, cfg.in_channels, 3, padding=1)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


# ----------------------------------------------------------------------------------------------
# The binary autoencoder
# ----------------------------------------------------------------------------------------------
class BinaryAutoencoder(nn.Module):
    """B-AE: images in [0,1] <-> K-bit tokens on an h x w grid."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantize = BinaryQuantizer(config.emb_dim, config.K, config.emb_dim)
        self.generator = Generator(config)

    @property
    def decoder(self) -> Generator:
        return self.generator

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) of the token grid."""
        return self.config.latent_size, self.config.latent_size

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's final conv: the adaptive GAN weight is measured on its gradients."""
        return self.generator.blocks[-1].weight

    # -- range and shape checks ---------------------------------------------------------------
    def _to_net(self, images: torch.Tensor) -> torch.Tensor:
        return images * 2 - 1 if self.config.image_range == "symmetric" else images

    def _from_net(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1) / 2 if self.config.image_range == "symmetric" else x

    def _check_images(self, images: torch.Tensor) -> None:
        c, s = self.config.in_channels, self.config.image_size
        if images.dim() != 4 or images.shape[1] != c or images.shape[2:] != (s, s):
            raise ValueError(f"expected images of shape (B, {c}, {s}, {s}), got {tuple(images.shape)}")

    def _check_bits(self, bits: torch.Tensor) -> None:
        K, h = self.config.K, self.config.latent_size
        if bits.dim() != 4 or bits.shape[1] != K or bits.shape[2:] != (h, h):
            raise ValueError(f"expected bits of shape (B, K={K}, {h}, {h}), got {tuple(bits.shape)}")

    # -- tokenizer API ------------------------------------------------------------------------
    def encode_probs(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [0,1] -> p = P(bit = 1) (B, K, h, w)."""
        self._check_images(images)
        return self.quantize.probs(self.encoder(self._to_net(images)))

    @torch.no_grad()
    def encode(self, images: torch.Tensor, deterministic: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """images (B, C, H, W) in [0,1] -> bits (B, K, h, w) float {0,1}: Bernoulli(p), or [p > 1/2]."""
        return quantize(self.encode_probs(images), deterministic=deterministic, generator=generator)

    def decode(self, bits: torch.Tensor) -> torch.Tensor:
        """bits (B, K, h, w) -> images (B, C, H, W) clamped to [0,1]."""
        self._check_bits(bits)
        x = self.generator(self.quantize.codes(bits.to(self.quantize.embed.weight.dtype)))
        return self._from_net(x).clamp(0, 1)

    def forward(self, images: torch.Tensor, deterministic: bool = False,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Training pass. images (B, C, H, W) in [0,1] -> (recon (B, C, H, W), stats).

        recon is in the [0,1] scale but not clamped (so the L1 loss keeps its gradient); the codes
        are straight-through, so gradients reach the encoder. stats: "bits" (B, K, h, w) the sampled
        code, "p" its probabilities, "code_reg" mean p(1-p) (the official code applies one more sigmoid
        to p here; with its default weight 0 that difference never matters).
        """
        self._check_images(images)
        q, bits, p, code_reg = self.quantize(self.encoder(self._to_net(images)), deterministic=deterministic,
                                             generator=generator)
        recon = self._from_net(self.generator(q))
        return recon, {"bits": bits, "p": p, "code_reg": code_reg}

    # -- checkpoints --------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` (weights only) into directory."""
        save_checkpoint(self, self.config.to_dict(), directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu"
                        ) -> BinaryAutoencoder:
        cfg_dict, state = load_checkpoint(directory, map_location)
        model = cls(TokenizerConfig.from_dict(cfg_dict))
        load_strict(model, state, f"{directory}/{WEIGHTS_NAME}")
        return model



# ----------------------------------------------------------------------------------------------
# GAN training pieces
# ----------------------------------------------------------------------------------------------
class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / VQGAN): 4x4 convs, BatchNorm, LeakyReLU(0.2) -> one logit per patch.

    (B, C, S, S) -> (B, 1, S / 2^n_layers - 2, S / 2^n_layers - 2). Names ``main.*`` as the official.
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1  # the last widening conv keeps the resolution
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss 1/2 (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))])."""
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def generator_adv_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator loss L_G = -E[D(x_hat)]."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1.0) -> torch.Tensor:
    """lambda = ||grad_last L_rec|| / (||grad_last L_G|| + 1e-4), clipped to [0, max_weight], detached.

    Balances the GAN term against reconstruction at the decoder's last layer (VQGAN). Both losses
    must still hold their graphs (they are kept for the backward pass that follows).
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


# DiffAugment (Zhao et al. 2020): differentiable augmentations applied to real and fake images alike.
def _per_sample(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=x.device, dtype=x.dtype)


def rand_brightness(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add U(-1/2, 1/2) per sample."""
    return x + (_per_sample(x, generator) - 0.5)


def rand_saturation(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale the distance to the per-pixel channel mean by U(0, 2)."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_per_sample(x, generator) * 2) + mean


def rand_contrast(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale the distance to the per-image mean by U(1/2, 3/2)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_per_sample(x, generator) + 0.5) + mean


def rand_translation(x: torch.Tensor, ratio: float = 0.125, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """Shift each image by up to ratio * size pixels per axis (integer, uniform); vacated pixels are 0."""
    B, _, H, W = x.shape
    sh, sw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (B, 1, 1), generator=generator, device=x.device)
    dx = torch.randint(-sw, sw + 1, (B, 1, 1), generator=generator, device=x.device)
    rows = torch.arange(H, device=x.device).view(1, H, 1) + dy  # output (i, j) reads input (i+dy, j+dx)
    cols = torch.arange(W, device=x.device).view(1, 1, W) + dx
    inside = ((rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)).unsqueeze(1)
    index = (rows.clamp(0, H - 1) * W + cols.clamp(0, W - 1)).reshape(B, 1, H * W)
    out = x.reshape(B, x.shape[1], H * W).gather(2, index.expand(-1, x.shape[1], -1))
    return out.reshape(x.shape) * inside


AUGMENTS = {
    "color": (rand_brightness, rand_saturation, rand_contrast),
    "translation": (rand_translation,),
}


def diff_augment(x: torch.Tensor, policy: str = "color,translation",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the comma-separated policies in order; all randomness comes from generator."""
    for name in filter(None, policy.split(",")):
        if name not in AUGMENTS:
            raise ValueError(f"unknown DiffAugment policy {name!r}; choose from {sorted(AUGMENTS)}")
        for fn in AUGMENTS[name]:
            x = fn(x, generator=generator)
    return x


# ----------------------------------------------------------------------------------------------
# LPIPS perceptual loss (VGG16 features, learned linear weights), from user-supplied weight files
# ----------------------------------------------------------------------------------------------
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
LPIPS_TAPS = (3, 8, 15, 22, 29)  # indices in vgg16.features of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
LPIPS_CHANNELS = (64, 128, 256, 512, 512)


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` up to relu5_3, as plain layers (same indices, same keys)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in VGG16_CONFIG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.ReLU(inplace=False)]
            in_ch = v
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """Learned perceptual distance (Zhang et al. 2018), VGG16 variant, frozen.

    vgg_weights: torchvision's VGG16 ImageNet weights (a state dict with ``features.{i}.weight/bias``,
    e.g. ``vgg16-397923af.pth``). lpips_weights: the LPIPS v0.1 linear layers for VGG (a state dict with
    ``lin{0..4}.model.1.weight``, e.g. lpips' ``weights/v0.1/vgg.pth`` or taming's ``vgg_lpips.pth``).
    Both are read as tensors only; nothing is downloaded.

    forward(a, b): images (B, C, H, W) in [0,1] (1-channel images are repeated to RGB) -> (B,) distances.
    ``rescale=True`` maps [0,1] to the [-1,1] that LPIPS was calibrated for; the official B-AE trainer
    feeds its [0,1] images unchanged, which ``rescale=False`` reproduces.
    """

    def __init__(self, vgg_weights, lpips_weights, rescale: bool = True):
        super().__init__()
        from .official import read_state_dict

        if vgg_weights is None or lpips_weights is None:
            raise ValueError("LPIPS needs both weight files: torchvision's VGG16 state dict and the LPIPS "
                             "v0.1 VGG linear layers; nothing is downloaded (set perceptual_weight=0 to skip)")
        self.rescale = rescale
        self.features = vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in LPIPS_CHANNELS)
        # LPIPS' fixed input scaling (per-channel ImageNet statistics in the [-1,1] scale)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

        vgg = read_state_dict(vgg_weights)
        feats = {k.removeprefix("features."): v for k, v in vgg.items() if k.startswith("features.")}
        feats = {k: v for k, v in feats.items() if int(k.split(".")[0]) <= LPIPS_TAPS[-1]}
        load_strict(self.features, feats, f"{vgg_weights} (VGG16 features)")
        lin = read_state_dict(lpips_weights)
        lin = {f"{i}.weight": lin[f"lin{i}.model.1.weight"] for i in range(5) if f"lin{i}.model.1.weight" in lin}
        load_strict(self.lins, lin, f"{lpips_weights} (LPIPS lin0..lin4)")
        self.requires_grad_(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.rescale:
            x = x * 2 - 1
        x = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in LPIPS_TAPS:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))  # unit length over channels
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        dist = 0
        for lin, fa, fb in zip(self.lins, self._taps(a), self._taps(b), strict=True):
            dist = dist + lin((fa - fb) ** 2).mean(dim=(1, 2, 3))
        return dist
