"""Evaluation metrics: Frechet distance, precision / recall, SSIM, Inception Score, the classifier and the
streaming evaluation."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minibigr import classifier as cl
from minibigr import evaluate as ev
from minibigr import inception as inc
from minibigr.data import ArrayDataset
from minibigr.pipeline import BiGRPipeline


def spd(d: int, generator: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


# -- Frechet distance ---------------------------------------------------------------------------
def test_fd_of_a_set_with_itself_is_zero():
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    stats = ev.RunningStats().update(x)
    assert abs(stats.frechet_distance(stats)) < 1e-8


@settings(deadline=None, max_examples=20)
@given(d=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_fd_of_gaussians_matches_the_closed_forms(d, seed):
    g = torch.Generator().manual_seed(seed)
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    c = spd(d, g)
    # same covariance: only the shift counts
    assert ev.frechet_distance(mu1, c, mu2, c) == pytest.approx(float((mu1 - mu2).square().sum()), abs=1e-8)
    # diagonal covariances: sum (sqrt a - sqrt b)^2 + shift
    a, b = torch.rand(d, generator=g, dtype=torch.float64) + 0.1, torch.rand(d, generator=g, dtype=torch.float64)
    expected = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    assert ev.frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    # general covariances: tr (C1 C2)^(1/2) from the (real, non-negative) eigenvalues of C1 C2
    c2 = spd(d, g)
    tr_sqrt = torch.linalg.eigvals(c @ c2).real.clamp_min(0).sqrt().sum()
    expected = float((mu1 - mu2).square().sum() + c.trace() + c2.trace() - 2 * tr_sqrt)
    assert ev.frechet_distance(mu1, c, mu2, c2) == pytest.approx(expected, rel=1e-6, abs=1e-8)


def test_fd_of_a_shifted_sample_is_the_squared_shift():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 8, generator=g)
    shift = torch.randn(8, generator=g)
    fd = ev.RunningStats().update(x).frechet_distance(ev.RunningStats().update(x + shift))
    assert fd == pytest.approx(float(shift.double().square().sum()), rel=1e-5)


def test_running_stats_in_chunks_equal_the_one_shot_statistics():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(1000, 10, generator=g) * 3 + 1, torch.randn(700, 10, generator=g)
    chunked = ev.RunningStats()
    for part in x.split(77):
        chunked.update(part)
    one = ev.RunningStats().update(x)
    torch.testing.assert_close(chunked.mean, x.double().mean(0))
    torch.testing.assert_close(chunked.cov, torch.from_numpy(np.cov(x.double().numpy(), rowvar=False)))
    other = ev.RunningStats().update(y)
    assert chunked.frechet_distance(other) == pytest.approx(one.frechet_distance(other), rel=1e-9)
    x64 = x.double()
    direct = ev.frechet_distance(x64.mean(0), torch.cov(x64.T), y.double().mean(0), torch.cov(y.double().T))
    assert chunked.frechet_distance(other) == pytest.approx(direct, rel=1e-9)


def test_fd_rejects_mismatched_widths():
    with pytest.raises(ValueError, match="width"):
        ev.RunningStats().update(torch.zeros(3, 4)).update(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="mismatched"):
        ev.frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))


# -- precision / recall -----------------------------------------------------------------------------
def test_precision_recall_of_identical_and_disjoint_clouds():
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(3))
    assert ev.precision_recall(x, x.clone()) == (1.0, 1.0)
    assert ev.precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_precision_recall_see_mode_dropping():
    g = torch.Generator().manual_seed(4)
    real = torch.cat([torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g) + 50])
    fake = torch.randn(600, 2, generator=g)                     # only the first of the two modes
    precision, recall = ev.precision_recall(real, fake)
    assert precision > 0.9 and 0.35 < recall < 0.65


def test_knn_radii_are_the_kth_neighbour_distance():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    torch.testing.assert_close(ev.knn_radii(x, k=1), torch.tensor([1.0, 1.0, 2.0, 3.0]))
    torch.testing.assert_close(ev.knn_radii(x, k=2), torch.tensor([3.0, 2.0, 3.0, 5.0]))


# -- SSIM, PSNR, IS ------------------------------------------------------------------------------
def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 32, 32, generator=g)
    torch.testing.assert_close(ev.ssim(x, x), torch.ones(2))
    values = [float(ev.ssim(x, (x + s * torch.randn(x.shape, generator=g)).clamp(0, 1)).mean())
              for s in (0.02, 0.1, 0.3)]
    assert 1 > values[0] > values[1] > values[2]
    assert ev.ssim(torch.rand(1, 1, 6, 6, generator=g), torch.rand(1, 1, 6, 6, generator=g)).shape == (1,)


def test_inception_score_bounds_and_splits():
    confident = torch.eye(10) * 50                     # every class once, each predicted with certainty
    assert ev.inception_score(confident, splits=1) == pytest.approx((10, 0), rel=1e-4)
    assert ev.inception_score(torch.zeros(20, 10)) == pytest.approx((1.0, 0.0))
    # ten splits of a stream: sample i in split i mod 10, each split scored on its own, then mean and std (ddof 0)
    logits = torch.randn(95, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    by_hand = [ev.inception_score(logits[k::10], splits=1)[0] for k in range(10)]
    assert ev.inception_score(logits) == pytest.approx((np.mean(by_hand), np.std(by_hand)), rel=1e-12)
    sums = ev.ScoreSums()
    for part in logits.split(13):
        sums.update(part)
    assert sums.score == pytest.approx(ev.inception_score(logits), rel=1e-12)
    assert sums.score_one_split == pytest.approx(ev.inception_score(logits, splits=1)[0], rel=1e-12)
    with pytest.raises(ValueError, match="at least 10 samples"):
        ev.inception_score(logits[:9])


def test_inception_loads_a_state_dict_file_and_gives_pool_features_and_logits(tmp_path):
    torch.manual_seed(0)
    net = inc.InceptionV3()
    state = net.state_dict()
    # names and shapes of the pytorch-fid port (pt_inception-2015-12-05)
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_6b.branch7x7dbl_5.conv.weight"].shape == (192, 128, 1, 7)
    assert state["Mixed_7c.branch3x3dbl_1.bn.running_var"].shape == (448,)
    assert state["fc.weight"].shape == (1008, 2048)
    assert not any(k.startswith("AuxLogits") for k in state)
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, tmp_path / "fid.pth")
    inception = inc.InceptionFeatures(tmp_path / "fid.pth", chunk=1)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    feats, logits = inception(x)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008) and (feats >= 0).all()
    with torch.no_grad():
        expected, _ = net.eval()(x.expand(-1, 3, -1, -1))
    torch.testing.assert_close(feats, expected)
    # the Inception Score's logits: the fc layer without its bias (the bias is non-zero in the file)
    assert state["fc.bias"].abs().sum() > 0
    torch.testing.assert_close(logits, feats @ state["fc.weight"].T)


def test_the_inception_crosscheck_benchmark_imports_and_its_weights_load(tmp_path):
    """benchmarks/inception_crosscheck.py needs pytorch-fid to compare; its own half (minibigr's names, the
    randomised state dict in the file's format, loading it) runs here, so the script cannot rot."""
    from benchmarks import inception_crosscheck as check

    state = check.randomised(inc.InceptionV3().state_dict(), torch.Generator().manual_seed(0))
    assert not any(k.endswith("num_batches_tracked") for k in state)
    assert all((v > 0).all() for k, v in state.items() if k.endswith("running_var"))
    torch.save(state, tmp_path / "random.pth")
    feats, logits = check.InceptionFeatures(tmp_path / "random.pth")(torch.rand(1, 3, 16, 16))
    assert feats.shape == (1, 2048) and logits.shape == (1, 1008)


def test_inception_file_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        inc.InceptionFeatures(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable Inception weights file"):
        inc.InceptionFeatures(tmp_path / "junk.pth")
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing"):
        inc.InceptionFeatures(tmp_path / "partial.pth")


# -- the classifier ------------------------------------------------------------------------------
def bars(n: int, seed: int) -> ArrayDataset:
    """Two classes of 16x16 images: a bright horizontal (0) or vertical (1) bar at a random place, in noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(n, 1, 16, 16)).astype(np.uint8)
    labels = rng.integers(0, 2, size=n)
    where = rng.integers(2, 14, size=n)
    for i in range(n):
        if labels[i]:
            images[i, 0, :, where[i] - 1:where[i] + 1] = 255
        else:
            images[i, 0, where[i] - 1:where[i] + 1, :] = 255
    return ArrayDataset(images, labels, ["horizontal", "vertical"])


@pytest.fixture(scope="module")
def trained():
    settings_ = cl.ClassifierSettings(epochs=4, batch_size=32, lr=3e-3)
    return cl.train_classifier(bars(512, 0), bars(128, 1), cl.ClassifierConfig(1, 16, 2, width=8), settings_)


def test_classifier_learns_and_its_cache_round_trips(trained, tmp_path):
    model, info = trained
    assert info["test_accuracy"] > 0.8
    cl.save_classifier(model, tmp_path / "clf", info)
    again = cl.Classifier.from_pretrained(tmp_path / "clf")
    x, _ = bars(8, 2).get_batch(np.arange(8))
    for a, b in zip(model.extract(x), again.extract(x), strict=True):
        torch.testing.assert_close(a, b)
    loaded, loaded_info = cl.load_or_train_classifier("bars", path=tmp_path / "clf")
    assert loaded_info["test_accuracy"] == info["test_accuracy"] and not loaded.training
    with pytest.raises(ValueError, match="shape"):
        model.extract(torch.zeros(1, 3, 16, 16))


def test_classifier_training_is_deterministic_under_a_seed():
    settings_ = cl.ClassifierSettings(epochs=1, batch_size=32, limit=64, seed=7)
    a, _ = cl.train_classifier(bars(64, 0), config=cl.ClassifierConfig(1, 16, 2, width=8), settings=settings_)
    b, _ = cl.train_classifier(bars(64, 0), config=cl.ClassifierConfig(1, 16, 2, width=8), settings=settings_)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_classifier_cache_lives_under_the_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cl.classifier_dir("fashion-mnist") == tmp_path / "minibigr" / "classifiers" / "fashion-mnist"


def test_fashion_mnist_uses_the_shipped_classifier_without_data_or_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cl, "load_dataset", lambda *a, **k: pytest.fail("the shipped classifier needs no data"))
    model, info = cl.load_or_train_classifier("fashion-mnist")
    assert info["dataset"] == "fashion-mnist" and info["test_accuracy"] > 0.9 and not model.training
    assert (model.config.in_channels, model.config.image_size, model.config.num_classes) == (1, 32, 10)
    assert not (tmp_path / "minibigr").exists()
    assert cl.shipped_classifier_dir("bars") is None


# -- the streaming evaluation ----------------------------------------------------------------------
def test_summaries_keep_fixed_memory_and_match_one_shot(trained):
    model, _ = trained
    data = bars(96, 3)
    summary = ev.summarize_dataset(model.extract, data, batch_size=10, knn_cap=25)
    feats, logits = model.extract(data.get_batch(np.arange(96))[0])
    assert summary.stats.n == 96 and summary.n_kept == 25 and summary.subset.shape == (25, feats.shape[1])
    torch.testing.assert_close(summary.stats.mean, feats.double().mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(summary.stats.cov, torch.cov(feats.double().T), rtol=1e-4, atol=1e-6)
    assert summary.accuracy == pytest.approx(float((logits.argmax(1) == torch.from_numpy(data.labels)).float().mean()))


def test_a_cached_summary_is_read_back_and_keyed_by_images_settings_and_weights(trained, tmp_path):
    """The second call reads the file instead of featurising the set (the extractor sees only the key's 8 images)
    and gives the same summary; other images, settings or weights make another file."""
    import copy

    model, _ = trained
    data, seen = bars(60, 4), []

    def extract(x):
        seen.append(len(x))
        return model.extract(x)

    first = ev.cached_summary(extract, data, tmp_path, knn_cap=20, seed=1)
    assert sum(seen) == 8 + 60
    seen.clear()
    again = ev.cached_summary(extract, data, tmp_path, knn_cap=20, seed=1)
    assert seen == [8]
    assert again.stats.n == 60 and torch.equal(again.stats.sum, first.stats.sum)
    assert torch.equal(again.stats.outer, first.stats.outer) and torch.equal(again.subset, first.subset)
    assert (again.n_kept, again.accuracy, again.scores.score) == (20, first.accuracy, first.scores.score)
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    ev.cached_summary(extract, bars(60, 5), tmp_path, knn_cap=20, seed=1)
    ev.cached_summary(extract, data, tmp_path, knn_cap=20, seed=2)
    ev.cached_summary(other.extract, data, tmp_path, knn_cap=20, seed=1)
    assert len(list(tmp_path.glob("*.safetensors"))) == 4
    pixels = lambda x: (x.flatten(1)[:, :8], None)  # noqa: E731  (Inception's place: no k-NN subset, no logits)
    summaries = [ev.cached_summary(pixels, data, tmp_path, knn_cap=0) for _ in range(2)]
    assert summaries[1].n_kept == 0 and torch.equal(summaries[1].stats.outer, summaries[0].stats.outer)
    assert len(list(tmp_path.glob("*.safetensors"))) == 5 and not list(tmp_path.glob("*.tmp"))


def test_evaluate_generator_on_a_tiny_model_is_deterministic(tmp_path):
    from minibigr.model import BiGR, BiGRConfig
    from minibigr.tokenizer import BinaryAutoencoder, TokenizerConfig

    torch.manual_seed(0)
    tok = BinaryAutoencoder(TokenizerConfig.preset("fashion-mnist-32", image_size=16, nf=32, ch_mult=(1, 1, 1),
                                                   emb_dim=32, K=6, attn_resolutions=())).eval()
    model = BiGR(BiGRConfig.preset("tiny-32", K=6, num_tokens=16, num_classes=2, dim=32, n_layer=2, n_head=2,
                                   transcoder_width=32, transcoder_blocks=1,
                                   sampling=dict(num_iter=2, diffusion_steps=2))).eval()
    pipe = BiGRPipeline(tok, model)
    clf = cl.Classifier(cl.ClassifierConfig(1, 16, 2, width=8)).eval()
    kwargs = dict(num_samples=12, seed=3, batch_size=5, knn_cap=10)
    a = ev.evaluate_generator(pipe, bars(40, 0), bars(20, 1), clf.extract, **kwargs)
    b = ev.evaluate_generator(pipe, bars(40, 0), bars(20, 1), clf.extract, **kwargs)
    a.pop("seconds_per_image"), b.pop("seconds_per_image")
    assert a == b
    for _ in range(2):                           # writes the train split's summary, then reads it back
        cached = ev.evaluate_generator(pipe, bars(40, 0), bars(20, 1), clf.extract, cache=tmp_path, **kwargs)
        cached.pop("seconds_per_image")
        assert cached == a and len(list(tmp_path.glob("*.safetensors"))) == 1
    assert a["samples"] == 12 and a["reference"]["test_images"] == 12 and a["reference"]["train_images"] == 40
    assert a["knn_points"] == 10 and math.isfinite(a["fd"]) and 0 <= a["class_accuracy"] <= 1
    # a second, pluggable extractor (Inception's place) adds its FD and Inception Score
    pixels = lambda x: (x.flatten(1)[:, :8], x.flatten(1)[:, :5])  # noqa: E731
    c = ev.evaluate_generator(pipe, bars(40, 0), bars(20, 1), clf.extract, inception=pixels, **kwargs)
    assert c["fd"] == a["fd"] and math.isfinite(c["inception"]["fd"]) and c["inception"]["inception_score"] >= 1


# -- calibration of the transcoder --------------------------------------------------------------
@pytest.mark.parametrize("objective", ["flip", "x0"])
def test_calibration_of_a_denoiser_with_a_known_output(objective):
    """A denoiser whose last layer outputs one logit everywhere predicts one flip probability q for every bit (flip:
    sigmoid(l); x0: P(z_0 = 1) = sigmoid(l), read through z_t); the bits of z_t flip at the forward process's rate,
    b_t at step t, so the ECE is |q - mean over t of b_t| and each range of t observes its own mean b_t."""
    from minibigr.model import BiGR, BiGRConfig

    torch.manual_seed(0)
    model = BiGR(BiGRConfig.preset("tiny-32", K=8, num_tokens=16, num_classes=3, dim=32, n_layer=1, n_head=2,
                                   transcoder_width=32, transcoder_blocks=1, objective=objective))
    logit = math.log(0.3 / 0.7)
    with torch.no_grad():
        model.transcoder.denoiser.final_layer.linear.weight.zero_()
        model.transcoder.denoiser.final_layer.linear.bias.fill_(logit)
    g = torch.Generator().manual_seed(1)
    tokens, labels = (torch.rand(600, 16, 8, generator=g) < 0.4).float(), torch.randint(0, 3, (600,), generator=g)
    report = ev.transcoder_calibration(model, tokens, labels, batch_size=100, t_bins=4)
    b = model.transcoder.b[1:].double()                                   # b_t for t = 1..T
    if objective == "flip":
        expected_flip = float(b.mean())
        assert report["ece"] == pytest.approx(abs(0.3 - expected_flip), abs=0.01)
        assert [row["bits"] for row in report["by_probability"] if row["bits"]] == [report["bits"]]   # one bin: 0.3
    for row, part in zip(report["by_t"], b.chunk(4), strict=True):
        assert row["observed"] == pytest.approx(float(part.mean()), abs=0.02)
        if objective == "flip":
            assert row["predicted"] == pytest.approx(0.3, abs=1e-6)
    with pytest.raises(ValueError, match="direct"):
        model.transcoder.objective = "direct"
        ev.transcoder_calibration(model, tokens[:10], labels[:10])
