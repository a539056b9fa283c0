"""The paper's ablations (docs/method.md §8) reproduced on Fashion-MNIST with the tiny models.

    python benchmarks/ablations.py --out runs/ablations --model runs/fashion-mnist/bigr/model --publish
                                        # everything, as published (tiny-32 reference): about 100 min on one core
    python benchmarks/ablations.py --out /tmp/ablations --quick       # a smoke run in under a minute
    python benchmarks/ablations.py --out runs/ablations --only order,time

Ablations (the paper's numbers are BiGR-L on ImageNet 256x256 with a shorter training):
  order      sampling order entropy / confidence / random / raster, on the reference model (--model; default: the
             shipped one)
  objective  transcoder objective flip / x0 / direct: a tiny-32 BiGR trained from scratch for each, same budget
             (config, steps, batch, lr, seed), on the shipped tokenizer's codes
  bits       Bernoulli vs deterministic final bits, on the reference model
  probe      linear probe of the flip model of "objective" (conditional training) against the same model trained
             with every label the null class (unconditional), the reference model and raw pixels
  time       FD against seconds per image over sampling iterations I x diffusion steps S (the paper's Figure 3)
  noise      the cheapest grid setting again with other sampling seeds: how much FD moves by chance alone

Every unit of work (code cache, training, evaluated sampling setting, probe) writes its JSON into <out>/results/
when it finishes, and a re-run reads it back instead of recomputing it; trainings resume from their checkpoints.
<out>/settings.json pins the settings and the sampling settings in force (the reference model's recommended ones,
I and S as told): a re-run with other settings, or after those defaults changed, needs another --out. The end writes
<out>/ablations.md, <out>/ablations_bars.png, <out>/ablations_time.png and <out>/summary.json; --publish copies
the Markdown to benchmarks/ablations.md and the plots to docs/.

Sample quality is scored as `minibigr evaluate` scores it (minibigr.evaluate.evaluate_generator): Frechet
distance to the train split in the features of the project's Fashion-MNIST CNN, the CNN's class accuracy on the
samples, k-NN precision / recall (k = 3), and seconds per image (sampling + decoding). The seconds are process
CPU time on the given threads, so other jobs on a shared machine do not inflate them; wall-clock seconds are in
the JSON too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
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
    load_or_train_classifier,
    save_classifier,
    train_classifier,
)
from minibigr.codes import CodeCache, encode_dataset  # noqa: E402
from minibigr.data import ArrayDataset, load_dataset  # noqa: E402
from minibigr.evaluate import evaluate_generator, summarize_dataset  # noqa: E402
from minibigr.model import BiGR, BiGRConfig  # noqa: E402
from minibigr.pipeline import BiGRPipeline  # noqa: E402
from minibigr.probe import block_features, linear_probe, pixel_features  # noqa: E402
from minibigr.train import bigr_settings, read_log, train_bigr  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STAGES = ("order", "objective", "bits", "probe", "time", "noise")
NOISE_SEEDS = 3                  # sampling seeds (the settings' seed and the next ones) for the noise stage
ORDERS = ("entropy", "confidence", "random", "raster")
OBJECTIVES = ("flip", "x0", "direct")
# from-scratch models: name -> (transcoder objective, unconditional training)
TRAINED = {"flip": ("flip", False), "x0": ("x0", False), "direct": ("direct", False), "unconditional": ("flip", True)}
PROBED = {"flip": "conditional (flip model of (b))", "unconditional": "unconditional (every label null)",
          "shipped": "reference model (conditional)"}

# docs/method.md §8: BiGR-L, ImageNet 256x256, shorter training; FID-50k, seconds per image, linear-probe top-1 (%)
PAPER = {
    "order": {"entropy": 3.17, "random": 7.12, "raster": 4.51},
    "order_seconds": {"entropy": 0.69, "raster": 8.8},
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
    <out>/settings.json)."""

    model: str | None = None                 # BiGR directory of the reference model; None = the shipped one

    num_samples: int = 200                   # generated images per evaluated sampling setting
    steps: int = 2000                        # training steps of every from-scratch BiGR
    batch_size: int = 64
    lr: float = 1e-3                         # peak lr: linear warmup, cosine to lr/10 (the Fashion-MNIST recipe)
    warmup: int = 60
    ema: float = 0.99                        # the recipe's 0.999 would still hold 14% of the init after 2000 steps
    seed: int = 0
    num_iter: int | None = None              # I and S of every evaluation but the time grid; None = model defaults
    diffusion_steps: int | None = None
    grid_iters: tuple[int, ...] = (4, 10, 16)
    grid_steps: tuple[int, ...] = (10, 25, 50)
    probe_train: int = 10_000                # first images of each split for the linear probe
    probe_test: int = 5_000
    train_images: int | None = None          # first train images for the code cache and FD reference (None = all)
    classifier_images: int | None = None     # None = the project's cached CNN; N = a small one trained on N images
    sample_batch: int = 100


