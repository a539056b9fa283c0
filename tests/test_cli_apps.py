"""`minibigr inpaint | outpaint | edit | interpolate | enrich | probe | evaluate` on a tiny random model."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from minibigr import BiGRPipeline, SamplingConfig
from minibigr.cli import build_parser, main, sampling_overrides
from minibigr.images import load_image
from minibigr.model import BiGR, BiGRConfig
from minibigr.tokenizer import BinaryAutoencoder, TokenizerConfig

APPS = ("inpaint", "outpaint", "edit", "interpolate", "enrich", "probe", "evaluate")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The CLI arguments of a tiny random pair saved with save_pretrained as a pipeline directory."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    tok = BinaryAutoencoder(TokenizerConfig.preset("fashion-mnist-32", nf=32, ch_mult=(1, 1, 1), emb_dim=32, K=6,
                                                   attn_resolutions=()))
    model = BiGR(BiGRConfig.preset("tiny-32", K=6, num_tokens=64, dim=32, n_layer=2, n_head=2, transcoder_width=32,
                                   transcoder_blocks=1, sampling=dict(num_iter=3, diffusion_steps=3)))
    tok.save_pretrained(root / "tokenizer")
    model.save_pretrained(root / "model")
    return ["--model", str(root), "--device", "cpu"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An RGB 40x48 photo-like image (needs resizing and conversion) and a white-on-black mask."""
    root = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "in.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 255
    Image.fromarray(mask).save(root / "mask.png")
    (root / "broken.png").write_bytes(b"not a png")
    return root


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_app_commands_have_help(capsys):
    for command in APPS:
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([command, "--help"])
        assert exit_.value.code == 0
        assert "usage: minibigr " + command in capsys.readouterr().out


@pytest.mark.parametrize("command", ["inpaint", "outpaint", "edit"])
def test_paint_commands_write_result_and_comparison(command, models, files, tmp_path, capsys):
    out = tmp_path / "out" / f"{command}.png"

    def args(image, result):
        return [command, "--image", str(image), "--mask", str(files / "mask.png"), "--label", "3",
                "--out", str(result), "--zoom", "2", *models]

    assert main(args(files / "in.png", out)) == 0
    captured = capsys.readouterr()
    assert "resized 48x40 -> 32x32" in captured.err and "converted RGB -> L" in captured.err
    result = read_png(out)
    assert result.shape == (32, 32)          # the grey result at the tokenizer's size
    compare = read_png(out.with_name(f"{command}-compare.png"))
    assert compare.shape == (2 * 32 + 4, 3 * 2 * 32 + 8)
    # the kept side is the (resized, grey) input, pixel for pixel
    source = load_image(files / "in.png", channels=1, size=32)[0, 0].numpy()
    source = (source * 255).round().astype(np.uint8)
    kept = slice(0, 16) if command == "outpaint" else slice(16, 32)
    np.testing.assert_array_equal(result[:, kept], source[:, kept])
    # the result has the tokenizer's size and channels, so it goes back in as it is
    capsys.readouterr()
    assert main(args(out, tmp_path / "again.png")) == 0 and "note:" not in capsys.readouterr().err


def test_interpolate_and_enrich_write_pngs(models, files, tmp_path):
    strip = tmp_path / "strip.png"
    assert main(["interpolate", "--from", "1", "--to", "7", "--steps", "4", "--out", str(strip), "--zoom", "1",
                 *models]) == 0
    assert read_png(strip).shape == (36, 4 * 34 + 2)
    out = tmp_path / "enrich.png"
    assert main(["enrich", "--image", str(files / "in.png"), "--factor", "2", "--out", str(out), *models]) == 0
    assert read_png(out).shape == (32, 32) and out.with_name("enrich-compare.png").exists()


