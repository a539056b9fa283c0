"""Datasets (minibigr.data): every file format is written here in its real layout, then read back."""

import gzip
import hashlib
import io
import os
import pickle
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from minibigr import data
from minibigr.data import CorruptDataset, DatasetNotFound, SkippedImages, load_dataset

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """No $MINIBIGR_DATA, a private cache, no system copy and download URLs that lead nowhere."""
    monkeypatch.delenv("MINIBIGR_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(data.files, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("MINIBIGR_FASHION_MNIST_URL", (tmp_path / "no-server").as_uri())
    monkeypatch.setenv("MINIBIGR_CIFAR10_URL", (tmp_path / "no-server").as_uri())
    return tmp_path


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")) if folder.exists() else []


# ----------------------------------------------------------------------------------------------------------
# Writers of the real formats


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX: magic 0x00 0x00 0x08 (unsigned byte) ndim, then each dimension as a big-endian int32."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_fashion(folder: Path, n: int, split: str = "train", seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return images, labels


class Global:
    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


def py2_pickle(obj) -> bytes:
    """Pickle as Python 2's cPickle did for the CIFAR batches: protocol 2, str as BINSTRING, numpy arrays
    rebuilt by numpy.core.multiarray._reconstruct with a dtype built from numpy.dtype."""
    out = bytearray()

    def save(x):
        if isinstance(x, Global):
            out.extend(f"c{x.module}\n{x.name}\n".encode())
        elif isinstance(x, dict):
            out.extend(b"}(")
            for key, value in x.items():
                save(key)
                save(value)
            out.extend(b"u")
        elif isinstance(x, list):
            out.extend(b"](")
            for item in x:
                save(item)
            out.extend(b"e")
        elif isinstance(x, tuple):
            out.extend(b"(")
            for item in x:
                save(item)
            out.extend(b"t")
        elif x is None or isinstance(x, bool):
            out.extend({None: b"N", True: b"\x88", False: b"\x89"}[x])
        elif isinstance(x, int):
            out.extend(b"J" + struct.pack("<i", x))
        elif isinstance(x, bytes):
            out.extend(b"T" + struct.pack("<I", len(x)) + x)
        elif isinstance(x, np.dtype):
            save(Global("numpy", "dtype"))
            save((x.str[1:].encode(), 0, 1))
            out.extend(b"R")
            save((3, b"|", None, None, None, -1, -1, 0))
            out.extend(b"b")
        elif isinstance(x, np.ndarray):
            save(Global("numpy.core.multiarray", "_reconstruct"))
            save((Global("numpy", "ndarray"), (0,), b"b"))
            out.extend(b"R")
            save((1, x.shape, x.dtype, False, x.tobytes()))
            out.extend(b"b")
        else:
            raise TypeError(type(x))

    out.extend(b"\x80\x02")
    save(obj)
    out.extend(b".")
    return bytes(out)


def cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"training batch %d of 5" % seed,
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"img_%d.png" % i for i in range(n)]}


