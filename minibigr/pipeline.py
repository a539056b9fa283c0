"""``BiGRPipeline``: a tokenizer and a BiGR model that fit each other, behind one call.

    pipe = minibigr.pretrained("fashion-mnist")                  # or BiGRPipeline.from_pretrained(run_dir)
    images = pipe(torch.tensor([0, 1, 7, 9]))                    # (4, 1, 32, 32) in [0, 1]
    images = pipe(["sneaker", "bag"])                            # classes by name too
    tokens = pipe.encode(images)                                 # (4, 64, 16) bits: what the model reads
    images = pipe.decode(tokens)                                 # and back

Tokens (B, N, K), the tokenizer's h x w grid in raster order, are the one currency between the two
models. A pipeline directory holds ``tokenizer/`` and ``model/``, each a checkpoint (config.json +
model.safetensors) or a training run that keeps one in its own ``model/``, and may name its classes in
``classes.txt`` (one per line); the shipped weights and a ``minibigr train --tokenizer ...`` run are laid
out that way. The authors' published models load by name too ("BiGR-L-d24", see minibigr.official).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from . import official
from .checkpoint import CONFIG_NAME
from .model import BiGR
from .quantizer import DRAWS
from .shipped import SHIPPED, shipped_dir
from .tokenizer import BinaryAutoencoder

CLASSES_NAME = "classes.txt"
# the tokenizer encodes and decodes chunks of images holding at most this many numbers (4 MiB in float32; the shipped
# decoder's activations peak near 200 times that): any batch runs in bounded memory; 1024 of the shipped 32 x 32
# images run in one piece, 5 of 256 x 256 RGB
TOKENIZER_ELEMENTS = 2 ** 20


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
        raise FileNotFoundError(f"{str(spec)!r} is neither a shipped model ({', '.join(SHIPPED)}), a published one "
                                f"({', '.join(official.MODELS)}), nor a directory holding a {part} (a {part}/ "
                                f"folder, or config.json + model.safetensors, or a training run's model/)")
    return found


def load_tokenizer(spec: str | os.PathLike, device: str | torch.device = "cpu") -> BinaryAutoencoder:
    """The tokenizer of a shipped name, a published model or B-AE name ("BiGR-L-d24", "d24"), a pipeline
    directory, or a tokenizer checkpoint / run, in eval mode."""
    if str(spec) in official.MODELS or str(spec) in official.BAES:
        return official.load_bae(official.MODELS[str(spec)].bae if str(spec) in official.MODELS else str(spec)
                                 ).to(device)
    return BinaryAutoencoder.from_pretrained(_find(spec, "tokenizer"), device)


NULL_NAME = "null"       # the label that asks for the null class (no class: unconditional samples)


def names_null(labels) -> bool:
    """Whether labels given as a name or a list of them ask for the null class by name."""
    names = [labels] if isinstance(labels, str) else labels if isinstance(labels, (list, tuple)) else []
    return any(isinstance(y, str) and y.strip().lower() == NULL_NAME for y in names)


def class_index(name: str, class_names: Sequence[str]) -> int:
    """The label of a class name: case, spaces and underscores do not matter; an unknown or ambiguous name
    is an error that names the close matches or the candidates."""
    def key(text: str) -> str:
        return " ".join(text.replace("_", " ").lower().split())

    found = [i for i, n in enumerate(class_names) if key(n) == key(name)]
    if len(found) == 1:
        return found[0]
    if found:
        raise ValueError(f"class name {name!r} is ambiguous: it is class {' and '.join(map(str, found))}; give the "
                         f"number")
    close = difflib.get_close_matches(key(name), [key(n) for n in class_names], n=4, cutoff=0.6)
    raise ValueError(f"unknown class name {name!r}" + (f"; close matches: {', '.join(close)}" if close else "")
                     + " (or give the class number)")


class BiGRPipeline:
    """Class labels in, images out: BiGR samples tokens (docs/method.md §5), the tokenizer decodes them.

    ``class_names`` (optional, one per class) lets labels be given by name.
    """

    def __init__(self, tokenizer: BinaryAutoencoder, model: BiGR, class_names: Sequence[str] | None = None):
        t, m = tokenizer.config, model.config
        if (t.K, t.num_tokens) != (m.K, m.num_tokens):
            raise ValueError(f"the tokenizer makes {t.num_tokens} tokens of K={t.K} bits, the model reads "
                             f"{m.num_tokens} tokens of K={m.K} bits: they were not trained together")
        if class_names is not None and len(class_names) != m.num_classes:
            raise ValueError(f"{len(class_names)} class names for a model of {m.num_classes} classes")
        self.tokenizer, self.model = tokenizer, model
        self.class_names = None if class_names is None else list(class_names)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, device: str | torch.device = "cpu",
                        tokenizer: str | os.PathLike | None = None, dtype: torch.dtype | None = None) -> BiGRPipeline:
        """A shipped pipeline ("fashion-mnist"), a published model ("BiGR-L-d24": minibigr.official.MODELS, with
        its B-AE and the ImageNet class names), or a directory holding ``tokenizer/`` and ``model/``, in eval
        mode on ``device``; ``dtype`` (e.g. torch.bfloat16) is the BiGR model's, the tokenizer stays in float32.
        ``name_or_dir`` may also be the BiGR checkpoint itself (a run's ``model/``): its tokenizer is then the
        ``tokenizer/`` beside it, or the one ``tokenizer`` names."""
        if str(name_or_dir) in official.MODELS:
            model = official.load_bigr(str(name_or_dir), dtype=dtype)
            return cls(load_tokenizer(tokenizer or str(name_or_dir)), model, official.imagenet_classes()).to(device)
        model_dir = _find(name_or_dir, "model")
        if tokenizer is None:
            tokenizer = checkpoint_dir(model_dir.parent / "tokenizer")
            if tokenizer is None:
                raise FileNotFoundError(f"no tokenizer beside the BiGR in {model_dir} (expected "
                                        f"{model_dir.parent / 'tokenizer'}): pass the tokenizer it was trained "
                                        f"with (tokenizer=..., on the command line --tokenizer)")
        names = model_dir.parent / CLASSES_NAME
        class_names = names.read_text().splitlines() if names.is_file() else None
        model = BiGR.from_pretrained(model_dir, device).to(dtype or torch.float32)
        return cls(load_tokenizer(tokenizer, device), model, class_names)

    @property
    def device(self) -> torch.device:
        return self.model.backbone.tok_embeddings.weight.device

    def to(self, device: str | torch.device) -> BiGRPipeline:
        self.tokenizer.to(device)
        self.model.to(device)
        return self

    def labels(self, labels) -> torch.Tensor:
        """Class labels as an int64 tensor (B,) on the model's device, from a tensor, or a list / one of class
        numbers and (with class_names) class names; the name "null" is the null class (unconditional samples)."""
        if isinstance(labels, (str, int)):
            labels = [labels]
        if not torch.is_tensor(labels) and any(isinstance(y, str) for y in labels):
            null = self.model.null_class
            if self.class_names is None and not all(names_null(y) for y in labels if isinstance(y, str)):
                raise ValueError("this pipeline has no class names: give class numbers (or 'null')")
            labels = [(null if names_null(y) else class_index(y, self.class_names)) if isinstance(y, str) else y
                      for y in labels]
        labels = torch.as_tensor(labels, device=self.device)
        if labels.is_floating_point() and labels.numel():   # [] becomes float32: an empty batch is fine
            raise ValueError(f"class labels must be integers, got {labels.dtype}")
        if labels.ndim > 1:
            raise ValueError(f"give one class label per image, (B,), got shape {tuple(labels.shape)}")
        return labels.reshape(-1).long()

    @torch.no_grad()
    def __call__(self, labels, generator: torch.Generator | None = None, **sampling) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] of the classes ``labels`` (B,) (numbers, names, or "null" for unconditional
        samples); ``sampling`` overrides any of the model's recommended SamplingConfig settings
        (``self.model.config.sampling``) and may hold a ``callback``."""
        return self.decode(self.model.generate(self.labels(labels), generator=generator, allow_null=names_null(labels),
                                               **sampling))

    @torch.no_grad()
    def encode(self, images: torch.Tensor, draw: str = "threshold",
               generator: torch.Generator | None = None) -> torch.Tensor:
        """images (B, C, H, W) in [0, 1] -> tokens (B, N, K) in {0, 1}: the threshold codes [p > 1/2] (what the
        shipped model was trained on), or ``draw="bernoulli"``: bits ~ Bernoulli(p) from ``generator`` (what the
        authors' apps encode with). Any batch, in chunks of bounded memory."""
        if draw not in DRAWS:
            raise ValueError(f"unknown draw {draw!r}; choose one of {DRAWS}")
        return torch.cat([self.tokenizer.encode_tokens(x.to(self.device), draw == "threshold", generator)
                          for x in images.split(self._images_per_chunk())])

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, K) -> images (B, C, H, W) in [0, 1]. Any batch, in chunks of bounded memory."""
        return torch.cat([self.tokenizer.decode_tokens(t) for t in tokens.split(self._images_per_chunk())])

    def _images_per_chunk(self) -> int:
        """Images per tokenizer pass of encode / decode: ``TOKENIZER_ELEMENTS`` numbers of image at most."""
        config = self.tokenizer.config
        return max(1, TOKENIZER_ELEMENTS // (config.in_channels * config.image_size ** 2))


def pretrained(name: str = "fashion-mnist", device: str | torch.device = "cpu", **kwargs) -> BiGRPipeline:
    """A pipeline by name, in eval mode on ``device``: shipped with the package (minibigr.shipped.SHIPPED) or
    published by the authors (minibigr.official.MODELS, from the Hugging Face Hub; ``dtype=`` applies)."""
    if name not in SHIPPED and name not in official.MODELS:
        raise ValueError(f"no model named {name!r}; shipped: {', '.join(SHIPPED)}; published: "
                         f"{', '.join(official.MODELS)}")
    return BiGRPipeline.from_pretrained(name, device, **kwargs)
