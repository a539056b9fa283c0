"""The shipped Fashion-MNIST model and `minibigr demo`."""

import json

import pytest
import torch

import minibigr
from minibigr.cli import main
from minibigr.data import DatasetNotFound, load_dataset
from minibigr.evaluate import evaluate_tokenizer
from minibigr.shipped import pretrained_dir


@pytest.fixture(scope="module")
def shipped():
    return minibigr.pretrained("fashion-mnist")


@pytest.fixture(scope="module")
def fashion_test():
    try:
        return load_dataset("fashion-mnist", "test", download=False)
    except DatasetNotFound as e:
        pytest.skip(f"Fashion-MNIST is not installed here ({e})")


def test_shipped_pair_fits_together(shipped):
    tok, model = shipped
    assert not tok.training and not model.training
    assert model.config.K == tok.config.K
    assert model.config.num_tokens == tok.config.num_tokens
    assert model.config.num_classes == 10
    size = sum(f.stat().st_size for f in pretrained_dir("fashion-mnist").rglob("*") if f.is_file())
    assert size <= 20e6, "the shipped weights must stay under 20 MB"


def test_shipped_tokenizer_reconstructs_above_24_db(shipped, fashion_test):
    tok, _ = shipped
    report = evaluate_tokenizer(tok, fashion_test, limit=1000)
    assert report["psnr_db"] >= 24.0, report
    usage = report["code_usage"]
    assert usage["distinct_codes"] > 1000        # 64k tokens spread over many of the 2^16 codes
    assert 0.2 < usage["bit_mean"] < 0.8


def test_generate_with_recommended_settings(shipped):
    tok, model = shipped
    tokens = model.generate(torch.tensor([0, 5]), generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (2, model.config.num_tokens, model.config.K)
    assert set(tokens.unique().tolist()) <= {0.0, 1.0}
    h = w = tok.config.latent_size
    images = tok.decode(tokens.transpose(1, 2).reshape(2, model.config.K, h, w))
    assert images.shape == (2, 1, 32, 32) and 0 <= images.min() and images.max() <= 1


def test_demo_writes_everything_it_announces(tmp_path, fashion_test, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    for name in ("samples.png", "reconstructions.png", "inpainting.png", "interpolation.png", "summary.json"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
        assert name in printed
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["reconstructions"]["psnr_db"] > 20
    assert summary["samples"]["per_class"] * 10 > 0
