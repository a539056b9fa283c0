"""Fashion-MNIST: gzipped IDX files, 28x28 grey images zero-padded to 32x32."""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from .datasets import ArrayDataset, CorruptDataset, check_labels, split_name
from .files import FASHION_MNIST_SYSTEM_DIR, base_url, download_dir, fetch, first_dir_with, looked_in, search_dirs

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# $MINIBIGR_FASHION_MNIST_URL overrides it (e.g. a file:// mirror)
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """A gzipped IDX file of unsigned bytes with ``ndim`` dimensions -> uint8 array of those dimensions."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # bad magic / CRC (BadGzipFile is an OSError), truncated
        raise CorruptDataset(f"{path}: not a readable gzip file ({e})") from e
    header = 4 + 4 * ndim
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise CorruptDataset(f"{path}: wrong IDX magic number {raw[:4].hex()}, expected 000008{ndim:02x} "
                             f"(unsigned bytes, {ndim} dimensions)")
    if len(raw) < header:
        raise CorruptDataset(f"{path}: IDX header is truncated")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(dims)):
        raise CorruptDataset(f"{path}: header says {'x'.join(map(str, dims))} = {int(np.prod(dims))} bytes "
                             f"of data, the file holds {len(raw) - header} (truncated or corrupt)")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None,
                       pad_to: int | None = 32, download: bool = True) -> ArrayDataset:
    """Fashion-MNIST: images (N, 1, pad_to, pad_to), the 28x28 digits centred in zeros (None = 28x28)."""
    prefix = "train" if split_name(split) == "train" else "t10k"
    files = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    size = pad_to or 28
    if size < 28:
        raise ValueError(f"Fashion-MNIST images are 28x28; pad_to must be >= 28 (zero padding), got {pad_to}")
    dirs = search_dirs("fashion-mnist", data_dir)
    found = first_dir_with(dirs, files)
    if found is None:
        target = download_dir("fashion-mnist", data_dir)
        url = base_url("MINIBIGR_FASHION_MNIST_URL", FASHION_MNIST_URL)
        help_ = (f"Fashion-MNIST {split} files {', '.join(files)} not found ({looked_in(dirs)}). "
                 f"Install them with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files in "
                 f"{FASHION_MNIST_SYSTEM_DIR}), or download them from {url} into {target} "
                 f"(or any folder passed as data_dir / set in $MINIBIGR_DATA)")
        found = fetch(files, url, target, download, help_)
    raw_images, raw_labels = (read_idx(found / files[0], 3), read_idx(found / files[1], 1))
    if len(raw_images) != len(raw_labels) or raw_images.shape[1:] != (28, 28):
        raise CorruptDataset(f"{found / files[0]}: {raw_images.shape} images do not match "
                             f"{len(raw_labels)} labels of 28x28 Fashion-MNIST")
    check_labels(raw_labels, len(raw_labels), 0, 9, found / files[1])
    images = np.zeros((len(raw_images), 1, size, size), np.uint8)
    top = (size - 28) // 2
    images[:, 0, top:top + 28, top:top + 28] = raw_images
    return ArrayDataset(images, raw_labels, FASHION_MNIST_CLASSES, source=found)
