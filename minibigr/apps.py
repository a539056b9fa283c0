"""Zero-shot applications (docs/method.md §7): the sampler with some tokens given and kept fixed.

    inpaint      regenerate the tokens under a mask, keep the rest
    outpaint     regenerate the tokens outside the mask
    edit         inpaint conditioned on a new class
    interpolate  class embedding alpha e(y1) + (1 - alpha) e(y2), swept over alpha
    enrich       blur, re-encode, and regenerate each r x r block in 4 random groups (null class)

Every app takes a BiGRPipeline first and randomness as a ``generator``; ``**sampling`` overrides any of the
model's recommended SamplingConfig settings. Masks are image-space (B, 1, H, W) or (H, W), True / 1 =
regenerate. The result is blended back into the source with the pixel mask, so pixels outside the mask are
exactly the source's.

Where the authors' apps (github haoosz/BiGR, apps/inpaint.py, apps/enrich.py) do otherwise, their way is one
argument away (docs/method.md §7, §9):
  mask_from_pixels  "any": a token is regenerated when any pixel it covers is masked (default); "nearest": when
                    the top-left pixel of its patch is (their F.interpolate(mode="nearest"))
  draw              the source's tokens: "threshold" [p > 1/2] (default), or "bernoulli" draws (theirs)
  mask_schedule     the sampling setting: the model's (cosine, default), or "linear" (their inpaint_with_cfg's)
  passes            enrichment: 1 (default) or their 4 successive passes, each starting from the last
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .pipeline import BiGRPipeline, names_null


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


MASK_FROM_PIXELS = ("any", "nearest")


def token_mask(mask: torch.Tensor, grid: tuple[int, int], rule: str = "any") -> torch.Tensor:
    """Pixel mask (B, 1, H, W) bool -> token mask (B, N) bool: a token is masked if any of its pixels is ("any"),
    or if the top-left pixel of its patch is ("nearest", nearest-neighbour downsampling as the authors')."""
    if rule == "any":
        return F.adaptive_max_pool2d(mask.float(), grid).flatten(1) > 0
    if rule == "nearest":
        return F.interpolate(mask.float(), size=grid, mode="nearest").flatten(1) > 0
    raise ValueError(f"unknown mask_from_pixels {rule!r}; choose one of {MASK_FROM_PIXELS}")


def blend(generated: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Generated pixels inside the mask, the source's outside.  mask (B, 1, H, W) bool."""
    return torch.where(mask, generated, source)


def _labels(pipe: BiGRPipeline, labels, B: int) -> torch.Tensor:
    """One label per image: a scalar is used for all B."""
    labels = pipe.labels(labels)
    return labels.expand(B) if labels.numel() == 1 else labels


@torch.no_grad()
def inpaint(pipe: BiGRPipeline, images: torch.Tensor, mask, labels, generator: torch.Generator | None = None,
            mask_from_pixels: str = "any", draw: str = "threshold", **sampling) -> torch.Tensor:
    """Regenerate the masked region of ``images`` (B, C, H, W) conditioned on ``labels`` (B,) or one label."""
    images = images.to(pipe.device)
    mask = pixel_mask(mask, images)
    regen = token_mask(mask, pipe.tokenizer.grid_size, mask_from_pixels)                  # (B, N)
    source = pipe.encode(images, draw, generator)                                         # (B, N, K)
    tokens = pipe.model.generate(_labels(pipe, labels, len(images)), tokens=source, given=~regen,
                                 generator=generator, allow_null=names_null(labels), **sampling)
    return blend(pipe.decode(tokens), images, mask)


def outpaint(pipe: BiGRPipeline, images: torch.Tensor, mask, labels, generator: torch.Generator | None = None,
             **options) -> torch.Tensor:
    """Keep the masked region, regenerate everything around it (``options``: inpaint's)."""
    return inpaint(pipe, images, ~pixel_mask(mask, images.to(pipe.device)), labels, generator, **options)


def edit(pipe: BiGRPipeline, images: torch.Tensor, mask, new_labels, generator: torch.Generator | None = None,
         **options) -> torch.Tensor:
    """Class-conditional editing: inpaint the masked region as class ``new_labels`` (``options``: inpaint's)."""
    return inpaint(pipe, images, mask, new_labels, generator, **options)


@torch.no_grad()
def interpolate(pipe: BiGRPipeline, y1: int, y2: int, alphas=(0.0, 0.25, 0.5, 0.75, 1.0),
                generator: torch.Generator | None = None, **sampling) -> torch.Tensor:
    """One image per alpha from the class embedding alpha e(y1) + (1 - alpha) e(y2), every image from the
    generator's same state (the same random draws), so only the class changes along the strip.
    -> (len(alphas), C, H, W)."""
    if generator is None:                       # seeded from the global RNG, as any unseeded draw would be
        generator = torch.Generator(device=pipe.device).manual_seed(int(torch.randint(2 ** 62, ())))
    start = generator.get_state()
    y1, y2 = pipe.labels(y1), pipe.labels(y2)
    images = []
    for alpha in alphas:
        generator.set_state(start)
        tokens = pipe.model.generate(y1, class_mix=(y2, float(alpha)), generator=generator,
                                     allow_null=names_null(y1) or names_null(y2), **sampling)
        images.append(pipe.decode(tokens))
    return torch.cat(images)


@torch.no_grad()
def enrich(pipe: BiGRPipeline, images: torch.Tensor, r: int = 2, groups: int = 4, passes: int = 1,
           generator: torch.Generator | None = None, draw: str = "threshold", **sampling) -> torch.Tensor:
    """Add detail to a blurry image: downsample by r and back, encode, then regenerate the tokens of
    every r x r block in ``groups`` random groups, one group at a time, with the null class and a
    linear mask schedule, keeping all other tokens; ``passes`` times, each pass with a new random split and
    starting from the last one's tokens (the authors run 4)."""
    images = images.to(pipe.device)
    B, _, H, W = images.shape
    h, w = pipe.tokenizer.grid_size
    if r < 1 or h % r or w % r:
        raise ValueError(f"enrichment factor r={r} must be a positive divisor of the {h}x{w} token grid")
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    blurry = F.interpolate(F.interpolate(images, scale_factor=1 / r, mode="area"), size=(H, W), mode="bilinear",
                           align_corners=False).clamp(0, 1)
    tokens = pipe.encode(blurry, draw, generator)
    device = images.device
    # each token's place inside its r x r block
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    place = ((rows % r) * r + (cols % r)).flatten()                                   # (N,)
    null = torch.full((B,), pipe.model.null_class, device=device)
    sampling = {"cfg": 1.0, **sampling, "mask_schedule": "linear"}   # the null class has nothing to guide towards
    for _ in range(passes):
        # a random split of the r*r places into groups, then each group regenerated in turn
        perm = torch.randperm(r * r, generator=generator, device=generator.device if generator else "cpu").to(device)
        group_of_place = torch.empty_like(perm)
        group_of_place[perm] = torch.arange(r * r, device=device) % groups
        for g in range(groups):
            regen = (group_of_place[place] == g).expand(B, -1)
            tokens = pipe.model.generate(null, tokens=tokens, given=~regen, generator=generator, allow_null=True,
                                         **sampling)
    return pipe.decode(tokens)
