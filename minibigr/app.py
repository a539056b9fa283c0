"""``minibigr app``: a local web app to play with BiGR, a thin face over the pipeline (like the CLI).

    pip install -e ".[app]"          # gradio, only for this
    minibigr app                     # the shipped Fashion-MNIST model on http://127.0.0.1:7860
    minibigr app --model runs/fm/bigr --device cuda

Three tabs: Generate (classes by name, the sampling settings, the images and the reveal animation of the run),
Inpaint (an uploaded or test image, a mask drawn with the brush, a class: regenerate the masked part, or everything
but it; another class than the image's is class-conditional editing) and Interpolate (between two classes).

The algorithms live in the library: ``App`` holds a pipeline and turns the page's inputs into calls of it, and each
of its handlers is a plain function of plain values (tested without a browser). Bad input raises ValueError with the
message the CLI would print; the page shows it and keeps serving. gradio is imported only to build the page.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from . import apps
from .animation import write_animation
from .data import DatasetNotFound, get_batch, load_dataset
from .images import from_pil
from .pipeline import BiGRPipeline, names_null
from .sampler import ORDERS, StepRecorder

MAX_IMAGES = 16         # images per Generate press
TEST_IMAGES = 24        # test images offered in the Inpaint tab
VIEW = 256              # pixels a side of the images the page shows and the brush draws on

Progress = Callable[[float, str], None]


class App:
    """The web app's state and handlers: a pipeline, its class names and (for Fashion-MNIST) some test images."""

    def __init__(self, pipe: BiGRPipeline, test_images: torch.Tensor | None = None):
        self.pipe = pipe
        C = pipe.model.config.num_classes
        self.classes = list(pipe.class_names) if pipe.class_names else [str(y) for y in range(C)]
        self.test_images = test_images
        self.out = Path(tempfile.mkdtemp(prefix="minibigr-app-"))
        self.runs = 0

    # -- conversions between the page and the pipeline ------------------------------------------
    def label(self, name: str) -> int | str:
        """A class chosen on the page, by name (or number; 'null' for the unconditional model)."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError("choose a class")
        if names_null(name):
            return name
        if name in self.classes:
            return self.classes.index(name)
        return int(self.pipe.labels(int(name) if name.strip().isdigit() else name)[0])

    def to_view(self, images: torch.Tensor) -> list[np.ndarray]:
        """(B, C, H, W) in [0, 1] -> B uint8 (VIEW, VIEW, 3) arrays, each pixel a square (nearest neighbour)."""
        factor = max(1, VIEW // images.shape[-1])
        big = images.cpu().repeat_interleave(factor, -2).repeat_interleave(factor, -1).expand(-1, 3, -1, -1)
        return list((big.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))

    def from_page(self, array: np.ndarray | None, what: str = "image", mask: bool = False) -> torch.Tensor:
        """A page's image (H, W) / (H, W, 3 or 4) uint8 -> (1, C, size, size) in [0, 1], or the mask (1, 1, size,
        size) bool of its painted (non-transparent, or white) pixels."""
        from PIL import Image

        if array is None:
            raise ValueError(f"no {what}: upload one or pick a test image")
        array = np.asarray(array)
        if array.ndim not in (2, 3) or array.dtype == object or array.size == 0:
            raise ValueError(f"the {what} is not an image (got an array of shape {array.shape})")
        config = self.pipe.tokenizer.config
        if mask:
            painted = array[..., 3] > 0 if array.ndim == 3 and array.shape[-1] == 4 else array.reshape(
                *array.shape[:2], -1).max(-1) > 127
            return from_pil(Image.fromarray((painted * 255).astype(np.uint8)), 1, config.image_size, mask=True)
        return from_pil(Image.fromarray(array.astype(np.uint8)), config.in_channels, config.image_size)

    def _settings(self, order, cfg, gumbel, num_iter, diffusion_steps) -> dict:
        return dict(order=order, cfg=float(cfg), gumbel=float(gumbel), num_iter=int(num_iter),
                    diffusion_steps=int(diffusion_steps))

    def _watch(self, progress: Progress | None, total: int, recorder: StepRecorder | None = None):
        """A sampling callback: the progress bar, and the recorder if given."""
        done = [0]

        def callback(step):
            done[0] += 1
            if progress is not None:
                progress(min(1.0, done[0] / total), f"step {step.i}/{step.settings.num_iter}")
            if recorder is not None:
                recorder(step)
        return callback

    # -- the handlers ---------------------------------------------------------------------------
    def generate(self, classes: list[str], per_class: int, order: str, cfg: float, gumbel: float, num_iter: int,
                 diffusion_steps: int, seed: int, progress: Progress | None = None) -> tuple[list[np.ndarray], str]:
        """Images of the chosen classes (per_class each) and the reveal animation of the run (the first image of
        each class): (images, GIF path)."""
        classes = [classes] if isinstance(classes, str) else list(classes or [])
        if not classes:
            raise ValueError("choose at least one class")
        per_class = int(per_class)
        if not 1 <= per_class * len(classes) <= MAX_IMAGES:
            raise ValueError(f"at most {MAX_IMAGES} images per run: {len(classes)} classes x {per_class} each")
        labels = [self.label(c) for c in classes for _ in range(per_class)]
        settings = self.pipe.model.config.sampling.replace(**self._settings(order, cfg, gumbel, num_iter,
                                                                            diffusion_steps))
        recorder = StepRecorder()
        images = self.pipe(labels, generator=torch.Generator(self.pipe.device).manual_seed(int(seed)),
                           callback=self._watch(progress, settings.num_iter, recorder), **settings.to_dict())
        self.runs += 1
        gif = write_animation(self.pipe, recorder.steps, images, self.out / f"reveal-{self.runs}.gif", settings,
                              columns=list(range(0, len(images), per_class)))
        return self.to_view(images), str(gif)

    def inpaint(self, image: np.ndarray | None, mask: np.ndarray | None, class_name: str, mode: str, order: str,
                cfg: float, gumbel: float, num_iter: int, diffusion_steps: int, seed: int,
                progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Regenerate the painted region ("inpaint") or everything but it ("outpaint") as the class chosen (another
        class than the image's: editing). -> (the source, the result), as the page shows them."""
        if mode not in ("inpaint", "outpaint"):
            raise ValueError(f"mode must be inpaint or outpaint, got {mode!r}")
        x = self.from_page(image).to(self.pipe.device)
        if mask is None:
            raise ValueError("the mask is empty: paint the region to regenerate with the brush")
        pixels = self.from_page(mask, "mask", mask=True)
        if not pixels.any():
            raise ValueError("the mask is empty: paint the region to regenerate with the brush")
        if pixels.all() and mode == "outpaint":
            raise ValueError("the mask covers the whole image: outpainting would keep everything")
        settings = self._settings(order, cfg, gumbel, num_iter, diffusion_steps)
        app = apps.inpaint if mode == "inpaint" else apps.outpaint
        out = app(self.pipe, x, pixels, self.label(class_name), generator=torch.Generator(self.pipe.device)
                  .manual_seed(int(seed)), callback=self._watch(progress, int(num_iter)), **settings)
        return self.to_view(x)[0], self.to_view(out)[0]

    def interpolate(self, first: str, second: str, steps: int, order: str, cfg: float, gumbel: float, num_iter: int,
                    diffusion_steps: int, seed: int, progress: Progress | None = None) -> list[np.ndarray]:
        """A strip from the first class to the second (the class embeddings mixed), every image from the same draws."""
        steps = int(steps)
        if not 2 <= steps <= 9:
            raise ValueError(f"the strip has 2 to 9 images, got {steps}")
        alphas = torch.linspace(1, 0, steps).tolist()
        strip = apps.interpolate(self.pipe, self.label(first), self.label(second), alphas=alphas,
                                 generator=torch.Generator(self.pipe.device).manual_seed(int(seed)),
                                 callback=self._watch(progress, steps * int(num_iter)),
                                 **self._settings(order, cfg, gumbel, num_iter, diffusion_steps))
        return self.to_view(strip)

    def test_image(self, index: int) -> dict:
        """Test image ``index`` as the brush editor's value: the image as its background, no strokes yet."""
        if self.test_images is None:
            raise ValueError("no test images with this model: upload an image")
        if not 0 <= int(index) < len(self.test_images):
            raise ValueError(f"test images are 0..{len(self.test_images) - 1}, got {index}")
        view = self.to_view(self.test_images[int(index)][None])[0]
        return {"background": view, "layers": [], "composite": view}


