"""The ``minibigr`` command: train-tokenizer, encode, train, sample, eval-tokenizer, demo.

Each sub-command has ``--help`` and defaults per dataset (see ``RECIPES`` in minibigr/train.py).
Bad arguments and missing files end with a one-line error, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

KNOWN_ERRORS = (ValueError, FileNotFoundError, KeyError, NotADirectoryError, RuntimeError)


# ----------------------------------------------------------------------------------------------
# Loading models by name or directory
# ----------------------------------------------------------------------------------------------
def load_tokenizer(spec: str, device: str = "cpu"):
    """A tokenizer from a directory (config.json + model.safetensors) or a shipped name."""
    from .pretrained import SHIPPED, pretrained_dir
    from .tokenizer import BinaryAutoencoder

    path = pretrained_dir(spec) / "tokenizer" if spec in SHIPPED else _model_dir(spec)
    return BinaryAutoencoder.from_pretrained(path).to(device).eval()


def load_model(spec: str, device: str = "cpu"):
    """A BiGR from a directory or a shipped name."""
    from .model import BiGR
    from .pretrained import SHIPPED, pretrained_dir

    path = pretrained_dir(spec) / "model" if spec in SHIPPED else _model_dir(spec)
    return BiGR.from_pretrained(path).to(device).eval()


def _model_dir(spec: str) -> Path:
    """Accept either the weights directory or a training run directory holding ``model/``."""
    path = Path(spec)
    if (path / "model" / "config.json").exists():
        return path / "model"
    if (path / "config.json").exists():
        return path
    from .pretrained import SHIPPED

    raise FileNotFoundError(f"{spec!r} is neither a model directory (config.json + model.safetensors), a "
                            f"training run directory, nor a shipped model ({', '.join(SHIPPED)})")


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return name


# ----------------------------------------------------------------------------------------------
# Sub-commands
# ----------------------------------------------------------------------------------------------
def cmd_train_tokenizer(args):
    from .data import load_dataset
    from .tokenizer import BinaryAutoencoder, TokenizerConfig
    from .train import RECIPES, tokenizer_settings, train_tokenizer

    recipe = RECIPES[args.dataset]
    cfg = TokenizerConfig.preset(args.preset or recipe["tokenizer"],
                                 **({"disc_start": args.disc_start} if args.disc_start is not None else {}))
    dataset = load_dataset(args.dataset, "train", data_dir=args.data_dir)
    settings = tokenizer_settings(args.dataset, out_dir=args.out, **_overrides(args))
    train_tokenizer(BinaryAutoencoder(cfg), dataset, settings)
    print(f"tokenizer saved to {Path(args.out) / 'model'}")


def cmd_encode(args):
    from .data import load_dataset
    from .train import encode_dataset

    tokenizer = load_tokenizer(args.tokenizer)
    dataset = load_dataset(args.dataset, args.split, data_dir=args.data_dir)
    cache = encode_dataset(tokenizer, dataset, args.out, batch_size=args.batch_size, device=_device(args.device))
    print(f"{len(cache)} images -> {cache.h}x{cache.w} tokens of K={cache.K} bits in {args.out}")


def cmd_train(args):
    from .model import BiGR, BiGRConfig
    from .train import RECIPES, CodeCache, bigr_settings, train_bigr

    codes = CodeCache(args.codes)
    recipe = RECIPES[args.dataset]
    cfg = BiGRConfig.preset(args.preset or recipe["model"], K=codes.K, num_tokens=codes.h * codes.w)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    settings = bigr_settings(args.dataset, out_dir=args.out, **_overrides(args))
    train_bigr(BiGR(cfg), codes, settings, tokenizer=tokenizer)
    print(f"model saved to {Path(args.out) / 'model'}")


def cmd_sample(args):
    import numpy as np

    from .train import sample_grid

    device = _device(args.device)
    tokenizer, model = load_tokenizer(args.tokenizer, device), load_model(args.model, device)
    C = model.config.num_classes
    labels = list(range(C)) if args.labels is None else args.labels
    bad = [y for y in labels if not 0 <= y < C]
    if bad:
        raise ValueError(f"labels {bad} are out of range: this model has classes 0..{C - 1}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sampling = {k: v for k, v in {"num_iter": args.num_iter, "cfg": args.cfg, "gumbel": args.gumbel,
                                  "order": args.order, "diffusion_steps": args.diffusion_steps}.items()
                if v is not None}
    t0 = time.time()
    images = sample_grid(model, tokenizer, torch.as_tensor(labels), out, per_class=args.per_class,
                         seed=args.seed, **sampling)
    npz = out.with_suffix(".npz")
    np.savez_compressed(npz, images=(images.cpu().numpy() * 255).round().astype(np.uint8),
                        labels=np.repeat(labels, args.per_class))
    print(f"{len(images)} samples in {time.time() - t0:.1f}s -> {out} and {npz}")


def cmd_eval_tokenizer(args):
    from .data import load_dataset
    from .evaluate import evaluate_tokenizer

    tokenizer = load_tokenizer(args.tokenizer, _device(args.device))
    dataset = load_dataset(args.dataset, args.split, data_dir=args.data_dir)
    report = evaluate_tokenizer(tokenizer, dataset, limit=args.limit)
    print(json.dumps(report, indent=2))


def cmd_demo(args):
    from .demo import run_demo

    run_demo(out_dir=args.out, train=args.train, device=_device(args.device), data_dir=args.data_dir,
             fast=args.fast)


def _overrides(args) -> dict:
    keys = ("steps", "batch_size", "lr", "seed", "device", "sample_every", "ckpt_every")
    found = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if "device" in found:
        found["device"] = _device(found["device"])
    if getattr(args, "compile", False):
        found["compile"] = True
    return found


# ----------------------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .train import RECIPES

    p = argparse.ArgumentParser(prog="minibigr", description="BiGR: binary latent image generation, small and fast.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common_train(sp, default_out):
        sp.add_argument("--dataset", choices=sorted(RECIPES), default="fashion-mnist",
                        help="dataset (sets the default preset and training recipe)")
        sp.add_argument("--preset", help="config preset (default: the dataset's)")
        sp.add_argument("--out", default=default_out, help="run directory (resumes if it holds a run)")
        sp.add_argument("--steps", type=int, help="total optimisation steps")
        sp.add_argument("--batch-size", type=int, help="global batch size")
        sp.add_argument("--lr", type=float, help="peak learning rate")
        sp.add_argument("--seed", type=int)
        sp.add_argument("--device", default="auto", help="auto, cpu or cuda")
        sp.add_argument("--sample-every", type=int, help="write a sample / reconstruction grid every N steps")
        sp.add_argument("--ckpt-every", type=int, help="checkpoint every N steps")

    sp = sub.add_parser("train-tokenizer", help="train the binary autoencoder (B-AE)")
    common_train(sp, "runs/tokenizer")
    sp.add_argument("--data-dir", help="where the dataset lives")
    sp.add_argument("--disc-start", type=int, help="step at which the PatchGAN loss switches on")
    sp.set_defaults(func=cmd_train_tokenizer)

    sp = sub.add_parser("encode", help="encode a dataset once with a trained tokenizer (code cache)")
    sp.add_argument("--tokenizer", required=True, help="tokenizer directory or shipped name")
    sp.add_argument("--dataset", choices=sorted(RECIPES), default="fashion-mnist")
    sp.add_argument("--split", default="train")
    sp.add_argument("--data-dir")
    sp.add_argument("--out", default="runs/codes")
    sp.add_argument("--batch-size", type=int, default=256)
    sp.add_argument("--device", default="auto")
    sp.set_defaults(func=cmd_encode)

    sp = sub.add_parser("train", help="train BiGR on a code cache")
    common_train(sp, "runs/bigr")
    sp.add_argument("--codes", required=True, help="code cache directory (from `minibigr encode`)")
    sp.add_argument("--tokenizer", help="tokenizer used for periodic sample grids")
    sp.add_argument("--compile", action="store_true", help="torch.compile the training step")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("sample", help="generate images: a PNG grid (one row per class) and an .npz")
    sp.add_argument("--model", default="fashion-mnist", help="BiGR directory or shipped name")
    sp.add_argument("--tokenizer", default="fashion-mnist", help="tokenizer directory or shipped name")
    sp.add_argument("--labels", type=int, nargs="+", help="class labels (default: every class)")
    sp.add_argument("--per-class", type=int, default=8)
    sp.add_argument("--out", default="samples.png")
    sp.add_argument("--num-iter", type=int, help="sampling iterations I")
    sp.add_argument("--cfg", type=float, help="classifier-free guidance scale")
    sp.add_argument("--gumbel", type=float, help="Gumbel temperature of the token order")
    sp.add_argument("--order", choices=("entropy", "confidence", "random", "raster"))
    sp.add_argument("--diffusion-steps", type=int, help="transcoder reverse steps S")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device", default="auto")
    sp.set_defaults(func=cmd_sample)

    sp = sub.add_parser("eval-tokenizer", help="reconstruction PSNR and code usage of a tokenizer")
    sp.add_argument("--tokenizer", default="fashion-mnist")
    sp.add_argument("--dataset", choices=sorted(RECIPES), default="fashion-mnist")
    sp.add_argument("--split", default="test")
    sp.add_argument("--data-dir")
    sp.add_argument("--limit", type=int, help="only the first N images")
    sp.add_argument("--device", default="auto")
    sp.set_defaults(func=cmd_eval_tokenizer)

    sp = sub.add_parser("demo", help="samples, reconstructions and a summary from the shipped model")
    sp.add_argument("--out", default="minibigr-demo")
    sp.add_argument("--train", action="store_true", help="train the tiny models from scratch first")
    sp.add_argument("--fast", action="store_true", help="with --train: a few-minute run (rough samples)")
    sp.add_argument("--data-dir")
    sp.add_argument("--device", default="auto")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
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
