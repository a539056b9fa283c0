"""The code cache: a dataset encoded once by a tokenizer, so that BiGR trains on tokens, not images.

    cache = encode_dataset(tokenizer, dataset, "runs/fm/codes")     # or `minibigr encode`
    tokens, labels = cache.get_batch(indices)                         # (B, N, K) float {0,1}: [p > 1/2]
    tokens, labels = cache.get_batch(indices, "bernoulli", generator) # fresh Bernoulli(p) bits of a random flip

Two ways to read it (docs/method.md §3, §9):
  threshold   the deterministic codes [p > 1/2] of each image, the same at every step (minibigr's shipped model)
  bernoulli   each image or its horizontal mirror (a fair coin), then bits ~ Bernoulli(p) drawn afresh: what the
              authors' train_ddp.py does by encoding every batch (random flip, then bae/binaryae.py's torch.bernoulli)

Files: ``codes.npy`` uint8 (n, N, ceil(K/8)), the threshold bits packed 8 per byte; ``probs.npy`` uint8
(n, 2, N, K), the tokenizer's probabilities p of the image and of its mirror, stored as round(255 p) (a draw reads
them as q / 255: within 1/510 of p); both memory-mapped when read. ``labels.npy`` int64 (n,); ``codes.json`` (K,
h, w, n, the class count). The arrays are written under temp names and renamed, and codes.json last, so an
interrupted encoding never looks like a finished cache. Fashion-MNIST's 60k images: 7.7 MB of codes, 123 MB of
probabilities.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .data import iterate_batches
from .quantizer import DRAWS


class CodeCache:
    """Cached tokens of a dataset.  get_batch(indices, draw, generator) -> (tokens (B, N, K) {0,1}, labels (B,))."""

    def __init__(self, directory):
        directory = Path(directory)
        meta_path = directory / "codes.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"no code cache in {directory} (expected codes.json); run `minibigr encode` first")
        self.directory = directory
        self.meta = json.loads(meta_path.read_text())
        self.K, self.h, self.w = self.meta["K"], self.meta["h"], self.meta["w"]
        self.num_classes: int | None = self.meta.get("num_classes")      # None in caches written before it
        self.codes = np.load(directory / "codes.npy", mmap_mode="r")
        self.labels = np.load(directory / "labels.npy")
        probs = directory / "probs.npy"                                   # absent in caches written before it
        self.probs = np.load(probs, mmap_mode="r") if probs.exists() else None
        if self.codes.shape[0] != len(self.labels) or self.codes.shape[0] != self.meta["n"]:
            raise ValueError(f"code cache in {directory} is incomplete: {self.codes.shape[0]} codes, "
                             f"{len(self.labels)} labels, {self.meta['n']} expected")

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, indices, draw: str = "threshold",
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens (B, N, K) and labels (B,) of rows ``indices`` (B,): threshold codes, or (``draw="bernoulli"``)
        a mirror chosen and bits drawn with ``generator`` (on its device; the tokens come back there)."""
        indices = np.asarray(indices)
        idx = np.sort(indices)                                  # sorted reads are faster on a memmap
        order = np.argsort(np.argsort(indices))
        labels = torch.from_numpy(self.labels[idx][order])
        if draw == "threshold":
            packed = np.asarray(self.codes[idx])[order]
            bits = np.unpackbits(packed, axis=-1, count=self.K, bitorder="little")
            return torch.from_numpy(bits.astype(np.float32)), labels
        if draw != "bernoulli":
            raise ValueError(f"unknown draw {draw!r}; choose one of {DRAWS}")
        if self.probs is None:
            raise ValueError(f"the code cache in {self.directory} holds no probabilities (written before they were "
                             "kept): encode the dataset again (`minibigr encode`) to train on Bernoulli draws")
        device = generator.device if generator is not None else torch.device("cpu")
        q = torch.from_numpy(np.asarray(self.probs[idx])[order]).to(device)              # (B, 2, N, K) uint8
        # the image or its mirror (a fair coin per image), then each bit ~ Bernoulli(q / 255)
        mirror = torch.rand(len(q), generator=generator, device=device) < 0.5            # (B,)
        p = q[torch.arange(len(q), device=device), mirror.long()].float() / 255          # (B, N, K)
        bits = (torch.rand(p.shape, generator=generator, device=device) < p).float()
        return bits, labels.to(device)


def flip_horizontally(images: torch.Tensor) -> torch.Tensor:
    """The mirror image (B, C, H, W) -> (B, C, H, W): the augmentation the authors train with."""
    return images.flip(-1)


@torch.no_grad()
def encode_dataset(tokenizer, dataset, out_dir, batch_size: int = 256) -> CodeCache:
    """Encode every image once, on the tokenizer's device, and write the code cache: the threshold codes, and the
    probabilities of the image and of its mirror (what a Bernoulli draw needs)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    n = len(dataset)
    K, (h, w) = tokenizer.config.K, tokenizer.grid_size
    tmp_codes, tmp_probs = out / "codes.npy.tmp", out / "probs.npy.tmp"
    codes = np.lib.format.open_memmap(tmp_codes, mode="w+", dtype=np.uint8, shape=(n, h * w, (K + 7) // 8))
    probs = np.lib.format.open_memmap(tmp_probs, mode="w+", dtype=np.uint8, shape=(n, 2, h * w, K))
    labels = np.zeros(n, dtype=np.int64)
    start = 0
    for x, y in iterate_batches(dataset, torch.arange(n), batch_size, desc="encode"):
        x = x.to(device)
        p = torch.stack([tokenizer.encode_token_probs(x), tokenizer.encode_token_probs(flip_horizontally(x))], 1)
        stop = start + len(x)
        codes[start:stop] = np.packbits((p[:, 0] > 0.5).to(torch.uint8).cpu().numpy(), axis=-1, bitorder="little")
        probs[start:stop] = (p * 255).round().to(torch.uint8).cpu().numpy()                # (B, 2, N, K)
        labels[start:stop] = np.asarray(y)
        start = stop
    codes.flush()
    probs.flush()
    del codes, probs
    os.replace(tmp_codes, out / "codes.npy")
    os.replace(tmp_probs, out / "probs.npy")
    np.save(out / "labels.npy", labels)
    classes = getattr(dataset, "classes", None)
    (out / "codes.json").write_text(json.dumps({"K": int(K), "h": int(h), "w": int(w), "n": n,
                                                "num_classes": len(classes) if classes else None}))
    return CodeCache(out)