def fashion_mnist_tests(pipe: BiGRPipeline) -> torch.Tensor | None:
    """The first Fashion-MNIST test images when the model reads them (and the files are here), else None."""
    config = pipe.tokenizer.config
    if pipe.class_names is None or pipe.class_names[:1] != ["T-shirt/top"]:
        return None
    try:
        x, _ = get_batch(load_dataset("fashion-mnist", "test", image_size=config.image_size, download=False),
                         torch.arange(TEST_IMAGES))
    except DatasetNotFound:
        return None
    return x


# ----------------------------------------------------------------------------------------------
# The page (gradio)
# ----------------------------------------------------------------------------------------------
def build(app: App):
    """The gradio Blocks of the page: one tab per handler; a ValueError shows as a message in the page."""
    import gradio as gr

    tracked = gr.Progress()          # a Progress default marks the handlers whose progress the page shows

    def shown(handler):
        def run(*args, progress=tracked):
            try:
                return handler(*args, progress=lambda share, text: progress(share, desc=text))
            except (ValueError, FileNotFoundError, TypeError) as e:
                raise gr.Error(str(e)) from None
        return run

    s = app.pipe.model.config.sampling

    def sampling_inputs():
        with gr.Accordion("sampling settings", open=False):
            order = gr.Dropdown(list(ORDERS), value=s.order, label="order (which tokens first)")
            cfg = gr.Slider(0, 6, value=s.cfg, step=0.25, label="CFG scale")
            gumbel = gr.Slider(0, max(1.0, s.gumbel), value=s.gumbel, step=0.005,
                               label="Gumbel temperature of the order (0: strictly most certain first)")
            num_iter = gr.Slider(1, 64, value=s.num_iter, step=1, label="sampling steps I")
            steps = gr.Slider(1, app.pipe.model.config.T, value=s.diffusion_steps, step=1,
                              label="diffusion steps S")
            seed = gr.Number(0, precision=0, label="seed")
        return [order, cfg, gumbel, num_iter, steps, seed]

    with gr.Blocks(title="minibigr") as page:
        gr.Markdown("# minibigr: BiGR, watched\nSample the model, inpaint an image, or mix two classes. Each image "
                    "is revealed token by token, most certain first (docs/method.md §5).")
        with gr.Tab("Generate"):
            with gr.Row():
                classes = gr.Dropdown(app.classes, value=app.classes[:3], multiselect=True, label="classes")
                per_class = gr.Slider(1, 4, value=1, step=1, label="images per class")
            settings = sampling_inputs()
            go = gr.Button("Generate", variant="primary", elem_id="generate")
            gallery = gr.Gallery(label="samples", columns=6, height="auto", elem_id="samples")
            reveal = gr.Image(label="the reveal, step by step", type="filepath", elem_id="reveal")
            go.click(shown(app.generate), [classes, per_class, *settings], [gallery, reveal], api_name="generate")
        with gr.Tab("Inpaint"):
            gr.Markdown("Upload an image or pick a test image, paint the region with the brush, choose the class. "
                        "A class other than the image's edits it.")
            with gr.Row():
                editor = gr.ImageEditor(label="image and mask (paint = regenerate)", type="numpy",
                                        image_mode="RGB", canvas_size=(VIEW, VIEW), elem_id="editor",
                                        brush=gr.Brush(colors=["#ff0066"], default_size=24))
                with gr.Column():
                    if app.test_images is not None:
                        index = gr.Slider(0, len(app.test_images) - 1, value=0, step=1, label="test image")
                        pick = gr.Button("use this test image")
                        pick.click(shown(lambda i, progress=None: app.test_image(i)), [index], [editor],
                                   api_name="test_image")
                    label = gr.Dropdown(app.classes, value=app.classes[0], label="class of the result")
                    mode = gr.Radio(["inpaint", "outpaint"], value="inpaint", label="regenerate")
            settings = sampling_inputs()
            paint = gr.Button("Inpaint", variant="primary", elem_id="inpaint")
            with gr.Row():
                before, after = gr.Image(label="source"), gr.Image(label="result", elem_id="result")

            def inpaint(value, *rest, progress=None):
                # the editor's value: the image as its background, the brush strokes as layers
                value = value or {}
                layers = [np.asarray(layer) for layer in value.get("layers") or [] if layer is not None]
                mask = np.maximum.reduce(layers) if layers else None
                return app.inpaint(value.get("background"), mask, *rest, progress=progress)

            paint.click(shown(inpaint), [editor, label, mode, *settings], [before, after], api_name="inpaint")
        with gr.Tab("Interpolate"):
            with gr.Row():
                first = gr.Dropdown(app.classes, value=app.classes[0], label="from")
                second = gr.Dropdown(app.classes, value=app.classes[-1], label="to")
                strip_steps = gr.Slider(2, 9, value=5, step=1, label="images")
            settings = sampling_inputs()
            mix = gr.Button("Interpolate", variant="primary")
            strip = gr.Gallery(label="from -> to", columns=9, height="auto")
            mix.click(shown(app.interpolate), [first, second, strip_steps, *settings], [strip],
                      api_name="interpolate")
    return page


def launch(pipe: BiGRPipeline, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the app of ``pipe`` on http://host:port; returns the gradio Blocks (running in the background when
    ``block`` is False)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError('the web app needs gradio: pip install -e ".[app]"') from None
    page = build(App(pipe, fashion_mnist_tests(pipe)))
    page.queue().launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True,
                        show_error=True, footer_links=["api"])
    return page
