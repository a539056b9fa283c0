"""Batches: a training run's data order is a pure function of (seed, step); ``iterate_batches`` walks a dataset."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from tqdm.auto import tqdm


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
