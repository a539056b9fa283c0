"""minibigr: a small, readable and fast implementation of BiGR (binary latent image generation).

    from minibigr import TokenizerConfig, BinaryAutoencoder, BiGRConfig, BiGR

Names are resolved lazily so that ``import minibigr`` only costs torch + numpy; submodules
(``minibigr.apps``, ``minibigr.official``, ...) import on first use.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "BiGRConfig": "model",
    "BiGR": "model",
    "TokenizerConfig": "tokenizer",
    "BinaryAutoencoder": "tokenizer",
    "pretrained": "shipped",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'minibigr' has no attribute {name!r}")
