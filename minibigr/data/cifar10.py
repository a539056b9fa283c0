"""CIFAR-10: the "python" pickled batches, read by an unpickler that can only build numpy arrays (no code runs)."""

from __future__ import annotations

import os
import pickle

import numpy as np

from .datasets import ArrayDataset, CorruptDataset, check_labels, resize_images, split_name
from .files import (
    CIFAR10_ARCHIVE,
    base_url,
    check_sha256,
    download_dir,
    extract_tar,
    fetch,
    first_dir_with,
    looked_in,
    search_dirs,
)

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# $MINIBIGR_CIFAR10_URL overrides it (e.g. a file:// mirror)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/"

_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's array rebuild function, wherever this numpy keeps it
# The only globals a pickled numpy array needs; the batches are plain dicts, lists, bytes and ints otherwise.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        return _PICKLE_GLOBALS[(module, name)]


def safe_pickle_load(path: str | os.PathLike):
    """Unpickle a data file that may hold only builtins and numpy arrays (no code can run).

    Python 2 strings come back as bytes (encoding="bytes"), as the CIFAR batches need.
    """
    try:
        with open(path, "rb") as f:
            return _ArraysOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except Exception as e:  # unpickling bad data can raise nearly anything; all of it means "corrupt"
        raise CorruptDataset(f"{path}: unreadable pickle ({type(e).__name__}: {e})") from e


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> images (n, 3, 32, 32) uint8, labels (n,) int64."""
    batch = safe_pickle_load(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise CorruptDataset(f"{path}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise CorruptDataset(f"{path}: b'data' must be uint8 (n, 3072), got "
                             f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
    check_labels(labels, len(data), 0, 9, path)
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(split: str = "train", data_dir: str | os.PathLike | None = None,
                 image_size: int | None = None, download: bool = True) -> ArrayDataset:
    """CIFAR-10: images (N, 3, 32, 32), or resized to image_size."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split_name(split) == "train" else ["test_batch"]
    files = [f"cifar-10-batches-py/{name}" for name in names]
    dirs = search_dirs("cifar10", data_dir)
    found = first_dir_with(dirs, files)
    if found is None:
        archive_dir = first_dir_with(dirs, [CIFAR10_ARCHIVE])
        if archive_dir is not None:  # the archive was put there by hand: check it, then unpack beside it
            check_sha256(archive_dir / CIFAR10_ARCHIVE)
            found = extract_tar(archive_dir / CIFAR10_ARCHIVE, archive_dir)
        else:
            target = download_dir("cifar10", data_dir)
            url = base_url("MINIBIGR_CIFAR10_URL", CIFAR10_URL)
            help_ = (f"CIFAR-10 ({split}) not found ({looked_in(dirs)}). Download {url}{CIFAR10_ARCHIVE} "
                     f"and put it, or the cifar-10-batches-py/ folder it holds, in {target} "
                     f"(or in a folder passed as data_dir / set in $MINIBIGR_DATA)")
            found = extract_tar(fetch([CIFAR10_ARCHIVE], url, target, download, help_) / CIFAR10_ARCHIVE,
                                 target, remove=True)
        if not all((found / f).is_file() for f in files):
            raise CorruptDataset(f"{found}: the CIFAR-10 archive did not hold {', '.join(files)}")
    batches = [read_cifar_batch(found / f) for f in files]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return ArrayDataset(resize_images(images, image_size), labels, CIFAR10_CLASSES, source=found)
