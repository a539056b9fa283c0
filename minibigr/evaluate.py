"""Evaluation: tokenizer reconstructions and generated samples.

    psnr, ssim                    reconstruction quality per image (tokenizer)
    frechet_distance              FD between two Gaussians fitted to features; RunningStats fits them in
                                  fixed memory from any number of feature batches
    precision_recall              k-NN manifold precision / recall (Kynkaenniemi et al. 2019, k = 3)
    inception_score               exp E_x KL(p(y|x) || p(y))
    Classifier                    a small CNN trained on a dataset's train split: its pooled features feed
                                  FD and precision / recall, its predictions give the class accuracy of samples
    InceptionFeatures             the FID Inception-v3 (2048-d pool features, 1008-way logits) from the
                                  standard pt_inception weights file the user has; no downloads
    evaluate_generator            all of the above for a BiGR model, in chunks, deterministic under a seed

A feature extractor is any callable images (B, C, H, W) in [0, 1] -> (features (B, d), logits (B, L) or
None). Everything streams: samples are generated and featurised in chunks and only running sums are kept,
except for precision / recall, whose k-NN step works on the first ``knn_cap`` features of each set.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .quantizer import code_usage

Extractor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


# ----------------------------------------------------------------------------------------------
# Reconstruction quality
# ----------------------------------------------------------------------------------------------
def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image (dB) for images in [0, 1].  (B, C, H, W) -> (B,)."""
    mse = F.mse_loss(x.float(), y.float(), reduction="none").flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian (size,)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return w / w.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004) for images in [0, 1].  (B, C, H, W) -> (B,).

    Local means / variances / covariance under a Gaussian window (11 x 11, sigma 1.5; shrunk to the
    image for tiny images), valid positions only, C1 = 0.01^2, C2 = 0.03^2, averaged over positions
    and channels.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) batches of the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    C = x.shape[1]
    window = min(window, x.shape[2], x.shape[3])
    g = gaussian_window(window, sigma).to(x.device)
    kernel = (g[:, None] * g[None, :]).expand(C, 1, window, window).contiguous()

    def blur(t):
        return F.conv2d(t, kernel, groups=C)

    x, y = x.double(), y.double()
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1).float()


@torch.no_grad()
def evaluate_tokenizer(tokenizer, dataset, batch_size: int = 500, limit: int | None = None) -> dict:
    """Mean PSNR / SSIM of deterministic reconstructions and code-usage statistics over a dataset."""
    from .train import get_batch

    device = next(tokenizer.parameters()).device
    n = len(dataset) if limit is None else min(limit, len(dataset))
    psnrs, ssims, codes = [], [], []
    for start in tqdm(range(0, n, batch_size), desc="eval tokenizer", dynamic_ncols=True):
        x, _ = get_batch(dataset, torch.arange(start, min(n, start + batch_size)))
        x = x.to(device)
        bits = tokenizer.encode(x, deterministic=True)
        recon = tokenizer.decode(bits)
        psnrs.append(psnr(x, recon).cpu())
        ssims.append(ssim(x, recon).cpu())
        codes.append(bits.transpose(1, -1).reshape(-1, bits.shape[1]).cpu())
    values, similarity = torch.cat(psnrs), torch.cat(ssims)
    return {"images": n, "psnr_db": round(float(values.mean()), 3), "psnr_db_std": round(float(values.std()), 3),
            "ssim": round(float(similarity.mean()), 4), "code_usage": code_usage(torch.cat(codes))}


# ----------------------------------------------------------------------------------------------
# Frechet distance, precision / recall, Inception Score
# ----------------------------------------------------------------------------------------------
def sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (d, d) (negative eigenvalues -> 0)."""
    eigvals, eigvecs = torch.linalg.eigh(a)
    return (eigvecs * eigvals.clamp_min(0).sqrt()) @ eigvecs.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)) between N(mu1, C1) and N(mu2, C2).

    tr (C1 C2)^(1/2) = sum of sqrt(eigenvalues) of the symmetric PSD matrix C1^(1/2) C2 C1^(1/2), which
    has the same spectrum as C1 C2 and, unlike a general matrix square root, is stable in float64.
    """
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"mismatched Gaussians: means {tuple(mu1.shape)} / {tuple(mu2.shape)}, covariances "
                         f"{tuple(cov1.shape)} / {tuple(cov2.shape)}")
    s1 = sqrtm_psd(cov1)
    middle = s1 @ cov2 @ s1
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * tr_sqrt)


