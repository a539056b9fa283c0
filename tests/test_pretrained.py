"""The shipped Fashion-MNIST model and `minibigr demo`."""

import json
import subprocess
import sys

import pytest
import torch

import minibigr
from minibigr.cli import main
from minibigr.data import DatasetNotFound, load_dataset
from minibigr.evaluate import evaluate_tokenizer
from minibigr.shipped import shipped_dir


@pytest.fixture(scope="module")
def shipped():
    return minibigr.pretrained("fashion-mnist")


@pytest.fixture(scope="module")
def fashion_test():
    try:
        return load_dataset("fashion-mnist", "test", download=False)
    except DatasetNotFound as e:
        pytest.skip(f"Fashion-MNIST is not installed here ({e})")


def test_loading_and_sampling_never_import_torch_dynamo():
    # torch's meta-device kernels for some ops import torch._dynamo: 2 s of every load, and of the app's start
    code = ("import sys, torch, minibigr; pipe = minibigr.pretrained('fashion-mnist'); "
            "pipe(['bag'], generator=torch.Generator().manual_seed(0)); print('torch._dynamo' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["False"]


def test_shipped_pair_fits_together(shipped):
    tok, model = shipped.tokenizer, shipped.model
    assert isinstance(shipped, minibigr.BiGRPipeline)
    assert not tok.training and not model.training
    assert model.config.K == tok.config.K
    assert model.config.num_tokens == tok.config.num_tokens
    assert model.config.num_classes == 10
    size = sum(f.stat().st_size for f in shipped_dir("fashion-mnist").rglob("*") if f.is_file())
    assert size <= 20e6, "the shipped weights must stay under 20 MB"


def test_shipped_tokenizer_reconstructs_above_24_db(shipped, fashion_test):
    report = evaluate_tokenizer(shipped.tokenizer, fashion_test, limit=1000)
    assert report["psnr_db"] >= 24.0, report
    usage = report["code_usage"]
    assert usage["distinct_codes"] > 1000        # 64k tokens spread over many of the 2^16 codes
    assert 0.2 < usage["bit_mean"] < 0.8


def test_the_readme_example(shipped):
    """The README's five lines: labels in, images out, and tokens round trip through encode / decode."""
    pipe = minibigr.pretrained("fashion-mnist")
    images = pipe(torch.tensor([0, 1, 7, 9]), generator=torch.Generator().manual_seed(0))
    assert images.shape == (4, 1, 32, 32) and 0 <= images.min() and images.max() <= 1
    tokens = pipe.encode(images)
    assert tokens.shape == (4, 64, 16) and set(tokens.unique().tolist()) <= {0.0, 1.0}
    assert (pipe.encode(pipe.decode(tokens)) == tokens).float().mean() > 0.9      # nearly a fixed point
    # the pipeline is the model's generate followed by the tokenizer's decode, on the same draws
    tokens = pipe.model.generate(torch.tensor([0, 1, 7, 9]), generator=torch.Generator().manual_seed(0))
    assert torch.equal(pipe.decode(tokens), images)
    assert torch.equal(pipe([0, 1, 7, 9], generator=torch.Generator().manual_seed(0)), images)
    assert pipe.class_names[7] == "Sneaker"                       # the shipped classes.txt: labels by name
    by_name = pipe(["t-shirt/top", "trouser", "sneaker", "ankle boot"], generator=torch.Generator().manual_seed(0))
    assert torch.equal(by_name, images)


def test_demo_writes_everything_it_announces(tmp_path, fashion_test, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--device", "cpu", "--per-class", "2"]) == 0
    printed = capsys.readouterr().out
    for name in ("samples.png", "reconstructions.png", "inpainting.png", "interpolation.png", "summary.json"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
        assert name in printed
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["reconstructions"]["psnr_db"] > 20
    assert summary["samples"]["per_class"] == 2 and summary["samples"]["rows"][7] == "Sneaker"


def test_demo_refuses_a_file_as_its_out_directory(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    assert main(["demo", "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "directory" in err and "Traceback" not in err
    assert (tmp_path / "taken").read_text() == "a file"


def test_demo_without_the_test_images_says_what_it_skipped(tmp_path, capsys, monkeypatch):
    """No Fashion-MNIST anywhere: the samples and interpolation are made, and the terminal says which parts were
    skipped and why (not only summary.json)."""
    monkeypatch.setattr("minibigr.demo.load_dataset", lambda *a, **k: (_ for _ in ()).throw(
        DatasetNotFound("Fashion-MNIST test files not found in /nowhere")))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--per-class", "1"]) == 0
    printed = capsys.readouterr().out
    assert "reconstructions and inpainting skipped" in printed and "/nowhere" in printed
    assert (tmp_path / "demo" / "samples.png").exists() and not (tmp_path / "demo" / "inpainting.png").exists()
