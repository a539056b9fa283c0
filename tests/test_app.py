"""`minibigr app`: its handlers called directly (no gradio needed), the served app driven with gradio_client, and a
real browser pressing Generate."""

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import app_screenshot as screenshot
from minibigr import BiGRPipeline
from minibigr.app import App

FAST = dict(order="random", cfg=1.5, gumbel=0.01, num_iter=3, diffusion_steps=4, seed=0)


@pytest.fixture(scope="module")
def app(tiny_parts):
    tok, model = tiny_parts(num_classes=3)
    tests = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    return App(BiGRPipeline(tok, model, class_names=["cat", "dog", "owl"]), tests)


def test_generate_gives_the_images_and_the_reveal_animation(app):
    seen = []
    images, gif = app.generate(["cat", "owl"], 2, **FAST, progress=lambda share, text: seen.append(share))
    assert len(images) == 4 and images[0].shape == (256, 256, 3) and images[0].dtype == np.uint8
    with Image.open(gif) as frames:
        assert frames.n_frames == FAST["num_iter"] + 1
    assert seen[-1] == 1.0 and len(seen) == FAST["num_iter"]
    again, _ = app.generate(["cat", "owl"], 2, **FAST)
    assert all(np.array_equal(a, b) for a, b in zip(images, again, strict=True))       # the seed decides


def test_inpaint_regenerates_the_painted_region_only(app):
    image = app.test_image(2)["background"]
    mask = np.zeros((256, 256, 4), np.uint8)
    mask[128:, :, 3] = 255                                               # the bottom half painted
    source, result = app.inpaint(image, mask, "dog", "inpaint", **FAST)
    assert np.array_equal(source[:128], result[:128]) and not np.array_equal(source[128:], result[128:])
    _, outside = app.inpaint(image, mask, "dog", "outpaint", **FAST)
    assert np.array_equal(source[128:], outside[128:]) and not np.array_equal(source[:128], outside[:128])


@pytest.mark.parametrize("call, message", [
    (lambda app: app.inpaint(None, None, "cat", "inpaint", **FAST), "no image: upload one"),
    (lambda app: app.inpaint(app.test_image(0)["background"], None, "cat", "inpaint", **FAST), "the mask is empty"),
    (lambda app: app.inpaint(app.test_image(0)["background"], np.zeros((256, 256, 4), np.uint8), "cat", "inpaint",
                             **FAST), "the mask is empty"),
    (lambda app: app.inpaint(np.array(["not", "an", "image"]), None, "cat", "inpaint", **FAST), "not an image"),
    (lambda app: app.inpaint(app.test_image(0)["background"], np.full((256, 256, 4), 255, np.uint8), "cat",
                             "outpaint", **FAST), "covers the whole image"),
    (lambda app: app.generate(["lion"], 1, **FAST), "unknown class name 'lion'"),
    (lambda app: app.generate([], 1, **FAST), "choose at least one class"),
    (lambda app: app.generate(["cat"], 40, **FAST), "at most 16 images"),
    (lambda app: app.generate(["cat"], 1, **{**FAST, "cfg": -1}), "cfg must be >= 0"),
    (lambda app: app.interpolate("cat", "dog", 12, **FAST), "2 to 9 images"),
    (lambda app: app.test_image(99), "test images are 0..3"),
])
def test_bad_input_is_a_clear_message(app, call, message):
    with pytest.raises(ValueError, match=message):
        call(app)


def test_interpolate_gives_a_strip_from_one_class_to_the_other(app):
    strip = app.interpolate("cat", "owl", 3, **FAST)
    assert len(strip) == 3 and strip[0].shape == (256, 256, 3)


def test_the_null_class_is_asked_for_by_name(app):
    images, _ = app.generate(["null"], 1, **FAST)
    assert len(images) == 1


# -- the served app ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served():
    """`minibigr app` (the shipped model) on a free localhost port, in a subprocess; its URL."""
    pytest.importorskip("gradio")
    with screenshot.served("--device", "cpu") as url:
        yield url


def test_the_served_app_generates_and_inpaints(served, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    client = gradio_client.Client(served, verbose=False)
    gallery, gif = client.predict(["Sneaker", "Bag"], 1, *FAST.values(), api_name="/generate")
    assert len(gallery) == 2
    with Image.open(gallery[0]["image"]) as first:
        assert first.size == (256, 256)
    with Image.open(gif) as frames:
        assert frames.n_frames == FAST["num_iter"] + 1
    test = client.predict(3, api_name="/test_image")
    mask = np.zeros((256, 256, 4), np.uint8)
    mask[:, 128:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    editor = {"background": gradio_client.handle_file(test["background"]),
              "layers": [gradio_client.handle_file(str(tmp_path / "mask.png"))], "composite": None}
    source, result = client.predict(editor, "Bag", "inpaint", *FAST.values(), api_name="/inpaint")
    left = (np.asarray(Image.open(source).convert("L"))[:, :128], np.asarray(Image.open(result).convert("L"))[:, :128])
    assert np.abs(left[0].astype(int) - left[1]).max() <= 8                  # kept (webp rounding aside)
    empty = {**editor, "layers": []}
    with pytest.raises(Exception, match="the mask is empty"):               # the page's message, not a traceback
        client.predict(empty, "Bag", "inpaint", *FAST.values(), api_name="/inpaint")
    assert len(client.predict(["Bag"], 1, *FAST.values(), api_name="/generate")[0]) == 1     # still serving


def test_a_browser_presses_generate_and_sees_the_images(served, tmp_path):
    pytest.importorskip("selenium")
    for binary in (screenshot.CHROMIUM, screenshot.CHROMEDRIVER):
        if not binary.exists():
            pytest.skip(f"{binary} is missing (apt-get install chromium chromium-driver)")
    driver = screenshot.chromium(tmp_path / "profile")
    try:
        images = screenshot.press_generate(driver, served)
        assert images and images[0].get_attribute("src")
        driver.save_screenshot(str(tmp_path / "app.png"))
        assert (tmp_path / "app.png").stat().st_size > 10_000
    finally:
        driver.quit()