def test_sample_has_a_flag_for_every_sampling_setting(models, tmp_path):
    """The sampling flags are made from SamplingConfig's fields; given ones reach generate, unset ones are the
    model's recommended settings."""
    flags = ["--num-iter", "2", "--cfg", "1", "--cfg-schedule", "linear", "--gumbel", "0.5", "--gumbel-schedule",
             "up", "--order", "raster", "--diffusion-steps", "2", "--temperature", "0.5", "--deterministic",
             "--mask-schedule", "linear", "--precision", "bfloat16"]
    overrides = sampling_overrides(build_parser().parse_args(["sample", *flags]))
    assert overrides == dict(num_iter=2, cfg=1.0, cfg_schedule="linear", gumbel=0.5, gumbel_schedule="up",
                             order="raster", diffusion_steps=2, temperature=0.5, deterministic=True,
                             mask_schedule="linear", precision="bfloat16")
    assert set(overrides) == {f.name for f in dataclasses.fields(SamplingConfig)}
    assert sampling_overrides(build_parser().parse_args(["sample"])) == {}
    out = tmp_path / "s.png"
    assert main(["sample", "--labels", "1", "4", "--per-class", "2", "--seed", "3", "--out", str(out), *flags,
                 *models]) == 0
    pipe = BiGRPipeline.from_pretrained(models[1])
    expected = pipe(torch.tensor([1, 1, 4, 4]), generator=torch.Generator().manual_seed(3), **overrides)
    with np.load(out.with_suffix(".npz")) as saved:
        assert saved["labels"].tolist() == [1, 1, 4, 4]
        np.testing.assert_array_equal(saved["images"], (expected.numpy() * 255).round().astype(np.uint8))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("minibigr ") and "error:" in last
    return last


def test_bad_inputs_are_one_line_errors(models, files, tmp_path, capsys):
    base = ["--mask", str(files / "mask.png"), "--label", "3", "--out", str(tmp_path / "x.png"), *models]
    assert main(["inpaint", "--image", str(tmp_path / "missing.png"), *base]) == 2
    assert "missing.png" in one_line_error(capsys)
    assert main(["edit", "--image", str(files / "broken.png"), *base]) == 2
    assert "not a readable image" in one_line_error(capsys)
    args = ["inpaint", "--image", str(files / "in.png"), "--mask", str(files / "mask.png"), "--label", "12",
            "--out", str(tmp_path / "x.png"), *models]
    assert main(args) == 2
    assert "label 12 is out of range" in one_line_error(capsys)
    assert main(["interpolate", "--from", "0", "--to", "10", *models]) == 2
    assert "--to 10 is out of range" in one_line_error(capsys)
    assert main(["enrich", "--image", str(files / "in.png"), "--factor", "3", *models]) == 2
    assert "factor" in one_line_error(capsys)
    assert main(["probe", "--layers", "7", *models]) == 2
    assert "out of range" in one_line_error(capsys)
    assert main(["probe", "--pool", "mean,3x3", *models]) == 2
    assert "does not split" in one_line_error(capsys)
    black, white = tmp_path / "black.png", tmp_path / "white.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(black)
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(white)
    for command, mask in (("inpaint", black), ("edit", black), ("outpaint", white)):
        assert main([command, "--image", str(files / "in.png"), "--mask", str(mask), *base[2:]]) == 2
        assert "leaves nothing to regenerate" in one_line_error(capsys)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.fashion_mnist
def test_probe_and_evaluate_end_to_end(models, tmp_path, capsys, monkeypatch):
    from minibigr.classifier import ClassifierConfig, ClassifierSettings, save_classifier, train_classifier
    from minibigr.data import load_dataset

    assert main(["probe", "--limit", "60", "--layers", "0,1", "--batch-size", "32", *models]) == 0
    out = capsys.readouterr().out
    assert "<- chosen" in out and "pixels" in out and "top-5" in out
    train = load_dataset("fashion-mnist", "train")
    clf, info = train_classifier(train, config=ClassifierConfig(width=4),
                                 settings=ClassifierSettings(epochs=1, batch_size=32, limit=64))
    save_classifier(clf, tmp_path / "clf", info)
    report = tmp_path / "report.json"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    argv = ["evaluate", "--num-samples", "12", "--batch-size", "6", "--limit", "50", "--knn-cap", "10",
            "--classifier", str(tmp_path / "clf"), "--json", str(report), *models]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for text in ("FD", "class accuracy", "precision (k=3", "recall (k=3", "seconds per image", "real test"):
        assert text in out
    first = json.loads(report.read_text())
    assert len(list((tmp_path / "cache" / "minibigr" / "references").glob("*.safetensors"))) == 1
    for again in (argv, [*argv, "--no-cache"]):                    # read back; featurised again: the same numbers
        assert main(again) == 0
        assert {k: json.loads(report.read_text())[k] for k in ("fd", "precision", "recall", "reference")} == {
            k: first[k] for k in ("fd", "precision", "recall", "reference")}
