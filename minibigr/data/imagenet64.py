"""Downsampled ImageNet 64x64: ``.npz`` batches (``data`` uint8 (n, 3*64*64) channel-first, ``labels`` 1-based).

The files need an image-net.org login, so they are never downloaded.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .datasets import ArrayDataset, CorruptDataset, DatasetNotFound, check_labels, resize_images, split_name
from .files import download_dir, looked_in, search_dirs

IMAGENET64_TRAIN_BATCHES = 10


def _open_npz(path: Path):
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CorruptDataset(f"{path}: unreadable .npz ({e})") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CorruptDataset(f"{path}: expected an .npz archive, found a bare .npy array")
    if not {"data", "labels"} <= set(npz.files):
        npz.close()
        raise CorruptDataset(f"{path}: expected arrays 'data' and 'labels', found {sorted(npz.files)}")
    return npz


def _npz_array(npz, key: str, path: Path) -> np.ndarray:
    try:
        return npz[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise CorruptDataset(f"{path}: array {key!r} is unreadable ({e})") from e


def read_imagenet64_labels(path: str | os.PathLike) -> np.ndarray:
    """The labels of one ImageNet-64 batch, 1-based in the file -> (n,) int64 in 0..999."""
    path = Path(path)
    with _open_npz(path) as npz:
        labels = _npz_array(npz, "labels", path)
    check_labels(labels, len(labels), 1, 1000, path)
    return labels.astype(np.int64) - 1


def read_imagenet64_batch(path: str | os.PathLike,
                          out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One ImageNet-64 batch -> images (n, 3, 64, 64) uint8 (into ``out`` if given), labels (n,) 0-based."""
    path = Path(path)
    labels = read_imagenet64_labels(path)
    with _open_npz(path) as npz:
        data = _npz_array(npz, "data", path)
    if data.dtype != np.uint8 or data.shape != (len(labels), 3 * 64 * 64):
        raise CorruptDataset(f"{path}: 'data' must be uint8 ({len(labels)}, {3 * 64 * 64}) to match the "
                             f"labels, got {data.dtype} {data.shape}")
    images = data.reshape(-1, 3, 64, 64)  # rows are channel-first: all R, then G, then B
    if out is None:
        return images, labels
    out[...] = images
    return out, labels


def load_imagenet64(split: str = "train", data_dir: str | os.PathLike | None = None,
                    image_size: int | None = None, batches: Sequence[int] | None = None) -> ArrayDataset:
    """Downsampled ImageNet 64x64: images (N, 3, 64, 64), or resized to image_size; labels 0..999.

    batches: which of train_data_batch_1..10 to load (all of them are ~16 GB of uint8); test is val_data.
    """
    if split_name(split) == "train":
        batches = range(1, IMAGENET64_TRAIN_BATCHES + 1) if batches is None else batches
        if not batches or not set(batches) <= set(range(1, IMAGENET64_TRAIN_BATCHES + 1)):
            raise ValueError(f"batches must be numbers in 1..{IMAGENET64_TRAIN_BATCHES}, got {list(batches)}")
        names = [f"train_data_batch_{i}.npz" for i in batches]
    else:
        names = ["val_data.npz"]
    dirs = search_dirs("imagenet64", data_dir)
    # The official zips unpack into Imagenet64_train_part1/, _part2/, Imagenet64_val/: look one level down.
    paths = next((found for d in dirs if (found := _find_files(d, names)) is not None), None)
    if paths is None:
        raise DatasetNotFound(
            f"ImageNet 64x64 files {', '.join(names)} not found ({looked_in(dirs)}). They need an "
            f"image-net.org login: download 'Downsampled ImageNet 64x64' (Imagenet64_train_part1.zip, "
            f"Imagenet64_train_part2.zip, Imagenet64_val.zip) from https://image-net.org/download-images.php "
            f"and unzip them into {download_dir('imagenet64', data_dir)} "
            f"(or a folder passed as data_dir / set in $MINIBIGR_DATA)")
    # Read the small label arrays first, so the images fill one preallocated array (no 2x peak memory).
    labels = [read_imagenet64_labels(p) for p in paths]
    images = np.empty((sum(map(len, labels)), 3, 64, 64), np.uint8)
    start = 0
    for path, batch_labels in zip(paths, labels, strict=True):
        read_imagenet64_batch(path, out=images[start:start + len(batch_labels)])
        start += len(batch_labels)
    return ArrayDataset(resize_images(images, image_size), np.concatenate(labels), [str(i) for i in range(1000)],
                        source=paths[0].parent)


def _find_files(folder: Path, names: Sequence[str]) -> list[Path] | None:
    """Each of names in folder or one of its sub-folders, or None when one is missing."""
    if not folder.is_dir():
        return None
    places = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]
    paths = [next((place / name for place in places if (place / name).is_file()), None) for name in names]
    return None if None in paths else paths
