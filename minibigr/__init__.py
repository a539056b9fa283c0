"""minibigr: a small, readable and fast implementation of BiGR (binary latent image generation).

    import minibigr
    pipe = minibigr.pretrained("fashion-mnist")         # a BiGRPipeline: pipe.tokenizer, pipe.model
    images = pipe([0, 1, 7, 9])                         # (4, 1, 32, 32) in [0, 1]
    minibigr.animate(pipe, [0, 1, 7, 9], "reveal.gif")  # the same, and a GIF of every unmasking step

The method is written down in docs/method.md. ``import minibigr`` needs torch, numpy and safetensors only;
submodules (``minibigr.apps``, ``minibigr.official``, ``minibigr.train``, ...) import on demand.
"""

from .animation import animate
from .config import BiGRConfig
from .model import BiGR
from .pipeline import BiGRPipeline, pretrained
from .sampler import SamplingConfig
from .tokenizer import BinaryAutoencoder, TokenizerConfig

__version__ = "0.1.0"

__all__ = ["BiGR", "BiGRConfig", "BiGRPipeline", "BinaryAutoencoder", "SamplingConfig", "TokenizerConfig",
           "animate", "pretrained", "__version__"]
