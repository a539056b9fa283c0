"""Shared test setup: tests marked ``fashion_mnist`` need the real dataset files (CI installs the Debian
package dataset-fashion-mnist). Without them they are skipped with that reason; a corrupt file still fails.
``tiny_parts`` builds the small random tokenizer and model that the animation and app tests drive."""

import pytest
import torch

from minibigr.model import BiGR, BiGRConfig
from minibigr.tokenizer import BinaryAutoencoder, TokenizerConfig


def _fashion_mnist_available() -> bool:
    from minibigr.data import DatasetNotFound, load_dataset

    try:
        load_dataset("fashion-mnist", "test", download=False)
    except DatasetNotFound:
        return False
    return True


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if "fashion_mnist" in item.keywords]
    if marked and not _fashion_mnist_available():
        for item in marked:
            item.add_marker(pytest.mark.skip(reason="Fashion-MNIST files not installed"))


@pytest.fixture(scope="session")
def tiny_parts():
    """tiny_parts(**model config) -> (tokenizer, model), both in eval mode and random (torch.manual_seed(0) first):
    32 x 32 images as 8 x 8 tokens of K = 6 bits, a two-block BiGR of width 32."""
    def make(**config):
        torch.manual_seed(0)
        tok = BinaryAutoencoder(TokenizerConfig.preset("fashion-mnist-32", nf=32, ch_mult=(1, 1, 1), emb_dim=32, K=6,
                                                       attn_resolutions=()))
        model = BiGR(BiGRConfig.preset("tiny-32", **{**dict(K=6, num_tokens=64, dim=32, n_layer=2, n_head=2,
                                                             transcoder_width=32, transcoder_blocks=1), **config}))
        return tok.eval(), model.eval()
    return make