class RunningStats:
    """Mean and covariance of a stream of feature batches (B, d), in float64 running sums: fixed memory."""

    def __init__(self):
        self.n, self.sum, self.outer = 0, None, None

    def update(self, feats: torch.Tensor) -> RunningStats:
        feats = feats.detach().double().cpu()
        if feats.dim() != 2:
            raise ValueError(f"features must be (B, d), got {tuple(feats.shape)}")
        if self.sum is None:
            d = feats.shape[1]
            self.sum, self.outer = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
        elif feats.shape[1] != self.sum.numel():
            raise ValueError(f"features of width {feats.shape[1]} after {self.sum.numel()}")
        self.n += feats.shape[0]
        self.sum += feats.sum(0)
        self.outer += feats.T @ feats
        return self

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    @property
    def cov(self) -> torch.Tensor:
        """Unbiased covariance (d, d)."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.n}")
        mean = self.mean
        return (self.outer - self.n * torch.outer(mean, mean)) / (self.n - 1)

    def frechet_distance(self, other: RunningStats) -> float:
        return frechet_distance(self.mean, self.cov, other.mean, other.cov)


def knn_radii(x: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """Distance of every point to its k-th nearest neighbour in the same set (itself excluded).  (n, d) -> (n,)."""
    if not 1 <= k < len(x):
        raise ValueError(f"k={k} nearest neighbours need more than k points, got {len(x)}")
    x = x.float()
    return torch.cat([torch.cdist(x[i:i + chunk], x).topk(k + 1, largest=False).values[:, k]
                      for i in range(0, len(x), chunk)])


def manifold_coverage(ref: torch.Tensor, radii: torch.Tensor, query: torch.Tensor, chunk: int = 1024) -> float:
    """Fraction of query points inside at least one ball (ref_j, radii_j).  ref (n, d), query (m, d)."""
    ref, query = ref.float(), query.float()
    inside = [(torch.cdist(query[i:i + chunk], ref) <= radii[None]).any(1) for i in range(0, len(query), chunk)]
    return float(torch.cat(inside).float().mean())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision / recall (Kynkaenniemi et al. 2019): the real (fake) manifold is the union of
    balls reaching each real (fake) point's k-th neighbour; precision = share of fake points on the real
    manifold, recall = share of real points on the fake one.  real (n, d), fake (m, d); cost O(n m)."""
    return (manifold_coverage(real, knn_radii(real, k), fake),
            manifold_coverage(fake, knn_radii(fake, k), real))


class ScoreSums:
    """Inception Score from running sums (one split): IS = exp(mean_x sum_y p log p - sum_y pbar log pbar)."""

    def __init__(self):
        self.n, self.p_sum, self.neg_entropy = 0, None, 0.0

    def update(self, logits: torch.Tensor) -> None:
        p = logits.double().softmax(-1).cpu()
        self.p_sum = p.sum(0) if self.p_sum is None else self.p_sum + p.sum(0)
        self.neg_entropy += float(torch.xlogy(p, p).sum())
        self.n += len(p)

    @property
    def score(self) -> float:
        p_bar = self.p_sum / self.n
        return math.exp(self.neg_entropy / self.n - float(torch.xlogy(p_bar, p_bar).sum()))


def inception_score(logits: torch.Tensor) -> float:
    """Inception Score of class logits (n, L), one split."""
    sums = ScoreSums()
    sums.update(logits)
    return sums.score


# ----------------------------------------------------------------------------------------------
# A small CNN classifier as the offline feature extractor
# ----------------------------------------------------------------------------------------------
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
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown ClassifierConfig fields {unknown}")
        return cls(**d)


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    # BatchNorm: without it this small net needs several times more epochs to reach the same accuracy
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


