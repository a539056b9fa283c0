"""Models shipped inside the package: ``minibigr.pretrained("fashion-mnist") -> (tokenizer, model)``."""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).parent / "weights"

# name -> what it is; each lives in weights/<name>/{tokenizer,model}/ as config.json + model.safetensors
SHIPPED = {
    "fashion-mnist": "32x32 Fashion-MNIST: tiny B-AE + wide-32 BiGR (float16 on disk; how to reproduce: README)",
}


def pretrained_dir(name: str) -> Path:
    if name not in SHIPPED:
        raise ValueError(f"no shipped model named {name!r}; available: {', '.join(SHIPPED)}")
    path = WEIGHTS / name
    if not (path / "model" / "model.safetensors").exists():
        raise FileNotFoundError(f"the shipped weights for {name!r} are missing from {path}; "
                                f"reinstall minibigr or train them with `minibigr demo --train`")
    return path


def pretrained(name: str = "fashion-mnist", device: str = "cpu"):
    """The shipped (tokenizer, model) pair, in eval mode on ``device``."""
    from .model import BiGR
    from .tokenizer import BinaryAutoencoder

    path = pretrained_dir(name)
    tokenizer = BinaryAutoencoder.from_pretrained(path / "tokenizer").to(device).eval()
    model = BiGR.from_pretrained(path / "model").to(device).eval()
    return tokenizer, model
