"""benchmarks/vs_official.py: the restated authors' loop loads minibigr's weights and computes the same thing."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.official_restated import OfficialBiGR
from benchmarks.vs_official import check, multiply_adds, restated
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


def attention_flops(query_shape, key_shape, *args, **kwargs) -> int:
    """Q K^T and the weighted sum of V: 2 x 2 B H Lq Lk E flops (FlopCounterMode does not count the CPU kernel)."""
    B, H, Lq, E = query_shape
    return 4 * B * H * Lq * key_shape[2] * E


@pytest.mark.parametrize("overrides", [{}, {"num_tokens": 16, "K": 8}])
def test_the_printed_multiply_adds_are_what_the_two_sampling_loops_compute(overrides):
    """multiply_adds (the README's work ratio) against the matmuls torch counts while each loop samples: within 3 %
    (the formula leaves out the token and class embeddings and the chain's once-per-call embeddings)."""
    model = lively(**overrides)
    twin, I, S, labels = restated(model), 4, 6, torch.tensor([1, 2])
    counted = []
    for sample in (lambda: model.generate(labels, num_iter=I, diffusion_steps=S, cfg=3.0, order="confidence",
                                          gumbel=0.03, generator=torch.Generator().manual_seed(0)),
                   lambda: twin.generate(labels, num_iter=I, cfg_scale=3.0, gumbel_temp=0.03, steps=S)):
        with FlopCounterMode(display=False, custom_mapping={
                torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention_flops}) as flops:
            sample()
        counted.append(flops.get_total_flops() / 2 / len(labels))          # multiply-adds per image
    predicted = multiply_adds(model.config, I, S)
    for c, p in zip(counted, predicted, strict=True):
        assert abs(c / p - 1) < 0.03
    assert predicted[1] / predicted[0] > 1.5                                  # the authors' loop does more work
