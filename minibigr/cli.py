"""The ``minibigr`` command: train-tokenizer, encode, train, sample, eval-tokenizer, demo, the zero-shot apps
(inpaint, outpaint, edit, interpolate, enrich), probe and evaluate.

Each sub-command has ``--help`` and defaults per dataset (see ``RECIPES`` in minibigr/train.py).
Bad arguments and missing files end with a one-line error, not a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import apps, official
from .animation import check_gif_path, write_animation
from .app import launch
from .classifier import load_or_train_classifier
from .codes import CodeCache, encode_dataset
from .config import BiGRConfig
from .data import DATASETS, ArrayDataset, cache_dir, load_dataset
from .demo import run_demo
from .evaluate import evaluate_generator, evaluate_tokenizer
from .images import check_image_path, load_image, save_image, save_image_grid, zoom
from .inception import InceptionFeatures
from .model import BiGR
from .pipeline import NULL_NAME, BiGRPipeline, load_tokenizer, names_null
from .probe import format_probe, parse_layers, parse_pools, probe_model
from .sampler import SamplingConfig, StepRecorder
from .tokenizer import BinaryAutoencoder, TokenizerConfig
from .train import RECIPES, bigr_settings, seeded_init, tokenizer_settings, train_bigr, train_tokenizer

DEVICE_HELP = "auto (CUDA when there is one), cpu, cuda or cuda:N"
DATA_DIR_HELP = "where the dataset's files are (also looked for: $MINIBIGR_DATA, ~/.cache/minibigr)"
IMAGE_HELP = "input image (resized / converted to the tokenizer's)"
# bad input (arguments, files, configs) ends in one line; anything else is a bug and keeps its traceback
KNOWN_ERRORS = (ValueError, FileNotFoundError, KeyError, NotADirectoryError, official.MissingExtra)


# ----------------------------------------------------------------------------------------------
# Models and sampling settings from the command line
# ----------------------------------------------------------------------------------------------
def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return name


def positive(text: str) -> int:
    """argparse type of a count: an integer >= 1."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def checked_path(check) -> Callable[[str], str]:
    """An argparse type that runs ``check(text)`` (which raises ValueError on a bad path) before any work starts."""
    def parse(text: str) -> str:
        try:
            check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text
    return parse


image_out = checked_path(check_image_path)    # an output image
gif_out = checked_path(check_gif_path)        # an animation file: a .gif


def load_pipeline(args) -> BiGRPipeline:
    """The pipeline that --model (and --tokenizer, --device) name."""
    return BiGRPipeline.from_pretrained(args.model, _device(args.device), tokenizer=args.tokenizer)


def add_sampling(sp) -> None:
    """One flag per SamplingConfig field (--num-iter, --cfg, ...), help from the field; unset = the model's."""
    sp.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    group = sp.add_argument_group("sampling (default: the model's recommended settings)")
    for f in dataclasses.fields(SamplingConfig):
        flag, choices = "--" + f.name.replace("_", "-"), f.metadata["choices"]
        if f.type == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            group.add_argument(flag, type=kind, choices=choices, help=f.metadata["help"])


