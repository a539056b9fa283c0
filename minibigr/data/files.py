"""Finding dataset files and fetching them: where to look, checked downloads, safe archive extraction.

Files are looked for in ``data_dir``, then ``$MINIBIGR_DATA``, then the cache dir (``$XDG_CACHE_HOME/minibigr``
or ``~/.cache/minibigr``), then (Fashion-MNIST) the Debian package's folder. A download is checked against the
published SHA-256 and written to a temp file, then renamed into place, so a file is either absent or complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from .datasets import CorruptDataset, DatasetNotFound

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

# The Debian / Ubuntu package dataset-fashion-mnist puts the files here.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


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


def base_url(env: str, default: str) -> str:
    """The download URL: $env if set, else default; with a trailing slash."""
    url = os.environ.get(env) or default
    return url if url.endswith("/") else url + "/"


def first_dir_with(dirs: list[Path], names: Sequence[str]) -> Path | None:
    """The first of dirs that holds every one of names."""
    return next((d for d in dirs if all((d / name).is_file() for name in names)), None)


def looked_in(dirs: list[Path]) -> str:
    """Where we looked, for an error message."""
    return "looked in: " + ", ".join(str(d) for d in dirs)


def fetch(files: Sequence[str], base_url: str, target: Path, allowed: bool, help_: str) -> Path:
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


def check_sha256(path: Path) -> None:
    """Raise CorruptDataset unless the file's SHA-256 is the published one (SHA256[path.name])."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != SHA256[path.name]:
        raise CorruptDataset(f"{path}: SHA-256 {digest.hexdigest()} is not the official {SHA256[path.name]} "
                             f"(damaged or a different file); delete it and download it again")


def extract_tar(archive: Path, dest: Path, remove: bool = False) -> Path:
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
