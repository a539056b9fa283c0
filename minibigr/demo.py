"""``minibigr demo``: what BiGR does, from the shipped Fashion-MNIST model, in a couple of CPU minutes.

Writes to ``<out>/``: samples.png (a row per class), reconstructions.png (originals over their
reconstructions), inpainting.png, interpolation.png (class-embedding mixes) and summary.json; shows a
progress bar per stage, says what it skipped and why, and prints where everything is.
``--train`` first trains the tiny models from scratch (resumable) and then uses them.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import apps
from .data import FASHION_MNIST_CLASSES, DatasetNotFound, get_batch, load_dataset
from .evaluate import psnr
from .images import save_image_grid
from .pipeline import pretrained
from .train import train_pipeline

INTERPOLATION_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
FAST_STEPS = (300, 600)          # --train --fast: tokenizer and BiGR steps (the recipe: 4000 and 5000)
FAST_IMAGES = 10_000             # --train --fast: the first train images (600 x 64 is four passes over them)


def steps_bar(desc: str, steps: int) -> tqdm:
    """A progress bar over sampling steps, advanced by the sampler's callback."""
    return tqdm(total=steps, desc=desc, leave=False, dynamic_ncols=True, disable=None)


def run_demo(out_dir="minibigr-demo", train: bool = False, device: str = "cpu", data_dir=None, fast: bool = False,
             per_class: int = 8, seed: int = 0) -> dict:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; the demo writes several files: give a directory (new or existing)")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"device": device, "cpu": platform.processor() or platform.machine(),
                     "torch_threads": torch.get_num_threads()}
    t0 = time.time()
    if train:
        tokenizer, bigr = ({"steps": steps} for steps in FAST_STEPS) if fast else ({}, {})
        pipe = train_pipeline("fashion-mnist", out / "train", data_dir=data_dir, device=device,
                              tokenizer_overrides=tokenizer, bigr_overrides=bigr, limit=FAST_IMAGES if fast else None)
        summary["trained_in_s"] = round(time.time() - t0, 1)
        summary["weights"] = str(out / "train")
    else:
        pipe = pretrained("fashion-mnist")
        summary["weights"] = "shipped (minibigr.pretrained('fashion-mnist'))"
    pipe.to(device)

    def seeded() -> torch.Generator:
        return torch.Generator(device=device).manual_seed(seed)

    steps = pipe.model.config.sampling.num_iter

    def advance(bar):
        return lambda step: bar.update()

    t1 = time.time()
    labels = torch.arange(pipe.model.config.num_classes).repeat_interleave(per_class)
    with steps_bar("samples", steps) as bar:
        images = pipe(labels, generator=seeded(), callback=advance(bar))
    save_image_grid(images, out / "samples.png", nrow=per_class)
    seconds = time.time() - t1
    summary["samples"] = {"path": str(out / "samples.png"), "rows": list(FASHION_MNIST_CLASSES),
                          "per_class": per_class, "seconds": round(seconds, 2),
                          "seconds_per_image": round(seconds / len(images), 4),
                          "sampling": pipe.model.config.sampling.to_dict()}

    pairs = ((0, 3), (7, 9))                   # T-shirt -> Dress, Sneaker -> Ankle boot
    with steps_bar("interpolation", steps * len(pairs) * len(INTERPOLATION_ALPHAS)) as bar:
        strips = [apps.interpolate(pipe, y2, y1, alphas=INTERPOLATION_ALPHAS, generator=seeded(),
                                   callback=advance(bar)) for y1, y2 in pairs]
    save_image_grid(torch.cat(strips), out / "interpolation.png", nrow=len(INTERPOLATION_ALPHAS))
    summary["interpolation"] = {"path": str(out / "interpolation.png"), "alphas": list(INTERPOLATION_ALPHAS),
                                "rows": [f"{FASHION_MNIST_CLASSES[a]} -> {FASHION_MNIST_CLASSES[b]}" for a, b in pairs]}

    try:
        test = load_dataset("fashion-mnist", "test", data_dir=data_dir)
    except DatasetNotFound as e:
        summary["reconstructions"] = summary["inpainting"] = f"skipped: {e}"
        print(f"minibigr demo: reconstructions and inpainting skipped: they need the Fashion-MNIST test images. {e}")
    else:
        x, y = get_batch(test, torch.arange(16))
        recon = pipe.decode(pipe.encode(x))
        save_image_grid(torch.cat([x, recon.cpu()]), out / "reconstructions.png", nrow=16)
        summary["reconstructions"] = {"path": str(out / "reconstructions.png"),
                                      "psnr_db": round(float(psnr(x, recon.cpu()).mean()), 2)}
        # inpainting: the bottom half of each image is regenerated from the top half and the label
        x, y = x[:8], y[:8]
        mask = torch.zeros_like(x, dtype=torch.bool)
        mask[..., x.shape[-2] // 2:, :] = True
        with steps_bar("inpainting", steps) as bar:
            filled = apps.inpaint(pipe, x, mask, y, generator=seeded(), callback=advance(bar))
        save_image_grid(torch.cat([x, x.masked_fill(mask, 0.5), filled.cpu()]), out / "inpainting.png", nrow=8)
        summary["inpainting"] = {"path": str(out / "inpainting.png"),
                                 "rows": ["original", "bottom half masked", "inpainted with the true label"]}

    summary["total_seconds"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"minibigr demo wrote to {out.resolve()}:")
    for name in ("samples.png", "reconstructions.png", "inpainting.png", "interpolation.png", "summary.json"):
        if (out / name).exists():
            print(f"  {out / name}")
    return summary
