"""Synthetic shapes: ten classes drawn procedurally, the same on every machine, for tests that need no files."""

from __future__ import annotations

import numpy as np

from .datasets import ArrayDataset

SHAPES = ["circle", "square", "triangle", "cross", "ring", "horizontal bars", "vertical bars",
          "diagonal", "dot grid", "diamond"]


class ShapesDataset(ArrayDataset):
    """n synthetic images of 10 shape classes (``SHAPES``), drawn at construction.

    Image i has label i % 10 (balanced classes); its position, size and colours come from a Generator
    seeded with (seed, i), so the set is the same on every machine and any prefix of it is a smaller set.
    """

    def __init__(self, n: int = 10000, image_size: int = 32, seed: int = 0):
        if n < 1 or image_size < 8:
            raise ValueError(f"shapes needs n >= 1 and image_size >= 8, got n={n}, image_size={image_size}")
        labels = np.arange(n) % len(SHAPES)
        images = np.stack([draw_shape(int(label), image_size, np.random.default_rng([seed, i]))
                           for i, label in enumerate(labels)])
        super().__init__(images, labels, SHAPES)
        self.seed = seed


def _shape_mask(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Where shape ``label`` covers the plane, in coordinates centred on it with radius 1."""
    box = (np.abs(u) <= 1) & (np.abs(v) <= 1)
    r = np.hypot(u, v)
    if label == 0:  # circle
        return r <= 1
    if label == 1:  # square
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if label == 2:  # triangle, apex up, base at v = 0.8
        return (v <= 0.8) & (np.abs(u) <= (v + 1) / 1.8)
    if label == 3:  # cross
        return box & ((np.abs(u) <= 0.3) | (np.abs(v) <= 0.3))
    if label == 4:  # ring
        return (r <= 1) & (r >= 0.55)
    if label == 5:  # horizontal bars: 3 bars in 5 bands
        return box & (np.floor((v + 1) * 2.5) % 2 == 0)
    if label == 6:  # vertical bars
        return box & (np.floor((u + 1) * 2.5) % 2 == 0)
    if label == 7:  # diagonal (the caller mirrors u at random for the other diagonal)
        return box & (np.abs(u - v) <= 0.4)
    if label == 8:  # dot grid, 3x3
        cell_u, cell_v = (u + 1) * 1.5 % 1 - 0.5, (v + 1) * 1.5 % 1 - 0.5
        return box & (np.hypot(cell_u, cell_v) <= 0.33)
    if label == 9:  # diamond
        return np.abs(u) + np.abs(v) <= 1
    raise ValueError(f"shape label must be in 0..{len(SHAPES) - 1}, got {label}")


def draw_shape(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Shape ``label`` (an index into SHAPES) on a plain background -> (3, size, size) uint8.

    Position, radius, mirroring and colours come from rng; one colour is dark and the other light,
    so the shape always stands out. Drawn at twice the size and averaged 2x2, which smooths the edges.
    """
    s = 2 * size
    radius = rng.uniform(0.25, 0.45) * s
    cx, cy = rng.uniform(radius, s - radius, size=2)
    mirror = rng.choice([-1.0, 1.0])
    dark, light = rng.uniform(0.0, 0.4, size=3), rng.uniform(0.6, 1.0, size=3)
    fg, bg = (dark, light) if rng.random() < 0.5 else (light, dark)
    y, x = np.mgrid[0:s, 0:s] + 0.5
    mask = _shape_mask(label, mirror * (x - cx) / radius, (y - cy) / radius)
    mask = mask.reshape(size, 2, size, 2).mean(axis=(1, 3))
    image = bg[:, None, None] * (1 - mask) + fg[:, None, None] * mask
    return np.round(image * 255).astype(np.uint8)
