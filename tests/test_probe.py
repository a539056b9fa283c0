"""The linear probe: it fits separable features, picks the block from the train split only, and its
block features are exactly BiGR.features."""

import pytest
import torch

from minibigr import BiGRPipeline, probe
from minibigr.model import BiGR, BiGRConfig


def separable(n: int, d: int, C: int, seed: int, noise: float = 0.3):
    """Class means far apart in d dimensions plus noise: linearly separable with a wide margin."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(C, d, generator=torch.Generator().manual_seed(0)) * 4
    y = torch.randint(0, C, (n,), generator=g)
    return means[y] + noise * torch.randn(n, d, generator=g), y


def layered(n: int, seed: int):
    """Three 'blocks': pure noise, weakly informative, separable."""
    x, y = separable(n, 6, 4, seed)
    g = torch.Generator().manual_seed(seed + 100)
    noise = torch.randn(n, 6, generator=g)
    return {0: noise, 1: x * 0.1 + 2 * torch.randn(n, 6, generator=g), 2: x}, y


def test_linear_classifier_separates_separable_features():
    x, y = separable(400, 8, 5, 1)
    xt, yt = separable(200, 8, 5, 2)
    clf = probe.fit_linear(x, y, 5, l2=1e-4)
    acc = probe.topk_accuracy(clf.logits(xt), yt)
    assert acc["top1"] >= 0.99 and acc["top5"] == 1.0
    assert clf.weight.shape == (8, 5)


def test_topk_accuracy_counts_ranks():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    assert probe.topk_accuracy(logits, torch.tensor([1, 2]), ks=(1, 2)) == {"top1": 0.5, "top2": 1.0}


def test_probe_chooses_the_separable_block_and_never_looks_at_the_test_split():
    train, y = layered(600, 3)
    test, yt = layered(300, 4)
    result = probe.linear_probe(train, y, test, yt)
    assert result["layer"] == 2 and result["test"]["top1"] >= 0.99
    assert result["heldout"][2] > result["heldout"][1] > result["heldout"][0]
    shuffled = yt[torch.randperm(len(yt), generator=torch.Generator().manual_seed(0))]
    again = probe.linear_probe(train, y, test, shuffled)
    assert again["layer"] == result["layer"] and again["heldout_l2"] == result["heldout_l2"]
    assert again["test"]["top1"] < 0.5
    # making the test features of the chosen block useless does not move the choice either
    spoiled = {**test, 2: torch.zeros_like(test[2])}
    assert probe.linear_probe(train, y, spoiled, yt)["layer"] == 2


def test_l2_is_chosen_on_the_held_out_split():
    # few samples in many noisy dimensions: a strong penalty generalises better than a weak one
    x, y = separable(60, 200, 2, 5, noise=8.0)
    layer, l2, scores = probe.select_layer({0: x}, y, holdout=0.3, l2s=(1e-4, 1.0))
    assert layer == 0 and scores[0][l2] == max(scores[0].values()) and set(scores[0]) == {1e-4, 1.0}


def test_holdout_split_is_a_seeded_partition():
    fit, out = probe.holdout_split(50, 0.1, seed=1)
    assert len(out) == 5 and sorted(torch.cat([fit, out]).tolist()) == list(range(50))
    assert torch.equal(out, probe.holdout_split(50, 0.1, seed=1)[1])
    with pytest.raises(ValueError):
        probe.holdout_split(50, 1.5)


def test_parse_layers():
    assert probe.parse_layers("all", 3) == [0, 1, 2]
    assert probe.parse_layers("2,-1,0", 4) == [0, 2, 3]
    for bad in ("5", "x", ""):
        with pytest.raises(ValueError):
            probe.parse_layers(bad, 4)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = BiGR(BiGRConfig.preset("tiny-32", K=6, num_tokens=16, dim=32, n_layer=3, n_head=2,
                                   transcoder_width=32, transcoder_blocks=1))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


def test_block_features_equal_model_features(tiny):
    tokens = torch.randint(0, 2, (5, 16, 6), generator=torch.Generator().manual_seed(0)).float()
    feats = probe.block_features(tiny, tokens, [0, 2, 1])
    assert sorted(feats) == [0, 1, 2]
    for layer, f in feats.items():
        torch.testing.assert_close(f, tiny.features(tokens, layer=layer))
    assert not any(block._forward_hooks for block in tiny.backbone.layers)
    labels = torch.tensor([0, 3, 1, 2, 0])
    with_class = probe.block_features(tiny, tokens, [1, 0], labels=labels)
    for layer, f in with_class.items():
        torch.testing.assert_close(f, tiny.features(tokens, layer=layer, labels=labels))
        assert not torch.allclose(f, feats[layer])         # the class token changes the features


def test_extract_features_and_pixels_on_a_tiny_dataset(tiny):
    from minibigr.data import ArrayDataset
    from minibigr.tokenizer import BinaryAutoencoder, TokenizerConfig

    tok = BinaryAutoencoder(TokenizerConfig.preset("fashion-mnist-32", image_size=16, nf=32, ch_mult=(1, 1, 1),
                                                   emb_dim=32, K=6, attn_resolutions=())).eval()
    g = torch.Generator().manual_seed(1)
    data = ArrayDataset(torch.randint(0, 256, (30, 1, 16, 16), generator=g, dtype=torch.uint8).numpy(),
                        torch.randint(0, 3, (30,), generator=g).numpy(), ["a", "b", "c"])
    pipe = BiGRPipeline(tok, tiny)
    feats, y = probe.extract_features(pipe, data, [1, 2], batch_size=7, limit=20)
    assert sorted(feats) == [1, 2] and feats[1].shape == (20, 32) and torch.equal(y, torch.from_numpy(data.labels[:20]))
    px, py = probe.pixel_features(data, limit=20, batch_size=6)
    assert px.shape == (20, 256) and torch.equal(py, y)
    torch.testing.assert_close(feats[1][:4], tiny.features(pipe.encode(data.get_batch(range(4))[0]), layer=1))
    result = probe.probe_model(pipe, data, data, layers=[0, 2], limit=30, batch_size=16, max_iter=20)
    assert result["layer"] in (0, 2) and set(result["pixels"]) == {"heldout", "l2", "test"}
    # one probe per pooling; the chosen one has the best held-out score, whatever its test score
    assert set(result["pools"]) == {"mean", "2x2"}
    best = {name: max(r["heldout"].values()) for name, r in result["pools"].items()}
    assert best[result["pool"]] == max(best.values())
    assert result["test"] == result["pools"][result["pool"]]["test"]
    assert result["pools"]["2x2"]["heldout_l2"].keys() == {0, 2}
    text = probe.format_probe(result)
    assert "chosen" in text and "pixels" in text and "top-5" in text and "2x2" in text and "mean" in text


def test_region_pooling_averages_each_cell_of_the_token_grid():
    h = torch.randn(3, 16, 5, generator=torch.Generator().manual_seed(0))      # a 4 x 4 grid of 5-d tokens
    torch.testing.assert_close(probe.pool_tokens(h, 1), h.mean(1))
    cells = probe.pool_tokens(h, 2).reshape(3, 5, 2, 2)
    grid = h.reshape(3, 4, 4, 5)
    torch.testing.assert_close(cells[..., 0, 1], grid[:, :2, 2:].mean((1, 2)))   # top-right cell
    torch.testing.assert_close(cells[..., 1, 0], grid[:, 2:, :2].mean((1, 2)))   # bottom-left cell
    fine = probe.pool_tokens(h, 4)
    assert torch.equal(fine, h.transpose(1, 2).reshape(3, -1))                    # one token per cell
    torch.testing.assert_close(probe.regroup(fine, 4, 2), probe.pool_tokens(h, 2))
    torch.testing.assert_close(probe.regroup(fine, 4, 1), h.mean(1))
    with pytest.raises(ValueError, match="square token grid"):
        probe.pool_tokens(h, 3)
    with pytest.raises(ValueError, match="cannot be made"):
        probe.regroup(fine, 4, 3)


def test_parse_pools():
    assert probe.parse_pools("mean,2x2", 64) == [1, 2]
    assert probe.parse_pools("4x4, mean, 2x2", 64) == [1, 2, 4]
    for bad, message in (("2x3", "square grids"), ("avg", "square grids"), ("3x3", "does not split"),
                         ("", "does not split")):
        with pytest.raises(ValueError, match=message):
            probe.parse_pools(bad, 64)
    with pytest.raises(ValueError, match="does not split"):
        probe.parse_pools("2x2", 8)                      # 8 tokens are no square grid


def test_block_features_with_regions_pool_the_hidden_states(tiny):
    tokens = torch.randint(0, 2, (4, 16, 6), generator=torch.Generator().manual_seed(2)).float()
    mean, cells = probe.block_features(tiny, tokens, [1]), probe.block_features(tiny, tokens, [1], regions=2)
    assert cells[1].shape == (4, 32 * 4)
    torch.testing.assert_close(probe.regroup(cells[1], 2, 1), mean[1])