def write_cifar(folder: Path, n: int = 3, dumps=py2_pickle) -> dict:
    batches = {name: cifar_batch(n, seed) for seed, name in
               enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"])}
    (folder / "cifar-10-batches-py").mkdir(parents=True, exist_ok=True)
    for name, batch in batches.items():
        (folder / "cifar-10-batches-py" / name).write_bytes(dumps(batch))
    return batches


def cifar_tarball(path: Path, n: int = 3) -> dict:
    staging = path.parent / "staging"
    batches = write_cifar(staging, n)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return batches


def write_imagenet(folder: Path, n: int = 2, train_batches=range(1, 11)) -> dict:
    """The official layout: Imagenet64_train_part1/ (batches 1-5), _part2/ (6-10), Imagenet64_val/."""
    arrays = {}
    names = [f"train_data_batch_{i}" for i in train_batches] + ["val_data"]
    for seed, name in enumerate(names):
        rng = np.random.default_rng(seed)
        batch = {"data": rng.integers(0, 256, (n, 3 * 64 * 64), dtype=np.uint8),
                 "labels": rng.integers(1, 1001, n)}
        if name == "val_data":
            sub = "Imagenet64_val"
        else:
            sub = "Imagenet64_train_part1" if int(name.rsplit("_", 1)[1]) <= 5 else "Imagenet64_train_part2"
            batch["mean"] = rng.random(3 * 64 * 64)
        (folder / sub).mkdir(parents=True, exist_ok=True)
        np.savez(folder / sub / f"{name}.npz", **batch)
        arrays[name] = batch
    return arrays


def write_png(path: Path, array: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ----------------------------------------------------------------------------------------------------------
# Fashion-MNIST


def test_fashion_mnist_is_read_and_padded(env):
    images, labels = write_fashion(env / "d", n=7)
    ds = data.load_fashion_mnist("train", env / "d", pad_to=32, download=False)
    assert len(ds) == 7 and ds.images_uint8.shape == (7, 1, 32, 32) and ds.source == env / "d"
    np.testing.assert_array_equal(ds.images_uint8[:, 0, 2:30, 2:30], images)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert (ds.images_uint8[:, 0][:, border] == 0).all()
    np.testing.assert_array_equal(ds.labels, labels)
    x, y = ds.get_batch([6, 0])
    assert x.dtype == torch.float32 and x.shape == (2, 1, 32, 32) and 0 <= x.min() and x.max() <= 1
    torch.testing.assert_close(x[:, 0, 2:30, 2:30], torch.from_numpy(images[[6, 0]]).float() / 255)
    assert y.tolist() == [labels[6], labels[0]]
    image, label = ds[3]
    assert image.shape == (1, 32, 32) and label == labels[3] and isinstance(label, int)

    unpadded = load_dataset("fashion-mnist", data_dir=env / "d", image_size=28, download=False)
    np.testing.assert_array_equal(unpadded.images_uint8[:, 0], images)
    with pytest.raises(ValueError, match="28"):
        data.load_fashion_mnist("train", env / "d", pad_to=20, download=False)


@pytest.mark.skipif(not SYSTEM_FASHION.is_dir(),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist(env, monkeypatch):
    monkeypatch.setattr(data.files, "FASHION_MNIST_SYSTEM_DIR", SYSTEM_FASHION)
    for split, n in (("train", 60000), ("test", 10000)):
        ds = load_dataset("fashion-mnist", split, download=False)
        assert ds.source == SYSTEM_FASHION
        assert ds.images_uint8.shape == (n, 1, 32, 32) and ds.num_classes == 10
        assert (np.bincount(ds.labels) == n // 10).all()
        assert ds.images_uint8.max() == 255 and ds.images_uint8[:, :, :2].max() == 0
        x, _ = ds.get_batch(np.arange(64))
        assert 0 <= x.min() and x.max() <= 1 and x.mean() > 0.1


def test_search_order(env, monkeypatch):
    """data_dir, then $MINIBIGR_DATA, then the cache, then the system folder; the first complete one wins."""
    write_fashion(env / "given", 3)
    write_fashion(env / "env" / "fashion-mnist", 4)  # a root with a name sub-folder
    write_fashion(env / "xdg" / "minibigr" / "fashion-mnist", 5)
    write_fashion(env / "system", 6)
    write_fashion(env / "half", 2, split="test")  # only the test files: skipped for train
    monkeypatch.setenv("MINIBIGR_DATA", str(env / "env"))

    def found(**kw):
        return len(load_dataset("fashion-mnist", download=False, **kw))

    assert found(data_dir=env / "given") == 3
    assert found(data_dir=env / "half") == 4
    assert found() == 4
    monkeypatch.delenv("MINIBIGR_DATA")
    assert found() == 5
    monkeypatch.setenv("XDG_CACHE_HOME", str(env / "elsewhere"))
    assert found() == 6
    assert data.search_dirs("fashion-mnist")[-1] == env / "system"
    assert data.cache_dir() == env / "elsewhere" / "minibigr"


def test_missing_fashion_mnist_says_what_to_do(env):
    with pytest.raises(DatasetNotFound, match="apt-get install dataset-fashion-mnist") as info:
        load_dataset("fashion-mnist", download=False)
    assert str(env / "xdg" / "minibigr" / "fashion-mnist") in str(info.value)
    with pytest.raises(DatasetNotFound, match="Downloading failed") as info:
        load_dataset("fashion-mnist")  # the URL points at a folder that does not exist
    assert "no-server" in str(info.value) and "apt-get install" in str(info.value)
    assert not [p for p in files_under(env / "xdg") if p.is_file()]


def test_download_from_url(env, monkeypatch):
    images, labels = write_fashion(env / "server", 5)
    for path in (env / "server").iterdir():
        monkeypatch.setitem(data.SHA256, path.name, hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setenv("MINIBIGR_FASHION_MNIST_URL", (env / "server").as_uri())
    ds = load_dataset("fashion-mnist")
    target = env / "xdg" / "minibigr" / "fashion-mnist"
    assert ds.source == target
    downloaded = sorted(p.name for p in target.iterdir())
    assert downloaded == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    np.testing.assert_array_equal(ds.images_uint8[:, 0, 2:30, 2:30], images)
    np.testing.assert_array_equal(ds.labels, labels)


def test_download_with_wrong_sha256_leaves_nothing(env, monkeypatch):
    write_fashion(env / "server", 5)
    monkeypatch.setenv("MINIBIGR_FASHION_MNIST_URL", (env / "server").as_uri())
    with pytest.raises(CorruptDataset, match="SHA-256"):  # the official hashes do not match these files
        load_dataset("fashion-mnist")
    assert not [p for p in files_under(env / "xdg") if p.is_file()]
    with pytest.raises(CorruptDataset, match="SHA-256"):
        data.download((env / "server" / "train-labels-idx1-ubyte.gz").as_uri(), env / "out" / "f", "0" * 64)
    assert files_under(env / "out") == []


# ----------------------------------------------------------------------------------------------------------
# CIFAR-10


@pytest.mark.parametrize("dumps", [py2_pickle, lambda obj: pickle.dumps(obj, protocol=4)], ids=["py2", "py3"])
def test_cifar10(env, dumps):
    batches = write_cifar(env / "d", n=3, dumps=dumps)
    train = load_dataset("cifar10", "train", env / "d", download=False)
    assert train.images_uint8.shape == (15, 3, 32, 32) and train.num_classes == 10
    first = batches["data_batch_1"][b"data"][1]  # row layout: 1024 red, 1024 green, 1024 blue, row-major
    for c, y, x in [(0, 0, 0), (1, 5, 7), (2, 31, 30)]:
        assert train.images_uint8[1, c, y, x] == first[c * 1024 + y * 32 + x]
    expected = [label for i in range(1, 6) for label in batches[f"data_batch_{i}"][b"labels"]]
    assert train.labels.tolist() == expected
    test = load_dataset("cifar10", "test", env / "d", download=False)
    np.testing.assert_array_equal(test.images_uint8.reshape(3, -1), batches["test_batch"][b"data"])
    x, y = test.get_batch([0, 2])
    assert x.shape == (2, 3, 32, 32) and 0 <= x.min() and x.max() <= 1 and y.dtype == torch.int64
    small = load_dataset("cifar10", "test", env / "d", image_size=16, download=False)
    assert small.images_uint8.shape == (3, 3, 16, 16)


class RunsCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Evals:
    def __reduce__(self):
        return eval, ("1 + 1",)


class LoadsNumpyFile:
    def __reduce__(self):
        return np.load, ("/etc/passwd",)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("payload", ["system", "eval", "numpy.load"])
def test_malicious_pickle_is_refused(env, protocol, payload):
    marker = env / "pwned"
    evil = {"system": RunsCommand(marker), "eval": Evals(), "numpy.load": LoadsNumpyFile()}[payload]
    batch = cifar_batch(2, 0)
    batch[b"labels"] = evil
    path = env / "d" / "cifar-10-batches-py" / "test_batch"
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    with pytest.raises(CorruptDataset, match=rf"{re.escape(str(path))}.*refusing to load"):
        load_dataset("cifar10", "test", env / "d", download=False)
    assert not marker.exists()


def test_cifar10_download_and_extract(env, monkeypatch):
    batches = cifar_tarball(env / "server" / data.CIFAR10_ARCHIVE)
    archive = env / "server" / data.CIFAR10_ARCHIVE
    monkeypatch.setitem(data.SHA256, data.CIFAR10_ARCHIVE, hashlib.sha256(archive.read_bytes()).hexdigest())
    monkeypatch.setenv("MINIBIGR_CIFAR10_URL", (env / "server").as_uri())
    ds = load_dataset("cifar10", "test")
    target = env / "xdg" / "minibigr" / "cifar10"
    assert ds.source == target
    np.testing.assert_array_equal(ds.images_uint8.reshape(3, -1), batches["test_batch"][b"data"])
    # the archive is gone once unpacked; no temp files or staging folders are left
    assert [p.relative_to(target).parts[0] for p in files_under(target)] == ["cifar-10-batches-py"] * 7


def test_cifar10_archive_put_by_hand(env, monkeypatch):
    cifar_tarball(env / "d" / data.CIFAR10_ARCHIVE)
    with pytest.raises(CorruptDataset, match=re.escape(str(env / "d" / data.CIFAR10_ARCHIVE))):
        load_dataset("cifar10", "train", env / "d", download=False)  # not the official file
    archive = env / "d" / data.CIFAR10_ARCHIVE
    monkeypatch.setitem(data.SHA256, data.CIFAR10_ARCHIVE, hashlib.sha256(archive.read_bytes()).hexdigest())
    assert len(load_dataset("cifar10", "train", env / "d", download=False)) == 15
    assert (env / "d" / "cifar-10-batches-py" / "data_batch_5").is_file()


def test_cifar10_missing_says_where_to_get_it(env):
    with pytest.raises(DatasetNotFound, match=re.escape(data.CIFAR10_ARCHIVE)) as info:
        load_dataset("cifar10", download=False)
    assert str(env / "xdg" / "minibigr" / "cifar10") in str(info.value)


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/minibigr-evil.txt", "link"])
def test_unsafe_tar_is_refused(env, monkeypatch, member):
    archive = env / "d" / data.CIFAR10_ARCHIVE
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    monkeypatch.setitem(data.SHA256, data.CIFAR10_ARCHIVE, hashlib.sha256(archive.read_bytes()).hexdigest())
    with pytest.raises(CorruptDataset, match="refusing to extract"):
        load_dataset("cifar10", "train", env / "d", download=False)
    assert files_under(env / "d") == [archive] and not (env / "evil.txt").exists()
    assert not Path("/tmp/minibigr-evil.txt").exists()


# ----------------------------------------------------------------------------------------------------------
# ImageNet 64x64


def test_imagenet64(env):
    arrays = write_imagenet(env / "d" / "imagenet64", n=2)
    train = load_dataset("imagenet64", "train", env / "d")
    assert train.images_uint8.shape == (20, 3, 64, 64) and train.num_classes == 1000
    expected = np.concatenate([arrays[f"train_data_batch_{i}"]["labels"] for i in range(1, 11)]) - 1
    np.testing.assert_array_equal(train.labels, expected)
    assert 0 <= train.labels.min() and train.labels.max() <= 999
    val = load_dataset("imagenet64", "val", env / "d")
    row = arrays["val_data"]["data"][1]  # channel-first rows: 4096 red, 4096 green, 4096 blue
    for c, y, x in [(0, 0, 0), (1, 10, 3), (2, 63, 62)]:
        assert val.images_uint8[1, c, y, x] == row[c * 4096 + y * 64 + x]
    some = load_dataset("imagenet64", "train", env / "d", image_size=32, batches=[7, 2])
    assert some.images_uint8.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(some.labels, np.concatenate(
        [arrays["train_data_batch_7"]["labels"], arrays["train_data_batch_2"]["labels"]]) - 1)
    with pytest.raises(ValueError, match="batches"):
        load_dataset("imagenet64", "train", env / "d", batches=[11])


def test_imagenet64_missing_says_where_to_get_it(env):
    write_imagenet(env / "d", n=1, train_batches=range(1, 10))  # batch 10 missing
    with pytest.raises(DatasetNotFound, match="train_data_batch_10.npz") as info:
        load_dataset("imagenet64", "train", env / "d")
    assert "image-net.org" in str(info.value) and "Downsampled ImageNet 64x64" in str(info.value)
    assert len(load_dataset("imagenet64", "train", env / "d", batches=[9])) == 1


# ----------------------------------------------------------------------------------------------------------
# Corrupt and truncated files: a clear error naming the file


def corrupt_fashion(folder: Path, how: str) -> Path:
    write_fashion(folder, 4)
    images = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    if how == "not gzip":
        images.write_bytes(b"this is not gzip data at all")
    elif how == "truncated gzip":
        images.write_bytes(images.read_bytes()[:-100])
    elif how == "wrong magic":
        images.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + raw[4:]))
    elif how == "short data":
        images.write_bytes(gzip.compress(raw[:-28]))
    elif how == "count mismatch":
        write_fashion(folder / "other", 5)
        (folder / "other" / "train-labels-idx1-ubyte.gz").replace(folder / "train-labels-idx1-ubyte.gz")
    elif how == "bad label":
        labels = np.full(4, 10, np.uint8)
        (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
        return folder / "train-labels-idx1-ubyte.gz"
    return images


@pytest.mark.parametrize("how", ["not gzip", "truncated gzip", "wrong magic", "short data", "count mismatch",
                                 "bad label"])
def test_corrupt_fashion_mnist(env, how):
    path = corrupt_fashion(env / "d", how)
    with pytest.raises(CorruptDataset, match=re.escape(str(path))):
        load_dataset("fashion-mnist", data_dir=env / "d", download=False)


@pytest.mark.parametrize("how", ["truncated", "garbage", "not a batch", "wrong data shape", "bad labels"])
def test_corrupt_cifar(env, how):
    write_cifar(env / "d", n=3)
    path = env / "d" / "cifar-10-batches-py" / "data_batch_3"
    batch = cifar_batch(3, 0)
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:500])
    elif how == "garbage":
        path.write_bytes(os.urandom(64))
    elif how == "not a batch":
        path.write_bytes(py2_pickle([1, 2, 3]))
    elif how == "wrong data shape":
        batch[b"data"] = batch[b"data"][:, :1000]
        path.write_bytes(py2_pickle(batch))
    else:
        batch[b"labels"][0] = 10
        path.write_bytes(py2_pickle(batch))
    with pytest.raises(CorruptDataset, match=re.escape(str(path))):
        load_dataset("cifar10", "train", env / "d", download=False)


@pytest.mark.parametrize("how", ["not a zip", "truncated", "missing key", "wrong shape", "labels from 0",
                                 "npy"])
def test_corrupt_imagenet64(env, how):
    arrays = write_imagenet(env / "d", n=2, train_batches=[])
    path = env / "d" / "Imagenet64_val" / "val_data.npz"
    batch = arrays["val_data"]
    if how == "not a zip":
        path.write_bytes(b"PK but not really a zip file")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:3000])
    elif how == "missing key":
        np.savez(path, data=batch["data"])
    elif how == "wrong shape":
        np.savez(path, data=batch["data"][:, :100], labels=batch["labels"])
    elif how == "labels from 0":
        np.savez(path, data=batch["data"], labels=batch["labels"] * 0)
    else:
        with open(path, "wb") as f:
            np.save(f, batch["data"])
    with pytest.raises(CorruptDataset, match=re.escape(str(path))):
        load_dataset("imagenet64", "test", env / "d")


