"""Image files: grids of samples, single images, and user images read for a tokenizer.

    save_image_grid(images, "samples.png", nrow=8)     # (B, C, H, W) in [0, 1] -> one PNG, rows of 8
    save_image(images[0], "one.png")                   # exactly H x W pixels, so it can be read back
    x = load_image("photo.jpg", channels=3, size=32)    # (1, 3, 32, 32) in [0, 1]; a note when resized
    check_image_path("out.png")                        # before the work: an image format that can be written
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) or (H, W, C) uint8 for PIL."""
    array = (image.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return array[..., 0] if array.shape[-1] == 1 else array


def image_grid(images: torch.Tensor, nrow: int, pad: int = 2) -> torch.Tensor:
    """images (B, C, H, W) in [0, 1] -> one (C, rows * (H + pad) + pad, nrow * (W + pad) + pad) grid on white."""
    B, C, H, W = images.shape
    rows = math.ceil(B / nrow)
    grid = torch.ones(C, rows * (H + pad) + pad, nrow * (W + pad) + pad)
    for i, img in enumerate(images.float().clamp(0, 1).cpu()):
        r, c = divmod(i, nrow)
        grid[:, pad + r * (H + pad):pad + r * (H + pad) + H, pad + c * (W + pad):pad + c * (W + pad) + W] = img
    return grid


def save_image_grid(images: torch.Tensor, path, nrow: int) -> None:
    """images (B, C, H, W) in [0, 1] -> one PNG grid, rows of ``nrow`` images."""
    save_image(image_grid(images, nrow), path)


def save_image(image: torch.Tensor, path) -> None:
    """One image (C, H, W) in [0, 1] as a PNG of exactly H x W pixels (so it can be fed back in)."""
    from PIL import Image

    Image.fromarray(_to_uint8(image)).save(path)


def check_image_path(path) -> Path:
    """path as a Path, if its extension names an image format that can be written (.png, .jpg, ...); checked before
    a long computation, so that it does not end in an unwritable file name."""
    from PIL import Image

    path = Path(path)
    if Image.registered_extensions().get(path.suffix.lower()) not in Image.SAVE:
        raise ValueError(f"{str(path)!r} is not an image file name: end it in .png (or .jpg, .webp, ...)")
    return path


def zoom(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upscaling of (B, C, H, W) by an integer factor, for looking at small images."""
    if factor < 1:
        raise ValueError(f"zoom must be >= 1, got {factor}")
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def load_image(path, channels: int, size: int, mask: bool = False) -> torch.Tensor:
    """An image file as (1, channels, size, size) in [0, 1] (a mask: (1, 1, size, size) bool, white = True).

    Other sizes are resized and other modes converted, with a note on stderr saying so. A mask is made
    binary at full resolution (white: > 127), then box-filtered down, so any covered part of a pixel counts.
    """
    from PIL import Image

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{'mask' if mask else 'image'} file {file} not found")
    mode = "L" if mask or channels == 1 else "RGB"
    try:
        with Image.open(file) as image:
            image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{file} is not a readable image ({e})") from None
    changes = ([f"resized {image.width}x{image.height} -> {size}x{size}"] if image.size != (size, size) else []) + \
              ([f"converted {image.mode} -> {mode}"] if image.mode != mode else [])
    if changes:
        wants = "masks are" if mask else f"the tokenizer takes {channels}-channel"
        print(f"note: {file}: {', '.join(changes)} ({wants} {size}x{size} images)", file=sys.stderr)
    return from_pil(image, channels, size, mask)


def from_pil(image, channels: int, size: int, mask: bool = False) -> torch.Tensor:
    """A PIL image as (1, channels, size, size) in [0, 1], resized and converted; a mask as (1, 1, size, size) bool:
    white (> 127) = True, made binary at full resolution, then box-filtered down, so any covered part counts."""
    from PIL import Image

    if mask:
        white = image.convert("L").point(lambda v: 255 if v > 127 else 0)
        array = np.asarray(white.resize((size, size), Image.Resampling.BOX))
        return torch.from_numpy(array > 0)[None, None]
    mode = "L" if channels == 1 else "RGB"
    array = np.asarray(image.convert(mode).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    return torch.from_numpy(array.reshape(size, size, -1)).permute(2, 0, 1)[None].contiguous()