class Classifier(nn.Module):
    """Three conv stages (w, 2w, 4w channels; conv-BatchNorm-ReLU, max-pooled between) -> global average
    pool = the features (B, 4w) -> Linear -> class logits. Images in [0, 1]."""

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

    def save_pretrained(self, directory, info: dict | None = None) -> None:
        """config.json + model.safetensors, and info.json (dataset, training settings, test accuracy)."""
        from .checkpoint import save_checkpoint

        save_checkpoint(self, self.config.to_dict(), directory)
        if info is not None:
            (Path(directory) / "info.json").write_text(json.dumps(info, indent=2))

    @classmethod
    def from_pretrained(cls, directory, device: str | torch.device = "cpu") -> Classifier:
        from .checkpoint import WEIGHTS_NAME, load_checkpoint, load_strict

        config, state = load_checkpoint(directory)
        model = cls(ClassifierConfig.from_dict(config))
        load_strict(model, state, os.path.join(os.fspath(directory), WEIGHTS_NAME))
        return model.to(device).eval()


@dataclass
class ClassifierSettings:
    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    limit: int | None = None     # train on the first N images only (tests)


def _batches(dataset, order: torch.Tensor, batch_size: int, desc: str | None = None
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches of the items ``order`` (B,), with a progress bar when desc is set."""
    from .train import get_batch

    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=desc is None, dynamic_ncols=True,
                      leave=False):
        yield get_batch(dataset, order[start:start + batch_size])


def train_classifier(train, test=None, config: ClassifierConfig | None = None,
                     settings: ClassifierSettings | None = None, device: str | torch.device = "cpu"
                     ) -> tuple[Classifier, dict]:
    """Train the CNN on a dataset (AdamW, cosine learning rate, seeded data order and initialisation).

    Returns (classifier in eval mode, info) with info holding the settings and, if ``test`` is given, its
    test accuracy.
    """
    from .train import get_batch

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
        for x, y in _batches(train, perm, s.batch_size):
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
    for x, y in _batches(dataset, torch.arange(n), batch_size):
        correct += int((model.extract(x)[1].argmax(-1).cpu() == y).sum())
    return correct / n


def classifier_dir(dataset: str) -> Path:
    """Where the classifier of ``dataset`` is cached: <cache>/classifiers/<dataset>/ (see minibigr.data.cache_dir)."""
    from .data import cache_dir

    return cache_dir() / "classifiers" / dataset


def load_or_train_classifier(dataset: str, path=None, data_dir=None, device: str | torch.device = "cpu",
                             settings: ClassifierSettings | None = None) -> tuple[Classifier, dict]:
    """The classifier in ``path`` (default: the cache dir of ``dataset``); trained on the dataset's train
    split and saved there first if it is not there yet.  Returns (classifier, info)."""
    from .data import load_dataset

    path = Path(path) if path is not None else classifier_dir(dataset)
    if (path / "config.json").exists():
        info_path = path / "info.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        return Classifier.from_pretrained(path, device), info
    train, test = load_dataset(dataset, "train", data_dir=data_dir), load_dataset(dataset, "test", data_dir=data_dir)
    model, info = train_classifier(train, test, settings=settings, device=device)
    info["dataset"] = dataset
    model.save_pretrained(path, info)
    return model, info


# ----------------------------------------------------------------------------------------------
# Inception-v3 (the FID network), from a weights file the user provides
# ----------------------------------------------------------------------------------------------
class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU; the unit every Inception branch is made of."""

    def __init__(self, c_in: int, c_out: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool that, like TensorFlow's, ignores the zero padding."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(c_in, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = ConvBN(c_in, 48, 1), ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(c_in, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, c_in: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = ConvBN(c_in, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = ConvBN(c_in, c7, 1), ConvBN(c7, c7, **row), \
            ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2, self.branch7x7dbl_3 = ConvBN(c7, c7, **col), ConvBN(c7, c7, **row)
        self.branch7x7dbl_4, self.branch7x7dbl_5 = ConvBN(c7, c7, **col), ConvBN(c7, 192, **row)
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x):
        dbl = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        return torch.cat([self.branch1x1(x), self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                          self.branch7x7dbl_5(self.branch7x7dbl_4(dbl)), self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = ConvBN(c_in, 192, 1), ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """The last two blocks; the FID network pools the second one's pool branch with a max, not a mean."""

    def __init__(self, c_in: int, max_pool: bool = False):
        super().__init__()
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(c_in, 320, 1)
        self.branch3x3_1 = ConvBN(c_in, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = ConvBN(384, 384, **row), ConvBN(384, 384, **col)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = ConvBN(c_in, 448, 1), ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a, self.branch3x3dbl_3b = ConvBN(384, 384, **row), ConvBN(384, 384, **col)
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl), self.branch_pool(pooled)], 1)


class InceptionV3(nn.Module):
    """The FID Inception-v3 (TensorFlow's 2015-12-05 graph as ported by pytorch-fid; parameter names as
    in its pt_inception-2015-12-05 state dict). forward: images (B, 3, H, W) in [0, 1], resized to
    299 x 299 bilinearly -> (pool features (B, 2048), logits (B, 1008))."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = InceptionE(1280), InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        pool = x.mean((2, 3))
        return pool, self.fc(pool)


class InceptionFeatures:
    """Feature extractor from the FID Inception-v3 weights file (pt_inception-2015-12-05-6726825d.pth, the
    one pytorch-fid uses; never downloaded here): images -> (2048-d pool features, 1008-way logits).
    Grey images are repeated to 3 channels; images go through in chunks of ``chunk``."""

    def __init__(self, weights_path, device: str | torch.device = "cpu", chunk: int = 50):
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights file {path} not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # not a torch file, truncated, or holding more than tensors
            raise ValueError(f"{path} is not a readable Inception weights file ({e})") from None
        net = InceptionV3()
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict")
        for key, value in net.state_dict().items():   # older ports carry no BatchNorm step counters
            if key.endswith("num_batches_tracked"):
                state.setdefault(key, value)
        from .checkpoint import load_strict

        load_strict(net, state, str(path))
        self.net, self.chunk = net.to(device).eval(), chunk

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.net.parameters()).device
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        feats, logits = zip(*(self.net(x.to(device)) for x in images.split(self.chunk)), strict=True)
        return torch.cat(feats), torch.cat(logits)


# ----------------------------------------------------------------------------------------------
# Streaming evaluation
# ----------------------------------------------------------------------------------------------
class FeatureSummary:
    """What an evaluation keeps of one image set: running feature statistics, the first ``knn_cap``
    features (for the k-NN step), class accuracy against given labels and Inception-Score sums."""

    def __init__(self, knn_cap: int = 5000):
        self.stats, self.scores, self.knn_cap = RunningStats(), ScoreSums(), knn_cap
        self.kept: list[torch.Tensor] = []
        self.n_kept = self.correct = self.labelled = 0

    def add(self, feats: torch.Tensor, logits: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        self.stats.update(feats)
        if self.n_kept < self.knn_cap:
            keep = feats[:self.knn_cap - self.n_kept].float().cpu()
            self.kept.append(keep)
            self.n_kept += len(keep)
        if logits is not None:
            self.scores.update(logits)
            if labels is not None:
                self.correct += int((logits.argmax(-1).cpu() == labels.cpu()).sum())
                self.labelled += len(labels)

    @property
    def subset(self) -> torch.Tensor:
        return torch.cat(self.kept)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


def summarize(extractor: Extractor, batches: Iterable, knn_cap: int = 5000) -> FeatureSummary:
    """Featurise (images, labels) batches into a FeatureSummary."""
    summary = FeatureSummary(knn_cap)
    for x, y in batches:
        feats, logits = extractor(x)
        summary.add(feats, logits, y)
    return summary


def summarize_dataset(extractor: Extractor, dataset, limit: int | None = None, batch_size: int = 500,
                      knn_cap: int = 5000, seed: int = 0, desc: str | None = None) -> FeatureSummary:
    """Featurise a dataset (or ``limit`` images of it) in a seeded random order, so the k-NN subset
    (the first ``knn_cap``) is a random sample of the set."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return summarize(extractor, _batches(dataset, order, batch_size, desc), knn_cap)


@torch.no_grad()
def generate_batches(model, tokenizer, num_samples: int, batch_size: int = 100, seed: int = 0,
                     timer: list | None = None, **sampling) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Class-balanced samples (label i mod C for sample i) in chunks of ``batch_size``: (images, labels).

    One generator seeded with ``seed`` drives every chunk, so the samples are a function of
    (seed, batch_size). Seconds spent sampling and decoding (not featurising) are appended to ``timer``.
    """
    from .train import tokens_to_bits

    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    labels = torch.arange(num_samples, device=device) % model.config.num_classes
    h, w = tokenizer.grid_size
    for start in tqdm(range(0, num_samples, batch_size), desc="sample", dynamic_ncols=True, leave=False):
        t0 = time.perf_counter()
        y = labels[start:start + batch_size]
        images = tokenizer.decode(tokens_to_bits(model.generate(y, generator=generator, **sampling), h, w))
        if images.is_cuda:
            torch.cuda.synchronize()
        if timer is not None:
            timer.append(time.perf_counter() - t0)
        yield images, y


def compare(generated: FeatureSummary, reference: FeatureSummary, k: int = 3) -> dict:
    """FD, precision and recall of ``generated`` against ``reference`` (k-NN on equal-size subsets)."""
    m = min(generated.n_kept, reference.n_kept)
    precision, recall = precision_recall(reference.subset[:m], generated.subset[:m], k)
    return {"fd": generated.stats.frechet_distance(reference.stats), "precision": precision, "recall": recall,
            "knn_points": m}


@torch.no_grad()
def evaluate_generator(model, tokenizer, train, test, extractor: Extractor, num_samples: int = 1000, seed: int = 0,
                       batch_size: int = 100, knn_cap: int = 5000, reference: FeatureSummary | None = None,
                       inception: Extractor | None = None, **sampling) -> dict:
    """Sample quality of ``model`` + ``tokenizer`` under ``extractor`` (the dataset classifier's .extract).

    Generated samples (class-balanced, seeded) are compared with the train split: FD, class accuracy (the
    classifier's prediction = the conditioning label), precision / recall (k-NN on the first ``knn_cap``
    features of each set), seconds per image. The same numbers for ``num_samples`` real test images (at
    most the whole test split) against the train split give the scale under "reference": FD is biased
    by the sample count, so both use the same count. ``reference`` reuses a summary of the train split
    across calls. With ``inception``, also its FD and Inception Score, for samples and real test images.
    """
    ref = reference or summarize_dataset(extractor, train, knn_cap=knn_cap, seed=seed, desc="featurise train")
    real = summarize_dataset(extractor, test, limit=num_samples, knn_cap=knn_cap, seed=seed, desc="featurise test")
    timer: list[float] = []
    fake = [FeatureSummary(knn_cap), FeatureSummary(0)]
    for x, y in generate_batches(model, tokenizer, num_samples, batch_size, seed, timer, **sampling):
        fake[0].add(*extractor(x), y)
        if inception is not None:
            fake[1].add(*inception(x))
    gen, ref_scores = compare(fake[0], ref), compare(real, ref)
    report = {"samples": num_samples, "fd": gen["fd"], "class_accuracy": fake[0].accuracy,
              "precision": gen["precision"], "recall": gen["recall"], "knn_points": gen["knn_points"],
              "seconds_per_image": sum(timer) / num_samples,
              "reference": {"fd_test_vs_train": ref_scores["fd"], "class_accuracy_test": real.accuracy,
                            "precision": ref_scores["precision"], "recall": ref_scores["recall"],
                            "train_images": ref.stats.n, "test_images": real.stats.n}}
    if inception is not None:
        train_i = summarize_dataset(inception, train, knn_cap=0, seed=seed, desc="inception train")
        test_i = summarize_dataset(inception, test, limit=num_samples, knn_cap=0, seed=seed, desc="inception test")
        report["inception"] = {"fd": fake[1].stats.frechet_distance(train_i.stats),
                               "inception_score": fake[1].scores.score,
                               "fd_test_vs_train": test_i.stats.frechet_distance(train_i.stats),
                               "inception_score_test": test_i.scores.score}
    return report