def test_corrupt_image_in_folder_is_skipped_when_loaded_with_a_warning_naming_it(env):
    write_png(env / "d" / "cat" / "a.png", np.zeros((8, 8, 3), np.uint8))
    write_png(env / "d" / "dog" / "a.png", np.ones((8, 8, 3), np.uint8))
    bad = env / "d" / "cat" / "b.png"
    bad.write_bytes(b"\x89PNG not an image")
    with pytest.warns(SkippedImages, match=rf"skipped 1 unreadable image file\(s\) of 3 .*{re.escape(str(bad))}"):
        ds = load_dataset("folder", data_dir=env / "d", image_size=8)
    assert len(ds) == 2 and bad not in ds.paths and ds.classes == ["cat", "dog"]
    x, y = ds.get_batch([0, 1])                       # every batch of the loaded set decodes
    assert x.shape == (2, 3, 8, 8) and y.tolist() == [0, 1]
    for good in (env / "d" / "cat" / "a.png", env / "d" / "dog" / "a.png"):
        good.write_bytes(b"GIF89a truncated")
    with pytest.raises(CorruptDataset, match="none of the 3 image files"):
        load_dataset("folder", data_dir=env / "d", image_size=8)


# ----------------------------------------------------------------------------------------------------------
# Folder of class sub-folders


