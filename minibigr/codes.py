"""The code cache: a dataset encoded once by a tokenizer, so that BiGR trains on tokens, not images.

    cache = encode_dataset(tokenizer, dataset, "runs/fm/codes")     # or `minibigr encode`
    tokens, labels = cache.get_batch(indices)                         # (B, N, K) float {0,1}, (B,)

Files: ``codes.npy`` uint8 (n, N, ceil(K/8)), the bits packed 8 per byte and memory-mapped when read;
``labels.npy`` int64 (n,); ``codes.json`` (K, h, w, n, and the dataset's class count). codes.npy is written under
a temp name and renamed, and codes.json last, so an interrupted encoding never looks like a finished cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .data import iterate_batches


class CodeCache:
    """Cached tokens of a dataset.  get_batch(indices) -> (tokens (B, N, K) float {0,1}, labels (B,))."""

    def __init__(self, directory):
        directory = Path(directory)
        meta_path = directory / "codes.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"no code cache in {directory} (expected codes.json); run `minibigr encode` first")
        self.meta = json.loads(meta_path.read_text())
        self.K, self.h, self.w = self.meta["K"], self.meta["h"], self.meta["w"]
        self.num_classes: int | None = self.meta.get("num_classes")      # None in caches written before it
        self.codes = np.load(directory / "codes.npy", mmap_mode="r")
        self.labels = np.load(directory / "labels.npy")
        if self.codes.shape[0] != len(self.labels) or self.codes.shape[0] != self.meta["n"]:
            raise ValueError(f"code cache in {directory} is incomplete: {self.codes.shape[0]} codes, "
                             f"{len(self.labels)} labels, {self.meta['n']} expected")

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, indices: torch.Tensor):
        idx = np.sort(np.asarray(indices))                      # sorted reads are faster on a memmap
        order = np.argsort(np.argsort(np.asarray(indices)))
        packed = np.asarray(self.codes[idx])[order]
        bits = np.unpackbits(packed, axis=-1, count=self.K, bitorder="little")
        return torch.from_numpy(bits.astype(np.float32)), torch.from_numpy(self.labels[idx][order])


@torch.no_grad()
def encode_dataset(tokenizer, dataset, out_dir, batch_size: int = 256, deterministic: bool = True) -> CodeCache:
    """Encode every image once, on the tokenizer's device, and write the code cache. BiGR trains on the
    deterministic codes [p > 1/2] (docs/method.md §1.1); ``deterministic=False`` draws them (seed 0)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    n = len(dataset)
    K, (h, w) = tokenizer.config.K, tokenizer.grid_size
    tmp_codes = out / "codes.npy.tmp"
    codes = np.lib.format.open_memmap(tmp_codes, mode="w+", dtype=np.uint8, shape=(n, h * w, (K + 7) // 8))
    labels = np.zeros(n, dtype=np.int64)
    generator = torch.Generator(device=device).manual_seed(0)
    start = 0
    for x, y in iterate_batches(dataset, torch.arange(n), batch_size, desc="encode"):
        tokens = tokenizer.encode_tokens(x.to(device), deterministic=deterministic, generator=generator)  # (B, N, K)
        codes[start:start + len(x)] = np.packbits(tokens.to(torch.uint8).cpu().numpy(), axis=-1, bitorder="little")
        labels[start:start + len(x)] = np.asarray(y)
        start += len(x)
    codes.flush()
    del codes
    os.replace(tmp_codes, out / "codes.npy")
    np.save(out / "labels.npy", labels)
    classes = getattr(dataset, "classes", None)
    (out / "codes.json").write_text(json.dumps({"K": int(K), "h": int(h), "w": int(w), "n": n,
                                                "num_classes": len(classes) if classes else None}))
    return CodeCache(out)
