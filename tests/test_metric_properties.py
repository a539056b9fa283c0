"""The metrics' conventions and properties on random shapes and scales: FD, precision / recall, PSNR, SSIM and the
Inception Score against exact references (float64 brute force, np.cov, a nuclear norm, scipy's sqrtm as
pytorch-fid takes it), and the invariances every implementation of them has."""

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minibigr import evaluate as ev

SETTINGS = settings(deadline=None, max_examples=25)
seeds = st.integers(0, 2**31 - 1)


def brute_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """k-NN precision / recall from exact pairwise distances in float64 (numpy, no expansion)."""
    def radii(x):
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, k]

    def coverage(ref, r, query):
        d = np.sqrt(((query[:, None] - ref[None]) ** 2).sum(-1))
        return float((d <= r[None]).any(1).mean())

    return coverage(real, radii(real), fake), coverage(fake, radii(fake), real)


@SETTINGS
@given(seed=seeds, n=st.integers(8, 40), d=st.integers(1, 16), offset=st.sampled_from([0.0, 1e3, 1e5]),
       scale=st.sampled_from([1e-2, 1.0, 30.0]))
def test_precision_recall_match_exact_distances_at_any_offset_and_scale(seed, n, d, offset, scale):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n, d)) * scale + offset
    fake = rng.normal(size=(n + 3, d)) * scale * 1.3 + offset + 0.3 * scale
    ours = ev.precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=3)
    assert ours == pytest.approx(brute_precision_recall(real, fake, 3), abs=1e-12)
    # float32 features a long way from the origin give the same as near it
    shifted = ev.precision_recall(torch.from_numpy(real - offset), torch.from_numpy(fake - offset), k=3)
    assert ours == pytest.approx(shifted, abs=1e-12)


@SETTINGS
@given(seed=seeds, n=st.integers(5, 60), d=st.integers(1, 8))
def test_precision_recall_of_a_set_with_itself_are_one(seed, n, d):
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=(n, d)) * 1e4 + 1e5)
    assert ev.precision_recall(x, x.clone(), k=3) == (1.0, 1.0)


@SETTINGS
@given(seed=seeds, d=st.integers(1, 10), offset=st.sampled_from([0.0, 1e3, 1e5]), chunks=st.integers(1, 5))
def test_running_stats_match_np_cov_at_large_offsets(seed, d, offset, chunks):
    x = np.random.default_rng(seed).normal(size=(400, d)) + offset
    stats = ev.RunningStats()
    for part in np.array_split(x, chunks):
        stats.update(torch.from_numpy(part))
    # two summation orders agree to rounding of the values summed, not of a mean that happens to lie near zero
    np.testing.assert_allclose(stats.mean.numpy(), x.mean(0), rtol=1e-12, atol=1e-14 * (offset + 1))
    np.testing.assert_allclose(stats.cov.numpy(), np.cov(x, rowvar=False).reshape(d, d), rtol=1e-9, atol=1e-12)


