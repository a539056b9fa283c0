"""Load the authors' published checkpoints (github.com/haoosz/BiGR) into minibigr modules (SPEC §4).

Every size is read off the tensor shapes; only what shapes cannot tell (number of heads, image
size) is an argument. Loading is exact: the same inputs give the same outputs as the authors' code.
Files are read with ``torch.load(..., weights_only=True)``: tensors only, never arbitrary pickles.
"""

from __future__ import annotations

import os

import torch


def read_state_dict(source, entry: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a path (``.pt`` / ``.th`` / ``.safetensors``) or a dict already in memory.

    ``entry`` picks a sub-dict such as "model" or "ema" when the file holds several.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # corrupt, truncated, or not a tensors-only file
                raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    elif isinstance(source, dict):
        state = source
    else:
        raise TypeError(f"expected a path or a state dict, got {type(source).__name__}")
    if entry is not None:
        if entry not in state:
            raise KeyError(f"checkpoint has no {entry!r} entry; it has {sorted(state)[:10]}")
        state = state[entry]
    return state
