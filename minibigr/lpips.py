"""LPIPS, the learned perceptual distance of the tokenizer's loss (Zhang et al. 2018; VGG16 variant).

Built only from weight files the user supplies (torchvision's VGG16 and the LPIPS v0.1 linear layers);
nothing is downloaded.
"""

from __future__ import annotations

import torch
from torch import nn

from .checkpoint import load_strict, read_state_dict

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
