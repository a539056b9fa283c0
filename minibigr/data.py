"""Datasets (docs/method.md §10): Fashion-MNIST, CIFAR-10, ImageNet 64x64, a folder of class folders, synthetic shapes.

Every dataset yields ``(image, label)``: a float32 tensor in [0, 1] of shape (C, H, W) and an int.
The file-backed sets (and shapes) keep all images in RAM as one uint8 array ``images_uint8``
(N, C, H, W) and convert to float only per item, or per batch with ``get_batch(indices)``, which a
training loop can call directly instead of paying a DataLoader's per-item overhead. ``batch_indices``
makes a training run's data order a pure function of (seed, step); ``iterate_batches`` walks a dataset.

Data is looked for in ``data_dir``, then ``$MINIBIGR_DATA``, then the cache dir
(``$XDG_CACHE_HOME/minibigr`` or ``~/.cache/minibigr``), then (Fashion-MNIST) the Debian package's
/usr/share/datasets/fashion-mnist. Missing Fashion-MNIST / CIFAR-10 files are downloaded from their
official URLs (SHA-256 checked, written to a temp file then renamed); when that is impossible,
``DatasetNotFound`` says what to do. Files are parsed strictly: a corrupt or truncated one raises
``CorruptDataset`` naming it. CIFAR's pickles are read by an unpickler that can only build numpy
arrays, so a pickle cannot run code.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm


class DatasetError(Exception):
    """Base class of the errors below (a CLI can catch this one)."""


class DatasetNotFound(DatasetError, FileNotFoundError):
    """The files are nowhere we looked and could not be downloaded; the message says what to do."""


class CorruptDataset(DatasetError, ValueError):
    """A dataset file is unreadable, truncated or not in the expected format; the message names it."""


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

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SHAPES = ["circle", "square", "triangle", "cross", "ring", "horizontal bars", "vertical bars",
          "diagonal", "dot grid", "diamond"]

# Download sources; $MINIBIGR_FASHION_MNIST_URL / $MINIBIGR_CIFAR10_URL override them (e.g. a file:// mirror).
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
# SHA-256 of the files as published (the MD5s in the Fashion-MNIST README match these files). Debian's copy
# is re-gzipped, so its .gz bytes differ while the decompressed IDX data is identical; it is used in place.
SHA256 = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    CIFAR10_ARCHIVE: "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
}
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGENET64_TRAIN_BATCHES = 10
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


# ----------------------------------------------------------------------------------------------------------
# Batches: a training run's data order is a pure function of (seed, step)
# ----------------------------------------------------------------------------------------------------------
def batch_indices(n: int, batch_size: int, step: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's sample indices for global step ``step``.

    Each epoch is a fresh permutation seeded by (seed, epoch); the last incomplete batch is dropped.
    The global batch is split into ``world`` contiguous shards.
    """
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} is not divisible by the number of processes {world}")
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"dataset of {n} samples is smaller than one batch of {batch_size}")
    epoch, b = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    batch = perm[b * batch_size:(b + 1) * batch_size]
    shard = batch_size // world
    return batch[rank * shard:(rank + 1) * shard]


def get_batch(dataset, indices: torch.Tensor):
    """(inputs, labels) for a list of indices; uses the dataset's fast batched path when it has one."""
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(indices)
    items = [dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items])


