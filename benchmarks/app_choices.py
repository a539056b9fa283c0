"""The zero-shot apps with minibigr's defaults and with the authors' choices, side by side, to look at.

    python benchmarks/app_choices.py                    # docs/apps_choices.png, Fashion-MNIST test images 0..7

Inpainting (a centre square that does not sit on the token grid, regenerated with the true label), one row per
variant: minibigr's defaults; then one of the authors' choices at a time (apps/inpaint.py: the token mask from the
top-left pixel of each patch, "nearest"; the source encoded by a Bernoulli draw; inpaint_with_cfg's linear mask
schedule); then all three together. Enrichment (r = 2): one pass against the authors' four (apps/enrich.py), each
from the threshold and from the Bernoulli codes. Every variant draws from the same seed. The figure is what
docs/method.md §7 and §9 point to for the apps' defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # `python benchmarks/app_choices.py` from anywhere

import torch  # noqa: E402

from minibigr import apps, pretrained  # noqa: E402
from minibigr.data import get_batch, load_dataset  # noqa: E402

INPAINT = {
    "minibigr (any pixel, threshold, cosine)": {},
    "token mask: nearest pixel": {"mask_from_pixels": "nearest"},
    "source: Bernoulli draw": {"draw": "bernoulli"},
    "mask schedule: linear": {"mask_schedule": "linear"},
    "the authors' (all three)": {"mask_from_pixels": "nearest", "draw": "bernoulli", "mask_schedule": "linear"},
}
ENRICH = {
    "1 pass, threshold (minibigr)": {"passes": 1},
    "4 passes, threshold": {"passes": 4},
    "1 pass, Bernoulli": {"passes": 1, "draw": "bernoulli"},
    "4 passes, Bernoulli (the authors')": {"passes": 4, "draw": "bernoulli"},
}


def centre_square(images: torch.Tensor, lo: int = 10, hi: int = 23) -> torch.Tensor:
    """A square mask (B, 1, H, W), True inside rows and columns lo..hi-1: off the 4-pixel token grid on purpose."""
    mask = torch.zeros(len(images), 1, *images.shape[-2:], dtype=torch.bool)
    mask[..., lo:hi, lo:hi] = True
    return mask


def figure(rows: dict[str, torch.Tensor], path: str, title: str) -> None:
    """One labelled row of images per entry."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = next(iter(rows.values())).shape[0]
    fig, axes = plt.subplots(len(rows), 1, figsize=(n * 0.9, len(rows) * 1.05))
    for ax, (label, images) in zip(axes, rows.items(), strict=True):
        strip = torch.cat(list(images.cpu()), dim=-1)                           # (C, H, n W)
        ax.imshow(strip.permute(1, 2, 0).squeeze(-1), cmap="gray", vmin=0, vmax=1)
        ax.set_title(label, fontsize=8, loc="left")
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8, help="Fashion-MNIST test images 0..n-1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/apps_choices.png")
    args = ap.parse_args(argv)
    pipe = pretrained("fashion-mnist")
    x, y = get_batch(load_dataset("fashion-mnist", "test"), torch.arange(args.images))
    mask = centre_square(x)

    def seeded():
        return torch.Generator().manual_seed(args.seed)

    inpainted = {"original": x, "masked": x.masked_fill(mask, 0.5)}
    inpainted |= {name: apps.inpaint(pipe, x, mask, y, generator=seeded(), **options)
                  for name, options in INPAINT.items()}
    blurry = torch.nn.functional.interpolate(torch.nn.functional.interpolate(x, scale_factor=0.5, mode="area"),
                                             size=x.shape[-2:], mode="bilinear", align_corners=False)
    enriched = {"original": x, "blurred (r = 2)": blurry}
    enriched |= {name: apps.enrich(pipe, x, r=2, generator=seeded(), **options) for name, options in ENRICH.items()}
    out = Path(args.out)
    figure(inpainted, str(out), "inpainting: minibigr's defaults and the authors' choices")
    figure(enriched, str(out.with_name(out.stem.replace("apps", "enrich") + out.suffix)),
           "enrichment: passes and the source's codes")
    print(f"wrote {out} and {out.with_name(out.stem.replace('apps', 'enrich') + out.suffix)}")


if __name__ == "__main__":
    main()
