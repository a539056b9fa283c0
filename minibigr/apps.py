"""Zero-shot applications (SPEC §1.7): the sampler with some tokens given and kept fixed.

    inpaint      regenerate the tokens under a mask, keep the rest
    outpaint     regenerate the tokens outside the mask
    edit         inpaint conditioned on a new class
    interpolate  class embedding alpha e(y1) + (1 - alpha) e(y2), swept over alpha
    enrich       blur, re-encode, and regenerate each r x r block in 4 random groups (null class)

Masks are image-space (B, 1, H, W) or (H, W), True / 1 = regenerate. A token is regenerated when any
pixel it covers is masked; the result is blended back into the source with the pixel mask, so pixels
outside the mask are exactly the source's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .train import bits_to_tokens, tokens_to_bits


def _grid(tokenizer) -> tuple[int, int]:
    side = tokenizer.config.latent_size
    return side, side


def pixel_mask(mask, images: torch.Tensor) -> torch.Tensor:
    """Normalise a mask to bool (B, 1, H, W) matching ``images`` (B, C, H, W)."""
    mask = torch.as_tensor(mask, device=images.device)
    B, _, H, W = images.shape
    if mask.shape[-2:] != (H, W) or mask.dim() not in (2, 3, 4) or (mask.dim() > 2 and mask.shape[0] != B):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match images {tuple(images.shape)}")
    if mask.dim() == 2:
        mask = mask[None, None].expand(B, 1, H, W)
    elif mask.dim() == 3:
        mask = mask[:, None]
    return mask > 0.5 if mask.dtype.is_floating_point else mask.bool()


def token_mask(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Pixel mask (B, 1, H, W) bool -> token mask (B, N) bool: a token is masked if any of its pixels is."""
    pooled = F.adaptive_max_pool2d(mask.float(), grid)
    return pooled.flatten(1) > 0


def blend(generated: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Generated pixels inside the mask, the source's outside.  mask (B, 1, H, W) bool."""
    return torch.where(mask, generated, source)


@torch.no_grad()
def _regenerate(tokenizer, model, images, regen: torch.Tensor, labels, generator=None, **sampling):
    """Encode, regenerate the tokens where regen (B, N) is True, decode.  Returns (images, tokens)."""
    h, w = _grid(tokenizer)
    tokens = bits_to_tokens(tokenizer.encode(images, deterministic=True))
    out = model.generate(labels, tokens=tokens, given=~regen, generator=generator, **sampling)
    return tokenizer.decode(tokens_to_bits(out, h, w)), out


def _labels(labels, B: int, device) -> torch.Tensor:
    labels = torch.as_tensor(labels, device=device)
    return labels.expand(B) if labels.dim() == 0 else labels


def inpaint(tokenizer, model, images: torch.Tensor, mask, labels, generator=None, **sampling) -> torch.Tensor:
    """Regenerate the masked region of ``images`` (B, C, H, W) conditioned on ``labels``."""
    mask = pixel_mask(mask, images)
    out, _ = _regenerate(tokenizer, model, images, token_mask(mask, _grid(tokenizer)),
                         _labels(labels, len(images), images.device), generator, **sampling)
    return blend(out, images, mask)


def outpaint(tokenizer, model, images: torch.Tensor, mask, labels, generator=None, **sampling) -> torch.Tensor:
    """Keep the masked region, regenerate everything around it."""
    return inpaint(tokenizer, model, images, ~pixel_mask(mask, images), labels, generator, **sampling)


def edit(tokenizer, model, images: torch.Tensor, mask, new_labels, generator=None, **sampling) -> torch.Tensor:
    """Class-conditional editing: inpaint the masked region as class ``new_labels``."""
    return inpaint(tokenizer, model, images, mask, new_labels, generator, **sampling)


@torch.no_grad()
def interpolate(tokenizer, model, y1: int, y2: int, alphas=(0.0, 0.25, 0.5, 0.75, 1.0), seed: int = 0,
                **sampling) -> torch.Tensor:
    """One image per alpha from the class embedding alpha e(y1) + (1 - alpha) e(y2), all with the same
    random draws (seed), so only the class changes along the strip.  -> (len(alphas), C, H, W)."""
    device = next(model.parameters()).device
    h, w = _grid(tokenizer)
    images = []
    for alpha in alphas:
        generator = torch.Generator(device=device).manual_seed(seed)
        y = torch.tensor([y1], device=device)
        tokens = model.generate(y, class_mix=(torch.tensor([y2], device=device), float(alpha)),
                                generator=generator, **sampling)
        images.append(tokenizer.decode(tokens_to_bits(tokens, h, w)))
    return torch.cat(images)


@torch.no_grad()
def enrich(tokenizer, model, images: torch.Tensor, r: int = 2, generator=None, groups: int = 4,
           **sampling) -> torch.Tensor:
    """Add detail to a blurry image: downsample by r and back, encode, then regenerate the tokens of
    every r x r block in ``groups`` random groups, one group at a time, with the null class and a
    linear mask schedule, keeping all other tokens."""
    B, _, H, W = images.shape
    h, w = _grid(tokenizer)
    if h % r or w % r:
        raise ValueError(f"enrichment factor r={r} must divide the {h}x{w} token grid")
    blurry = F.interpolate(F.interpolate(images, scale_factor=1 / r, mode="area"), size=(H, W), mode="bilinear",
                           align_corners=False).clamp(0, 1)
    tokens = bits_to_tokens(tokenizer.encode(blurry, deterministic=True))
    device = images.device
    # each token's place inside its r x r block, then a random split of the r*r places into groups
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    place = ((rows % r) * r + (cols % r)).flatten()                                   # (N,)
    perm = torch.randperm(r * r, generator=generator, device=generator.device if generator else "cpu").to(device)
    group_of_place = torch.empty_like(perm)
    group_of_place[perm] = torch.arange(r * r, device=device) % groups
    null = torch.full((B,), model.config.num_classes, device=device)
    sampling.setdefault("cfg", 1.0)                     # the null class has nothing to guide towards
    for g in range(groups):
        regen = (group_of_place[place] == g).expand(B, -1)
        tokens = model.generate(null, tokens=tokens, given=~regen, generator=generator, mask_schedule="linear",
                                **sampling)
    return tokenizer.decode(tokens_to_bits(tokens, h, w))