def test_fd_is_exact_for_features_far_from_the_origin():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16)) * 1.1
    near = ev.RunningStats().update(torch.from_numpy(x)).frechet_distance(ev.RunningStats().update(torch.from_numpy(y)))
    far = ev.RunningStats().update(torch.from_numpy(x + 1e5)).frechet_distance(
        ev.RunningStats().update(torch.from_numpy(y + 1e5)))
    assert far == pytest.approx(near, rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_fd_square_root_of_near_singular_covariances_beats_scipy_sqrtm(seed):
    """C1 = A A^T and C2 = B B^T of rank r < d: tr (C1 C2)^(1/2) is exactly the nuclear norm of the r x r matrix
    A^T B. minibigr's value is no further from it than pytorch-fid's (scipy.linalg.sqrtm of C1 C2)."""
    rng = np.random.default_rng(seed)
    d, r = 96, 64
    a, b = rng.normal(size=(d, r)) * 0.3, rng.normal(size=(d, r)) * 0.3
    c1, c2 = a @ a.T, b @ b.T
    exact = np.linalg.svd(a.T @ b, compute_uv=False).sum()
    zero = torch.zeros(d, dtype=torch.float64)
    fd = ev.frechet_distance(zero, torch.from_numpy(c1), zero, torch.from_numpy(c2))
    ours = (np.trace(c1) + np.trace(c2) - fd) / 2
    theirs = np.trace(scipy.linalg.sqrtm(c1 @ c2)).real
    assert abs(ours - exact) <= abs(theirs - exact) + 1e-9
    assert abs(ours - exact) < 1e-6 * exact


@SETTINGS
@given(seed=seeds, d=st.integers(1, 12), n=st.integers(3, 50))
def test_fd_is_symmetric_and_zero_for_the_same_statistics(seed, d, n):
    rng = np.random.default_rng(seed)
    x, y = (torch.from_numpy(rng.normal(size=(n, d)) * rng.uniform(0.1, 10) + rng.uniform(-1e3, 1e3))
            for _ in range(2))
    sx, sy = ev.RunningStats().update(x), ev.RunningStats().update(y)
    scale = float(sx.cov.trace() + sy.cov.trace() + (sx.mean - sy.mean).square().sum())
    assert sx.frechet_distance(sy) == pytest.approx(sy.frechet_distance(sx), abs=1e-9 * scale)
    assert abs(sx.frechet_distance(sx)) <= 1e-9 * scale
    assert sx.frechet_distance(sy) >= -1e-9 * scale


images = st.tuples(seeds, st.integers(1, 3), st.sampled_from([1, 3]), st.integers(4, 24))


@SETTINGS
@given(spec=images)
def test_psnr_and_ssim_are_symmetric_and_maximal_for_identical_images(spec):
    seed, B, C, size = spec
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(B, C, size, size, generator=g), torch.rand(B, C, size, size, generator=g)
    torch.testing.assert_close(ev.psnr(x, y), ev.psnr(y, x))
    torch.testing.assert_close(ev.ssim(x, y), ev.ssim(y, x))
    assert torch.isinf(ev.psnr(x, x)).all() and (ev.psnr(x, y) < torch.inf).all()
    torch.testing.assert_close(ev.ssim(x, x), torch.ones(B))
    assert (ev.ssim(x, y) < 1).all()


@SETTINGS
@given(spec=images)
def test_psnr_and_ssim_read_uint8_images_on_their_own_scale(spec):
    seed, B, C, size = spec
    g = torch.Generator().manual_seed(seed)
    x, y = (torch.randint(0, 256, (B, C, size, size), generator=g, dtype=torch.uint8) for _ in range(2))
    torch.testing.assert_close(ev.psnr(x, y), ev.psnr(x.double() / 255, y.double() / 255))
    torch.testing.assert_close(ev.ssim(x, y), ev.ssim(x.double() / 255, y.double() / 255))


def test_psnr_and_ssim_refuse_images_off_the_unit_range():
    x = torch.rand(1, 1, 8, 8) * 255
    for metric in (ev.psnr, ev.ssim):
        with pytest.raises(ValueError, match=r"must be in \[0, 1\].*uint8"):
            metric(x, x)
        with pytest.raises(ValueError, match="float in"):
            metric(x.long(), x.long())
    # the case: 8-bit images scored as uint8 give the PSNR of the same images in [0, 1]
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (1, 3, 16, 16), generator=g, dtype=torch.uint8)
    b = (a.int() + torch.randint(-12, 13, a.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    assert float(ev.psnr(a, b)) == pytest.approx(float(ev.psnr(a / 255, b / 255)))
    assert 20 < float(ev.psnr(a, b)) < 40


@SETTINGS
@given(seed=seeds, n=st.integers(10, 60), classes=st.integers(2, 20), splits=st.sampled_from([1, 2, 10]))
def test_inception_score_of_identical_rows_is_one_and_stays_between_one_and_the_class_count(seed, n, classes, splits):
    logits = torch.from_numpy(np.random.default_rng(seed).normal(size=(n, classes)) * 4)
    same = logits[:1].expand(n, -1)
    assert ev.inception_score(same, splits=splits) == pytest.approx((1.0, 0.0), abs=1e-12)
    mean, std = ev.inception_score(logits, splits=splits)
    assert 1 - 1e-12 <= mean <= classes + 1e-9 and std >= 0
