"""``minibigr demo``: what BiGR does, from the shipped Fashion-MNIST model, in a couple of CPU minutes.

Writes to ``<out>/``: samples.png (a row per class), reconstructions.png (originals over their
reconstructions), inpainting.png, interpolation.png (class-embedding mixes) and summary.json; prints
where everything is.
``--train`` first trains the tiny models from scratch (resumable) and then uses them.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

INTERPOLATION_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def run_demo(out_dir="minibigr-demo", train: bool = False, device: str = "cpu", data_dir=None, fast: bool = False,
             per_class: int = 8, seed: int = 0) -> dict:
    from . import apps
    from .data import DatasetNotFound, load_dataset
    from .evaluate import psnr
    from .shipped import pretrained
    from .train import get_batch, sample_grid, save_image_grid, train_pipeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"device": device, "cpu": platform.processor() or platform.machine(),
                     "torch_threads": torch.get_num_threads()}
    t0 = time.time()
    if train:
        overrides = ({"steps": 1500}, {"steps": 2500}) if fast else ({}, {})
        tokenizer, model = train_pipeline("fashion-mnist", out / "train", data_dir=data_dir, device=device,
                                          tokenizer_overrides=overrides[0], bigr_overrides=overrides[1])
        summary["trained_in_s"] = round(time.time() - t0, 1)
        summary["weights"] = str(out / "train")
    else:
        tokenizer, model = pretrained("fashion-mnist", device=device)
        summary["weights"] = "shipped (minibigr.pretrained('fashion-mnist'))"
    tokenizer, model = tokenizer.to(device).eval(), model.to(device).eval()

    t1 = time.time()
    labels = torch.arange(model.config.num_classes)
    images = sample_grid(model, tokenizer, labels, out / "samples.png", per_class=per_class, seed=seed)
    seconds = time.time() - t1
    summary["samples"] = {"path": str(out / "samples.png"), "rows": list(FASHION_CLASSES),
                          "per_class": per_class, "seconds": round(seconds, 2),
                          "seconds_per_image": round(seconds / len(images), 4),
                          "sampling": model.config.sampling_defaults()}

    pairs = ((0, 3), (7, 9))                   # T-shirt -> Dress, Sneaker -> Ankle boot
    strips = [apps.interpolate(tokenizer, model, y2, y1, alphas=INTERPOLATION_ALPHAS, seed=seed) for y1, y2 in pairs]
    save_image_grid(torch.cat(strips).cpu(), out / "interpolation.png", nrow=len(INTERPOLATION_ALPHAS))
    summary["interpolation"] = {"path": str(out / "interpolation.png"), "alphas": list(INTERPOLATION_ALPHAS),
                                "rows": [f"{FASHION_CLASSES[a]} -> {FASHION_CLASSES[b]}" for a, b in pairs]}

    try:
        test = load_dataset("fashion-mnist", "test", data_dir=data_dir)
    except DatasetNotFound as e:
        summary["reconstructions"] = summary["inpainting"] = f"skipped: {e}"
    else:
        x, y = get_batch(test, torch.arange(16))
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            recon = tokenizer.decode(tokenizer.encode(x, deterministic=True))
        save_image_grid(torch.cat([x, recon]).cpu(), out / "reconstructions.png", nrow=16)
        summary["reconstructions"] = {"path": str(out / "reconstructions.png"),
                                      "psnr_db": round(float(psnr(x, recon).mean()), 2)}
        # inpainting: the bottom half of each image is regenerated from the top half and the label
        x, y = x[:8], y[:8]
        mask = torch.zeros_like(x, dtype=torch.bool)
        mask[..., x.shape[-2] // 2:, :] = True
        filled = apps.inpaint(tokenizer, model, x, mask, y, generator=torch.Generator(device=device).manual_seed(seed))
        save_image_grid(torch.cat([x, x.masked_fill(mask, 0.5), filled]).cpu(), out / "inpainting.png", nrow=8)
        summary["inpainting"] = {"path": str(out / "inpainting.png"),
                                 "rows": ["original", "bottom half masked", "inpainted with the true label"]}

    summary["total_seconds"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"minibigr demo wrote to {out.resolve()}:")
    for name in ("samples.png", "reconstructions.png", "inpainting.png", "interpolation.png", "summary.json"):
        if (out / name).exists():
            print(f"  {out / name}")
    return summary
