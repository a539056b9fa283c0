"""Binary tokenizer: the B-AE (binary autoencoder) of BiGR (docs/method.md §1).

image (B, C, H, W) in [0,1] --Encoder--> h (B, emb_dim, h, w) --BinaryQuantizer--> p, bits (B, K, h, w)
bits --sum_k z_k E_k--> q (B, emb_dim, h, w) --Generator--> image (B, C, H, W)

The model reads tokens, not grids: ``encode_tokens`` / ``decode_tokens`` take and give (B, N, K), the
h x w grid in raster order (N = h * w), so no caller ever reshapes bits by hand.

The network is the VQGAN-style conv ResNet of the authors' code (GroupNorm(32, eps 1e-6) + SiLU residual
blocks, stride-2 downsampling, single-head self-attention at low resolution). Module and parameter names
follow the official checkpoints (``encoder.blocks.*``, ``quantize.proj.0``, ``quantize.embed``,
``generator.blocks.*``) so that ``minibigr.official.load_bae`` is a plain strict load.

Image range: the public API always takes and returns images in [0,1]. Inside, the network sees
``config.image_range``: "unit" ([0,1], what the official B-AE was trained on) or "symmetric" ([-1,1], the
VQGAN convention); the mapping happens in ``encode*`` / ``decode`` / ``forward``.

The rest of the training loss lives in minibigr.gan (PatchGAN, hinge losses, adaptive weight, DiffAugment)
and minibigr.lpips (the perceptual loss).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import Checkpointed, config_from_dict
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
    # training (VQGAN recipe; the values of the authors' hparams/defaults/binarygan_default.py)
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
        return config_from_dict(cls, d)

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
def grid_to_tokens(bits: torch.Tensor) -> torch.Tensor:
    """Bits on the token grid (B, K, h, w) -> tokens (B, N, K), the grid in raster order (N = h * w)."""
    return bits.flatten(2).transpose(1, 2)


def tokens_to_grid(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Tokens (B, N, K) in raster order -> bits on the h x w grid (B, K, h, w)."""
    B, N, K = tokens.shape
    if N != h * w:
        raise ValueError(f"{N} tokens do not fill the tokenizer's {h}x{w} grid")
    return tokens.transpose(1, 2).reshape(B, K, h, w)


class BinaryAutoencoder(Checkpointed, nn.Module):
    """B-AE: images in [0,1] <-> K-bit tokens on an h x w grid.

    ``save_pretrained(dir)`` / ``BinaryAutoencoder.from_pretrained(dir, device)`` store it as config.json +
    model.safetensors.
    """

    config_class = TokenizerConfig

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
        if not images.is_floating_point():
            raise TypeError(f"expected float images in [0, 1], got {images.dtype} (divide 8-bit images by 255)")

    @staticmethod
    def _check_range(images: torch.Tensor) -> None:
        """Images outside [0, 1] encode to codes the model never saw; the usual slips are 0..255 and [-1, 1]."""
        if images.numel() == 0:                    # an empty batch: nothing to check
            return
        lo, hi = (float(v) for v in images.aminmax())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"expected images in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")

    def _check_bits(self, bits: torch.Tensor) -> None:
        K, h = self.config.K, self.config.latent_size
        if bits.dim() != 4 or bits.shape[1] != K or bits.shape[2:] != (h, h):
            raise ValueError(f"expected bits of shape (B, K={K}, {h}, {h}), got {tuple(bits.shape)}")

    # -- tokenizer API ------------------------------------------------------------------------
    def encode_probs(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [0,1] -> p = P(bit = 1) (B, K, h, w)."""
        self._check_images(images)
        self._check_range(images)
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

    @torch.no_grad()
    def encode_token_probs(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [0,1] -> p (B, N, K), the bit probabilities of the tokens in raster order."""
        return grid_to_tokens(self.encode_probs(images))

    @torch.no_grad()
    def encode_tokens(self, images: torch.Tensor, deterministic: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """images (B, C, H, W) in [0,1] -> tokens (B, N, K) float {0,1}, the grid in raster order."""
        return grid_to_tokens(self.encode(images, deterministic=deterministic, generator=generator))

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, K) in raster order -> images (B, C, H, W) clamped to [0,1]."""
        K, h = self.config.K, self.config.latent_size
        if tokens.dim() != 3 or tokens.shape[1:] != (h * h, K):
            raise ValueError(f"expected tokens of shape (B, N={h * h}, K={K}), got {tuple(tokens.shape)}")
        return self.decode(tokens_to_grid(tokens, h, h))

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
