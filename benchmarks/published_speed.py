"""Seconds per image of the authors' published model sizes, sampled the way the registry says.

    python benchmarks/published_speed.py                           # BiGR-L-d24 on this machine's CPU
    python benchmarks/published_speed.py --models BiGR-L-d24 BiGR-XL-d24 --device cuda --dtype bfloat16

Real checkpoints are not needed for timing: each model of minibigr.official.MODELS is built with random
weights of its published architecture (sizes, heads, token grid, transcoder) and its B-AE likewise, then
generates ``--batch`` images of class 207 with the registry's sampling settings (CFG, iterations, Gumbel
temperature, 100 reverse steps) and decodes them. The time of one run is reported (after ``--warmup`` untimed
ones: worth one on a GPU), with the peak memory of the process.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from minibigr import BiGR, BiGRConfig, BiGRPipeline, BinaryAutoencoder, TokenizerConfig, authors, official

SIZES = {16: "BiGR-L", 20: "BiGR-XL", 24: "BiGR-XXL"}           # heads -> the preset of that published size


def published_pipeline(name: str, dtype: torch.dtype) -> BiGRPipeline:
    """Random weights in the published architecture of ``name`` and of its B-AE."""
    entry, bae = official.MODELS[name], official.BAES[official.MODELS[name].bae]
    K, grid = (32 if "d32" in name else 24), entry.image_size // 16
    overrides = dict(K=K, num_tokens=grid * grid, sampling=authors.settings(entry.sampling))
    if entry.image_size == 512:                     # the 512 model's transcoder: 6 blocks of width 1280
        overrides.update(transcoder_blocks=6, transcoder_width=1280)
    model = BiGR(BiGRConfig.preset(SIZES[entry.num_heads], **overrides)).to(dtype).eval()
    tokenizer = BinaryAutoencoder(TokenizerConfig.preset("official-256", K=K, image_size=bae.image_size,
                                                         attn_resolutions=(16,) if bae.image_size == 256 else ()))
    return BiGRPipeline(tokenizer.eval(), model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["BiGR-L-d24"], choices=list(official.MODELS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--warmup", type=int, default=0, help="untimed runs first")
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args()
    rows = []
    for name in args.models:
        pipe = published_pipeline(name, getattr(torch, args.dtype)).to(args.device)
        labels = torch.full((args.batch,), 207)
        for _ in range(1 + args.warmup):
            t0 = time.perf_counter()
            images = pipe(labels, generator=torch.Generator(args.device).manual_seed(0))
            if images.is_cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
        params = sum(p.numel() for p in pipe.model.parameters())
        rows.append({"model": name, "parameters": params, "image_size": images.shape[-1], "batch": args.batch,
                     "seconds_per_image": seconds / args.batch, "threads": torch.get_num_threads(),
                     "peak_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                     "sampling": pipe.model.config.sampling.to_dict()})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n| model | parameters | image | seconds per image ({args.device}, {args.dtype}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['parameters'] / 1e6:.0f}M | {r['image_size']} | {r['seconds_per_image']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
