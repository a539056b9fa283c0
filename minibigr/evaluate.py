"""Evaluation: tokenizer reconstructions and generated samples.

    psnr, ssim                    reconstruction quality per image (tokenizer); images in [0, 1] or uint8
    frechet_distance              FD between two Gaussians fitted to features; RunningStats fits them in
                                  fixed memory from any number of feature batches
    precision_recall              k-NN manifold precision / recall (Kynkaenniemi et al. 2019, k = 3)
    inception_score               exp E_x KL(p(y|x) || p(y)), mean and std over 10 splits (Salimans et al.)
    transcoder_calibration        the denoiser's predicted flip probabilities against the flips on held-out codes
    evaluate_generator            all of the above for a BiGRPipeline, in chunks, deterministic under a seed
    cached_summary                a real image set's summary, featurised once and read back from a cache after

A feature extractor is any callable images (B, C, H, W) in [0, 1] -> (features (B, d), logits (B, L) or
None): the dataset's small CNN (minibigr.classifier, ``Classifier.extract``) or the FID Inception-v3
(minibigr.inception). Everything streams: samples are generated and featurised in chunks and only running sums are kept,
except for precision / recall, whose k-NN step works on the first ``knn_cap`` features of each set.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .checkpoint import atomic_write
from .data import ArrayDataset, iterate_batches
from .model import BiGR, eval_mode, spread_mask_counts
from .pipeline import BiGRPipeline
from .quantizer import code_usage

Extractor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


# ----------------------------------------------------------------------------------------------
# Reconstruction quality
# ----------------------------------------------------------------------------------------------
def unit_range(x: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Images as float64 in [0, 1]: uint8 images are divided by 255, float images must already lie in [0, 1]
    (a float image in [0, 255] is refused rather than scored on the wrong peak)."""
    if x.dtype == torch.uint8:
        return x.double() / 255
    if not x.is_floating_point():
        raise ValueError(f"{name} must be float in [0, 1] or uint8 in [0, 255], got {x.dtype}")
    x = x.double()
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{name} must be in [0, 1] (or uint8), got values in [{float(x.min()):g}, {float(x.max()):g}]"
                         "; divide 0-255 images by 255 or pass them as uint8")
    return x


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image (dB), peak 1 for images in [0, 1] (uint8 images are scaled by 1/255);
    inf for identical images.  (B, C, H, W) -> (B,)."""
    mse = F.mse_loss(unit_range(x), unit_range(y), reduction="none").flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse)).float()


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian (size,)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return w / w.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004) for images in [0, 1] (uint8: scaled by 1/255), 1 for
    identical images.  (B, C, H, W) -> (B,).

    Local means / variances / covariance under a Gaussian window (11 x 11, sigma 1.5; shrunk to the
    image for tiny images), valid positions only, C1 = 0.01^2, C2 = 0.03^2 (data range 1), averaged over
    positions and channels: scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)``.
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

    x, y = unit_range(x), unit_range(y)
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
    device = next(tokenizer.parameters()).device
    n = len(dataset) if limit is None else min(limit, len(dataset))
    psnrs, ssims, codes = [], [], []
    for x, _ in iterate_batches(dataset, torch.arange(n), batch_size, desc="eval tokenizer"):
        x = x.to(device)
        tokens = tokenizer.encode_tokens(x, deterministic=True)                      # (B, N, K)
        recon = tokenizer.decode_tokens(tokens)
        psnrs.append(psnr(x, recon).cpu())
        ssims.append(ssim(x, recon).cpu())
        codes.append(tokens.flatten(0, 1).cpu())
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

    tr (C1 C2)^(1/2) is the sum of the singular values of C1^(1/2) C2^(1/2) (its nuclear norm): the eigenvalues of
    C1 C2 are the squares of those singular values. Taking them from an SVD, rather than square roots of the
    eigenvalues of C1^(1/2) C2 C1^(1/2), keeps the small ones of a near-singular covariance to float64 precision
    instead of sqrt(eps).
    """
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"mismatched Gaussians: means {tuple(mu1.shape)} / {tuple(mu2.shape)}, covariances "
                         f"{tuple(cov1.shape)} / {tuple(cov2.shape)}")
    tr_sqrt = torch.linalg.svdvals(sqrtm_psd(cov1) @ sqrtm_psd(cov2)).sum()
    return float((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * tr_sqrt)


class RunningStats:
    """Mean and covariance of a stream of feature batches (B, d), in float64 running sums: fixed memory.

    The sums are of the features minus a shift, the first batch's mean: sum(x - c) and sum((x - c)(x - c)^T).
    The covariance is the same for any c, and with c near the mean the subtraction of n m m^T cancels nothing, so
    features with a large common offset (1e5, say) keep their covariance to float64 precision.
    """

    def __init__(self):
        self.n, self.shift, self.sum, self.outer = 0, None, None, None

    def update(self, feats: torch.Tensor) -> RunningStats:
        feats = feats.detach().double().cpu()
        if feats.dim() != 2:
            raise ValueError(f"features must be (B, d), got {tuple(feats.shape)}")
        if self.sum is None:
            d = feats.shape[1]
            self.shift = feats.mean(0) if len(feats) else torch.zeros(d, dtype=torch.float64)
            self.sum, self.outer = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
        elif feats.shape[1] != self.sum.numel():
            raise ValueError(f"features of width {feats.shape[1]} after {self.sum.numel()}")
        centred = feats - self.shift                                  # (B, d)
        self.n += feats.shape[0]
        self.sum += centred.sum(0)
        self.outer += centred.T @ centred
        return self

    @property
    def mean(self) -> torch.Tensor:
        return self.shift + self.sum / self.n

    @property
    def cov(self) -> torch.Tensor:
        """Unbiased covariance (d, d)."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.n}")
        m = self.sum / self.n                                         # the mean of the shifted features
        return (self.outer - self.n * torch.outer(m, m)) / (self.n - 1)

    def frechet_distance(self, other: RunningStats) -> float:
        return frechet_distance(self.mean, self.cov, other.mean, other.cov)


def knn_radii(x: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """Distance of every point to its k-th nearest neighbour in the same set (itself excluded).  (n, d) -> (n,)."""
    if not 1 <= k < len(x):
        raise ValueError(f"k={k} nearest neighbours need more than k points, got {len(x)}")
    return torch.cat([torch.cdist(x[i:i + chunk], x).topk(k + 1, largest=False).values[:, k]
                      for i in range(0, len(x), chunk)])


def manifold_coverage(ref: torch.Tensor, radii: torch.Tensor, query: torch.Tensor, chunk: int = 1024) -> float:
    """Fraction of query points inside at least one ball (ref_j, radii_j).  ref (n, d), query (m, d)."""
    inside = [(torch.cdist(query[i:i + chunk], ref) <= radii[None]).any(1) for i in range(0, len(query), chunk)]
    return int(torch.cat(inside).sum()) / len(query)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision / recall (Kynkaenniemi et al. 2019): the real (fake) manifold is the union of
    balls reaching each real (fake) point's k-th neighbour; precision = share of fake points on the real
    manifold, recall = share of real points on the fake one.  real (n, d), fake (m, d); cost O(n m).

    Distances are taken in float64 after subtracting the real features' mean from both sets: torch.cdist expands
    |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, which cancels badly for features far from the origin; centred, and in
    float64, the result does not depend on where the features sit.
    """
    centre = real.double().mean(0)
    real, fake = real.double() - centre, fake.double() - centre
    return (manifold_coverage(real, knn_radii(real, k), fake),
            manifold_coverage(fake, knn_radii(fake, k), real))


IS_SPLITS = 10     # the Inception Score's convention (Salimans et al. 2016; torch-fidelity's default)


class ScoreSums:
    """Inception Score from running sums, IS = exp(mean_x sum_y p log p - sum_y pbar log pbar), per split.

    Sample i goes to split i mod ``splits`` (every split a fixed interleaving of the stream, so no sample order
    is needed up front); ``score`` is the mean and the standard deviation (ddof 0) of the splits' scores, the
    published convention; ``score_one_split`` scores all samples as one.
    """

    def __init__(self, splits: int = IS_SPLITS):
        self.splits, self.n, self.p_sum, self.neg_entropy = splits, 0, None, None

    def update(self, logits: torch.Tensor) -> None:
        p = logits.double().softmax(-1).cpu()                                     # (B, L)
        split = (self.n + torch.arange(len(p))) % self.splits                    # (B,) the split of each sample
        if self.p_sum is None:
            self.p_sum = torch.zeros(self.splits, p.shape[1], dtype=torch.float64)
            self.neg_entropy = torch.zeros(self.splits, dtype=torch.float64)
        self.p_sum.index_add_(0, split, p)
        self.neg_entropy.index_add_(0, split, torch.xlogy(p, p).sum(1))
        self.n += len(p)

    def _score(self, p_sum: torch.Tensor, neg_entropy: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        p_bar = p_sum / n[..., None]
        return torch.exp(neg_entropy / n - torch.xlogy(p_bar, p_bar).sum(-1))

    @property
    def score(self) -> tuple[float, float]:
        """(mean, std) of the Inception Score over the splits."""
        if self.n < self.splits:
            raise ValueError(f"an Inception Score over {self.splits} splits needs at least {self.splits} samples, "
                             f"got {self.n}")
        counts = torch.bincount(torch.arange(self.n) % self.splits, minlength=self.splits).double()
        scores = self._score(self.p_sum, self.neg_entropy, counts)
        return float(scores.mean()), float(scores.std(correction=0))

    @property
    def score_one_split(self) -> float:
        return float(self._score(self.p_sum.sum(0), self.neg_entropy.sum(), torch.tensor(float(self.n))))


def inception_score(logits: torch.Tensor, splits: int = IS_SPLITS) -> tuple[float, float]:
    """Inception Score of class logits (n, L): (mean, std) over ``splits`` splits (1: the score of all samples,
    std 0). The published convention reads the Inception network's logits without the fc bias
    (minibigr.inception returns those)."""
    sums = ScoreSums(splits)
    sums.update(logits)
    return sums.score


# ----------------------------------------------------------------------------------------------
# Calibration of the transcoder
# ----------------------------------------------------------------------------------------------
def calibration_table(predicted: torch.Tensor, observed: torch.Tensor, edges: torch.Tensor) -> list[dict]:
    """Per bin of ``predicted`` (edges (E,), the last bin closed): its count, mean prediction, observed rate."""
    which = torch.bucketize(predicted, edges[1:-1], right=True)
    return [{"low": float(edges[b]), "high": float(edges[b + 1]), "bits": int((which == b).sum()),
             "predicted": float(predicted[which == b].mean()) if (which == b).any() else None,
             "observed": float(observed[which == b].mean()) if (which == b).any() else None}
            for b in range(len(edges) - 1)]


def expected_calibration_error(predicted: torch.Tensor, observed: torch.Tensor, bins: int = 10) -> float:
    """ECE = sum over equal-width bins of predicted probability of (share of bits) |mean predicted - observed rate|."""
    table = calibration_table(predicted, observed, torch.linspace(0, 1, bins + 1, dtype=predicted.dtype))
    return sum(row["bits"] * abs(row["predicted"] - row["observed"]) for row in table if row["bits"]) / len(predicted)


@torch.no_grad()
def transcoder_calibration(model: BiGR, tokens: torch.Tensor, labels: torch.Tensor, batch_size: int = 250,
                           bins: int = 10, t_bins: int = 8, seed: int = 0) -> dict:
    """How well the transcoder's flip probabilities match the flips they predict, on held-out codes.

    tokens (n, N, K), labels (n,): codes the model did not train on. Each batch is masked as in training (its mask
    count from evenly spread steps of the schedule, ``spread_mask_counts``), every masked token gets a step t and a
    forward draw z_t, and the denoiser predicts which bits of z_t are flipped. Returns the expected calibration error
    ("ece": 0 = calibrated), the table by bin of predicted probability ("by_probability") and by range of t
    ("by_t": mean predicted flip probability against the observed flip rate), and the bits counted. With the
    weighted BCE the predictions run high where flips are rare (docs/method.md §4.2).
    """
    if model.transcoder.objective == "direct":
        raise ValueError("the direct objective has no z_t, so no flips to calibrate: it predicts z_0 in one pass")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    starts = range(0, len(tokens), batch_size)
    predicted, observed, steps = [], [], []
    with eval_mode(model):
        for start, n_mask in zip(starts, spread_mask_counts(model.config.num_tokens, len(starts)), strict=True):
            x, y = tokens[start:start + batch_size].to(device), labels[start:start + batch_size].to(device)
            draws = model.loss_draws(len(x), generator, device, n_mask=n_mask)
            z0, cond = model.masked_targets(x, y, draws)
            p, flipped = model.transcoder.flip_probs(z0, cond, draws.t, draws.uniform.to(z0.dtype))  # (M, K) each
            predicted.append(p.flatten().cpu())
            observed.append(flipped.flatten().cpu())
            steps.append(draws.t.repeat_interleave(model.config.K).cpu())
    predicted, observed, steps = torch.cat(predicted).double(), torch.cat(observed).double(), torch.cat(steps)
    t_edges = torch.linspace(1, model.config.T + 1, t_bins + 1, dtype=torch.float64)
    by_t = calibration_table(steps.double(), observed, t_edges)
    for row, rest in zip(by_t, calibration_table(steps.double(), predicted, t_edges), strict=True):
        row["predicted"], row["observed"] = rest["observed"], row["observed"]    # mean prediction, flip rate
    return {"ece": expected_calibration_error(predicted, observed, bins), "bits": len(predicted),
            "by_probability": calibration_table(predicted, observed, torch.linspace(0, 1, bins + 1,
                                                                                    dtype=torch.float64)),
            "by_t": by_t}


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

    def save(self, path: str | Path) -> None:
        """One safetensors file: the running sums and the kept features as tensors, the counts as metadata (written
        to a temp file and renamed, so a crash leaves no half file)."""
        kept = self.subset if self.kept else self.stats.sum.new_zeros(0, len(self.stats.sum)).float()
        tensors = {"shift": self.stats.shift, "sum": self.stats.sum, "outer": self.stats.outer, "kept": kept}
        if self.scores.n:
            tensors["p_sum"], tensors["neg_entropy"] = self.scores.p_sum, self.scores.neg_entropy
        counts = dict(n=self.stats.n, knn_cap=self.knn_cap, n_kept=self.n_kept, correct=self.correct,
                      labelled=self.labelled, scores_n=self.scores.n, splits=self.scores.splits)
        atomic_write(str(path), lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
                                                      metadata={"counts": json.dumps(counts)}))

    @classmethod
    def load(cls, path: str | Path) -> FeatureSummary:
        """A summary written by ``save``."""
        with safe_open(str(path), "pt") as f:
            counts = json.loads(f.metadata()["counts"])
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        summary = cls(counts["knn_cap"])
        stats = summary.stats
        stats.n, stats.shift, stats.sum, stats.outer = counts["n"], tensors["shift"], tensors["sum"], tensors["outer"]
        summary.kept, summary.n_kept = [tensors["kept"]] if counts["n_kept"] else [], counts["n_kept"]
        summary.correct, summary.labelled = counts["correct"], counts["labelled"]
        summary.scores = ScoreSums(counts["splits"])
        summary.scores.n, summary.scores.p_sum = counts["scores_n"], tensors.get("p_sum")
        summary.scores.neg_entropy = tensors.get("neg_entropy")
        return summary

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
    return summarize(extractor, iterate_batches(dataset, order, batch_size, desc), knn_cap)


@torch.no_grad()
def summary_key(extractor: Extractor, dataset: ArrayDataset, knn_cap: int, seed: int) -> str:
    """SHA-256 (hex) naming the summary of a dataset: its images and labels, the extractor's features and logits of
    its first 8 images (other weights give other numbers), knn_cap and seed."""
    digest = hashlib.sha256(json.dumps({"format": 2, "knn_cap": knn_cap, "seed": seed}).encode())
    for array in (dataset.images_uint8, dataset.labels):
        digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    for out in extractor(dataset.get_batch(np.arange(min(8, len(dataset))))[0]):
        if out is not None:
            digest.update(out.float().cpu().numpy().tobytes())
    return digest.hexdigest()


def cached_summary(extractor: Extractor, dataset, cache: str | Path | None, knn_cap: int = 5000, seed: int = 0,
                   desc: str | None = None) -> FeatureSummary:
    """``summarize_dataset`` of a whole dataset, kept in the directory ``cache`` under its ``summary_key``: a later
    evaluation against the same images with the same extractor reads it back instead of featurising the set again.
    Without a cache, or for a dataset not held in RAM as an ArrayDataset, it is featurised every time."""
    if cache is None or not isinstance(dataset, ArrayDataset) or len(dataset) == 0:
        return summarize_dataset(extractor, dataset, knn_cap=knn_cap, seed=seed, desc=desc)
    path = Path(cache) / f"{summary_key(extractor, dataset, knn_cap, seed)}.safetensors"
    if path.is_file():
        return FeatureSummary.load(path)
    summary = summarize_dataset(extractor, dataset, knn_cap=knn_cap, seed=seed, desc=desc)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary.save(path)
    return summary


@torch.no_grad()
def generate_batches(pipe: BiGRPipeline, num_samples: int, batch_size: int = 100,
                     generator: torch.Generator | None = None, timer: list | None = None,
                     **sampling) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Class-balanced samples (label i mod C for sample i) in chunks of ``batch_size``: (images, labels).

    One generator drives every chunk, so the samples are a function of its seed and batch_size. Seconds
    spent sampling and decoding (not featurising) are appended to ``timer``.
    """
    labels = torch.arange(num_samples, device=pipe.device) % pipe.model.config.num_classes
    for start in tqdm(range(0, num_samples, batch_size), desc="sample", dynamic_ncols=True, leave=False):
        t0 = time.perf_counter()
        y = labels[start:start + batch_size]
        images = pipe(y, generator=generator, **sampling)
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
def evaluate_generator(pipe: BiGRPipeline, train, test, extractor: Extractor, num_samples: int = 1000,
                       seed: int = 0, batch_size: int = 100, knn_cap: int = 5000,
                       reference: FeatureSummary | None = None, inception: Extractor | None = None,
                       cache: str | Path | None = None, **sampling) -> dict:
    """Sample quality of a pipeline under ``extractor`` (the dataset classifier's .extract).

    ``seed`` fixes the samples (a generator seeded with it draws every chunk) and the real images' order.
    Generated samples (class-balanced) are compared with the train split: FD, class accuracy (the
    classifier's prediction = the conditioning label), precision / recall (k-NN on the first ``knn_cap``
    features of each set), seconds per image. The same numbers for ``num_samples`` real test images (at
    most the whole test split) against the train split give the scale under "reference": FD is biased
    by the sample count, so both use the same count. ``reference`` reuses a summary of the train split
    across calls; so does ``cache``, a directory where the train split's summaries are kept (``cached_summary``).
    With ``inception``, also its FD and Inception Score (mean and std over 10 splits, on the logits without the fc
    bias), for samples and real test images.
    """
    ref = reference or cached_summary(extractor, train, cache, knn_cap=knn_cap, seed=seed, desc="featurise train")
    real = summarize_dataset(extractor, test, limit=num_samples, knn_cap=knn_cap, seed=seed, desc="featurise test")
    timer: list[float] = []
    fake = [FeatureSummary(knn_cap), FeatureSummary(0)]
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    for x, y in generate_batches(pipe, num_samples, batch_size, generator, timer, **sampling):
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
        train_i = cached_summary(inception, train, cache, knn_cap=0, seed=seed, desc="inception train")
        test_i = summarize_dataset(inception, test, limit=num_samples, knn_cap=0, seed=seed, desc="inception test")
        (score, score_std), (score_test, score_test_std) = fake[1].scores.score, test_i.scores.score
        report["inception"] = {"fd": fake[1].stats.frechet_distance(train_i.stats),
                               "inception_score": score, "inception_score_std": score_std,
                               "fd_test_vs_train": test_i.stats.frechet_distance(train_i.stats),
                               "inception_score_test": score_test, "inception_score_test_std": score_test_std}
    return report
