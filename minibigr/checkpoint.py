"""Checkpoint files: a directory with ``config.json`` + ``model.safetensors`` (weights only, never pickle).

Both files are written to a temp file and renamed, so a crash never leaves half a checkpoint; loading
names every missing, unexpected or mis-shaped tensor instead of failing deep inside torch.
``Checkpointed`` gives a module built from one config dataclass its ``save_pretrained`` /
``from_pretrained``; ``read_state_dict`` reads other people's weight files (tensors only).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import zipfile

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.overrides import TorchFunctionMode

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


class _SkipInit(TorchFunctionMode):
    """Skips ``torch.nn.init`` on meta tensors: there are no values to fill, and torch's meta ``normal_``
    imports torch._dynamo, about 2 s of every model load."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensor = args[0] if args else kwargs.get("tensor")         # nn.init passes it by keyword
        if getattr(func, "__module__", None) == "torch.nn.init" and tensor is not None and tensor.is_meta:
            return tensor
        return func(*args, **kwargs)


def build_empty(cls, config) -> nn.Module:
    """cls(config) on the meta device, no initialisation run: a shell for ``load_strict(..., assign=True)``."""
    with torch.device("meta"), _SkipInit():
        return cls(config)


def save_checkpoint(model: nn.Module, config: dict, directory: str | os.PathLike) -> None:
    """Write ``config`` as config.json and the model's state dict as model.safetensors into ``directory``."""
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


def config_from_dict(cls, d: dict):
    """The config dataclass ``cls`` from a dict such as a config.json; unknown fields are an error naming them."""
    if not isinstance(d, dict):
        raise ValueError(f"a {cls.__name__} is a JSON object / dict, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known fields: {sorted(known)}")
    return cls(**d)


def read_config(directory: str | os.PathLike) -> dict:
    """The config dict of a checkpoint directory (its weights are not read); a clear error if it is corrupt."""
    path = os.path.join(os.fspath(directory), CONFIG_NAME)
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt checkpoint config {path}: {e}") from e


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """load_state_dict(strict) with one error message naming every missing, extra or mis-shaped tensor.

    ``assign`` makes the module hold the state's tensors instead of copying them into its own (a module
    built on the meta device has none); floating-point tensors are first cast to the module's dtypes.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{name} ({len(v)}): {v[:8]}" for name, v in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if v]
        raise ValueError(f"weights in {source} do not match the config: " + "; ".join(parts))
    if assign:
        state = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=assign)


class Checkpointed:
    """``save_pretrained`` / ``from_pretrained`` for an nn.Module whose ``__init__`` takes one config
    dataclass (``config_class``, with ``to_dict`` / ``from_dict``) and keeps it as ``self.config``."""

    config_class: type

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` (weights only) into ``directory``."""
        save_checkpoint(self, self.config.to_dict(), directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu"):
        """What ``save_pretrained`` wrote, in eval mode on ``device``; weights that do not fit the config are
        an error. The module is built on the meta device and takes the file's tensors, so no weight is
        allocated twice and no random initialisation runs."""
        config, state = load_checkpoint(directory)
        model = build_empty(cls, cls.config_class.from_dict(config))
        load_strict(model, state, os.path.join(os.fspath(directory), WEIGHTS_NAME), assign=True)
        return model.to(device).eval()


def read_state_dict(source, entry: str | None = None, mmap: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from a path (``.pt`` / ``.th`` / ``.pth`` / ``.safetensors``) or a dict already in memory.

    Pickled files are read with ``torch.load(weights_only=True)``: tensors and plain containers only, never
    arbitrary objects; ``mmap`` maps a zip-format file instead of reading it, so a tensor takes memory only
    when it is used. ``entry`` picks a sub-dict such as "model" or "ema" when the file holds several.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if path.endswith(".safetensors"):
            state = load_file(path)
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
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
