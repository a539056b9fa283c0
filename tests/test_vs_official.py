"""benchmarks/vs_official.py: the restated authors' loop loads minibigr's weights and computes the same thing."""

import torch

from benchmarks.official_restated import OfficialBiGR
from benchmarks.vs_official import check, mask_counts, restated
from minibigr import BiGR, BiGRConfig
from minibigr.model import mask_count


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


def test_both_sides_train_on_the_same_mask_counts_spread_over_the_schedule():
    """The timed steps' mask counts average what the cosine schedule masks (within a token), and the restated
    loss masks exactly the count it is given."""
    N = 64
    counts = mask_counts(N, 8)
    assert counts == sorted(counts, reverse=True) and all(1 <= n <= N for n in counts)
    expected = sum(mask_count(s, N) for s in range(N)) / N
    assert abs(sum(counts) / len(counts) - expected) < 1
    twin = restated(lively()).train()
    assert (twin.random_mask(8, "cpu", 5).sum(1) == 5).all()