QUICK = dict(num_samples=10, steps=4, batch_size=16, warmup=0, num_iter=4, diffusion_steps=10, grid_iters=(2, 4),
             grid_steps=(5, 10), probe_train=300, probe_test=200, train_images=1000, classifier_images=1000,
             sample_batch=10)


def pin_settings(path: Path, s: Settings, sampling: dict) -> None:
    """Write the settings and the sampling settings on the first run; refuse to mix results of different ones in
    one directory (result names hold only order, I, S and the final bits)."""
    record = json.loads(json.dumps({**dataclasses.asdict(s), "sampling": sampling}))
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
    def __init__(self, out: Path, s: Settings, device: str = "cpu"):
        self.out, self.s, self.device = out, s, device
        self.results = out / "results"
        self.results.mkdir(parents=True, exist_ok=True)
        self.compute = True          # False: read results only, raise MissingResult for absent ones
        self._models: dict[str, BiGR] = {}
        self._nested = [[0.0, 0.0]]  # wall and CPU seconds spent in stages that a running stage called (see stage)

    def stage(self, name: str, fn) -> dict:
        """fn()'s result dict, stored as results/<name>.json; read back if present.

        "seconds" and "stage_cpu_seconds" are the wall and process CPU time of this stage alone: stages it
        triggers (a training before an evaluation) count in their own results, so the seconds of all results
        add up to the whole computation.
        """
        path = self.results / f"{name}.json"
        if path.exists():
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
        result = json.loads(json.dumps({**result, "seconds": own[0], "stage_cpu_seconds": own[1]}))
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
        defaults = self.shipped.config.sampling.to_dict()
        for key in ("num_iter", "diffusion_steps"):
            if getattr(self.s, key) is not None:
                defaults[key] = getattr(self.s, key)
        return defaults

    @cached_property
    def classifier(self) -> Classifier:
        if self.s.classifier_images is None:
            return load_or_train_classifier("fashion-mnist", device=self.device)[0]
        path = self.out / "classifier"
        if not (path / "config.json").exists():
            model, info = train_classifier(head(self.train, self.s.classifier_images),
                                           settings=ClassifierSettings(epochs=1, seed=self.s.seed), device=self.device)
            save_classifier(model, path, info)
        return Classifier.from_pretrained(path, self.device)

    @cached_property
    def reference(self):
        """Feature statistics of the train split (the FD reference), computed once per process."""
        return summarize_dataset(self.classifier.extract, self.train, seed=self.s.seed, desc="featurise train")

    def codes(self, split: str) -> CodeCache:
        """The shipped tokenizer's deterministic codes of the train split (or of the probe's test images)."""
        directory = self.out / f"codes-{split}"
        images = self.train if split == "train" else head(self.test, self.s.probe_test)
        self.stage(f"codes-{split}", lambda: {"images": len(encode_dataset(self.tokenizer, images, directory))})
        return CodeCache(directory)

    # -- models -----------------------------------------------------------------------------
    def train_info(self, name: str) -> dict:
        """Train the from-scratch model ``name`` (see TRAINED) unless done; its training record."""
        objective, unconditional = TRAINED[name]
        directory = self.out / "train" / name

        def run():
            codes = self.codes("train")
            with torch.random.fork_rng(devices=[]):       # the same initialisation for every objective
                torch.manual_seed(self.s.seed)
                model = BiGR(BiGRConfig.preset("tiny-32", objective=objective, K=codes.K,
                                               num_tokens=codes.h * codes.w))
            data = NullLabels(codes, model.null_class) if unconditional else codes
            s = self.s
            settings = bigr_settings("fashion-mnist", str(directory), steps=s.steps, batch_size=s.batch_size, lr=s.lr,
                                     warmup=s.warmup, ema=s.ema, seed=s.seed, device=self.device,
                                     log_every=max(1, min(25, s.steps // 10)), ckpt_every=max(1, min(200, s.steps)))
            torch.manual_seed(s.seed)        # dropout draws from the global generator (a resume restores it)
            cpu = time.process_time()
            train_bigr(model, data, settings)
            rows = read_log(directory / "log.jsonl")
            tail = [r for r in rows if r["step"] > 0.9 * s.steps] or rows[-1:]
            return {"objective": objective, "unconditional": unconditional, "steps": s.steps,
                    "cpu_seconds": time.process_time() - cpu,
                    "final_loss": sum(r["loss"] for r in tail) / len(tail),
                    "final_bce": sum(r["bce"] for r in tail) / len(tail)}

        return self.stage(f"train-{name}", run)

    def model(self, name: str) -> BiGR:
        if name == "shipped":
            return self.shipped
        if name not in self._models:
            self.train_info(name)
            self._models[name] = BiGR.from_pretrained(self.out / "train" / name / "model", self.device)
        return self._models[name]

    # -- measurements -----------------------------------------------------------------------
    def sample_quality(self, model_name: str, seed: int | None = None, **overrides) -> dict:
        """evaluate_generator for one model and sampling setting, plus CPU seconds per image."""
        sampling = {**self.sampling, "deterministic": False, **overrides}
        seed = self.s.seed if seed is None else seed

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

        return self.stage(eval_name(model_name, sampling) + ("" if seed == self.s.seed else f"-seed{seed}"), run)

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


def eval_name(model_name: str, sampling: dict) -> str:
    """The result name of one evaluation: settings shared by several ablations map to one result."""
    bits = "det" if sampling["deterministic"] else "bern"
    return f"eval-{model_name}-{sampling['order']}-I{sampling['num_iter']}-S{sampling['diffusion_steps']}-{bits}"


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
def ablate_order(lab: Lab) -> dict:
    return {order: lab.sample_quality("shipped", order=order) for order in ORDERS}


def ablate_objective(lab: Lab) -> dict:
    return {objective: {**lab.sample_quality(objective), "train": lab.train_info(objective)}
            for objective in OBJECTIVES}


def ablate_bits(lab: Lab) -> dict:
    return {"bernoulli": lab.sample_quality("shipped"),
            "deterministic": lab.sample_quality("shipped", deterministic=True)}


def ablate_probe(lab: Lab) -> dict:
    out = {name: {**lab.probe(name), **({"train": lab.train_info(name)} if name in TRAINED else {})} for name in PROBED}
    return {**out, "pixels": lab.pixel_probe()}


def ablate_time(lab: Lab) -> list[dict]:
    return [lab.sample_quality("shipped", num_iter=i, diffusion_steps=s)
            for s in lab.s.grid_steps for i in lab.s.grid_iters]


def ablate_noise(lab: Lab) -> list[dict]:
    cheapest = dict(num_iter=min(lab.s.grid_iters), diffusion_steps=min(lab.s.grid_steps))
    return [{**lab.sample_quality("shipped", seed=lab.s.seed + k, **cheapest), "seed": lab.s.seed + k}
            for k in range(NOISE_SEEDS)]


ABLATIONS = {"order": ablate_order, "objective": ablate_objective, "bits": ablate_bits, "probe": ablate_probe,
             "time": ablate_time, "noise": ablate_noise}


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


def quality_cells(r: dict) -> list[str]:
    """FD, class accuracy, precision, recall, CPU seconds per image of one evaluation."""
    return [_num(r["fd"]), _pct(r["class_accuracy"]), _num(r["precision"]), _num(r["recall"]),
            _num(r["cpu_seconds_per_image"], ".3f")]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def ranking(scores: dict, keys) -> str:
    """'a < b < c' by score (lower first) over the keys present in scores."""
    return " < ".join(sorted((k for k in keys if k in scores), key=scores.get))


QUALITY = ["FD ↓", "class acc.", "precision", "recall", "CPU s / image"]


def order_section(res: dict) -> list[str]:
    rows = [[f"**{o}**" if o == "entropy" else o, *quality_cells(res[o]), _num(PAPER["order"].get(o)),
             _num(PAPER["order_seconds"].get(o))] for o in ORDERS if o in res]
    ours = {o: res[o]["fd"] for o in res}
    paper_keys = list(PAPER["order"])
    return ["## (a) Sampling order (reference model)", "",
            *table(["order", *QUALITY, "paper FID", "paper s / image"], rows), "",
            f"Ranking by FD here: {ranking(ours, ORDERS)}; over the orders the paper reports: "
            f"{ranking(ours, paper_keys)} (paper: {ranking(PAPER['order'], paper_keys)}). The paper's raster time "
            "(8.8 s against 0.69 s, about 256 / 20) suggests one token per step there; here every order reveals "
            "the same number of tokens per step, so all cost about the same.", ""]


def objective_section(res: dict) -> list[str]:
    rows = [[o, *quality_cells(res[o]), _num(res[o]["train"]["final_loss"], ".4f"),
             _num(res[o]["train"]["cpu_seconds"] / 60, ".1f"), _num(PAPER["objective"][o])]
            for o in OBJECTIVES if o in res]
    train = next(iter(res.values()))["train"]
    ours = {o: res[o]["fd"] for o in res}
    return [f"## (b) Transcoder objective (tiny-32 from scratch, {train['steps']} steps each)", "",
            *table(["objective", *QUALITY, "final train loss", "train CPU min", "paper FID"], rows), "",
            f"Ranking by FD here: {ranking(ours, OBJECTIVES)} (paper: {ranking(PAPER['objective'], OBJECTIVES)}). "
            "The training losses are each objective's own wBCE and do not compare across objectives.", ""]


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
    rows = [[f"I = {i}", *(f"{cell[i, s]['fd']:.2f} ({cell[i, s]['cpu_seconds_per_image']:.3f} s)"
                           if (i, s) in cell else "—" for s in steps)] for i in iters]
    return ["## (e) FD vs time: sampling iterations I x diffusion steps S (reference model; paper's Figure 3)", "",
            *table(["FD (CPU s / image)", *(f"S = {s}" for s in steps)], rows), "",
            f"![FD vs seconds per image]({image_prefix}ablations_time.png)", ""]


def noise_line(res: list[dict]) -> str:
    """How far FD moves between sampling seeds of one setting."""
    fds = [r["fd"] for r in res]
    first = res[0]["sampling"]
    return (f"Chance alone: the same setting (I = {first['num_iter']}, S = {first['diffusion_steps']}) with sampling "
            f"seeds {', '.join(str(r['seed']) for r in res)} gives FD {' / '.join(f'{fd:.2f}' for fd in fds)} (a "
            f"spread of {max(fds) - min(fds):.2f}): FD differences of that size are not resolved at "
            f"{res[0]['samples']} samples.")


def last_invocation(minutes: float) -> str:
    return ("the last invocation only read stored results" if minutes < 1
            else f"the last invocation took {minutes:.0f} min")


def report_markdown(summary: dict, meta: dict, image_prefix: str = "") -> str:
    """The whole report; ``image_prefix`` is where the PNGs are relative to the Markdown file."""
    s = meta["settings"]
    lines = ["# Ablations on Fashion-MNIST (docs/method.md §8)", "",
             f"`{meta['command']}`: {s['num_samples']} samples per setting (class-balanced, seed {s['seed']}), "
             f"reference model: {s['model'] or 'the shipped one'}; "
             f"sampling with its settings ({meta['sampling_line']}) unless a table varies one; "
             f"from-scratch models: tiny-32, {s['steps']} steps at batch {s['batch_size']}, AdamW lr {s['lr']:g} "
             f"(warmup {s['warmup']}, cosine), EMA {s['ema']}, seed {s['seed']}, on the shipped tokenizer's codes. "
             f"{meta['machine']}; {meta['cpu_minutes']:.0f} min of process CPU time and "
             f"{meta['compute_minutes']:.0f} min wall-clock summed over all stages (the machine was shared; "
             f"{last_invocation(meta['wall_minutes'])}).", "",
             "FD: Fréchet distance to the train images in the features of the project's Fashion-MNIST CNN (lower is "
             f"better; {s['num_samples']} real test images score {_num(meta.get('real_fd'))} at the same count: "
             "the floor). Class accuracy: the CNN's prediction equals the asked-for class. Precision / recall: "
             "k-NN manifolds (k = 3). CPU s / image: sampling + decoding, process CPU time. The paper's numbers are "
             "FID-50k of BiGR-L on ImageNet 256×256: compare rankings, not values.", ""]
    if "noise" in summary:
        lines += [noise_line(summary["noise"]), ""]
    if "order" in summary:
        lines += order_section(summary["order"])
    if "objective" in summary:
        lines += objective_section(summary["objective"])
    if "bits" in summary:
        lines += bits_section(summary["bits"])
    if "probe" in summary:
        lines += probe_section(summary["probe"], s)
    if "time" in summary:
        lines += time_section(summary["time"], image_prefix)
    if any(k in summary for k in ("order", "objective", "bits", "probe")):
        lines += [f"![FD per ablation]({image_prefix}ablations_bars.png)", ""]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_time(results: list[dict], path: Path, noise: list[dict] | None = None) -> None:
    """FD against CPU seconds per image, one line per S, points labelled by I; with the noise stage's results, a
    bar over their FD range at their setting shows what chance alone moves. The FD axis starts at 0."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in sorted({r["sampling"]["diffusion_steps"] for r in results}):
        pts = sorted((r["cpu_seconds_per_image"], r["fd"], r["sampling"]["num_iter"])
                     for r in results if r["sampling"]["diffusion_steps"] == s)
        xs, ys, iters = zip(*pts, strict=True)
        ax.plot(xs, ys, "o-", label=f"S = {s}")
        for x, y, i in pts:
            ax.annotate(f"I={i}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if noise:
        fds = [r["fd"] for r in noise]
        x = sum(r["cpu_seconds_per_image"] for r in noise) / len(noise)
        ax.errorbar([x], [min(fds)], yerr=[[0], [max(fds) - min(fds)]], fmt="none", ecolor="black", capsize=4,
                    label=f"FD range over {len(fds)} sampling seeds")
    ax.set_ylim(0, 1.15 * max(r["fd"] for r in results + (noise or [])))
    ax.set_xlabel("CPU seconds per image (1 thread)")
    ax.set_ylabel("FD (own-classifier features)")
    ax.set_title("FD vs sampling time (reference model)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(summary: dict, path: Path) -> None:
    """One panel per ablation: our FD (probe: test top-1) as bars, the paper's number written above each."""
    panels = []
    if "order" in summary:
        panels.append(("sampling order", {k: v["fd"] for k, v in summary["order"].items()}, PAPER["order"], "FD"))
    if "objective" in summary:
        panels.append(("transcoder objective", {k: v["fd"] for k, v in summary["objective"].items()},
                       PAPER["objective"], "FD"))
    if "bits" in summary:
        panels.append(("final bits", {k: v["fd"] for k, v in summary["bits"].items()}, PAPER["bits"], "FD"))
    if "probe" in summary:
        names = {"flip": "cond.", "unconditional": "uncond.", "shipped": "reference", "pixels": "pixels"}
        panels.append(("linear probe", {names[k]: 100 * v["test"]["top1"] for k, v in summary["probe"].items()},
                       {names[k]: v for k, v in PAPER["probe"].items()}, "test top-1 (%)"))
    if not panels:
        return
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for ax, (title, ours, paper, ylabel) in zip(axes[0], panels, strict=True):
        bars = ax.bar(list(ours), list(ours.values()), color="tab:blue")
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
    written = [out / "ablations.md"]
    written[0].write_text(report_markdown(summary, meta))
    if "time" in summary:
        plot_time(summary["time"], out / "ablations_time.png", summary.get("noise"))
        written.append(out / "ablations_time.png")
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


def report_meta(lab: Lab, command: str, wall_seconds: float) -> dict:
    """Settings, machine and times for the report's first paragraph."""
    results = [json.loads(p.read_text()) for p in sorted(lab.results.glob("*.json"))]
    evals = [r for r in results if "reference" in r]
    sampling = lab.sampling
    return {"settings": json.loads(json.dumps(dataclasses.asdict(lab.s))), "command": command, "machine": machine(),
            "sampling_line": f"{sampling['order']} order, I = {sampling['num_iter']}, S = "
                             f"{sampling['diffusion_steps']}, CFG {sampling['cfg']:g}, Gumbel {sampling['gumbel']:g}, "
                             "Bernoulli final bits",
            "compute_minutes": sum(r.get("seconds", 0.0) for r in results) / 60, "wall_minutes": wall_seconds / 60,
            "cpu_minutes": sum(r.get("stage_cpu_seconds", 0.0) for r in results) / 60,
            "real_fd": evals[0]["reference"]["fd_test_vs_train"] if evals else None}


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (results, trainings, codes, report)")
    ap.add_argument("--num-samples", type=int, help="generated images per evaluated setting (default 200)")
    ap.add_argument("--steps", type=int, help="training steps of each from-scratch model (default 2000)")
    ap.add_argument("--model", help="BiGR directory of the reference model of (a) (c) (e) and the probe "
                                    "(default: the shipped one)")
    ap.add_argument("--quick", action="store_true", help="tiny numbers everywhere: a smoke run in under a minute")
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
    if args.num_samples is not None:
        overrides["num_samples"] = args.num_samples
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.model is not None:
        overrides["model"] = args.model
    return Settings(**overrides)


def main(argv=None) -> list[Path]:
    args = parse_args(argv)
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    s = settings_from(args)
    lab = Lab(out, s, args.device)
    pin_settings(out / "settings.json", s, lab.sampling)
    summary = run_ablations(lab, args.only)
    command = ("python benchmarks/ablations.py " + " ".join(argv if argv is not None else sys.argv[1:])
               ).replace(f"{REPO}/", "")
    written = write_report(summary, report_meta(lab, command, time.perf_counter() - t0), out, args.publish)
    tqdm.write("wrote " + ", ".join(str(p) for p in written))
    return written


if __name__ == "__main__":
    main()