def test_folder_dataset(env):
    stripes = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 tall: red | green | green | blue quarters
    stripes[:, :10] = (255, 0, 0)
    stripes[:, 10:30] = (0, 255, 0)
    stripes[:, 30:] = (0, 0, 255)
    write_png(env / "d" / "zebra" / "1.png", stripes)
    write_png(env / "d" / "ant" / "nested" / "2.png", np.full((50, 30, 3), 200, np.uint8))
    write_png(env / "d" / "ant" / "1.png", np.full((16, 16), 60, np.uint8))  # greyscale file
    (env / "d" / "ant" / "notes.txt").write_text("not an image")

    ds = load_dataset("folder", data_dir=env / "d", image_size=16)
    assert ds.classes == ["ant", "zebra"] and ds.labels.tolist() == [0, 0, 1] and ds.num_classes == 2
    assert [p.name for p in ds.paths] == ["1.png", "2.png", "1.png"]
    x, y = ds.get_batch([0, 1, 2])
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32 and y.tolist() == [0, 0, 1]
    torch.testing.assert_close(x[0], torch.full((3, 16, 16), 60 / 255))
    torch.testing.assert_close(x[1], torch.full((3, 16, 16), 200 / 255))
    # the centre square of the stripes (x 10..30 of 40) is all green after resizing and cropping
    green = torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand(3, 16, 12)
    torch.testing.assert_close(x[2, :, :, 2:-2], green)

    grey = load_dataset("folder", data_dir=env / "d", image_size=8, mode="L")
    assert grey[2][0].shape == (1, 8, 8) and grey.channels == 1


