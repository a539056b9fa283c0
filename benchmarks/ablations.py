"""The paper's ablations (docs/method.md §8) on Fashion-MNIST, one question per arm, with enough samples to tell.

    python benchmarks/ablations.py --out runs/ablations --results benchmarks/ablations-results --publish
    python benchmarks/ablations.py --out runs/ablations --results benchmarks/ablations-results --only guidance,order
    python benchmarks/ablations.py --out /tmp/ablations --quick          # a smoke run in a few minutes

Ablations (the paper's numbers are BiGR-L on ImageNet 256x256 with a shorter training):
  order      sampling order on the reference model (--model; default: the shipped one): first a sweep of the
             Gumbel temperature of the two certainty orders, entropy and confidence (one seed each), then each
             at the authors' temperature (script/sample.sh: 0.01) and at its FD-best one of the sweep, against
             random, raster with the same schedule, and the paper's raster that reveals one token per step
             (raster-1: I = N, linear schedule)
  objective  transcoder objective flip / x0 / direct, each with the authors' loss weighting: a tiny-32 BiGR
             trained from scratch for each (same config, batch, lr, seed) on the shipped tokenizer's codes until
             its held-out loss stops improving (the rule: Settings.eval_every / patience / max_steps)
  bits       Bernoulli vs deterministic final bits, on the reference model
  probe      linear probe (block and L2 chosen on held-out images, as `minibigr probe` does) of the flip model of
             "objective" (conditional training) against the same model trained with every label the null class
             (unconditional), the reference model and raw pixels
  guidance   CFG scale for the random order and for the FD-best certainty order of (a) at its FD-best temperature:
             FD, precision and recall against CFG (the paper's CFG figure)
  time       FD against seconds per image over sampling iterations I x diffusion steps S (the paper's Figure 3)
  defaults   the shipped model's recommended settings chosen by one rule, the fastest setting whose FD mean lies
             within the FD-best one's seed range: the order (with its temperature) among the arms of (a), I and S
             in the grid of (e); the two choices together then scored with every seed in the order study's
             precision, beside (a)'s FD-best arm
  codes      training codes: a tiny-32 BiGR trained on the threshold codes [p > 1/2] (the shipped model's) against
             one trained on fresh Bernoulli draws of a random horizontal flip (the authors' train_ddp.py), at equal
             budget: the same initialisation, batches and steps (codes_steps), the lr decayed to zero by a cosine;
             FD and the linear probe of each

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
and summary.json (benchmarks/ablations_report.py); --publish copies the Markdown to benchmarks/ablations.md and the
plots to docs/.

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
import os
import platform
import re
import shlex
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
from benchmarks.ablations_report import REPO, stage_time, untimed_trainings, write_report  # noqa: E402
from minibigr.authors import settings as authors_settings  # noqa: E402
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
from minibigr.sampler import BLIND_ORDERS, CERTAINTY  # noqa: E402
from minibigr.train import bigr_settings, read_log, seeded_init, train_bigr  # noqa: E402

STAGES = ("order", "objective", "bits", "probe", "guidance", "time", "codes", "defaults")
METRICS = ("fd", "class_accuracy", "precision", "recall", "cpu_seconds_per_image")
OBJECTIVES = ("flip", "x0", "direct")
# from-scratch models: name -> (transcoder objective, unconditional training)
TRAINED = {"flip": ("flip", False), "x0": ("x0", False), "direct": ("direct", False), "unconditional": ("flip", True)}
PROBED = ("shipped", "flip", "unconditional")     # the reference model; conditional vs unconditional training
# the training-codes comparison: model name -> how it reads its codes from the cache (minibigr.codes.CodeCache)
CODE_DRAWS = {"threshold-codes": "threshold", "bernoulli-codes": "bernoulli"}
AUTHORS_GUMBEL = authors_settings("script/sample.sh")["gumbel"]   # the temperature the authors sample with
# The settings every table holds fixed unless it varies one, when the reference model is the shipped one: its
# recommended settings when the study began. Fixed here, so the stored results keep their names (which hold these
# settings) when the shipped model's recommended settings change: they are chosen from this study's results.
SHIPPED_BASE = dict(order="random", num_iter=10, diffusion_steps=50, cfg=1.5, gumbel=AUTHORS_GUMBEL,
                    deterministic=False, mask_schedule="cosine")



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
    order_gumbels: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)   # the certainty orders' sweep
    # the order study's precision: float32, which CPUs without native bf16 (this project's AMD VM) run 6x faster
    # than bf16 autocast; every arm of (a) uses it, so the arms compare among themselves
    order_precision: str = "float32"
    grid_iters: tuple[int, ...] = (4, 10, 16)
    grid_steps: tuple[int, ...] = (10, 25, 50)
    # the training-codes comparison: steps of each training (about an hour of one CPU core each), and the precision
    # its models are sampled in (float32, as the order study's)
    codes_steps: int = 6_000
    codes_precision: str = "float32"
    probe_train: int = 10_000                # first images of each split for the linear probe
    probe_test: int = 5_000
    train_images: int | None = None          # first train images for the code cache and FD reference (None = all)
    classifier_images: int | None = None     # None = the project's cached CNN; N = a small one trained on N images
    sample_batch: int = 100


# the settings that list sampling settings to score: every point is a result of its own name
GRIDS = ("guidance_cfgs", "order_gumbels", "order_precision", "grid_iters", "grid_steps", "codes_precision")
# float32: bf16 autocast runs 6x slower on CPUs without native bf16 (the quick run is a test of the plumbing)
QUICK = dict(num_samples=10, seeds=2, precision="float32", max_steps=6, eval_every=2, patience=1, heldout=32,
             batch_size=16, warmup=0, num_iter=4, diffusion_steps=10, guidance_cfgs=(1.0, 3.0),
             order_gumbels=(0.0, 1.0), grid_iters=(2, 4), grid_steps=(5, 10), codes_steps=6, probe_train=300,
             probe_test=200, train_images=1000, classifier_images=1000, sample_batch=10)


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

    def get_batch(self, indices: torch.Tensor, *draw):
        return self.codes.get_batch(torch.as_tensor(indices) + self.start, *draw)


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

    def get_batch(self, indices: torch.Tensor, *draw):
        tokens, labels = self.codes.get_batch(indices, *draw)
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
        """The settings every evaluation samples with: the reference model's (the shipped one's: SHIPPED_BASE), I and
        S as the settings say."""
        defaults = {**self.shipped.config.sampling.to_dict(), **(SHIPPED_BASE if self.s.model is None else {}),
                    "precision": self.s.precision}
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
            model, data, heldout = self.fresh_model(objective)
            if unconditional:
                data, heldout = NullLabels(data, model.null_class), NullLabels(heldout, model.null_class)
            history_path = directory / "heldout.jsonl"
            history = read_log(history_path) if history_path.exists() else []
            while not converged(history, s):
                step = (history[-1]["step"] if history else 0) + s.eval_every
                wall, cpu = time.perf_counter(), time.process_time()
                ema = train_bigr(model, data, self.train_settings(directory, steps=step, lr_schedule="constant"))
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

    def train_codes(self, name: str, checkpoint: bool = False) -> dict:
        """Train the tiny-32 model ``name`` (see CODE_DRAWS) for exactly codes_steps steps on its kind of training
        codes, the lr decayed to zero by a cosine, unless done (and, with ``checkpoint``, its final EMA model is in
        <train>/<name>/best); its record. Both models start from the same initialisation and see the same batches
        (the seed's); a stopped training resumes from its checkpoint."""
        directory = self.train_dir(name)
        s = self.s

        def run():
            model, data, heldout = self.fresh_model("flip")
            ema = train_bigr(model, data, self.train_settings(directory, steps=s.codes_steps, lr_schedule="cosine",
                                                              final_lr=0.0, codes_draw=CODE_DRAWS[name]))
            ema.save_pretrained(directory / "best")
            # the held-out loss reads the threshold codes for both models: one yardstick
            return {"draw": CODE_DRAWS[name], "steps": s.codes_steps, **heldout_loss(ema, heldout, s.seed)}

        return self.stage(f"train-{name}", run, makes=directory / "best" if checkpoint else None)

    def fresh_model(self, objective: str) -> tuple[BiGR, Rows, Rows]:
        """A tiny-32 BiGR with ``objective`` at the seed's initialisation, and the train codes split into the rows
        it trains on and the held-out rows. Every model trained here starts from the same weights, so the
        comparisons differ only in what is compared."""
        codes = self.codes("train")
        n_train = len(codes) - self.s.heldout
        with seeded_init(self.s.seed):
            model = BiGR(BiGRConfig.preset("tiny-32", objective=objective, K=codes.K, num_tokens=codes.h * codes.w))
        return model, Rows(codes, 0, n_train), Rows(codes, n_train, len(codes))

    def train_settings(self, directory: Path, **overrides):
        """The Fashion-MNIST training recipe with this study's batch, lr, warm-up, EMA, seed and checkpoint
        rhythm, plus ``overrides`` (steps, lr schedule, ...)."""
        s = self.s
        return bigr_settings("fashion-mnist", str(directory), batch_size=s.batch_size, lr=s.lr, warmup=s.warmup,
                             ema=s.ema, seed=s.seed, device=self.device, log_every=max(1, min(50, s.eval_every)),
                             ckpt_every=s.eval_every, **overrides)

    def train_dir(self, name: str) -> Path:
        return self.out / "train" / name

    def model(self, name: str) -> BiGR:
        if name == "shipped":
            return self.shipped
        if name not in self._models:
            (self.train_codes if name in CODE_DRAWS else self.train_info)(name, checkpoint=True)
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


NAMED = ("order", "num_iter", "diffusion_steps", "deterministic", "cfg", "gumbel", "mask_schedule", "precision")


def eval_name(model_name: str, sampling: dict) -> str:
    """The result name of one evaluation (less its seed): settings shared by several ablations map to one result."""
    bits = "det" if sampling["deterministic"] else "bern"
    # the blind orders never read the Gumbel temperature: one result whatever it is
    gumbel = "any" if sampling["order"] in BLIND_ORDERS else f"{sampling['gumbel']:g}"
    # bfloat16, the precision of every result stored before the precision was named, is left out of the name
    precision = "" if sampling["precision"] == "bfloat16" else f"-{sampling['precision']}"
    return (f"eval-{model_name}-{sampling['order']}-I{sampling['num_iter']}-S{sampling['diffusion_steps']}-{bits}"
            f"-cfg{sampling['cfg']:g}-gumbel{gumbel}-{sampling['mask_schedule']}{precision}")


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


def temperature_sweep(lab: Lab) -> dict[str, list[dict]]:
    """{certainty order: its results at each sweep temperature present}, one seed (the first) each."""
    precision = lab.s.order_precision
    sweep = {order: [lab.optional(lambda o=order, g=g: lab.sample_quality("shipped", lab.s.seed, order=o, gumbel=g,
                                                                          precision=precision))
                     for g in lab.s.order_gumbels] for order in CERTAINTY}
    return {order: [r for r in results if r is not None] for order, results in sweep.items()}


def best_temperatures(sweep: dict[str, list[dict]]) -> dict[str, float]:
    """The FD-best sweep temperature of each certainty order that has results."""
    return {order: min(results, key=lambda r: r["fd"])["sampling"]["gumbel"] for order, results in sweep.items()
            if results}


def order_arms(best: dict[str, float], N: int, precision: str) -> dict[str, dict]:
    """The arms of the order comparison: each certainty order at the authors' temperature and at its FD-best one,
    then the orders that do not read certainty; all sampled in ``precision``."""
    arms = {}
    for order in CERTAINTY:
        for g in sorted({AUTHORS_GUMBEL, best.get(order, AUTHORS_GUMBEL)}):
            arms[f"{order} g={g:g}"] = {"order": order, "gumbel": g}
    arms |= {order: order_overrides(order, N) for order in ("random", "raster", "raster-1")}
    return {name: {**arm, "precision": precision} for name, arm in arms.items()}


def ablate_order(lab: Lab) -> dict:
    """{"sweep": one seed per certainty order and temperature, "best": each one's FD-best temperature, "arms": every
    arm scored with all seeds}. Computed so that a run stopped early has the most telling results: both certainty
    orders at the authors' temperature and the blind orders with the first seed, then the rest of the sweep, one
    temperature at a time, then the arms' other seeds."""
    if lab.compute:
        precision = {"precision": lab.s.order_precision}
        first = [{"order": o, "gumbel": AUTHORS_GUMBEL} for o in CERTAINTY] + [
            order_overrides(o, lab.shipped.config.num_tokens) for o in ("random", "raster", "raster-1")]
        first += [{"order": o, "gumbel": g} for g in lab.s.order_gumbels for o in CERTAINTY]
        for overrides in first:
            lab.sample_quality("shipped", lab.s.seed, **overrides, **precision)
    sweep = temperature_sweep(lab)
    best = best_temperatures(sweep)
    arms = order_arms(best, lab.shipped.config.num_tokens, lab.s.order_precision)
    scored = lab.scored_each("shipped", list(arms.values()))
    return {"sweep": sweep, "best": best, "arms": complete(dict(zip(arms, scored, strict=True)))}


def ablate_objective(lab: Lab) -> dict:
    return complete({o: lab.optional(lambda o=o: {**lab.scored(o), "train": lab.train_info(o)}) for o in OBJECTIVES})


def ablate_bits(lab: Lab) -> dict:
    return complete(dict(zip(("bernoulli", "deterministic"), lab.scored_each("shipped", [{}, {"deterministic": True}]),
                             strict=True)))


def ablate_probe(lab: Lab) -> dict:
    pixels = lab.optional(lab.pixel_probe)       # the probes of what is at hand first; PROBED ends with a training
    out = {name: lab.optional(lambda n=name: {**lab.probe(n), **({"train": lab.train_info(n)} if n in TRAINED else {})})
           for name in PROBED}
    return complete({**out, "pixels": pixels})


def guidance_points(s: Settings, certainty: dict | None) -> list[dict]:
    """CFG with the random order, and with the certainty order and temperature ``certainty`` (the FD-best of the
    order study's arms; None before it has results)."""
    return ([dict(cfg=cfg, order="random") for cfg in s.guidance_cfgs]
            + ([dict(cfg=cfg, **certainty) for cfg in s.guidance_cfgs] if certainty else []))


def best_certainty_arm(lab: Lab) -> dict | None:
    """The order and temperature of the FD-best certainty-ordered arm of (a), from its stored results (None when
    they are not all there)."""
    best = best_temperatures(temperature_sweep(lab))
    arms = {name: arm for name, arm in order_arms(best, lab.shipped.config.num_tokens, lab.s.order_precision).items()
            if arm["order"] in CERTAINTY}
    scored = {name: lab.optional(lambda a=arm: lab.scored("shipped", **a)) for name, arm in arms.items()}
    if not best or any(r is None for r in scored.values()):
        return None
    name = min(scored, key=lambda n: scored[n]["fd"])
    return arms[name]


def ablate_guidance(lab: Lab) -> list[dict]:
    return complete(lab.scored_each("shipped", guidance_points(lab.s, best_certainty_arm(lab))))


def ablate_time(lab: Lab) -> list[dict]:
    return complete(lab.scored_each("shipped", [dict(num_iter=i, diffusion_steps=s)
                                                for s in lab.s.grid_steps for i in lab.s.grid_iters]))


def ablate_codes(lab: Lab) -> dict:
    """{model: its FD over the seeds, "probe" and "train" record} for the two kinds of training codes. Computed so
    that a run stopped early has the most telling results: both trainings, then both models with the first seed,
    their probes, then the other seeds."""
    precision = {"precision": lab.s.codes_precision}
    first, *others = [lab.s.seed + k for k in range(lab.s.seeds)]
    if lab.compute:
        for name in CODE_DRAWS:
            lab.train_codes(name)
        for name in CODE_DRAWS:
            lab.sample_quality(name, first, **precision)
        for name in CODE_DRAWS:
            lab.probe(name)
        for seed in others:
            for name in CODE_DRAWS:
                lab.sample_quality(name, seed, **precision)
    return complete({name: lab.optional(lambda n=name: {**lab.scored(n, **precision), "probe": lab.probe(n),
                                                        "train": lab.train_codes(n)}) for name in CODE_DRAWS})


def fastest_within_range(results: dict) -> list:
    """The keys of the results whose FD mean lies within the FD-best one's seed range (min to max), fastest (CPU s /
    image) first: the rule that chooses the shipped model's recommended settings."""
    top = max(min(results.values(), key=lambda r: r["fd"])["fd_range"])
    return sorted((k for k, r in results.items() if r["fd"] <= top), key=lambda k: results[k]["cpu_seconds_per_image"])


def ablate_defaults(lab: Lab) -> dict:
    """{"order": (a)'s arms that the rule keeps, fastest first, "steps": (e)'s [I, S] cells likewise, "chosen": the
    first of each together, "scored": those settings with every seed, "best_arm" and "best": (a)'s FD-best arm's
    name and results, "holds": whether "scored" lies within its seed range}. Reads (a) and (e) (MissingResult until
    every arm of (a) is scored); computes only the chosen settings."""
    computing, lab.compute = lab.compute, False
    try:
        order, steps = ablate_order(lab), ablate_time(lab)
    finally:
        lab.compute = computing
    arms = order_arms(order["best"], lab.shipped.config.num_tokens, lab.s.order_precision)
    if set(order["arms"]) != set(arms):
        raise MissingResult("every arm of the order study (a)")
    by_order = fastest_within_range(order["arms"])
    by_steps = fastest_within_range({(r["sampling"]["num_iter"], r["sampling"]["diffusion_steps"]): r for r in steps})
    num_iter, diffusion_steps = by_steps[0]
    chosen = {"num_iter": num_iter, "diffusion_steps": diffusion_steps, **arms[by_order[0]]}   # raster-1 keeps I = N
    scored = complete(lab.scored_each("shipped", [chosen]))[0]
    best_arm = min(order["arms"], key=lambda name: order["arms"][name]["fd"])
    best = order["arms"][best_arm]
    return {"order": by_order, "steps": [list(cell) for cell in by_steps], "chosen": chosen, "scored": scored,
            "best_arm": best_arm, "best": best, "holds": scored["fd"] <= max(best["fd_range"])}


ABLATIONS = {"order": ablate_order, "objective": ablate_objective, "bits": ablate_bits, "probe": ablate_probe,
             "guidance": ablate_guidance, "time": ablate_time, "codes": ablate_codes, "defaults": ablate_defaults}


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
# What the report says of the run: machine, settings, times (the tables and plots: ablations_report.py)
# ----------------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def report_meta(lab: Lab, command: str, wall_seconds: float) -> dict:
    """Settings, machine and times for the report's first paragraph."""
    results = [json.loads(p.read_text()) for p in sorted(lab.results.glob("*.json")) if p.name != "settings.json"]
    evals = [r for r in results if "reference" in r]
    sampling = lab.sampling
    machines = Counter(r.get("machine", "machine not recorded") for r in results)
    return {"settings": json.loads(json.dumps(dataclasses.asdict(lab.s))), "command": command,
            "machine": "; ".join(f"{m} ({n} results)" for m, n in machines.most_common()) or machine(),
            "sampling_line": f"{sampling['order']} order, I = {sampling['num_iter']}, S = "
                             f"{sampling['diffusion_steps']}, CFG {sampling['cfg']:g}, "
                             + ("" if sampling["order"] in BLIND_ORDERS else f"Gumbel {sampling['gumbel']:g}, ")
                             + "Bernoulli final bits",
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
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return study(args, argv)
    finally:
        torch.set_num_threads(threads)          # a caller in the same process (the tests) keeps its thread count


def study(args, argv) -> list[Path]:
    """Compute the stages asked for (reading the stored results of the others) and write the report."""
    t0 = time.perf_counter()
    out = Path(args.out)
    s = settings_from(args)
    lab = Lab(out, s, args.device, args.results)
    pin_settings(lab.results / "settings.json", s, lab.sampling, lab.classifier_digest)
    summary = run_ablations(lab, args.only)
    command = ("python benchmarks/ablations.py " + shlex.join(argv if argv is not None else sys.argv[1:])
               ).replace(f"{REPO}/", "")
    written = write_report(summary, report_meta(lab, command, time.perf_counter() - t0), out, args.publish)
    tqdm.write("wrote " + ", ".join(str(p) for p in written))
    return written


if __name__ == "__main__":
    main()
