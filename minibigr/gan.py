"""The adversarial half of the tokenizer's training loss (VQGAN recipe, docs/method.md §1.3).

    PatchDiscriminator    a PatchGAN: one real/fake logit per image patch
    hinge_d_loss          the discriminator's hinge loss
    generator_adv_loss    the generator's adversarial term -E[D(x_hat)]
    adaptive_weight       lambda balancing that term against reconstruction at the decoder's last layer
    diff_augment          DiffAugment (colour, translation), applied to real and fake images alike
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


