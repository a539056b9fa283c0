"""In-memory datasets and what every file format shares: the errors, the label check, split names, resizing.

Every dataset yields ``(image, label)``: a float32 tensor in [0, 1] of shape (C, H, W) and an int. The
file-backed sets keep all images in RAM as one uint8 array ``images_uint8`` (N, C, H, W) and convert to float
only per item, or per batch with ``get_batch(indices)``, which a training loop can call directly instead of
paying a DataLoader's per-item overhead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


class DatasetError(Exception):
    """Base class of the errors below (a CLI can catch this one)."""


class DatasetNotFound(DatasetError, FileNotFoundError):
    """The files are nowhere we looked and could not be downloaded; the message says what to do."""


class CorruptDataset(DatasetError, ValueError):
    """A dataset file is unreadable, truncated or not in the expected format; the message names it."""


class ArrayDataset(Dataset):
    """Images held in RAM as one uint8 array.

    images (N, C, H, W) uint8, labels (N,) integers in [0, len(classes)).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                 source: Path | None = None):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
        self.images_uint8 = images
        self.labels = labels.astype(np.int64)
        self.classes = list(classes)
        self.source = source

    def __len__(self) -> int:
        return len(self.images_uint8)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images_uint8[index]).float().div_(255)
        return image, int(self.labels[index])

    def first(self, n: int) -> ArrayDataset:
        """The first n images and labels (views of these arrays, no copy)."""
        return ArrayDataset(self.images_uint8[:n], self.labels[:n], self.classes, self.source)

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """indices (B,) -> images (B, C, H, W) float32 in [0, 1], labels (B,) int64."""
        indices = np.asarray(indices, dtype=np.int64)
        images = torch.from_numpy(self.images_uint8[indices]).float().div_(255)
        return images, torch.from_numpy(self.labels[indices])

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole set without copying: images (N, C, H, W) uint8, labels (N,) int64."""
        return torch.from_numpy(self.images_uint8), torch.from_numpy(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.images_uint8.shape[1]

    @property
    def image_size(self) -> int:
        return self.images_uint8.shape[-1]


def split_name(split: str) -> str:
    """"train" or "test" ("val" / "validation" are the test split)."""
    if split in ("train", "test"):
        return split
    if split in ("val", "validation"):
        return "test"
    raise ValueError(f"split must be 'train' or 'test' ('val'), got {split!r}")


def check_labels(labels: np.ndarray, n: int, low: int, high: int, path: Path) -> None:
    """Raise CorruptDataset naming ``path`` unless labels are n integers in low..high."""
    well_formed = labels.shape == (n,) and labels.dtype.kind in "iu"
    if not well_formed or (n and not low <= labels.min() <= labels.max() <= high):
        raise CorruptDataset(f"{path}: labels must be {n} integers in {low}..{high}, "
                             f"got {labels.dtype} {labels.shape} (corrupt file?)")


def resize_images(images: np.ndarray, size: int | None, chunk: int = 4096) -> np.ndarray:
    """images (N, C, H, W) uint8 -> (N, C, size, size) uint8, antialiased bilinear; None: unchanged."""
    if size is None or size == images.shape[-1]:
        return images
    out = np.empty((*images.shape[:2], size, size), np.uint8)
    for start in range(0, len(images), chunk):  # in chunks, so the float copy stays small
        x = torch.from_numpy(images[start:start + chunk]).float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = x.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out
