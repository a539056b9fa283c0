"""The feature extractor of sample-quality metrics on small datasets: a small CNN trained on the dataset.

Its pooled features feed the Fréchet distance and precision / recall, its predictions give the class
accuracy of samples (minibigr.evaluate). Fashion-MNIST's ships in ``weights/fashion-mnist/classifier/``:
a seeded training still comes out slightly different on another CPU (test accuracy 91.75% to 91.85%
seen here), which moves the Fréchet distance of the same samples, so numbers measured on different
machines compare only with one feature extractor. Other datasets' classifiers are trained on first use
(seeded, a few epochs) and cached in ``<cache>/classifiers/<dataset>/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import Checkpointed, config_from_dict
from .data import cache_dir, get_batch, iterate_batches, load_dataset
from .shipped import WEIGHTS


@dataclass
class ClassifierConfig:
    in_channels: int = 1
    image_size: int = 32
    num_classes: int = 10
    width: int = 32              # channels of the first stage; features are 4 * width wide

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ClassifierConfig:
        return config_from_dict(cls, d)


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    # BatchNorm: without it this small net needs several times more epochs to reach the same accuracy
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


class Classifier(Checkpointed, nn.Module):
    """Three conv stages (w, 2w, 4w channels; conv-BatchNorm-ReLU, max-pooled between) -> global average
    pool = the features (B, 4w) -> Linear -> class logits. Images in [0, 1]."""

    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        c, w = config.in_channels, config.width
        self.body = nn.Sequential(*_conv(c, w), *_conv(w, w), nn.MaxPool2d(2),
                                  *_conv(w, 2 * w), *_conv(2 * w, 2 * w), nn.MaxPool2d(2),
                                  *_conv(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * w, config.num_classes)

    def _check(self, images: torch.Tensor) -> None:
        c, s = self.config.in_channels, self.config.image_size
        if images.dim() != 4 or images.shape[1:] != (c, s, s):
            raise ValueError(f"the classifier takes images of shape (B, {c}, {s}, {s}), got {tuple(images.shape)}")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> pooled features (B, 4w)."""
        self._check(images)
        return self.body(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The feature-extractor interface: (features (B, 4w), logits (B, C))."""
        feats = self.features(images.to(self.head.weight.device))
        return feats, self.head(feats)


@dataclass
class ClassifierSettings:
    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    limit: int | None = None     # train on the first N images only (tests)


def train_classifier(train, test=None, config: ClassifierConfig | None = None,
                     settings: ClassifierSettings | None = None, device: str | torch.device = "cpu"
                     ) -> tuple[Classifier, dict]:
    """Train the CNN on a dataset (AdamW, cosine learning rate, seeded data order and initialisation).

    Returns (classifier in eval mode, info) with info holding the settings and, if ``test`` is given, its
    test accuracy.
    """
    s = settings or ClassifierSettings()
    x0, _ = get_batch(train, torch.arange(1))
    if config is None:
        config = ClassifierConfig(in_channels=x0.shape[1], image_size=x0.shape[-1],
                                  num_classes=int(getattr(train, "num_classes", 10)))
    with torch.random.fork_rng(devices=[]):      # a seeded initialisation that leaves the global RNG alone
        torch.manual_seed(s.seed)
        model = Classifier(config)
    model.to(device).train()
    n = len(train) if s.limit is None else min(s.limit, len(train))
    steps_per_epoch = max(1, n // s.batch_size)
    total = s.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total)))
    generator = torch.Generator().manual_seed(s.seed)
    bar = tqdm(total=total, desc="train classifier", dynamic_ncols=True)
    for _ in range(s.epochs):
        perm = torch.randperm(n, generator=generator)[:steps_per_epoch * s.batch_size]
        for x, y in iterate_batches(train, perm, s.batch_size):
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    info = {"settings": dataclasses.asdict(s), "train_images": n}
    if test is not None:
        info["test_accuracy"] = classifier_accuracy(model, test)
    return model, info


@torch.no_grad()
def classifier_accuracy(model: Classifier, dataset, batch_size: int = 500, limit: int | None = None) -> float:
    n = len(dataset) if limit is None else min(limit, len(dataset))
    correct = 0
    for x, y in iterate_batches(dataset, torch.arange(n), batch_size):
        correct += int((model.extract(x)[1].argmax(-1).cpu() == y).sum())
    return correct / n


def classifier_dir(dataset: str) -> Path:
    """Where the classifier of ``dataset`` is cached: <cache>/classifiers/<dataset>/ (see minibigr.data.cache_dir)."""
    return cache_dir() / "classifiers" / dataset


def shipped_classifier_dir(dataset: str) -> Path | None:
    """The classifier shipped for ``dataset`` (weights/<dataset>/classifier/), or None if there is none."""
    path = WEIGHTS / dataset / "classifier"
    return path if (path / "config.json").exists() else None


def save_classifier(model: Classifier, directory, info: dict) -> None:
    """The classifier (config.json + model.safetensors) and what it was trained on (info.json)."""
    model.save_pretrained(directory)
    (Path(directory) / "info.json").write_text(json.dumps(info, indent=2))


def load_or_train_classifier(dataset: str, path=None, data_dir=None, device: str | torch.device = "cpu",
                             settings: ClassifierSettings | None = None) -> tuple[Classifier, dict]:
    """The classifier in ``path`` (default: the shipped one of ``dataset``, else its cache dir); trained on the
    dataset's train split and saved there first if it is not there yet.  Returns (classifier, info)."""
    path = Path(path) if path is not None else shipped_classifier_dir(dataset) or classifier_dir(dataset)
    if (path / "config.json").exists():
        info_path = path / "info.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        return Classifier.from_pretrained(path, device), info
    train, test = load_dataset(dataset, "train", data_dir=data_dir), load_dataset(dataset, "test", data_dir=data_dir)
    model, info = train_classifier(train, test, settings=settings, device=device)
    info["dataset"] = dataset
    save_classifier(model, path, info)
    return model, info
