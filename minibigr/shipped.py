"""Models shipped inside the package, by name: ``minibigr.pretrained("fashion-mnist")`` loads one.

Each lives in ``weights/<name>/`` as a pipeline directory: ``tokenizer/`` and ``model/``, each a
config.json + model.safetensors checkpoint.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).parent / "weights"

SHIPPED = {
    "fashion-mnist": "32x32 Fashion-MNIST: tiny B-AE + wide-32 BiGR (float16 on disk; how to reproduce: README)",
}


def shipped_dir(name: str) -> Path:
    """The pipeline directory of a shipped model; a clear error for an unknown name or missing files."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped model named {name!r}; available: {', '.join(SHIPPED)}")
    path = WEIGHTS / name
    if not (path / "model" / "model.safetensors").exists():
        raise FileNotFoundError(f"the shipped weights for {name!r} are missing from {path}; "
                                f"reinstall minibigr or train them with `minibigr demo --train`")
    return path