def test_folder_splits_and_errors(env):
    write_png(env / "d" / "train" / "a" / "1.png", np.zeros((4, 4, 3), np.uint8))
    write_png(env / "d" / "train" / "b" / "1.png", np.zeros((4, 4, 3), np.uint8))
    write_png(env / "d" / "val" / "a" / "1.png", np.zeros((4, 4, 3), np.uint8))
    assert len(load_dataset("folder", "train", env / "d")) == 2
    assert len(load_dataset("folder", "val", env / "d")) == 1
    (env / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DatasetNotFound, match="no images"):
        load_dataset("folder", data_dir=env / "empty")
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("folder")
    with pytest.raises(ValueError, match="mode"):
        load_dataset("folder", data_dir=env / "d", mode="CMYK")


# ----------------------------------------------------------------------------------------------------------
# Shapes, batches, the factory


def test_shapes_are_deterministic_and_balanced():
    a = load_dataset("shapes", n=60)
    b = data.ShapesDataset(n=120, image_size=32, seed=0)
    np.testing.assert_array_equal(a.images_uint8, b.images_uint8[:60])  # each image depends only on its index
    assert a.images_uint8.shape == (60, 3, 32, 32) and a.classes == data.SHAPES
    assert (np.bincount(b.labels, minlength=10) == 12).all() and (b.labels == np.arange(120) % 10).all()
    test = load_dataset("shapes", "test", n=60)
    assert not np.array_equal(test.images_uint8, a.images_uint8)
    big = load_dataset("shapes", n=10, image_size=48)
    assert big.images_uint8.shape == (10, 3, 48, 48)
    # every image has a dark and a light part; no two images are the same
    spread = a.images_uint8.reshape(60, -1).max(1).astype(int) - a.images_uint8.reshape(60, -1).min(1)
    assert (spread > 50).all()
    assert len({image.tobytes() for image in a.images_uint8}) == 60


