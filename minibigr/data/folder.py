"""A folder of class sub-folders of images, checked once when loaded and decoded on access."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .datasets import CorruptDataset, DatasetNotFound

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


class SkippedImages(UserWarning):
    """Some files of a folder dataset could not be read as images and were left out; the message names them."""


class FolderDataset(Dataset):
    """A folder of class sub-folders of images, decoded on access.

    Classes are the sub-folders sorted by name; images inside them (any depth) sorted by path.
    Each image is resized so its shorter side is ``image_size`` and centre-cropped to a square,
    then converted to ``mode`` "RGB" (C=3) or "L" (C=1). Loading decodes every file once, as training will:
    the unreadable ones are left out with a ``SkippedImages`` warning that counts and names them, so a corrupt
    file never stops a training run half-way.
    """

    def __init__(self, root: str | os.PathLike, image_size: int = 32, mode: str = "RGB"):
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
        root = Path(root)
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if root.is_dir() else []
        samples = [(path, label) for label, folder in enumerate(folders) for path in sorted(folder.rglob("*"))
                   if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()]
        if not samples:
            raise DatasetNotFound(f"no images in {root}: expected class sub-folders holding image files "
                                  f"({', '.join(sorted(IMAGE_EXTENSIONS))}), e.g. {root}/cat/0001.png")
        samples = readable(samples, image_size, mode, root)
        self.root, self.image_size, self.mode = root, image_size, mode
        self.classes = [folder.name for folder in folders]
        self.paths = [path for path, _ in samples]
        self.labels = np.array([label for _, label in samples], dtype=np.int64)
        self.source = root

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(read_image(self.paths[index], self.image_size, self.mode)).float().div_(255)
        return image, int(self.labels[index])

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """indices (B,) -> images (B, C, H, W) float32 in [0, 1], labels (B,) int64."""
        indices = np.asarray(indices, dtype=np.int64)
        images = np.stack([read_image(self.paths[i], self.image_size, self.mode) for i in indices])
        return torch.from_numpy(images).float().div_(255), torch.from_numpy(self.labels[indices])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return 3 if self.mode == "RGB" else 1


def readable(samples: list[tuple[Path, int]], size: int, mode: str, root: Path) -> list[tuple[Path, int]]:
    """The (path, label) pairs whose image decodes; a SkippedImages warning names the others (the first five) and
    counts them. None readable is an error."""
    kept, skipped = [], []
    for path, label in tqdm(samples, desc=f"check {root.name}", leave=False, disable=len(samples) < 1000 or None):
        try:
            read_image(path, size, mode)
            kept.append((path, label))
        except CorruptDataset as e:
            skipped.append(str(e))
    if not kept:
        raise CorruptDataset(f"none of the {len(samples)} image files in {root} can be read, e.g. {skipped[0]}")
    if skipped:
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(f"skipped {len(skipped)} unreadable image file(s) of {len(samples)} in {root}: "
                      + "; ".join(skipped[:5]) + more, SkippedImages, stacklevel=3)
    return kept


def read_image(path: str | os.PathLike, size: int, mode: str = "RGB") -> np.ndarray:
    """An image file -> (C, size, size) uint8: shorter side resized to size, centre-cropped, as RGB or L."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image = ImageOps.fit(image.convert(mode), (size, size), Image.Resampling.BICUBIC)
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # unidentified / truncated / bomb
        raise CorruptDataset(f"{path}: unreadable image ({e})") from e
    array = np.array(image, dtype=np.uint8).reshape(size, size, -1)  # "L" images have no channel axis
    return np.ascontiguousarray(array.transpose(2, 0, 1))
