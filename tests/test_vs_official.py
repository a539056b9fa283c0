"""benchmarks/vs_official.py: the restated authors' loop loads minibigr's weights and computes the same thing."""

import torch

from benchmarks.official_restated import OfficialBiGR
from benchmarks.vs_official import check, restated
from minibigr import BiGR, BiGRConfig


def lively(**overrides) -> BiGR:
    """A small model with every parameter non-zero (the zero-initialised layers too)."""
    torch.manual_seed(0)
    model = BiGR(BiGRConfig.preset("tiny-32", dim=32, n_layer=2, n_head=2, transcoder_width=32, **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    return model.eval()


def test_the_restated_official_model_loads_strictly_and_samples_the_same_tokens():
    """Same weights, every draw made deterministic: identical tokens from both sampling loops."""
    for overrides in ({}, {"num_tokens": 16, "K": 8}):
        model = lively(**overrides)
        twin = restated(model)
        assert isinstance(twin, OfficialBiGR)
        h_diff, identical = check(model, twin)
        assert h_diff < 1e-5 and identical


def test_the_restated_training_loss_is_a_masked_mean_of_per_bit_losses():
    model = lively()
    twin = restated(model).train()
    tokens = (torch.rand(8, 64, 16) < 0.5).float()
    loss = twin.loss(tokens, torch.arange(8) % 10)
    loss.backward()
    assert loss.ndim == 0 and 0 < float(loss.detach()) < 10
    assert twin.denoise_mlp.final_layer.linear.weight.grad.abs().sum() > 0


def test_the_restated_loss_masks_exactly_the_count_it_is_given():
    """Both sides of the timed training take the same mask counts (minibigr.model.spread_mask_counts)."""
    twin = restated(lively()).train()
    assert (twin.random_mask(8, "cpu", 5).sum(1) == 5).all()
