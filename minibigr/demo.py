"""``minibigr demo``: what BiGR does, from the shipped Fashion-MNIST model, in a couple of CPU minutes.

Writes to ``<out>/``: samples.png (a row per class), reconstructions.png (originals over their
reconstructions) and summary.json; prints where everything is.
``--train`` first trains the tiny models from scratch (resumable) and then uses them.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def run_demo(out_dir="minibigr-demo", train: bool = False, device: str = "cpu", data_dir=None, fast: bool = False,
             per_class: int = 8, seed: int = 0) -> dict:
    from .data import DatasetNotFound, load_dataset
    from .evaluate import psnr
    from .pretrained import pretrained
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
                          "sampling": model.config.sampling_defaults() if hasattr(model.config, "sampling_defaults")
                          else None}

    try:
        test = load_dataset("fashion-mnist", "test", data_dir=data_dir)
        x, _ = get_batch(test, torch.arange(16))
        with torch.no_grad():
            recon = tokenizer.decode(tokenizer.encode(x.to(device), deterministic=True)).cpu()
        save_image_grid(torch.cat([x, recon]), out / "reconstructions.png", nrow=16)
        summary["reconstructions"] = {"path": str(out / "reconstructions.png"),
                                      "psnr_db": round(float(psnr(x, recon).mean()), 2)}
    except DatasetNotFound as e:
        summary["reconstructions"] = f"skipped: {e}"

    summary["total_seconds"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"minibigr demo wrote to {out.resolve()}:")
    for name in ("samples.png", "reconstructions.png", "summary.json"):
        if (out / name).exists():
            print(f"  {out / name}")
    return summary
