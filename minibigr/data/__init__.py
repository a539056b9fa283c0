"""Datasets (docs/method.md §10): Fashion-MNIST, CIFAR-10, ImageNet 64x64, a folder of class folders, synthetic shapes.

``load_dataset(name, split)`` gives any of them by name. Every dataset yields ``(image, label)``: a float32 tensor
in [0, 1] of shape (C, H, W) and an int; the file-backed sets (and shapes) keep all images in RAM as one uint8
array (datasets.py). ``batch_indices`` makes a training run's data order a pure function of (seed, step)
(batches.py). Data is looked for in ``data_dir``, ``$MINIBIGR_DATA``, the cache dir, then (Fashion-MNIST) the
Debian package's folder; missing Fashion-MNIST / CIFAR-10 files are downloaded from their official URLs, SHA-256
checked (files.py); when that is impossible, ``DatasetNotFound`` says what to do. Files are parsed strictly: a
corrupt or truncated one raises ``CorruptDataset`` naming it. One file per format: fashion_mnist.py, cifar10.py,
imagenet64.py, folder.py, shapes.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .batches import batch_indices, get_batch, iterate_batches
from .cifar10 import CIFAR10_CLASSES, load_cifar10, read_cifar_batch, safe_pickle_load
from .datasets import ArrayDataset, CorruptDataset, DatasetError, DatasetNotFound, split_name
from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist, read_idx
from .files import CIFAR10_ARCHIVE, FASHION_MNIST_SYSTEM_DIR, SHA256, cache_dir, download, search_dirs
from .folder import FolderDataset, SkippedImages, read_image
from .imagenet64 import load_imagenet64, read_imagenet64_batch, read_imagenet64_labels
from .shapes import SHAPES, ShapesDataset, draw_shape

__all__ = [
    "DATASETS", "DatasetInfo", "load_dataset",
    "ArrayDataset", "FolderDataset", "ShapesDataset", "DatasetError", "DatasetNotFound", "CorruptDataset",
    "SkippedImages",
    "batch_indices", "get_batch", "iterate_batches",
    "FASHION_MNIST_CLASSES", "CIFAR10_CLASSES", "SHAPES", "CIFAR10_ARCHIVE", "FASHION_MNIST_SYSTEM_DIR", "SHA256",
    "load_fashion_mnist", "load_cifar10", "load_imagenet64", "read_idx", "read_cifar_batch", "safe_pickle_load",
    "read_imagenet64_batch", "read_imagenet64_labels", "read_image", "draw_shape", "cache_dir", "download",
    "search_dirs",
]


@dataclass(frozen=True)
class DatasetInfo:
    image_size: int  # default side of the images a loader returns
    channels: int
    num_classes: int | None  # None: read off the data (folder)
    description: str


DATASETS = {
    "fashion-mnist": DatasetInfo(32, 1, 10, "Fashion-MNIST, 28x28 grey padded to 32x32 (IDX gzip files)"),
    "cifar10": DatasetInfo(32, 3, 10, "CIFAR-10, 32x32 colour (python pickled batches)"),
    "imagenet64": DatasetInfo(64, 3, 1000, "Downsampled ImageNet 64x64 (.npz batches, needs a login)"),
    "folder": DatasetInfo(32, 3, None, "a folder of class sub-folders of images (data_dir required)"),
    "shapes": DatasetInfo(32, 3, 10, "synthetic shapes drawn procedurally, no files needed"),
}


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                 image_size: int | None = None, download: bool = True, **options):
    """The dataset ``name`` (a key of ``DATASETS``) for ``split`` "train" or "test" ("val" is the same).

    image_size: None gives ``DATASETS[name].image_size``. Fashion-MNIST is zero-padded to it (28 = unpadded),
    CIFAR-10 / ImageNet-64 are resized to it when it differs, folder images are resized and centre-cropped,
    shapes are drawn at it. options: imagenet64 ``batches`` (train batch numbers 1..10 to load, default all),
    folder ``mode`` ("RGB" / "L"), shapes ``n`` (default 10000 train / 2000 test) and ``seed``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    split = split_name(split)
    size = image_size or DATASETS[name].image_size
    allowed = {"imagenet64": {"batches"}, "folder": {"mode"}, "shapes": {"n", "seed"}}.get(name, set())
    if set(options) - allowed:
        unknown = sorted(set(options) - allowed)
        raise TypeError(f"{name} takes no option(s) {unknown}; it takes {sorted(allowed) or 'none'}")
    if name == "fashion-mnist":
        return load_fashion_mnist(split, data_dir, pad_to=size, download=download)
    if name == "cifar10":
        return load_cifar10(split, data_dir, image_size=image_size, download=download)
    if name == "imagenet64":
        return load_imagenet64(split, data_dir, image_size=image_size, **options)
    if name == "folder":
        if data_dir is None:
            raise ValueError("the folder dataset needs data_dir (a folder of class sub-folders of images)")
        root = Path(data_dir)
        for sub in ("train",) if split == "train" else ("test", "val"):
            if (root / sub).is_dir():  # an ImageNet-style root/{train,val}/class/ layout
                root = root / sub
                break
        return FolderDataset(root, size, **options)
    n = options.get("n", 10000 if split == "train" else 2000)
    # Test images come from another seed, so they never repeat training images.
    return ShapesDataset(n, size, seed=options.get("seed", 0) + (split == "test"))
