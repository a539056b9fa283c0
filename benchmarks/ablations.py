"""The paper's ablations (docs/method.md §8) on Fashion-MNIST, one question per arm, with enough samples to tell.

    python benchmarks/ablations.py --out runs/ablations --results benchmarks/ablations-results --publish
    python benchmarks/ablations.py --out runs/ablations --results benchmarks/ablations-results --only guidance,order
    python benchmarks/ablations.py --out /tmp/ablations --quick          # a smoke run in a few minutes

Ablations (the paper's numbers are BiGR-L on ImageNet 256x256 with a shorter training):
  order      sampling order entropy / confidence / random / raster with the same schedule, and the paper's
             raster that reveals one token per step (raster-1: I = N, linear schedule), on the reference model
             (--model; default: the shipped one)
  objective  transcoder objective flip / x0 / direct, each with the authors' loss weighting: a tiny-32 BiGR
             trained from scratch for each (same config, batch, lr, seed) on the shipped tokenizer's codes until
             its held-out loss stops improving (the rule: Settings.eval_every / patience / max_steps)
  bits       Bernoulli vs deterministic final bits, on the reference model
  probe      linear probe (block and L2 chosen on held-out images, as `minibigr probe` does) of the flip model of
             "objective" (conditional training) against the same model trained with every label the null class
             (unconditional), the reference model and raw pixels
  guidance   CFG scale x Gumbel temperature of the reference model's order, and the random order (the infinite
             temperature limit): FD, precision and recall against CFG (the paper's CFG figure); the FD-best point
             is the candidate for the recommended settings
  time       FD against seconds per image over sampling iterations I x diffusion steps S (the paper's Figure 3)

Every sampling setting is scored on --num-samples class-balanced samples for each of --seeds sampling seeds; the
report gives the mean and the range (min to max) over seeds, and ranks two settings apart ("<") only when their
means differ by more than both ranges, otherwise "≈".

Every unit of work (code cache, training round, evaluated setting and seed, probe) writes its JSON into the
results directory (--results, default <out>/results) when it finishes, and a re-run reads it back instead of
recomputing it; trainings resume from their checkpoints in <out>. The study's results are committed in
benchmarks/ablations-results/ (a few KB each), so the many CPU hours add up across machines and sessions while the
bulky files (codes, checkpoints) stay in <out>. <results>/settings.json pins the settings, the reference model's
sampling settings and the classifier that scores the samples (the shipped CNN: FD compares only within one feature
extractor): a re-run with other ones needs another results directory. The end writes <out>/ablations.md, the plots
and summary.json; --publish copies the Markdown to benchmarks/ablations.md and the plots to docs/.

Sample quality is scored as `minibigr evaluate` scores it (minibigr.evaluate.evaluate_generator): Frechet
distance to the train split in the features of the project's Fashion-MNIST CNN, the CNN's class accuracy on the
samples, k-NN precision / recall (k = 3), and seconds per image (sampling + decoding). The seconds are process
CPU time on the given threads, and each result names the machine that computed it; another job on the same cores
still inflates them (threads spin while they wait for a core), so run the study alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import minibigr  # noqa: E402
from minibigr.checkpoint import atomic_write  # noqa: E402
from minibigr.classifier import (  # noqa: E402
    Classifier,
    ClassifierSettings,
    save_classifier,
    shipped_classifier_dir,
    train_classifier,
)
from minibigr.codes import CodeCache, encode_dataset  # noqa: E402
from minibigr.data import ArrayDataset, load_dataset  # noqa: E402
from minibigr.evaluate import evaluate_generator, summarize_dataset  # noqa: E402
from minibigr.model import BiGR, BiGRConfig, spread_mask_counts  # noqa: E402
from minibigr.pipeline import BiGRPipeline  # noqa: E402
from minibigr.probe import block_features, linear_probe, pixel_features  # noqa: E402
from minibigr.sampler import BLIND_ORDERS  # noqa: E402
from minibigr.train import bigr_settings, read_log, seeded_init, train_bigr  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STAGES = ("order", "objective", "bits", "probe", "guidance", "time")
ORDERS = ("entropy", "confidence", "random", "raster", "raster-1")
METRICS = ("fd", "class_accuracy", "precision", "recall", "cpu_seconds_per_image")
OBJECTIVES = ("flip", "x0", "direct")
# from-scratch models: name -> (transcoder objective, unconditional training)
TRAINED = {"flip": ("flip", False), "x0": ("x0", False), "direct": ("direct", False), "unconditional": ("flip", True)}
PROBED = {"flip": "conditional (flip model of (b))", "unconditional": "unconditional (every label null)",
          "shipped": "reference model (conditional)"}

# docs/method.md §8: BiGR-L, ImageNet 256x256, shorter training; FID-50k, seconds per image, linear-probe top-1 (%)
# (their raster took 8.8 s against 0.69 s, about 256 / 20 network passes: one token per step, our raster-1)
PAPER = {
    "order": {"entropy": 3.17, "random": 7.12, "raster-1": 4.51},
    "order_seconds": {"entropy": 0.69, "raster-1": 8.8},
    "objective": {"flip": 3.17, "x0": 4.39, "direct": 5.84},
    "bits": {"bernoulli": 3.17, "deterministic": 3.19},
    "probe": {"flip": 67.5, "unconditional": 68.3},
}


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------
@dataclass
class Settings:
    """Everything the results depend on besides the reference model's sampling defaults (both pinned in
    <results>/settings.json)."""

    model: str | None = None                 # BiGR directory of the reference model; None = the shipped one

    num_samples: int = 1000                  # generated images per sampling seed and setting
    seeds: int = 3                           # sampling seeds per setting: seed, seed + 1, ...
    precision: str = "bfloat16"              # sampling precision of every evaluation (draws stay float32)
    # from-scratch trainings: the held-out loss of the EMA model every eval_every steps; stop after patience
    # evaluations without a new best (better by more than 0.1 %) or at max_steps; the best checkpoint is evaluated
    max_steps: int = 30_000
    eval_every: int = 500
    patience: int = 4
    heldout: int = 2000                      # last train images, kept out of training for the held-out loss
    batch_size: int = 64
    lr: float = 1e-3                         # peak lr: linear warmup, then constant (the authors' schedule)
    warmup: int = 300
    ema: float = 0.999
    seed: int = 0
    num_iter: int | None = None              # I and S of every evaluation but the time grid; None = model defaults
    diffusion_steps: int | None = None
    guidance_cfgs: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0)
    guidance_gumbels: tuple[float, ...] = (0.03, 0.5, 2.0, 4.0)   # and the random order, their g -> inf limit
    grid_iters: tuple[int, ...] = (4, 10, 16)
    grid_steps: tuple[int, ...] = (10, 25, 50)
    probe_train: int = 10_000                # first images of each split for the linear probe
    probe_test: int = 5_000
    train_images: int | None = None          # first train images for the code cache and FD reference (None = all)
    classifier_images: int | None = None     # None = the project's cached CNN; N = a small one trained on N images
    sample_batch: int = 100


# the settings that list sampling settings to score: every point is a result of its own name
GRIDS = ("guidance_cfgs", "guidance_gumbels", "grid_iters", "grid_steps")
QUICK = dict(num_samples=10, max_steps=6, eval_every=2, patience=1, heldout=32, batch_size=16, warmup=0,
             num_iter=4, diffusion_steps=10, guidance_cfgs=(1.0, 3.0), guidance_gumbels=(0.03,), grid_iters=(2, 4),
             grid_steps=(5, 10), probe_train=300, probe_test=200, train_images=1000, classifier_images=1000,
             sample_batch=10)


def pin_settings(path: Path, s: Settings, sampling: dict, classifier: str) -> None:
    """Write the settings, the sampling settings that result names do not hold (NAMED) and the digest of the
    classifier that scores the samples on the first run; refuse to mix results of different ones in one directory.
    A change of a named setting (new recommended CFG, say) only means other result names, and a grid (GRIDS) only
    chooses which named results a stage reads: the stored results stay valid."""
    unnamed = {k: v for k, v in sampling.items() if k not in NAMED}
    settings = {k: v for k, v in dataclasses.asdict(s).items() if k not in GRIDS}
    record = json.loads(json.dumps({**settings, "sampling": unnamed, "classifier": classifier}))
    if path.exists():
        old = json.loads(path.read_text())
        changed = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
        if changed:
            raise ValueError(f"{path.parent} holds results for other settings ({', '.join(changed)} differ); "
                             f"use another --out or the same settings")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)


def write_json(path: Path, obj) -> None:
    atomic_write(str(path), lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))


def head(dataset: ArrayDataset, n: int | None) -> ArrayDataset:
    """The first n images of a dataset (all of it for None)."""
    if n is None or n >= len(dataset):
        return dataset
    return ArrayDataset(dataset.images_uint8[:n], dataset.labels[:n], dataset.classes, dataset.source)


class Rows:
    """Rows start..stop of a code cache (the training rows, or the held-out ones)."""

    def __init__(self, codes, start: int, stop: int):
        self.codes, self.start, self.stop = codes, start, stop
        self.K, self.h, self.w = codes.K, codes.h, codes.w

    def __len__(self) -> int:
        return self.stop - self.start

    def get_batch(self, indices: torch.Tensor):
        return self.codes.get_batch(torch.as_tensor(indices) + self.start)


class NullLabels:
    """A code cache whose labels are all the null class: unconditional training (the paper's probe ablation).

    BiGR.loss takes label C as the null class; class dropout then changes nothing, and every random draw of the
    training is the same as the conditional run's.
    """

    def __init__(self, codes: CodeCache, null_class: int):
        self.codes, self.null_class = codes, null_class
        self.K, self.h, self.w = codes.K, codes.h, codes.w

    def __len__(self) -> int:
        return len(self.codes)

    def get_batch(self, indices: torch.Tensor):
        tokens, labels = self.codes.get_batch(indices)
        return tokens, torch.full_like(labels, self.null_class)


class MissingResult(Exception):
    """A stage that was not asked for (--only) lacks a result: it is left out of the report."""


# ----------------------------------------------------------------------------------------------
# The lab: lazily loaded data and models, and every unit of work cached as a JSON result
# ----------------------------------------------------------------------------------------------
class Lab:
    def __init__(self, out: Path, s: Settings, device: str = "cpu", results: str | Path | None = None):
        self.out, self.s, self.device = out, s, device
        self.results = Path(results) if results is not None else out / "results"
        self.results.mkdir(parents=True, exist_ok=True)
        self.compute = True          # False: read results only, raise MissingResult for absent ones
        self.missing: list[str] = []  # while only reading: the first absent result of each setting left out
        self._models: dict[str, BiGR] = {}
        self._nested = [[0.0, 0.0]]  # wall and CPU seconds spent in stages that a running stage called (see stage)

    def stage(self, name: str, fn, makes: Path | None = None) -> dict:
        """fn()'s result dict, stored as results/<name>.json with the machine that computed it; read back if present.

        "seconds" and "stage_cpu_seconds" are the wall and process CPU time of this stage alone: stages it
        triggers (a training before an evaluation) count in their own results, so the seconds of all results
        add up to the whole computation. ``makes``: a file or folder fn writes into --out that the caller is
        about to read (a code cache, a checkpoint); the results directory travels between machines and --out
        does not, so a stored result whose ``makes`` is not here is computed again.
        """
        path = self.results / f"{name}.json"
        if path.exists() and (makes is None or makes.exists()):
            return json.loads(path.read_text())
        if not self.compute:
            raise MissingResult(name)
        start = (time.perf_counter(), time.process_time())
        self._nested.append([0.0, 0.0])
        try:
            result = fn()
        finally:
            spent = (time.perf_counter() - start[0], time.process_time() - start[1])
            inner = self._nested.pop()
            own = [total - nested for total, nested in zip(spent, inner, strict=True)]
            self._nested[-1] = [a + b for a, b in zip(self._nested[-1], spent, strict=True)]
        result = {**result, "seconds": own[0], "stage_cpu_seconds": own[1], "machine": machine()}
        result = json.loads(json.dumps(result))
        write_json(path, result)
        tqdm.write(f"done: {name} ({result['seconds']:.0f} s)")
        return result

    # -- data, tokenizer, classifier ------------------------------------------------------------
    @cached_property
    def train(self) -> ArrayDataset:
        return head(load_dataset("fashion-mnist", "train"), self.s.train_images)

    @cached_property
    def test(self) -> ArrayDataset:
        return load_dataset("fashion-mnist", "test")

    @cached_property
    def pretrained(self) -> tuple:
        """(the shipped tokenizer, the reference model): the tokenizer serves every model, the model (a) (c) (e)."""
        pipe = minibigr.pretrained("fashion-mnist", device=self.device)
        return pipe.tokenizer, (BiGR.from_pretrained(self.s.model, self.device) if self.s.model else pipe.model)

    @property
    def tokenizer(self):
        return self.pretrained[0]

    @property
    def shipped(self) -> BiGR:
        """The reference model; results keep the name "shipped" (stored result files predate --model)."""
        return self.pretrained[1]

    @cached_property
    def sampling(self) -> dict:
        """The settings every evaluation samples with: the reference model's, I and S as the settings say."""
        defaults = {**self.shipped.config.sampling.to_dict(), "precision": self.s.precision}
        for key in ("num_iter", "diffusion_steps"):
            if getattr(self.s, key) is not None:
                defaults[key] = getattr(self.s, key)
        return defaults

    @cached_property
    def classifier_path(self) -> Path:
        """The feature extractor's directory: the shipped CNN, or (classifier_images = N) a small one trained here."""
        if self.s.classifier_images is None:
            return shipped_classifier_dir("fashion-mnist")
        path = self.out / "classifier"
        if not (path / "config.json").exists():
            model, info = train_classifier(head(self.train, self.s.classifier_images),
                                           settings=ClassifierSettings(epochs=1, seed=self.s.seed), device=self.device)
            save_classifier(model, path, info)
        return path

    @cached_property
    def classifier(self) -> Classifier:
        return Classifier.from_pretrained(self.classifier_path, self.device)

    @property
    def classifier_digest(self) -> str:
        """SHA-256 (first 16 hex digits) of the classifier's weights: FD is only comparable within one extractor."""
        return hashlib.sha256((self.classifier_path / "model.safetensors").read_bytes()).hexdigest()[:16]

    @cached_property
    def reference(self):
        """Feature statistics of the train split (the FD reference), computed once per process."""
        return summarize_dataset(self.classifier.extract, self.train, seed=self.s.seed, desc="featurise train")

    def codes(self, split: str) -> CodeCache:
        """The shipped tokenizer's deterministic codes of the train split (or of the probe's test images)."""
        directory = self.out / f"codes-{split}"
        images = self.train if split == "train" else head(self.test, self.s.probe_test)
        self.stage(f"codes-{split}", lambda: {"images": len(encode_dataset(self.tokenizer, images, directory))},
                   makes=directory)
        return CodeCache(directory)

    # -- models -----------------------------------------------------------------------------
    def train_info(self, name: str, checkpoint: bool = False) -> dict:
        """Train the from-scratch model ``name`` (see TRAINED) until its held-out loss stops improving, unless
        done (and, with ``checkpoint``, its best checkpoint is in --out); its training record. Rounds of eval_every
        steps, each resumed from the last checkpoint; the held-out loss of every round is appended to
        <train>/<name>/heldout.jsonl, and the best round's EMA model is kept in <train>/<name>/best."""
        objective, unconditional = TRAINED[name]
        directory = self.train_dir(name)
        s = self.s

        def run():
            codes = self.codes("train")
            n_train = len(codes) - s.heldout
            with seeded_init(s.seed):                     # the same initialisation for every objective
                model = BiGR(BiGRConfig.preset("tiny-32", objective=objective, K=codes.K,
                                               num_tokens=codes.h * codes.w))
            data = Rows(codes, 0, n_train)
            heldout = Rows(codes, n_train, len(codes))
            if unconditional:
                data, heldout = NullLabels(data, model.null_class), NullLabels(heldout, model.null_class)
            history_path = directory / "heldout.jsonl"
            history = read_log(history_path) if history_path.exists() else []
            while not converged(history, s):
                step = (history[-1]["step"] if history else 0) + s.eval_every
                settings = bigr_settings("fashion-mnist", str(directory), steps=step, batch_size=s.batch_size,
                                         lr=s.lr, lr_schedule="constant", warmup=s.warmup, ema=s.ema, seed=s.seed,
                                         device=self.device, log_every=max(1, min(50, s.eval_every)),
                                         ckpt_every=s.eval_every)
                wall, cpu = time.perf_counter(), time.process_time()
                ema = train_bigr(model, data, settings)
                row = {"step": step, **heldout_loss(ema, heldout, s.seed), "cpu_seconds": time.process_time() - cpu,
                       "seconds": time.perf_counter() - wall}
                history.append(row)
                if best_round(history) == len(history) - 1:
                    ema.save_pretrained(directory / "best")
                with open(history_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            best = history[best_round(history)]
            return {"objective": objective, "unconditional": unconditional, "best_step": best["step"],
                    "stopped_at": history[-1]["step"], "heldout_loss": best["loss"], "heldout_bce": best["bce"],
                    "cpu_seconds": sum(r["cpu_seconds"] for r in history), "history": history}

        return self.stage(f"train-{name}", run, makes=directory / "best" if checkpoint else None)

    def train_dir(self, name: str) -> Path:
        return self.out / "train" / name

    def model(self, name: str) -> BiGR:
        if name == "shipped":
            return self.shipped
        if name not in self._models:
            self.train_info(name, checkpoint=True)
            self._models[name] = BiGR.from_pretrained(self.train_dir(name) / "best", self.device)
        return self._models[name]

    # -- measurements -----------------------------------------------------------------------
    def scored(self, model_name: str, **overrides) -> dict:
        """One model and sampling setting scored with every sampling seed: the mean of each metric, its range
        (min, max) over seeds under "<metric>_range", and the seeds' own results under "runs"."""
        runs = [self.sample_quality(model_name, self.s.seed + k, **overrides) for k in range(self.s.seeds)]
        spread = {f"{m}_range": [min(r[m] for r in runs), max(r[m] for r in runs)] for m in METRICS}
        return {**{m: sum(r[m] for r in runs) / len(runs) for m in METRICS}, **spread, "runs": runs,
                "samples": runs[0]["samples"], "reference": runs[0]["reference"], "sampling": runs[0]["sampling"],
                "model": model_name}

    def scored_each(self, model_name: str, settings: list[dict]) -> list[dict | None]:
        """``scored`` for each of several sampling settings (override dicts), computed seed-major: every setting
        with the first seed before any with the second, so a run stopped half-way has scored all of them once.
        While only reading, a setting that lacks a seed is None (see ``optional``)."""
        if self.compute:
            for k in range(self.s.seeds):
                for overrides in settings:
                    self.sample_quality(model_name, self.s.seed + k, **overrides)
        return [self.optional(lambda o=overrides: self.scored(model_name, **o)) for overrides in settings]

    def optional(self, fn):
        """fn(), or None while only reading when a result it needs is absent (its name goes to ``missing``)."""
        try:
            return fn()
        except MissingResult as absent:
            self.missing.append(absent.args[0])
            return None

    def sample_quality(self, model_name: str, seed: int, **overrides) -> dict:
        """evaluate_generator for one model, sampling setting and seed, plus CPU seconds per image."""
        sampling = {**self.sampling, "deterministic": False, **overrides}

        def run():
            model, n = self.model(model_name), self.s.num_samples
            spent = [0.0]

            def extractor(images):            # featurising is not sampling: its CPU time is taken out
                t = time.process_time()
                out = self.classifier.extract(images)
                spent[0] += time.process_time() - t
                return out

            reference = self.reference
            cpu = time.process_time()
            report = evaluate_generator(BiGRPipeline(self.tokenizer, model), self.train, self.test, extractor,
                                        num_samples=n, seed=seed, batch_size=self.s.sample_batch, reference=reference,
                                        **sampling)
            return {**report, "cpu_seconds_per_image": (time.process_time() - cpu - spent[0]) / n,
                    "model": model_name, "sampling": sampling}

        return self.stage(f"{eval_name(model_name, sampling)}-seed{seed}", run)

    def probe(self, model_name: str) -> dict:
        """Linear probe on frozen features of the cached codes: block and L2 chosen on held-out train images."""

        def run():
            model = self.model(model_name)
            layers = list(range(model.config.n_layer))
            train_f, train_y = code_features(model, self.codes("train"), self.s.probe_train, layers)
            test_f, test_y = code_features(model, self.codes("test"), self.s.probe_test, layers)
            return linear_probe(train_f, train_y, test_f, test_y, seed=self.s.seed, num_classes=10)

        return self.stage(f"probe-{model_name}", run)

    def pixel_probe(self) -> dict:
        def run():
            train_x, train_y = pixel_features(self.train, self.s.probe_train)
            test_x, test_y = pixel_features(self.test, self.s.probe_test)
            return linear_probe({"pixels": train_x}, train_y, {"pixels": test_x}, test_y, seed=self.s.seed,
                                num_classes=10)

        return self.stage("probe-pixels", run)


NAMED = ("order", "num_iter", "diffusion_steps", "deterministic", "cfg", "gumbel", "mask_schedule")


def eval_name(model_name: str, sampling: dict) -> str:
    """The result name of one evaluation (less its seed): settings shared by several ablations map to one result."""
    bits = "det" if sampling["deterministic"] else "bern"
    # the blind orders never read the Gumbel temperature: one result whatever it is
    gumbel = "any" if sampling["order"] in BLIND_ORDERS else f"{sampling['gumbel']:g}"
    return (f"eval-{model_name}-{sampling['order']}-I{sampling['num_iter']}-S{sampling['diffusion_steps']}-{bits}"
            f"-cfg{sampling['cfg']:g}-gumbel{gumbel}-{sampling['mask_schedule']}")


def best_round(history: list[dict]) -> int:
    """The index of the best round: a round is a new best when its held-out loss beats the best so far by more
    than 0.1 %."""
    best = 0
    for k, row in enumerate(history):
        if row["loss"] < history[best]["loss"] * (1 - 1e-3):
            best = k
    return best


def converged(history: list[dict], s: Settings) -> bool:
    """The early-stopping rule: max_steps reached, or patience rounds since the best one."""
    if not history:
        return False
    return history[-1]["step"] >= s.max_steps or len(history) - 1 - best_round(history) >= s.patience


@torch.no_grad()
def heldout_loss(model: BiGR, heldout, seed: int, batch_size: int = 125) -> dict:
    """{"loss", "bce"}: the training loss and the plain BCE of the implied z_0 on held-out codes, in eval mode, with
    the same draws at every call; batch j masks the cosine schedule's count at s = (j + 1/2) N / batches, so the
    average covers the schedule evenly."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    starts = range(0, len(heldout), batch_size)
    losses, bces = [], []
    for start, n_mask in zip(starts, spread_mask_counts(model.config.num_tokens, len(starts)), strict=True):
        tokens, labels = heldout.get_batch(torch.arange(start, min(len(heldout), start + batch_size)))
        loss, stats = model.loss(tokens, labels, draws=model.loss_draws(len(tokens), generator, n_mask=n_mask))
        losses.append(float(loss))
        bces.append(float(stats["bce"]))
    return {"loss": sum(losses) / len(losses), "bce": sum(bces) / len(bces)}


@torch.no_grad()
def code_features(model: BiGR, codes: CodeCache, n: int, layers: list[int], batch_size: int = 500):
    """minibigr.probe features of the first n cached images: ({layer: (n, d)}, labels (n,)).

    The cache holds the same deterministic codes that probe.extract_features would encode.
    """
    n = min(n, len(codes))
    feats: dict[int, list[torch.Tensor]] = {}
    labels = []
    device = next(model.parameters()).device
    for start in range(0, n, batch_size):
        tokens, y = codes.get_batch(torch.arange(start, min(n, start + batch_size)))
        for layer, f in block_features(model, tokens.to(device), layers).items():
            feats.setdefault(layer, []).append(f.cpu())
        labels.append(y)
    return {layer: torch.cat(f) for layer, f in feats.items()}, torch.cat(labels)


# ----------------------------------------------------------------------------------------------
# The five ablations
# ----------------------------------------------------------------------------------------------
def order_overrides(order: str, N: int) -> dict:
    """The sampling settings of an order; raster-1 is the paper's raster, one token per step (I = N, linear)."""
    if order == "raster-1":
        return {"order": "raster", "num_iter": N, "mask_schedule": "linear"}
    return {"order": order}


def complete(results: dict | list):
    """The arms or settings whose results are all there (the entries that are not None); MissingResult if none is,
    which leaves the stage out of the report."""
    kept = ({k: v for k, v in results.items() if v is not None} if isinstance(results, dict)
            else [r for r in results if r is not None])
    if not kept:
        raise MissingResult("every setting of the stage")
    return kept


def ablate_order(lab: Lab) -> dict:
    N = lab.shipped.config.num_tokens
    scored = lab.scored_each("shipped", [order_overrides(order, N) for order in ORDERS])
    return complete(dict(zip(ORDERS, scored, strict=True)))


def ablate_objective(lab: Lab) -> dict:
    return complete({o: lab.optional(lambda o=o: {**lab.scored(o), "train": lab.train_info(o)}) for o in OBJECTIVES})


def ablate_bits(lab: Lab) -> dict:
    return complete(dict(zip(("bernoulli", "deterministic"), lab.scored_each("shipped", [{}, {"deterministic": True}]),
                             strict=True)))


def ablate_probe(lab: Lab) -> dict:
    out = {name: lab.optional(lambda n=name: {**lab.probe(n), **({"train": lab.train_info(n)} if n in TRAINED else {})})
           for name in PROBED}
    return complete({**out, "pixels": lab.optional(lab.pixel_probe)})


def guidance_points(s: Settings, order: str) -> list[dict]:
    """CFG x Gumbel temperature of the reference order (entropy if that is blind to the temperature), then CFG with
    the random order: the infinite-temperature limit, where the certainty no longer counts."""
    certainty = "entropy" if order in BLIND_ORDERS else order
    return ([dict(cfg=cfg, gumbel=gumbel, order=certainty) for gumbel in s.guidance_gumbels for cfg in s.guidance_cfgs]
            + [dict(cfg=cfg, order="random") for cfg in s.guidance_cfgs])


def ablate_guidance(lab: Lab) -> list[dict]:
    return complete(lab.scored_each("shipped", guidance_points(lab.s, lab.sampling["order"])))


def ablate_time(lab: Lab) -> list[dict]:
    return complete(lab.scored_each("shipped", [dict(num_iter=i, diffusion_steps=s)
                                                for s in lab.s.grid_steps for i in lab.s.grid_iters]))


ABLATIONS = {"order": ablate_order, "objective": ablate_objective, "bits": ablate_bits, "probe": ablate_probe,
             "guidance": ablate_guidance, "time": ablate_time}


def run_ablations(lab: Lab, only=STAGES) -> dict:
    """Compute the stages in ``only``; read the others' results where they exist. {stage: results}."""
    summary = {}
    for name in tqdm(STAGES, desc="ablations", dynamic_ncols=True):
        lab.compute = name in only
        try:
            summary[name] = ABLATIONS[name](lab)
        except MissingResult:
            continue
    lab.compute = True
    return summary


# ----------------------------------------------------------------------------------------------
# The report: Markdown tables and plots
# ----------------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def _num(x, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _spread(r: dict, metric: str = "fd") -> str:
    """'mean (min–max)' over the sampling seeds."""
    low, high = r[f"{metric}_range"]
    return f"{r[metric]:.2f} ({low:.2f}–{high:.2f})"


def quality_cells(r: dict) -> list[str]:
    """FD mean (range over seeds), class accuracy, precision, recall, CPU seconds per image of one setting."""
    return [_spread(r), _pct(r["class_accuracy"]), _num(r["precision"]), _num(r["recall"]),
            _num(r["cpu_seconds_per_image"], ".3f")]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def apart(a: dict, b: dict, metric: str = "fd") -> bool:
    """Whether two settings' means differ by more than either one's range over seeds."""
    width = max(hi - lo for lo, hi in (a[f"{metric}_range"], b[f"{metric}_range"]))
    return abs(a[metric] - b[metric]) > width


def ranking(results: dict, keys) -> str:
    """'a < b ≈ c' by mean FD (lower first) over the keys present; '<' only between neighbours that are apart."""
    ranked = sorted((k for k in keys if k in results), key=lambda k: results[k]["fd"])
    if not ranked:
        return "—"
    text = ranked[0]
    for prev, key in zip(ranked, ranked[1:], strict=False):
        text += f" {'<' if apart(results[prev], results[key]) else '≈'} {key}"
    return text


def paper_ranking(scores: dict, keys) -> str:
    return " < ".join(sorted((k for k in keys if k in scores), key=scores.get))


def verdict(results: dict, better: str, worse: str) -> str:
    """Does ``better`` beat ``worse`` on FD here: 'holds', 'reversed' or 'not resolved (within the seeds' ranges)'."""
    a, b = results[better], results[worse]
    if not apart(a, b):
        return "not resolved (within the seeds' ranges)"
    return "holds" if a["fd"] < b["fd"] else "reversed"


QUALITY = ["FD ↓ mean (range)", "class acc.", "precision", "recall", "CPU s / image"]


def claims_section(summary: dict) -> list[str]:
    """The paper's claims, each with what the numbers here say."""
    rows = []
    for stage, better, worse, claim in (("order", "entropy", "raster-1", "entropy order beats raster (one per step)"),
                                        ("order", "entropy", "random", "entropy order beats random order"),
                                        ("order", "raster-1", "random", "raster (one per step) beats random"),
                                        ("objective", "flip", "x0", "flip objective beats x0"),
                                        ("objective", "x0", "direct", "x0 objective beats direct"),
                                        ("objective", "flip", "direct", "flip objective beats direct")):
        res = summary.get(stage, {})
        if better in res and worse in res:
            rows.append([claim, f"{res[better]['fd']:.2f} vs {res[worse]['fd']:.2f}", verdict(res, better, worse)])
    bits = summary.get("bits", {})
    if "bernoulli" in bits and "deterministic" in bits:
        same = not apart(bits["bernoulli"], bits["deterministic"])
        rows.append(["final bits: Bernoulli ≈ deterministic (3.17 vs 3.19)",
                     f"{bits['bernoulli']['fd']:.2f} vs {bits['deterministic']['fd']:.2f}",
                     "holds (within the seeds' ranges)" if same else "differ here"])
    probe = summary.get("probe", {})
    if "flip" in probe and "unconditional" in probe:
        gap = 100 * (probe["unconditional"]["test"]["top1"] - probe["flip"]["test"]["top1"])
        rows.append(["unconditional training probes no worse (+0.8 points)", f"{gap:+.1f} points",
                     "holds" if gap >= 0 else "reversed (one training per arm: no spread)"])
    if not rows:
        return []
    return ["## Which of the paper's claims hold here", "",
            *table(["paper's claim", "here (FD means; probe: test top-1)", "verdict"], rows), "",
            "A claim is called only when the two means differ by more than the range over sampling seeds of either.",
            ""]


def order_section(res: dict) -> list[str]:
    rows = [[f"**{o}**" if o == "entropy" else o, *quality_cells(res[o]), _num(PAPER["order"].get(o)),
             _num(PAPER["order_seconds"].get(o))] for o in ORDERS if o in res]
    paper_keys = list(PAPER["order"])
    return ["## (a) Sampling order (reference model)", "",
            *table(["order", *QUALITY, "paper FID", "paper s / image"], rows), "",
            f"Ranking by FD here: {ranking(res, ORDERS)}; over the orders the paper reports: "
            f"{ranking(res, paper_keys)} (paper: {paper_ranking(PAPER['order'], paper_keys)}). raster-1 reveals one "
            "token per step (I = N, linear schedule) as the paper's raster does; the others share the reference "
            "schedule.", ""]


def objective_section(res: dict) -> list[str]:
    rows = [[o, *quality_cells(res[o]), str(res[o]["train"]["best_step"]), str(res[o]["train"]["stopped_at"]),
             _num(res[o]["train"]["heldout_loss"], ".4f"), _num(res[o]["train"]["heldout_bce"], ".4f"),
             _num(res[o]["train"]["cpu_seconds"] / 60, ".0f"), _num(PAPER["objective"][o])]
            for o in OBJECTIVES if o in res]
    return ["## (b) Transcoder objective (tiny-32 from scratch, each until its held-out loss stopped improving)", "",
            *table(["objective", *QUALITY, "best step", "stopped at", "held-out loss", "held-out BCE",
                    "train CPU min", "paper FID"], rows), "",
            f"Ranking by FD here: {ranking(res, OBJECTIVES)} (paper: {paper_ranking(PAPER['objective'], OBJECTIVES)}). "
            "Each objective trains with the authors' weighting (flip: weighted BCE; x0: plain BCE; direct: weighted "
            "BCE), so the held-out losses do not compare across objectives; the held-out BCE (plain BCE of the "
            "implied z_0 probabilities) does. The best step's EMA model is the one sampled.", ""]


def bits_section(res: dict) -> list[str]:
    rows = [[k, *quality_cells(res[k]), _num(PAPER["bits"][k])] for k in ("bernoulli", "deterministic") if k in res]
    return ["## (c) Final bits: Bernoulli draw vs threshold (reference model)", "",
            *table(["final bits", *QUALITY, "paper FID"], rows), ""]


def probe_section(res: dict, s: dict) -> list[str]:
    rows = []
    for name, label in PROBED.items():
        if name in res:
            r = res[name]
            rows.append([label, str(r["layer"]), _pct(r["heldout"][str(r["layer"])]), _pct(r["test"]["top1"]),
                         _pct(r["test"]["top5"]), _num(PAPER["probe"].get(name), ".1f")])
    if "pixels" in res:
        p = res["pixels"]
        rows.append(["raw pixels (same classifier)", "—", _pct(p["heldout"]["pixels"]), _pct(p["test"]["top1"]),
                     _pct(p["test"]["top5"]), "—"])
    lines = ["## (d) Linear probe: conditional vs unconditional training", "",
             *table(["features", "block", "held-out top-1", "test top-1", "test top-5", "paper top-1"], rows), "",
             f"Frozen features (null class, unmasked tokens, mean over tokens) of the first {s['probe_train']} train "
             f"and {s['probe_test']} test images; block and L2 strength chosen on a held-out 10% of those train "
             "images, the test images scored once.", ""]
    if "flip" in res and "unconditional" in res:
        gap = 100 * (res["unconditional"]["test"]["top1"] - res["flip"]["test"]["top1"])
        lines += [f"Unconditional minus conditional test top-1 here: {gap:+.1f} points (paper: +0.8).", ""]
    return lines


def time_section(res: list[dict], image_prefix: str) -> list[str]:
    iters = sorted({r["sampling"]["num_iter"] for r in res})
    steps = sorted({r["sampling"]["diffusion_steps"] for r in res})
    cell = {(r["sampling"]["num_iter"], r["sampling"]["diffusion_steps"]): r for r in res}
    rows = [[f"I = {i}", *(f"{_spread(cell[i, s])}, {cell[i, s]['cpu_seconds_per_image']:.3f} s"
                           if (i, s) in cell else "—" for s in steps)] for i in iters]
    return ["## (e) FD vs time: sampling iterations I x diffusion steps S (reference model; paper's Figure 3)", "",
            *table(["FD mean (range), CPU s / image", *(f"S = {s}" for s in steps)], rows), "",
            f"![FD vs seconds per image]({image_prefix}ablations_time.png)", ""]


def fd_best(res: list[dict]) -> dict:
    return min(res, key=lambda r: r["fd"])


def temperature(r: dict) -> float:
    """A guidance point's Gumbel temperature; the random order is its infinite limit."""
    return math.inf if r["sampling"]["order"] == "random" else r["sampling"]["gumbel"]


def temperature_label(g: float) -> str:
    return "∞ (random order)" if g == math.inf else f"{g:g}"


def guidance_section(res: list[dict], image_prefix: str) -> list[str]:
    best = fd_best(res)
    rows = [[f"**{r['sampling']['cfg']:g}**" if r is best else f"{r['sampling']['cfg']:g}",
             temperature_label(temperature(r)), *quality_cells(r)]
            for r in sorted(res, key=lambda r: (temperature(r), r["sampling"]["cfg"]))]
    tied = [r for r in res if r is not best and not apart(r, best)]
    ref = best["reference"]
    return ["## (f) Guidance: CFG scale x Gumbel temperature (reference model; the paper's CFG figure)", "",
            *table(["CFG", "Gumbel", *QUALITY], rows), "",
            f"FD-best: CFG {best['sampling']['cfg']:g}, Gumbel {temperature_label(temperature(best))} (FD "
            f"{_spread(best)}); {len(tied)} other point(s) within its seeds' ranges. Real test images against the "
            f"train images: precision {ref['precision']:.2f}, recall {ref['recall']:.2f}, class accuracy "
            f"{_pct(ref['class_accuracy_test'])}.", "",
            f"![FD, precision and recall against CFG]({image_prefix}ablations_guidance.png)", ""]


def untimed_note(names: list[str]) -> str:
    whose = "its" if len(names) == 1 else "their"
    return (f"; the wall-clock of {', '.join(names)}: {whose} last invocation only, as rounds were not timed yet"
            if names else "")


def last_invocation(minutes: float) -> str:
    return ("the last invocation only read stored results" if minutes < 1
            else f"the last invocation took {minutes:.0f} min")


def report_markdown(summary: dict, meta: dict, image_prefix: str = "") -> str:
    """The whole report; ``image_prefix`` is where the PNGs are relative to the Markdown file."""
    s = meta["settings"]
    lines = ["# Ablations on Fashion-MNIST (docs/method.md §8)", "",
             f"`{meta['command']}`: every sampling setting scored on {s['num_samples']} class-balanced samples for "
             f"each of {s['seeds']} sampling seeds ({s['seed']}, {s['seed'] + 1}, ...), {s['precision']} sampling; "
             f"reference model: {s['model'] or 'the shipped one'}, sampled with its settings "
             f"({meta['sampling_line']}) unless a table varies one; from-scratch models: tiny-32 at batch "
             f"{s['batch_size']}, AdamW lr {s['lr']:g} (warmup {s['warmup']}, then constant), EMA {s['ema']}, seed "
             f"{s['seed']}, on the shipped tokenizer's codes less the last {s['heldout']} train images, which give "
             f"the held-out loss every {s['eval_every']} steps (stop after {s['patience']} evaluations without a new "
             f"best, at most {s['max_steps']} steps). {meta['machine']}; {meta['cpu_minutes']:.0f} min of process "
             f"CPU time and {meta['compute_minutes']:.0f} min wall-clock summed over all stages (a training resumed "
             f"across invocations counts all its rounds{untimed_note(meta.get('untimed', []))}; "
             f"{last_invocation(meta['wall_minutes'])}).", "",
             "FD: Fréchet distance to the train images in the features of the project's Fashion-MNIST CNN (lower is "
             f"better; {s['num_samples']} real test images score {_num(meta.get('real_fd'))} at the same count: "
             "the floor), mean over seeds with the range (min–max). Class accuracy: the CNN's prediction equals the "
             "asked-for class. Precision / recall: k-NN manifolds (k = 3). CPU s / image: sampling + decoding, "
             "process CPU time. The paper's numbers are FID-50k of BiGR-L on ImageNet 256×256: compare rankings, "
             "not values.", ""]
    if meta.get("missing"):
        lines += [f"Not yet scored, so left out ({len(meta['missing'])}; the first absent result of each): "
                  + ", ".join(f"`{name}`" for name in meta["missing"]) + ".", ""]
    lines += claims_section(summary)
    sections = {"order": order_section, "objective": objective_section, "bits": bits_section}
    for name, section in sections.items():
        if name in summary:
            lines += section(summary[name])
    if "probe" in summary:
        lines += probe_section(summary["probe"], s)
    if "time" in summary:
        lines += time_section(summary["time"], image_prefix)
    if "guidance" in summary:
        lines += guidance_section(summary["guidance"], image_prefix)
    if any(k in summary for k in ("order", "objective", "bits", "probe")):
        lines += [f"![FD per ablation]({image_prefix}ablations_bars.png)", ""]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _error(results: list[dict], metric: str = "fd") -> list[list[float]]:
    """matplotlib's yerr: the distance from each mean down to the seeds' min and up to their max."""
    return [[r[metric] - r[f"{metric}_range"][0] for r in results],
            [r[f"{metric}_range"][1] - r[metric] for r in results]]


def plot_time(results: list[dict], path: Path) -> None:
    """FD (mean, bars: range over seeds) against CPU seconds per image, one line per S, points labelled by I. The
    FD axis starts at 0."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in sorted({r["sampling"]["diffusion_steps"] for r in results}):
        line = sorted((r for r in results if r["sampling"]["diffusion_steps"] == s),
                      key=lambda r: r["cpu_seconds_per_image"])
        ax.errorbar([r["cpu_seconds_per_image"] for r in line], [r["fd"] for r in line], yerr=_error(line),
                    fmt="o-", capsize=3, label=f"S = {s}")
        for r in line:
            ax.annotate(f"I={r['sampling']['num_iter']}", (r["cpu_seconds_per_image"], r["fd"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_ylim(0, 1.15 * max(r["fd_range"][1] for r in results))
    ax.set_xlabel("CPU seconds per image")
    ax.set_ylabel("FD (own-classifier features)")
    ax.set_title("FD vs sampling time (reference model)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_guidance(results: list[dict], path: Path) -> None:
    """FD, precision and recall (means, bars: range over seeds) against the CFG scale, one line per Gumbel
    temperature (the random order as infinite); real test images' precision and recall dashed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, metric, label in zip(axes, ("fd", "precision", "recall"), ("FD ↓", "precision", "recall"), strict=True):
        for g in sorted({temperature(r) for r in results}):
            line = sorted((r for r in results if temperature(r) == g), key=lambda r: r["sampling"]["cfg"])
            ax.errorbar([r["sampling"]["cfg"] for r in line], [r[metric] for r in line], yerr=_error(line, metric),
                        fmt="o-", capsize=3, label=f"Gumbel {temperature_label(g)}")
        if metric != "fd":
            ax.axhline(results[0]["reference"][metric], color="gray", ls="--", label="real test images")
        ax.set_xlabel("CFG scale")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(bottom=0)
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(summary: dict, path: Path) -> None:
    """One panel per ablation: our FD (mean, bars: range over seeds; probe: test top-1) as bars, the paper's number
    written above each."""
    panels = []
    for stage, title in (("order", "sampling order"), ("objective", "transcoder objective"), ("bits", "final bits")):
        if stage in summary:
            res = summary[stage]
            panels.append((title, {k: v["fd"] for k, v in res.items()}, PAPER[stage], "FD", _error(list(res.values()))))
    if "probe" in summary:
        names = {"flip": "cond.", "unconditional": "uncond.", "shipped": "reference", "pixels": "pixels"}
        panels.append(("linear probe", {names[k]: 100 * v["test"]["top1"] for k, v in summary["probe"].items()},
                       {names[k]: v for k, v in PAPER["probe"].items()}, "test top-1 (%)", None))
    if not panels:
        return
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for ax, (title, ours, paper, ylabel, yerr) in zip(axes[0], panels, strict=True):
        bars = ax.bar(list(ours), list(ours.values()), yerr=yerr, capsize=3, color="tab:blue")
        for bar, key in zip(bars, ours, strict=True):
            text = f"{bar.get_height():.3g}" + (f"\npaper {paper[key]:g}" if key in paper else "")
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=7, textcoords="offset points", xytext=(0, 2))
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.3 * max(ours.values()))
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(summary: dict, meta: dict, out: Path, publish: bool = False, repo: Path = REPO) -> list[Path]:
    """<out>/ablations.md, the PNGs and summary.json; with ``publish`` also benchmarks/ablations.md and docs/*.png.
    Returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "ablations.md"]
    written[0].write_text(report_markdown(summary, meta))
    if "time" in summary:
        plot_time(summary["time"], out / "ablations_time.png")
        written.append(out / "ablations_time.png")
    if "guidance" in summary:
        plot_guidance(summary["guidance"], out / "ablations_guidance.png")
        written.append(out / "ablations_guidance.png")
    if any(k in summary for k in ("order", "objective", "bits", "probe")):
        plot_bars(summary, out / "ablations_bars.png")
        written.append(out / "ablations_bars.png")
    write_json(out / "summary.json", {"meta": meta, **summary})
    if publish:
        (repo / "benchmarks" / "ablations.md").write_text(report_markdown(summary, meta, image_prefix="../docs/"))
        published = [repo / "benchmarks" / "ablations.md"]
        for png in written[1:]:
            shutil.copyfile(png, repo / "docs" / png.name)
            published.append(repo / "docs" / png.name)
        written += published
    return written


def stage_time(result: dict) -> tuple[float, float]:
    """A result's own (wall, process CPU) seconds. A training counts its rounds itself, which a resumed one needs
    (the stage's clocks saw only the last invocation); the larger of the two, since a training done in one
    invocation also spent time outside its rounds (building the model). Any other stage has its stage's."""
    wall, cpu = result.get("seconds", 0.0), result.get("stage_cpu_seconds", 0.0)
    if "history" in result:
        rounds = result["history"]
        wall = max(wall, sum(r.get("seconds", 0.0) for r in rounds))
        cpu = max(cpu, sum(r["cpu_seconds"] for r in rounds))
    return wall, cpu


def untimed_trainings(results: list[dict]) -> list[str]:
    """The trainings with rounds logged before rounds were timed: their wall-clock is their last invocation's."""
    return [r["objective"] + (" (unconditional)" if r["unconditional"] else "") for r in results
            if "history" in r and any("seconds" not in row for row in r["history"])]


def report_meta(lab: Lab, command: str, wall_seconds: float) -> dict:
    """Settings, machine and times for the report's first paragraph."""
    results = [json.loads(p.read_text()) for p in sorted(lab.results.glob("*.json")) if p.name != "settings.json"]
    evals = [r for r in results if "reference" in r]
    sampling = lab.sampling
    machines = Counter(r.get("machine", "machine not recorded") for r in results)
    return {"settings": json.loads(json.dumps(dataclasses.asdict(lab.s))), "command": command,
            "machine": "; ".join(f"{m} ({n} results)" for m, n in machines.most_common()) or machine(),
            "sampling_line": f"{sampling['order']} order, I = {sampling['num_iter']}, S = "
                             f"{sampling['diffusion_steps']}, CFG {sampling['cfg']:g}, Gumbel {sampling['gumbel']:g}, "
                             "Bernoulli final bits",
            "compute_minutes": sum(stage_time(r)[0] for r in results) / 60, "wall_minutes": wall_seconds / 60,
            "cpu_minutes": sum(stage_time(r)[1] for r in results) / 60, "untimed": untimed_trainings(results),
            "real_fd": evals[0]["reference"]["fd_test_vs_train"] if evals else None,
            "missing": sorted({re.sub(r"-seed\d+$", "", name) for name in lab.missing})}


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (trainings, codes, report)")
    ap.add_argument("--results", help="directory of the JSON results and the pinned settings (default <out>/results; "
                                      "the study's own: benchmarks/ablations-results)")
    ap.add_argument("--num-samples", type=int, help="generated images per sampling seed and setting (default 1000)")
    ap.add_argument("--seeds", type=int, help="sampling seeds per setting (default 3)")
    ap.add_argument("--max-steps", type=int, help="most training steps of each from-scratch model (default 30000)")
    ap.add_argument("--model", help="BiGR directory of the reference model of (a) (c) (e) and the probe "
                                    "(default: the shipped one)")
    ap.add_argument("--quick", action="store_true", help="tiny numbers everywhere: a smoke run in a few minutes")
    ap.add_argument("--only", default=",".join(STAGES),
                    help=f"comma-separated stages to compute (others are read where present): {','.join(STAGES)}")
    ap.add_argument("--publish", action="store_true", help="copy the report to benchmarks/ablations.md and docs/")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the CPU seconds count all of them)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(STAGES))
    if unknown:
        ap.error(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    args.only = only
    return args


def settings_from(args) -> Settings:
    overrides = dict(QUICK) if args.quick else {}
    for key in ("num_samples", "seeds", "max_steps", "model"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return Settings(**overrides)


def main(argv=None) -> list[Path]:
    args = parse_args(argv)
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    s = settings_from(args)
    lab = Lab(out, s, args.device, args.results)
    pin_settings(lab.results / "settings.json", s, lab.sampling, lab.classifier_digest)
    summary = run_ablations(lab, args.only)
    command = ("python benchmarks/ablations.py " + " ".join(argv if argv is not None else sys.argv[1:])
               ).replace(f"{REPO}/", "")
    written = write_report(summary, report_meta(lab, command, time.perf_counter() - t0), out, args.publish)
    tqdm.write("wrote " + ", ".join(str(p) for p in written))
    return written


if __name__ == "__main__":
    main()
