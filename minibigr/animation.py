"""The reveal animation: one GIF frame per unmasking step of a sampling run, to watch BiGR work.

    images = minibigr.animate(pipe, [0, 7, 9], "reveal.gif", generator=torch.Generator().manual_seed(0))

Each frame shows, for every image of the run (one column each), three panels: the image decoded from the tokens
fixed so far (the still-masked tokens' patches painted flat grey), a heat map of each token's certainty at that
step, ranked within the frame (dark = the least certain of the step's tokens, bright = the most; black where the
step computed none), and the order in which tokens were revealed so far (early = dark, late = bright; light grey =
still masked). A caption names the step, the tokens revealed,
the order, CFG and Gumbel. After the last step a final frame shows the finished images. The animation is drawn from
a ``sampler.StepRecorder`` after the run, so the run draws exactly what it would without it: the final frame's
images are the ones ``pipe(labels, ...)`` returns with the same generator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .images import check_image_path
from .pipeline import BiGRPipeline, names_null
from .sampler import BLIND_ORDERS, RecordedStep, StepRecorder

GREY = 0.5              # the still-masked patches of a frame's images
CAPTION_HEIGHT = 30     # pixels above the panels, for the caption
LABEL_WIDTH = 86        # pixels left of the panels, for the row names
ROWS = ("image (masked: grey)", "certainty (dark: least, bright: most)", "reveal order (dark: early)")
UNREVEALED = 0.85       # the grey of the still-masked tokens in the reveal-order panel


@torch.no_grad()
def animate(pipe: BiGRPipeline, labels, path: str | Path, generator: torch.Generator | None = None,
            zoom: int | None = None, frame_ms: int = 600, **sampling) -> torch.Tensor:
    """Sample images for ``labels`` (as ``pipe(labels, ...)`` does, with the same draws) and write the reveal
    animation of the run to ``path`` (a .gif). Returns the images (B, C, H, W) in [0, 1].

    ``zoom`` scales each panel (default: to about 96 pixels a side); ``frame_ms`` is the time per step (the final
    frame stays four times as long); ``sampling`` overrides the model's settings.
    """
    check_gif_path(path)
    recorder = StepRecorder()
    tokens = pipe.model.generate(pipe.labels(labels), generator=generator, callback=recorder,
                                 allow_null=names_null(labels), **sampling)
    images = pipe.decode(tokens)
    write_animation(pipe, recorder.steps, images, path, pipe.model.config.sampling.replace(**sampling), zoom=zoom,
                    frame_ms=frame_ms)
    return images


def check_gif_path(path: str | Path) -> Path:
    """``path`` if it names a GIF file; a clear error otherwise (before any sampling)."""
    if Path(path).suffix.lower() != ".gif":
        raise ValueError(f"the animation is a GIF: {path} must end in .gif")
    return check_image_path(path)


def write_animation(pipe: BiGRPipeline, steps: list[RecordedStep], images: torch.Tensor, path: str | Path,
                    settings, columns: list[int] | None = None, zoom: int | None = None, frame_ms: int = 600) -> Path:
    """The GIF of a recorded run: a frame per step and a last one of the finished ``images`` (B, C, H, W).
    ``columns``: which of the run's images to show (default all); ``settings``: the run's SamplingConfig."""
    keep = list(range(len(images))) if columns is None else list(columns)
    steps = [RecordedStep(s.i, s.num_iter, *(t[keep] for t in (s.tokens, s.mask, s.chosen, s.certainty,
                                                                  s.revealed_at))) for s in steps]
    zoom = zoom or max(1, round(96 / pipe.tokenizer.config.image_size))
    frames = [draw_frame(panels(pipe, step), caption(step, settings), zoom) for step in steps]
    finished = panels(pipe, steps[-1], final=images[keep])
    frames.append(draw_frame(finished, f"done: {len(keep)} images, {settings.num_iter} steps", zoom))
    durations = [frame_ms] * (len(frames) - 1) + [4 * frame_ms]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0, disposal=1)
    return Path(path)


def caption(step: RecordedStep, settings) -> str:
    revealed = int((~step.mask).sum(1).max())
    gumbel = f"Gumbel {settings.gumbel:g}" if settings.order not in BLIND_ORDERS else "(reads no certainty)"
    return (f"step {step.i}/{step.num_iter}   revealed {revealed}/{step.mask.shape[1]} tokens   "
            f"order {settings.order} {gumbel}   CFG {settings.cfg:g}")


def panels(pipe: BiGRPipeline, step: RecordedStep, final: torch.Tensor | None = None) -> list[np.ndarray]:
    """The three panel rows of one frame, each (B, H, W, 3) float in [0, 1]: images, certainty, reveal order."""
    h, w = pipe.tokenizer.grid_size
    size = pipe.tokenizer.config.image_size
    if final is None:
        tokens = step.tokens.masked_fill(step.mask[..., None], 0.0)
        images = pipe.decode(tokens.to(pipe.device)).cpu()                                  # (B, C, H, W)
        masked = upsample(step.mask.float().view(-1, h, w), size) > 0.5                      # (B, H, W)
        images = images.masked_fill(masked[:, None], GREY)
    else:
        images = final.cpu()
    rgb = images.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()                          # (B, H, W, 3)
    certainty = step.certainty.view(-1, h, w)
    low, high = np.nanmin(certainty.numpy(), initial=0.0), np.nanmax(certainty.numpy(), initial=1.0)
    ranked = colour((certainty - low) / max(high - low, 1e-12), size, blank=0.0)          # the step's own range
    order = colour(step.revealed_at.view(-1, h, w) / step.num_iter, size, blank=UNREVEALED)
    return [rgb, ranked, order]


def upsample(grid: torch.Tensor, size: int) -> torch.Tensor:
    """(B, h, w) -> (B, size, size), each token's value over its patch."""
    return torch.nn.functional.interpolate(grid[:, None], size=(size, size), mode="nearest")[:, 0]


def colour(values: torch.Tensor, size: int, blank: float) -> np.ndarray:
    """(B, h, w) in [0, 1] (NaN = nothing) -> (B, size, size, 3) RGB in viridis, the grey ``blank`` where NaN."""
    from matplotlib import colormaps

    big = upsample(values.float(), size).numpy()
    rgb = colormaps["viridis"](np.nan_to_num(big, nan=0.0))[..., :3]
    rgb[np.isnan(big)] = blank
    return rgb


def draw_frame(rows: list[np.ndarray], text: str, zoom: int):
    """A PIL image: the caption above; one row per panel kind, one column per image, each panel zoomed."""
    from PIL import Image, ImageDraw

    B, H, W, _ = rows[0].shape
    pad = 2
    width = LABEL_WIDTH + B * (W * zoom + pad)
    height = CAPTION_HEIGHT + len(rows) * (H * zoom + pad)
    frame = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(frame)
    draw.text((4, 4), text, fill="black")
    for r, (row, name) in enumerate(zip(rows, ROWS, strict=True)):
        top = CAPTION_HEIGHT + r * (H * zoom + pad)
        for line, words in enumerate(wrap(name, 14)):
            draw.text((4, top + 4 + 12 * line), words, fill="black")
        for b in range(B):
            panel = Image.fromarray((row[b] * 255).round().astype(np.uint8)).resize((W * zoom, H * zoom),
                                                                                    Image.Resampling.NEAREST)
            frame.paste(panel, (LABEL_WIDTH + b * (W * zoom + pad), top))
    return frame.quantize(colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def wrap(text: str, width: int) -> list[str]:
    """Words of ``text`` in lines of at most ``width`` characters (one long word stays whole)."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines

