"""Evaluation: tokenizer reconstruction quality and code usage."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .quantizer import code_usage


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image (dB) for images in [0, 1].  (B, C, H, W) -> (B,)."""
    mse = F.mse_loss(x.float(), y.float(), reduction="none").flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def evaluate_tokenizer(tokenizer, dataset, batch_size: int = 500, limit: int | None = None) -> dict:
    """Mean PSNR of deterministic reconstructions and code-usage statistics over a dataset."""
    from .train import get_batch

    device = next(tokenizer.parameters()).device
    n = len(dataset) if limit is None else min(limit, len(dataset))
    psnrs, codes = [], []
    for start in tqdm(range(0, n, batch_size), desc="eval tokenizer", dynamic_ncols=True):
        x, _ = get_batch(dataset, torch.arange(start, min(n, start + batch_size)))
        x = x.to(device)
        bits = tokenizer.encode(x, deterministic=True)
        psnrs.append(psnr(x, tokenizer.decode(bits)).cpu())
        codes.append(bits.transpose(1, -1).reshape(-1, bits.shape[1]).cpu())
    values = torch.cat(psnrs)
    return {"images": n, "psnr_db": round(float(values.mean()), 3), "psnr_db_std": round(float(values.std()), 3),
            "code_usage": code_usage(torch.cat(codes))}
