"""``BiGRPipeline``: a tokenizer and a BiGR model that fit each other, behind one call.

    pipe = minibigr.pretrained("fashion-mnist")                  # or BiGRPipeline.from_pretrained(run_dir)
    images = pipe(torch.tensor([0, 1, 7, 9]))                    # (4, 1, 32, 32) in [0, 1]
    tokens = pipe.encode(images)                                 # (4, 64, 16) bits: what the model reads
    images = pipe.decode(tokens)                                 # and back

Tokens (B, N, K), the tokenizer's h x w grid in raster order, are the one currency between the two
models. A pipeline directory holds ``tokenizer/`` and ``model/``, each a checkpoint (config.json +
model.safetensors) or a training run that keeps one in its own ``model/``; the shipped weights and a
``minibigr train --tokenizer ...`` run are laid out that way.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoint import CONFIG_NAME
from .model import BiGR
from .shipped import SHIPPED, shipped_dir
from .tokenizer import BinaryAutoencoder


def checkpoint_dir(path: Path) -> Path | None:
    """``path`` if it holds a checkpoint, its ``model/`` if that does (a training run), else None."""
    for candidate in (path, path / "model"):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    return None


def _find(spec: str | os.PathLike, part: str) -> Path:
    """The checkpoint directory of ``part`` ("tokenizer" or "model") that ``spec`` names: a shipped name, a
    pipeline directory (holding ``part/``), or the checkpoint / training run itself."""
    if str(spec) in SHIPPED:
        return shipped_dir(str(spec)) / part
    path = Path(spec)
    found = checkpoint_dir(path / part) or checkpoint_dir(path)
    if found is None:
        raise FileNotFoundError(f"{str(spec)!r} is neither a shipped model ({', '.join(SHIPPED)}) nor a directory "
                                f"holding a {part} (a {part}/ folder, or config.json + model.safetensors, "
                                f"or a training run's model/)")
    return found


def load_tokenizer(spec: str | os.PathLike, device: str | torch.device = "cpu") -> BinaryAutoencoder:
    """The tokenizer of a shipped name, a pipeline directory, or a tokenizer checkpoint / run, in eval mode."""
    return BinaryAutoencoder.from_pretrained(_find(spec, "tokenizer"), device)


class BiGRPipeline:
    """Class labels in, images out: BiGR samples tokens (docs/method.md §5), the tokenizer decodes them."""

    def __init__(self, tokenizer: BinaryAutoencoder, model: BiGR):
        t, m = tokenizer.config, model.config
        if (t.K, t.num_tokens) != (m.K, m.num_tokens):
            raise ValueError(f"the tokenizer makes {t.num_tokens} tokens of K={t.K} bits, the model reads "
                             f"{m.num_tokens} tokens of K={m.K} bits: they were not trained together")
        self.tokenizer, self.model = tokenizer, model

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, device: str | torch.device = "cpu",
                        tokenizer: str | os.PathLike | None = None) -> BiGRPipeline:
        """A shipped pipeline ("fashion-mnist") or a directory holding ``tokenizer/`` and ``model/``, in eval
        mode on ``device``. ``name_or_dir`` may also be the BiGR checkpoint itself (a run's ``model/``): its
        tokenizer is then the ``tokenizer/`` beside it, or the one ``tokenizer`` names."""
        model_dir = _find(name_or_dir, "model")
        if tokenizer is None:
            tokenizer = checkpoint_dir(model_dir.parent / "tokenizer")
            if tokenizer is None:
                raise FileNotFoundError(f"no tokenizer beside the BiGR in {model_dir} (expected "
                                        f"{model_dir.parent / 'tokenizer'}): pass the tokenizer it was trained "
                                        f"with (tokenizer=..., on the command line --tokenizer)")
        return cls(load_tokenizer(tokenizer, device), BiGR.from_pretrained(model_dir, device))

    @property
    def device(self) -> torch.device:
        return self.model.backbone.tok_embeddings.weight.device

    def to(self, device: str | torch.device) -> BiGRPipeline:
        self.tokenizer.to(device)
        self.model.to(device)
        return self

    def labels(self, labels) -> torch.Tensor:
        """Class labels as an int64 tensor (B,) on the model's device, from a tensor, a list or one int."""
        labels = torch.as_tensor(labels, device=self.device)
        if labels.is_floating_point():
            raise ValueError(f"class labels must be integers, got {labels.dtype}")
        return labels.reshape(-1).long()

    @torch.no_grad()
    def __call__(self, labels, generator: torch.Generator | None = None, **sampling) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] of the classes ``labels`` (B,); ``sampling`` overrides any of the
        model's recommended SamplingConfig settings (``self.model.config.sampling``)."""
        return self.decode(self.model.generate(self.labels(labels), generator=generator, **sampling))

    @torch.no_grad()
    def encode(self, images: torch.Tensor, deterministic: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """images (B, C, H, W) in [0, 1] -> tokens (B, N, K) in {0, 1}. Deterministic by default: BiGR is
        trained on the codes [p > 1/2] (docs/method.md §1.1)."""
        return self.tokenizer.encode_tokens(images.to(self.device), deterministic=deterministic, generator=generator)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, K) -> images (B, C, H, W) in [0, 1]."""
        return self.tokenizer.decode_tokens(tokens)


def pretrained(name: str = "fashion-mnist", device: str | torch.device = "cpu") -> BiGRPipeline:
    """A shipped pipeline by name, in eval mode on ``device`` (see minibigr.shipped.SHIPPED)."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped model named {name!r}; available: {', '.join(SHIPPED)}")
    return BiGRPipeline.from_pretrained(name, device)