def sampling_overrides(args) -> dict:
    """The sampling flags that were given, as keyword arguments of generate / the pipeline."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingConfig)
            if getattr(args, f.name, None) is not None}


def _generator(args) -> torch.Generator:
    return torch.Generator(device=_device(args.device)).manual_seed(args.seed)


# ----------------------------------------------------------------------------------------------
# Sub-commands
# ----------------------------------------------------------------------------------------------
def cmd_train_tokenizer(args):
    recipe = RECIPES[args.dataset]
    overrides = _config_overrides(TokenizerConfig, args.set)
    if args.disc_start is not None:
        overrides["disc_start"] = args.disc_start
    config = TokenizerConfig.preset(args.preset or recipe["tokenizer"], **overrides)
    dataset = load_dataset(args.dataset, "train", data_dir=args.data_dir)
    settings = tokenizer_settings(args.dataset, out_dir=args.out, **_overrides(args))
    with seeded_init(settings.seed):                 # --seed fixes the initial weights too
        tokenizer = BinaryAutoencoder(config)
    train_tokenizer(tokenizer, dataset, settings)
    print(f"tokenizer saved to {Path(args.out) / 'model'}")


def cmd_encode(args):
    tokenizer = load_tokenizer(args.tokenizer, _device(args.device))
    dataset = load_dataset(args.dataset, args.split, data_dir=args.data_dir)
    cache = encode_dataset(tokenizer, dataset, args.out, batch_size=args.batch_size)
    print(f"{len(cache)} images -> {cache.h}x{cache.w} tokens of K={cache.K} bits in {args.out}")


def cmd_train(args):
    codes = CodeCache(args.codes)
    recipe = RECIPES[args.dataset]
    classes = {"num_classes": codes.num_classes} if codes.num_classes else {}     # a folder: its class count
    config = BiGRConfig.preset(args.preset or recipe["model"], K=codes.K, num_tokens=codes.h * codes.w,
                               **{**classes, **_config_overrides(BiGRConfig, args.set)})
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    settings = bigr_settings(args.dataset, out_dir=args.out, **_overrides(args))
    with seeded_init(settings.seed):                 # --seed fixes the initial weights too
        model = BiGR(config)
    train_bigr(model, codes, settings, tokenizer=tokenizer)
    print(f"model saved to {Path(args.out) / 'model'}" + (f" (with its tokenizer: `--model {args.out}` loads both)"
                                                         if tokenizer is not None else ""))


def cmd_sample(args):
    pipe = load_pipeline(args)
    C = pipe.model.config.num_classes
    labels = list(range(C)) if args.labels is None else [_check_label(y, pipe) for y in args.labels]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    settings = sampling_overrides(args)
    recorder = StepRecorder()

    def watch(step):
        bar.update()
        if args.animate:
            recorder(step)

    with tqdm(total=pipe.model.config.sampling.replace(**settings).num_iter, desc="sampling steps", leave=False,
              dynamic_ncols=True, disable=None) as bar:
        images = pipe([y for y in labels for _ in range(args.per_class)], generator=_generator(args),
                      callback=watch, **settings)
    save_image_grid(images, out, nrow=args.per_class)
    if args.animate:            # the first sample of each class, as the grid's first column shows it
        write_animation(pipe, recorder.steps, images, args.animate, pipe.model.config.sampling.replace(**settings),
                        columns=list(range(0, len(images), args.per_class)))
        print(f"reveal animation of the first sample of each class: {args.animate}")
    npz = out.with_suffix(".npz")
    np.savez_compressed(npz, images=(images.cpu().numpy() * 255).round().astype(np.uint8),
                        labels=np.repeat(pipe.labels(labels).cpu().numpy(), args.per_class))
    print(f"{len(images)} samples in {time.time() - t0:.1f}s -> {out} and {npz}")


def cmd_eval_tokenizer(args):
    tokenizer = load_tokenizer(args.tokenizer, _device(args.device))
    dataset = load_dataset(args.dataset, args.split, data_dir=args.data_dir)
    report = evaluate_tokenizer(tokenizer, dataset, limit=args.limit)
    print(json.dumps(report, indent=2))


def cmd_app(args):
    launch(load_pipeline(args), host=args.host, port=args.port)


def cmd_demo(args):
    run_demo(out_dir=args.out, train=args.train, device=_device(args.device), data_dir=args.data_dir,
             fast=args.fast, per_class=args.per_class, seed=args.seed)


def _check_label(label: str, pipe: BiGRPipeline, what: str = "label") -> int | str:
    """A class given on the command line, by number or (for a model with class names) by name; 'null' names the
    null class (unconditional samples) and is passed on by that name, the only way the library samples it."""
    if names_null(label):
        return NULL_NAME
    C = pipe.model.config.num_classes
    number = int(pipe.labels(int(label) if label.lstrip("-").isdigit() else label)[0])
    if not 0 <= number < C:
        raise ValueError(f"{what} {label} is out of range: this model has classes 0..{C - 1} (and 'null', the "
                         "unconditional model)")
    return number


def _read_image(path: str, pipe: BiGRPipeline, mask: bool = False) -> torch.Tensor:
    config = pipe.tokenizer.config
    return load_image(path, config.in_channels, config.image_size, mask=mask).to(pipe.device)


def _write_pngs(result: torch.Tensor, panels: list[torch.Tensor], out: str, factor: int) -> list[Path]:
    """The result (1, C, H, W) as ``out`` and the panels side by side (x factor) as ``<out>-compare.png``."""
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    compare = out_path.with_name(out_path.stem + "-compare.png")
    save_image(result[0], out_path)
    save_image_grid(zoom(torch.cat(panels), factor), compare, nrow=len(panels))
    return [out_path, compare]


def cmd_paint(args):
    pipe = load_pipeline(args)
    label = _check_label(args.label, pipe)
    x, mask = _read_image(args.image, pipe), _read_image(args.mask, pipe, mask=True)
    keeps = args.command == "outpaint"                       # outpaint's white keeps; the others' regenerates
    if (mask.all() if keeps else not mask.any()):
        raise ValueError(f"the mask {args.mask} leaves nothing to regenerate: it is all "
                         f"{'white' if keeps else 'black'} (white = {'keep' if keeps else 'regenerate'})")
    app = {"inpaint": apps.inpaint, "outpaint": apps.outpaint, "edit": apps.edit}[args.command]
    out = app(pipe, x, mask, label, generator=_generator(args), mask_from_pixels=args.mask_from_pixels,
              draw=args.draw, **sampling_overrides(args))
    paths = _write_pngs(out, [x, mask.to(x.dtype).expand_as(x), out], args.out, args.zoom)
    print(f"{args.command} (class {label}): {paths[0]}; input | mask | result: {paths[1]}")


def cmd_interpolate(args):
    pipe = load_pipeline(args)
    y1, y2 = _check_label(args.from_label, pipe, "--from"), _check_label(args.to_label, pipe, "--to")
    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2, got {args.steps}")
    alphas = torch.linspace(1, 0, args.steps).tolist()      # alpha weighs e(--from): the strip goes from -> to
    images = apps.interpolate(pipe, y1, y2, alphas=alphas, generator=_generator(args), **sampling_overrides(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image_grid(zoom(images, args.zoom), out, nrow=len(images))
    print(f"class {y1} -> {y2} in {args.steps} steps: {out}")


def cmd_enrich(args):
    pipe = load_pipeline(args)
    x = _read_image(args.image, pipe)
    out = apps.enrich(pipe, x, r=args.factor, passes=args.passes, generator=_generator(args), draw=args.draw,
                      **sampling_overrides(args))
    paths = _write_pngs(out, [x, out], args.out, args.zoom)
    print(f"enrich (factor {args.factor}): {paths[0]}; input | result: {paths[1]}")


def cmd_probe(args):
    pipe = load_pipeline(args)
    layers = parse_layers(args.layers, pipe.model.config.n_layer)
    pools = parse_pools(args.pool, pipe.model.config.num_tokens)
    train = load_dataset(args.dataset, "train", data_dir=args.data_dir)
    test = load_dataset(args.dataset, "test", data_dir=args.data_dir)
    t0 = time.time()
    result = probe_model(pipe, train, test, layers, pools, limit=args.limit, batch_size=args.batch_size,
                         seed=args.seed, l2s=_floats(args.l2, "--l2"), max_iter=args.max_iter)
    print(format_probe(result))
    print(f"({time.time() - t0:.0f}s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def _floats(spec: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise ValueError(f"{name} must be comma-separated numbers, got {spec!r}")
    return values


def cmd_evaluate(args):
    pipe = load_pipeline(args)
    device, C = pipe.device, pipe.model.config.num_classes
    inception = InceptionFeatures(args.inception, device) if args.inception else None
    train = load_dataset(args.dataset, "train", data_dir=args.data_dir)
    test = load_dataset(args.dataset, "test", data_dir=args.data_dir)
    if getattr(train, "num_classes", C) != C:
        raise ValueError(f"the model has {C} classes, {args.dataset} has {train.num_classes}")
    classifier, info = load_or_train_classifier(args.dataset, args.classifier, args.data_dir, device)
    cc, tc = classifier.config, pipe.tokenizer.config
    if (cc.in_channels, cc.image_size) != (tc.in_channels, tc.image_size):
        raise ValueError(f"the classifier takes {cc.in_channels}x{cc.image_size}x{cc.image_size} images, the "
                         f"tokenizer makes {tc.in_channels}x{tc.image_size}x{tc.image_size}")
    if args.limit is not None:
        train = _first(train, args.limit)
    t0 = time.time()
    r = evaluate_generator(pipe, train, test, classifier.extract, num_samples=args.num_samples, seed=args.seed,
                           batch_size=args.batch_size, knn_cap=args.knn_cap, inception=inception,
                           cache=None if args.no_cache else cache_dir() / "references", **sampling_overrides(args))
    ref, acc = r["reference"], info.get("test_accuracy")
    print(f"{r['samples']} samples (seed {args.seed}) against {ref['train_images']} {args.dataset} train images; "
          f"features: the {args.dataset} classifier" + (f" (test accuracy {acc:.4f})" if acc is not None else ""))
    print(f"{'':<24}{'samples':>10}{'real test (scale)':>20}")
    for name, ours, real in (("FD", r["fd"], ref["fd_test_vs_train"]),
                             ("class accuracy", r["class_accuracy"], ref["class_accuracy_test"]),
                             (f"precision (k=3, n={r['knn_points']})", r["precision"], ref["precision"]),
                             (f"recall (k=3, n={r['knn_points']})", r["recall"], ref["recall"])):
        print(f"{name:<24}{ours:>10.4f}{real:>20.4f}")
    print(f"{'seconds per image':<24}{r['seconds_per_image']:>10.4f}   (sampling + decoding)")
    if "inception" in r:
        inc = r["inception"]
        print(f"{'Inception-v3 FD':<24}{inc['fd']:>10.4f}{inc['fd_test_vs_train']:>20.4f}")
        print(f"{'Inception Score (10 splits)':<28}{inc['inception_score']:>6.2f} ± {inc['inception_score_std']:.2f}"
              f"{inc['inception_score_test']:>14.2f} ± {inc['inception_score_test_std']:.2f}")
    print(f"({time.time() - t0:.0f}s)")
    if args.json:
        Path(args.json).write_text(json.dumps({**r, "classifier": info}, indent=2))


def _first(dataset, n: int):
    """The first n items of a dataset, keeping its fast get_batch."""
    if not isinstance(dataset, ArrayDataset):
        raise ValueError("--limit needs an in-memory dataset")
    return dataset.first(n)


def _config_overrides(cls, items: list[str] | None) -> dict:
    """``--set KEY=VALUE`` pairs -> {field: value}, each parsed as the type of that field of ``cls``
    (int, float, str, bool, or comma-separated ints for a tuple), e.g. ["dim=256", "n_layer=6"]. The
    sampling settings of a BiGRConfig are ``sampling.NAME``, e.g. "sampling.cfg=2"."""
    fields = {f.name: f.type for f in dataclasses.fields(cls) if f.type in PARSERS}
    if cls is BiGRConfig:
        fields |= {f"sampling.{f.name}": f.type for f in dataclasses.fields(SamplingConfig)}
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise ValueError(f"--set wants KEY=VALUE with KEY one of the {cls.__name__} fields "
                             f"({', '.join(fields)}), got {item!r}")
        try:
            parsed = PARSERS[fields[key]](value.strip())
        except ValueError:
            raise ValueError(f"--set {key}: {value!r} is not a valid {fields[key]}") from None
        group, _, name = key.rpartition(".")
        (out.setdefault(group, {}) if group else out)[name] = parsed
    return out


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


PARSERS = {"int": int, "float": float, "str": str, "bool": _bool,
           "tuple[int, ...]": lambda v: tuple(int(x) for x in v.split(",") if x.strip())}


def _overrides(args) -> dict:
    keys = ("steps", "batch_size", "lr", "seed", "device", "sample_every", "ckpt_every", "codes_draw")
    found = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if "device" in found:
        found["device"] = _device(found["device"])
    if getattr(args, "compile", False):
        found["compile"] = True
    return found


# ----------------------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------------------
def add_models(sp):
    sp.add_argument("--model", default="fashion-mnist",
                    help="shipped name (fashion-mnist), published name (BiGR-L-d24, ...: from the Hugging Face "
                         "Hub), or a directory holding tokenizer/ and model/ (a `minibigr train` run)")
    sp.add_argument("--tokenizer", help="the tokenizer's directory, when --model holds no tokenizer/")
    sp.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_draw(sp) -> None:
    sp.add_argument("--draw", choices=("threshold", "bernoulli"), default="threshold",
                    help="the source image's tokens: threshold codes [p > 1/2], or Bernoulli draws (the authors' apps)")


def add_app(sp, out: str, zoom_help: str, func) -> None:
    """What every zero-shot app's command takes besides its inputs: --out, --zoom, the model, the sampling settings."""
    sp.add_argument("--out", type=image_out, default=out, help="the result image")
    sp.add_argument("--zoom", type=positive, default=4, help=zoom_help)
    add_models(sp)
    add_sampling(sp)
    sp.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minibigr", description="BiGR: binary latent image generation, small and fast.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common_train(sp, default_out):
        sp.add_argument("--dataset", choices=sorted(RECIPES), default="fashion-mnist",
                        help="dataset (sets the default preset and training recipe)")
        sp.add_argument("--preset", help="config preset (default: the dataset's)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override one field of the preset's config, e.g. --set dim=256 (repeatable)")
        sp.add_argument("--out", default=default_out, help="run directory (resumes if it holds a run)")
        sp.add_argument("--steps", type=positive, help="total optimisation steps")
        sp.add_argument("--batch-size", type=positive, help="global batch size")
        sp.add_argument("--lr", type=float, help="peak learning rate")
        sp.add_argument("--seed", type=int)
        sp.add_argument("--device", default="auto", help=DEVICE_HELP)
        sp.add_argument("--sample-every", type=positive, help="write a sample / reconstruction grid every N steps")
        sp.add_argument("--ckpt-every", type=positive, help="checkpoint every N steps")

    sp = sub.add_parser("train-tokenizer", help="train the binary autoencoder (B-AE)")
    common_train(sp, "runs/tokenizer")
    sp.add_argument("--data-dir", help=DATA_DIR_HELP)
    sp.add_argument("--disc-start", type=int, help="step at which the PatchGAN loss switches on")
    sp.set_defaults(func=cmd_train_tokenizer)

    sp = sub.add_parser("encode", help="encode a dataset once with a trained tokenizer (code cache)")
    sp.add_argument("--tokenizer", required=True, help="tokenizer directory or shipped name")
    sp.add_argument("--dataset", choices=sorted(RECIPES), default="fashion-mnist")
    sp.add_argument("--split", default="train", help="train or test")
    sp.add_argument("--data-dir", help=DATA_DIR_HELP)
    sp.add_argument("--out", default="runs/codes", help="the cache's directory")
    sp.add_argument("--batch-size", type=positive, default=256)
    sp.add_argument("--device", default="auto", help=DEVICE_HELP)
    sp.set_defaults(func=cmd_encode)

    sp = sub.add_parser("train", help="train BiGR on a code cache")
    common_train(sp, "runs/bigr")
    sp.add_argument("--codes", required=True, help="code cache directory (from `minibigr encode`)")
    sp.add_argument("--tokenizer", help="tokenizer used for periodic sample grids")
    sp.add_argument("--compile", action="store_true", help="torch.compile the training step")
    sp.add_argument("--codes-draw", choices=("threshold", "bernoulli"),
                    help="training codes: the cache's threshold codes [p > 1/2] (the recipes' default), or a "
                         "random mirror and fresh Bernoulli(p) bits every step, as the authors train")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("sample", help="generate images: a PNG grid (one row per class) and an .npz")
    add_models(sp)
    sp.add_argument("--labels", nargs="+", help="class numbers or names (default: every class), e.g. "
                    "--labels 207 'golden retriever'")
    sp.add_argument("--per-class", type=positive, default=8, help="samples per class: one row of the grid each")
    sp.add_argument("--out", type=image_out, default="samples.png",
                    help="the grid (.png, .jpg, ...); the samples as uint8 arrays with their labels go to OUT.npz")
    sp.add_argument("--animate", type=gif_out, metavar="GIF",
                    help="also write the reveal animation of this run (the first sample of each class; one frame "
                         "per step) to GIF; the samples are the same with or without it")
    add_sampling(sp)
    sp.set_defaults(func=cmd_sample)

    sp = sub.add_parser("eval-tokenizer", help="reconstruction PSNR and code usage of a tokenizer")
    sp.add_argument("--tokenizer", default="fashion-mnist", help="tokenizer directory or shipped name")
    sp.add_argument("--dataset", choices=sorted(RECIPES), default="fashion-mnist")
    sp.add_argument("--split", default="test", help="train or test")
    sp.add_argument("--data-dir", help=DATA_DIR_HELP)
    sp.add_argument("--limit", type=positive, help="only the first N images")
    sp.add_argument("--device", default="auto", help=DEVICE_HELP)
    sp.set_defaults(func=cmd_eval_tokenizer)

    sp = sub.add_parser("app", help="a local web app: generate, inpaint, edit and interpolate (needs the [app] "
                        "extra: gradio)", description="Serves the app on http://HOST:PORT until interrupted.")
    add_models(sp)
    sp.add_argument("--host", default="127.0.0.1", help="the address to serve on (127.0.0.1: this machine only)")
    sp.add_argument("--port", type=positive, default=7860, help="the port to serve on")
    sp.set_defaults(func=cmd_app)

    sp = sub.add_parser("demo", help="samples, reconstructions and a summary from the shipped model")
    sp.add_argument("--out", default="minibigr-demo")
    sp.add_argument("--train", action="store_true", help="train the tiny models from scratch first")
    sp.add_argument("--fast", action="store_true",
                    help="with --train: 300 tokenizer and 600 BiGR steps on 10,000 images, about 10 minutes on a "
                         "2-core CPU; it checks the training path end to end, its samples are far from the shipped "
                         "model's")
    sp.add_argument("--per-class", type=positive, default=8, help="samples per class in samples.png")
    sp.add_argument("--seed", type=int, default=0, help="seed of every sampling generator")
    sp.add_argument("--data-dir", help=DATA_DIR_HELP)
    sp.add_argument("--device", default="auto", help=DEVICE_HELP)
    sp.set_defaults(func=cmd_demo)


    for name, text in (("inpaint", "regenerate the masked (white) region of an image"),
                       ("outpaint", "keep the masked (white) region, regenerate the rest"),
                       ("edit", "regenerate the masked (white) region as another class")):
        sp = sub.add_parser(name, help=text, description=text + ". Writes OUT (the result) and "
                            "OUT-compare.png (input | mask | result).")
        sp.add_argument("--image", required=True, help=IMAGE_HELP)
        sp.add_argument("--mask", required=True, help="mask image: white = regenerate")
        sp.add_argument("--label", required=True, help="class of the regenerated region (number, name or 'null')")
        sp.add_argument("--mask-from-pixels", choices=apps.MASK_FROM_PIXELS, default="any",
                        help="a token is regenerated when any of its pixels is masked, or when the top-left one is "
                             "(nearest: the authors' apps)")
        add_draw(sp)
        add_app(sp, f"{name}.png", "upscaling of the comparison PNG", cmd_paint)

    sp = sub.add_parser("interpolate", help="a strip of images between two classes (class-embedding mix)")
    sp.add_argument("--from", dest="from_label", required=True, help="class at the left end (number or name)")
    sp.add_argument("--to", dest="to_label", required=True, help="class at the right end (number or name)")
    sp.add_argument("--steps", type=positive, default=5, help="images in the strip")
    add_app(sp, "interpolate.png", "upscaling of the strip", cmd_interpolate)

    sp = sub.add_parser("enrich", help="add detail to a blurry image (null class, block-wise regeneration)",
                        description="Writes OUT (the result) and OUT-compare.png (input | result).")
    sp.add_argument("--image", required=True, help=IMAGE_HELP)
    sp.add_argument("--factor", type=positive, default=2, help="blur factor r (must divide the token grid)")
    sp.add_argument("--passes", type=positive, default=1, help="passes over the groups, each from the last (the "
                    "authors run 4)")
    add_draw(sp)
    add_app(sp, "enrich.png", "upscaling of the comparison PNG", cmd_enrich)

    sp = sub.add_parser("probe", help="linear probe of the frozen features of each block vs raw pixels")
    add_models(sp)
    sp.add_argument("--dataset", choices=sorted(DATASETS), default="fashion-mnist")
    sp.add_argument("--data-dir", help=DATA_DIR_HELP)
    sp.add_argument("--layers", default="all", help="'all' or comma-separated blocks (0-based, e.g. 1,3)")
    sp.add_argument("--pool", default="mean,2x2", help="token poolings to choose from on the held-out split: "
                    "'mean' (the paper's, over all tokens) and/or RxR cell means, e.g. 2x2")
    sp.add_argument("--limit", type=positive, help="only the first N images of each split")
    sp.add_argument("--batch-size", type=positive, default=250)
    sp.add_argument("--l2", default="1e-4,1e-3,1e-2", help="L2 strengths to choose from on the held-out split")
    sp.add_argument("--max-iter", type=positive, default=200, help="L-BFGS iterations per fit")
    sp.add_argument("--seed", type=int, default=0, help="seed of the 10%% held-out split")
    sp.add_argument("--json", help="also write the result as JSON here")
    sp.set_defaults(func=cmd_probe)

    sp = sub.add_parser("evaluate", help="FD, class accuracy, precision / recall and speed of generated samples")
    add_models(sp)
    add_sampling(sp)
    sp.add_argument("--dataset", choices=sorted(DATASETS), default="fashion-mnist")
    sp.add_argument("--data-dir", help=DATA_DIR_HELP)
    sp.add_argument("--num-samples", type=positive, default=1000)
    sp.add_argument("--batch-size", type=positive, default=100, help="samples generated per chunk")
    sp.add_argument("--classifier", help="classifier directory (default: the shipped one for fashion-mnist, "
                    "else the cache, ~/.cache/minibigr/classifiers/<dataset>/, trained there on first use)")
    sp.add_argument("--inception", help="FID Inception-v3 weights file (pt_inception-2015-12-05)")
    sp.add_argument("--knn-cap", type=positive, default=5000, help="points per set in the k-NN precision / recall")
    sp.add_argument("--limit", type=positive, help="only the first N train images as the reference")
    sp.add_argument("--json", help="also write the report as JSON here")
    sp.add_argument("--no-cache", action="store_true", help="featurise the train split again instead of reading its "
                    "summary from <cache>/references/ (kept there after the first evaluation)")
    sp.set_defaults(func=cmd_evaluate)
    return p


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"minibigr: warning: {message}\n"


def main(argv=None) -> int:
    warnings.formatwarning = _one_line_warning         # a warning (skipped files, say) in one line, no source
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KNOWN_ERRORS as e:
        print(f"minibigr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minibigr {args.command}: interrupted (runs resume from their last checkpoint)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
