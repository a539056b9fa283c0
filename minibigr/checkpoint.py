"""Checkpoint files: a directory with ``config.json`` + ``model.safetensors`` (weights only, never pickle).

Both files are written to a temp file and renamed, so a crash never leaves half a checkpoint; loading
names every missing, unexpected or mis-shaped tensor instead of failing deep inside torch.
"""

from __future__ import annotations

import json
import os
import tempfile

import torch
from torch import nn

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def atomic_write(path: str, write) -> None:
    """write(tmp_path), then rename over path, so a crash never leaves half a file."""
    # the temp name keeps the real name as its stem: torch.save names its zip archive after it
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(model: nn.Module, config: dict, directory: str | os.PathLike) -> None:
    """Write ``config`` as config.json and the model's state dict as model.safetensors into ``directory``."""
    from safetensors.torch import save_file

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}

    def write_config(tmp):
        with open(tmp, "w") as f:
            json.dump(config, f, indent=2)

    atomic_write(os.path.join(directory, CONFIG_NAME), write_config)
    atomic_write(os.path.join(directory, WEIGHTS_NAME), lambda tmp: save_file(state, tmp))


def load_checkpoint(directory: str | os.PathLike, map_location="cpu") -> tuple[dict, dict]:
    """(config dict, state dict) from a directory written by save_checkpoint; clear errors otherwise."""
    from safetensors.torch import load_file

    directory = os.fspath(directory)
    cfg_path, w_path = os.path.join(directory, CONFIG_NAME), os.path.join(directory, WEIGHTS_NAME)
    for path in (cfg_path, w_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: a checkpoint directory holds {CONFIG_NAME} + {WEIGHTS_NAME}")
    config = read_config(directory)
    try:
        state = load_file(w_path, device=str(map_location))
    except Exception as e:  # safetensors raises its own error types for truncated / garbled files
        raise ValueError(f"corrupt checkpoint weights {w_path}: {e}") from e
    return config, state


def read_config(directory: str | os.PathLike) -> dict:
    """The config dict of a checkpoint directory (its weights are not read); a clear error if it is corrupt."""
    path = os.path.join(os.fspath(directory), CONFIG_NAME)
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt checkpoint config {path}: {e}") from e


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict) with one error message naming every missing, extra or mis-shaped tensor."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{name} ({len(v)}): {v[:8]}" for name, v in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if v]
        raise ValueError(f"weights in {source} do not match the config: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