def iterate_batches(dataset, order: torch.Tensor, batch_size: int, desc: str | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches of the items ``order`` (n,) in that order, with a progress bar when desc is set."""
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=desc is None, dynamic_ncols=True,
                      leave=False):
        yield get_batch(dataset, order[start:start + batch_size])


# ----------------------------------------------------------------------------------------------------------
# Dataset classes


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


class FolderDataset(Dataset):
    """A folder of class sub-folders of images, decoded on access.

    Classes are the sub-folders sorted by name; images inside them (any depth) sorted by path.
    Each image is resized so its shorter side is ``image_size`` and centre-cropped to a square,
    then converted to ``mode`` "RGB" (C=3) or "L" (C=1).
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


# ----------------------------------------------------------------------------------------------------------
# The factory


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
    split = _split(split)
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


def _split(split: str) -> str:
    if split in ("train", "test"):
        return split
    if split in ("val", "validation"):
        return "test"
    raise ValueError(f"split must be 'train' or 'test' ('val'), got {split!r}")


# ----------------------------------------------------------------------------------------------------------
# Finding and downloading files


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/minibigr, or ~/.cache/minibigr."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minibigr"


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where ``name``'s files are looked for, first match wins.

    data_dir and $MINIBIGR_DATA may hold the files themselves or a ``name`` sub-folder; the cache
    holds a ``name`` sub-folder; Fashion-MNIST also comes from the Debian package's folder.
    """
    roots = [Path(data_dir)] if data_dir is not None else []
    if os.environ.get("MINIBIGR_DATA"):
        roots.append(Path(os.environ["MINIBIGR_DATA"]))
    dirs = [d for root in roots for d in (root, root / name)] + [cache_dir() / name]
    if name == "fashion-mnist":
        dirs.append(FASHION_MNIST_SYSTEM_DIR)
    return dirs


def download_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Where a download of ``name`` goes: the ``name`` sub-folder of data_dir, $MINIBIGR_DATA or the cache."""
    root = data_dir if data_dir is not None else os.environ.get("MINIBIGR_DATA") or cache_dir()
    return Path(root) / name


def download(url: str, dest: str | os.PathLike, sha256: str) -> Path:
    """Fetch ``url`` into ``dest`` with a progress bar, keeping it only if its SHA-256 is ``sha256``.

    The bytes go to a temp file beside dest, renamed into place once verified, so dest is either
    absent or complete; a failed or mismatched download leaves nothing behind.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != sha256:
            raise CorruptDataset(f"download of {url} has SHA-256 {digest.hexdigest()}, expected {sha256}; "
                                 f"it was deleted (a changed or damaged file on the server, or a proxy)")
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def _base_url(env: str, default: str) -> str:
    url = os.environ.get(env) or default
    return url if url.endswith("/") else url + "/"


def _check_labels(labels: np.ndarray, n: int, low: int, high: int, path: Path) -> None:
    well_formed = labels.shape == (n,) and labels.dtype.kind in "iu"
    if not well_formed or (n and not low <= labels.min() <= labels.max() <= high):
        raise CorruptDataset(f"{path}: labels must be {n} integers in {low}..{high}, "
                             f"got {labels.dtype} {labels.shape} (corrupt file?)")


def _first_dir_with(dirs: list[Path], names: Sequence[str]) -> Path | None:
    return next((d for d in dirs if all((d / name).is_file() for name in names)), None)


def _looked_in(dirs: list[Path]) -> str:
    return "looked in: " + ", ".join(str(d) for d in dirs)


# ----------------------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX gzip files)


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
    prefix = "train" if _split(split) == "train" else "t10k"
    files = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    size = pad_to or 28
    if size < 28:
        raise ValueError(f"Fashion-MNIST images are 28x28; pad_to must be >= 28 (zero padding), got {pad_to}")
    dirs = search_dirs("fashion-mnist", data_dir)
    found = _first_dir_with(dirs, files)
    if found is None:
        target = download_dir("fashion-mnist", data_dir)
        url = _base_url("MINIBIGR_FASHION_MNIST_URL", FASHION_MNIST_URL)
        help_ = (f"Fashion-MNIST {split} files {', '.join(files)} not found ({_looked_in(dirs)}). "
                 f"Install them with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files in "
                 f"{FASHION_MNIST_SYSTEM_DIR}), or download them from {url} into {target} "
                 f"(or any folder passed as data_dir / set in $MINIBIGR_DATA)")
        found = _fetch(files, url, target, download, help_)
    raw_images, raw_labels = (read_idx(found / files[0], 3), read_idx(found / files[1], 1))
    if len(raw_images) != len(raw_labels) or raw_images.shape[1:] != (28, 28):
        raise CorruptDataset(f"{found / files[0]}: {raw_images.shape} images do not match "
                             f"{len(raw_labels)} labels of 28x28 Fashion-MNIST")
    _check_labels(raw_labels, len(raw_labels), 0, 9, found / files[1])
    images = np.zeros((len(raw_images), 1, size, size), np.uint8)
    top = (size - 28) // 2
    images[:, 0, top:top + 28, top:top + 28] = raw_images
    return ArrayDataset(images, raw_labels, FASHION_MNIST_CLASSES, source=found)


def _fetch(files: Sequence[str], base_url: str, target: Path, allowed: bool, help_: str) -> Path:
    """Download ``files`` from base_url into target, or raise DatasetNotFound(help_) when that fails."""
    if not allowed:
        raise DatasetNotFound(help_ + "; download=False, so nothing was downloaded.")
    try:
        for name in files:
            if not (target / name).is_file():
                download(base_url + name, target / name, SHA256[name])
    except OSError as e:  # no network, HTTP error, unwritable folder
        raise DatasetNotFound(f"{help_}. Downloading failed: {e}") from e
    return target


# ----------------------------------------------------------------------------------------------------------
# CIFAR-10 (python pickled batches)

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
    _check_labels(labels, len(data), 0, 9, path)
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(split: str = "train", data_dir: str | os.PathLike | None = None,
                 image_size: int | None = None, download: bool = True) -> ArrayDataset:
    """CIFAR-10: images (N, 3, 32, 32), or resized to image_size."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if _split(split) == "train" else ["test_batch"]
    files = [f"cifar-10-batches-py/{name}" for name in names]
    dirs = search_dirs("cifar10", data_dir)
    found = _first_dir_with(dirs, files)
    if found is None:
        archive_dir = _first_dir_with(dirs, [CIFAR10_ARCHIVE])
        if archive_dir is not None:  # the archive was put there by hand: check it, then unpack beside it
            _check_sha256(archive_dir / CIFAR10_ARCHIVE)
            found = _extract_tar(archive_dir / CIFAR10_ARCHIVE, archive_dir)
        else:
            target = download_dir("cifar10", data_dir)
            url = _base_url("MINIBIGR_CIFAR10_URL", CIFAR10_URL)
            help_ = (f"CIFAR-10 ({split}) not found ({_looked_in(dirs)}). Download {url}{CIFAR10_ARCHIVE} "
                     f"and put it, or the cifar-10-batches-py/ folder it holds, in {target} "
                     f"(or in a folder passed as data_dir / set in $MINIBIGR_DATA)")
            found = _extract_tar(_fetch([CIFAR10_ARCHIVE], url, target, download, help_) / CIFAR10_ARCHIVE,
                                 target, remove=True)
        if not all((found / f).is_file() for f in files):
            raise CorruptDataset(f"{found}: the CIFAR-10 archive did not hold {', '.join(files)}")
    batches = [read_cifar_batch(found / f) for f in files]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return ArrayDataset(_resize(images, image_size), labels, CIFAR10_CLASSES, source=found)


def _check_sha256(path: Path) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != SHA256[path.name]:
        raise CorruptDataset(f"{path}: SHA-256 {digest.hexdigest()} is not the official {SHA256[path.name]} "
                             f"(damaged or a different file); delete it and download it again")


def _extract_tar(archive: Path, dest: Path, remove: bool = False) -> Path:
    """Unpack a .tar.gz into dest, refusing links, devices and paths that would leave dest.

    Members go to a temp folder inside dest first and are moved into place once all are out.
    """
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                for member in members:
                    inside = (staging / member.name).resolve().is_relative_to(staging.resolve())
                    if not (member.isfile() or member.isdir()) or not inside:
                        raise CorruptDataset(f"{archive}: refusing to extract {member.name!r} "
                                             f"(only plain files and folders inside the archive's folder)")
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(staging, members=members, **safe)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:  # bad gzip is an OSError
            raise CorruptDataset(f"{archive}: unreadable or truncated archive ({e})") from e
        for item in staging.iterdir():
            if (dest / item.name).is_dir():  # an incomplete earlier copy: the archive's version replaces it
                shutil.rmtree(dest / item.name)
            os.replace(item, dest / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if remove:
        archive.unlink()
    return dest


# ----------------------------------------------------------------------------------------------------------
# ImageNet 64x64 (.npz batches)


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
    _check_labels(labels, len(labels), 1, 1000, path)
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
    if _split(split) == "train":
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
            f"ImageNet 64x64 files {', '.join(names)} not found ({_looked_in(dirs)}). They need an "
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
    return ArrayDataset(_resize(images, image_size), np.concatenate(labels), [str(i) for i in range(1000)],
                        source=paths[0].parent)


def _find_files(folder: Path, names: Sequence[str]) -> list[Path] | None:
    """Each of names in folder or one of its sub-folders, or None when one is missing."""
    if not folder.is_dir():
        return None
    places = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]
    paths = [next((place / name for place in places if (place / name).is_file()), None) for name in names]
    return None if None in paths else paths


# ----------------------------------------------------------------------------------------------------------
# Images: resizing, decoding files, drawing shapes


def _resize(images: np.ndarray, size: int | None, chunk: int = 4096) -> np.ndarray:
    """images (N, C, H, W) uint8 -> (N, C, size, size) uint8, antialiased bilinear; None: unchanged."""
    if size is None or size == images.shape[-1]:
        return images
    out = np.empty((*images.shape[:2], size, size), np.uint8)
    for start in range(0, len(images), chunk):  # in chunks, so the float copy stays small
        x = torch.from_numpy(images[start:start + chunk]).float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = x.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


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