def test_shapes_are_told_apart_by_their_masks():
    """The same position, size and colours give a different picture for each of the 10 classes."""
    pictures = [data.draw_shape(label, 32, np.random.default_rng(7)) for label in range(10)]
    assert len({p.tobytes() for p in pictures}) == 10
    with pytest.raises(ValueError, match="shape label"):
        data.draw_shape(10, 32, np.random.default_rng(0))


@settings(deadline=None, max_examples=25)
@given(st.lists(st.integers(0, 29), min_size=1, max_size=12))
def test_get_batch_matches_items(indices):
    ds = data.ShapesDataset(n=30, image_size=16, seed=3)
    x, y = ds.get_batch(indices)
    items = [ds[i] for i in indices]
    torch.testing.assert_close(x, torch.stack([image for image, _ in items]), rtol=0, atol=0)
    assert y.tolist() == [label for _, label in items]


def test_as_tensors_share_memory():
    ds = data.ShapesDataset(n=10, image_size=16)
    images, labels = ds.as_tensors()
    assert images.dtype == torch.uint8 and images.shape == (10, 3, 16, 16) and labels.dtype == torch.int64
    images[0, 0, 0, 0] = 17
    assert ds.images_uint8[0, 0, 0, 0] == 17


def test_factory(env):
    assert set(data.DATASETS) == {"fashion-mnist", "cifar10", "imagenet64", "folder", "shapes"}
    shapes = load_dataset("shapes", n=10)
    info = data.DATASETS["shapes"]
    assert (shapes.image_size, shapes.channels, shapes.num_classes) == (info.image_size, info.channels,
                                                                       info.num_classes)
    write_fashion(env / "d", 3)
    fashion = load_dataset("fashion-mnist", data_dir=env / "d", download=False)
    info = data.DATASETS["fashion-mnist"]
    assert (fashion.image_size, fashion.channels, fashion.num_classes) == (info.image_size, info.channels,
                                                                          info.num_classes)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="split"):
        load_dataset("shapes", "dev")
    with pytest.raises(TypeError, match="batches"):
        load_dataset("shapes", batches=[1])
