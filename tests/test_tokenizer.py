"""B-AE tokenizer: config, encode/decode contract, straight-through training pass, GAN pieces, LPIPS, files."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minibigr.gan import (
    PatchDiscriminator,
    adaptive_weight,
    diff_augment,
    generator_adv_loss,
    hinge_d_loss,
    rand_translation,
)
from minibigr.lpips import LPIPS
from minibigr.tokenizer import PRESETS, BinaryAutoencoder, TokenizerConfig

torch.set_num_threads(1)


def tiny_config(**kw) -> TokenizerConfig:
    base = dict(image_size=8, in_channels=3, nf=32, ch_mult=(1, 2), res_blocks=1, attn_resolutions=(4,),
                emb_dim=32, K=8)
    return TokenizerConfig(**{**base, **kw})


def tiny_model(seed=0, **kw) -> BinaryAutoencoder:
    torch.manual_seed(seed)
    return BinaryAutoencoder(tiny_config(**kw)).eval()


def images(cfg, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------
def test_presets_build_and_match_the_spec():
    for name in PRESETS:
        cfg = TokenizerConfig.preset(name)
        assert cfg.image_size % cfg.latent_size == 0
    off = TokenizerConfig.preset("official-256")
    assert (off.nf, off.ch_mult, off.res_blocks, off.attn_resolutions, off.emb_dim, off.K) == \
        (128, (1, 1, 2, 2, 4), 2, (16,), 256, 24)
    assert (off.ndf, off.disc_layers, off.disc_start, off.latent_size, off.image_range) == (64, 3, 30001, 16, "unit")
    assert TokenizerConfig.preset("official-256-d32").K == 32
    fm = TokenizerConfig.preset("fashion-mnist-32")
    assert (fm.in_channels, fm.image_size, fm.latent_size) == (1, 32, 8)
    assert TokenizerConfig.preset("cifar-32").latent_size == 8
    assert TokenizerConfig.preset("imagenet-64").latent_size == 8
    assert TokenizerConfig.preset("imagenet-64-16").latent_size == 16
    assert TokenizerConfig.preset("cifar-32", K=12).K == 12


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="official-256"):
        TokenizerConfig.preset("nope")
    with pytest.raises(ValueError, match="unknown TokenizerConfig fields"):
        TokenizerConfig.preset("cifar-32", bogus=1)


def test_config_dict_round_trip_through_json():
    cfg = TokenizerConfig.preset("imagenet-64", K=20, image_range="symmetric")
    again = TokenizerConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.ch_mult, tuple)


@pytest.mark.parametrize("bad, match", [
    (dict(image_size=9), "divisible"),
    (dict(nf=24), "GroupNorm"),
    (dict(emb_dim=40), "GroupNorm"),
    (dict(image_range="0-255"), "image_range"),
    (dict(K=0), ">= 1"),
])
def test_invalid_configs_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**bad)


# ----------------------------------------------------------------------------------------------
# Encode / decode contract
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [3, 1])
def test_shapes_dtypes_and_ranges(channels):
    tok = tiny_model(in_channels=channels)
    cfg = tok.config
    x = images(cfg, B=3)
    p = tok.encode_probs(x)
    bits = tok.encode(x, generator=torch.Generator().manual_seed(1))
    out = tok.decode(bits)
    assert p.shape == bits.shape == (3, cfg.K, cfg.latent_size, cfg.latent_size)
    assert bits.dtype == p.dtype == out.dtype == torch.float32
    assert ((p > 0) & (p < 1)).all()
    assert set(bits.unique().tolist()) <= {0.0, 1.0}
    assert out.shape == (3, channels, cfg.image_size, cfg.image_size)
    assert out.min() >= 0 and out.max() <= 1


def test_deterministic_encode_thresholds_and_stochastic_encode_uses_the_generator():
    tok = tiny_model()
    x = images(tok.config)
    p = tok.encode_probs(x)
    assert torch.equal(tok.encode(x, deterministic=True), (p > 0.5).float())
    a = tok.encode(x, generator=torch.Generator().manual_seed(7))
    b = tok.encode(x, generator=torch.Generator().manual_seed(7))
    u = torch.rand(p.shape, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert torch.equal(a, (u < p).float())


def test_encode_frequencies_follow_p():
    tok = tiny_model()
    x = images(tok.config, B=1).expand(400, -1, -1, -1)
    p = tok.encode_probs(x[:1])
    freq = tok.encode(x, generator=torch.Generator().manual_seed(3)).mean(0, keepdim=True)
    assert (freq - p).abs().max() < 0.1  # 400 draws: std <= 0.025


def test_symmetric_range_is_handled_inside():
    tok = tiny_model(image_range="symmetric")
    x = images(tok.config)
    with torch.no_grad():
        assert torch.allclose(tok.encode_probs(x), tok.quantize.probs(tok.encoder(2 * x - 1)))
        bits = tok.encode(x, deterministic=True)
        raw = tok.generator(torch.einsum("bkhw,kd->bdhw", bits, tok.quantize.embed.weight))
        assert torch.allclose(tok.decode(bits), ((raw + 1) / 2).clamp(0, 1))


def test_forward_is_decode_of_its_bits_and_reports_stats():
    tok = tiny_model()
    x = images(tok.config)
    recon, stats = tok(x, generator=torch.Generator().manual_seed(2))
    p = stats["p"]
    assert torch.allclose(p, tok.encode_probs(x))
    assert torch.allclose(stats["code_reg"], (p * (1 - p)).mean())
    assert torch.allclose(recon.clamp(0, 1), tok.decode(stats["bits"]), atol=1e-5)  # z + p - p ~ z
    det, det_stats = tok(x, deterministic=True)
    assert torch.equal(det_stats["bits"], (p > 0.5).float())


def test_straight_through_gradient_reaches_the_encoder():
    tok = tiny_model()
    recon, _ = tok(images(tok.config), generator=torch.Generator().manual_seed(0))
    (recon - 0.5).abs().mean().backward()
    for param in (tok.encoder.blocks[0].weight, tok.quantize.proj[0].weight, tok.quantize.embed.weight,
                  tok.last_layer):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert tok.last_layer is tok.decoder.blocks[-1].weight
    assert tok.grid_size == (tok.config.latent_size,) * 2 == tuple(tok.encode_probs(images(tok.config)).shape[2:])


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (2, 1, 8, 8), (2, 3, 8), (2, 3, 8, 4)])
def test_wrong_images_raise(shape):
    tok = tiny_model()
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 8, 8\), got"):
        tok.encode(torch.rand(shape))
    with pytest.raises(ValueError, match="expected images"):
        tok(torch.rand(shape))


@pytest.mark.parametrize("scale, shift", [(255.0, 0.0), (2.0, -1.0)])
def test_images_outside_0_1_raise_with_their_range(scale, shift):
    x = torch.rand(2, 3, 8, 8) * scale + shift
    lo, hi = float(x.min()), float(x.max())
    with pytest.raises(ValueError, match=rf"expected images in \[0, 1\], got values in \[{lo:.3g}, {hi:.3g}\]"):
        tiny_model().encode(x)
    tiny_model().encode(x.clamp(0, 1))                   # the edges themselves are images


def test_integer_images_raise_a_type_error_naming_the_fix():
    x = (torch.rand(2, 3, 8, 8) * 255).to(torch.uint8)
    with pytest.raises(TypeError, match=r"got torch.uint8 \(divide 8-bit images by 255\)"):
        tiny_model().encode(x)
    tiny_model().encode(x / 255)


@pytest.mark.parametrize("shape", [(2, 7, 4, 4), (2, 8, 2, 2), (8, 4, 4)])
def test_wrong_bits_raise(shape):
    with pytest.raises(ValueError, match=r"expected bits of shape \(B, K=8, 4, 4\), got"):
        tiny_model().decode(torch.zeros(shape))


def test_tokens_are_the_grid_in_raster_order():
    """encode_tokens / decode_tokens: (B, N, K) with token n = grid cell (n // w, n % w), the model's currency."""
    tok = tiny_model(seed=2)
    x = images(tok.config, B=3)
    bits = tok.encode(x, deterministic=True)                                       # (3, K, 4, 4)
    tokens = tok.encode_tokens(x, deterministic=True)
    K, (h, w) = tok.config.K, tok.grid_size
    assert tokens.shape == (3, h * w, K)
    for n in (0, 1, w, h * w - 1):
        assert torch.equal(tokens[:, n], bits[:, :, n // w, n % w])
    assert torch.equal(tok.decode_tokens(tokens), tok.decode(bits))
    assert torch.equal(tok.encode_tokens(x, generator=torch.Generator().manual_seed(4)),
                       tok.encode(x, generator=torch.Generator().manual_seed(4)).flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match=rf"expected tokens of shape \(B, N=16, K={K}\), got \(3, {K}, 16\)"):
        tok.decode_tokens(tokens.transpose(1, 2))


def test_reconstruction_loss_falls_when_overfitting_one_batch():
    tok = tiny_model(seed=1).train()
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 8), torch.linspace(0, 1, 8), indexing="ij")
    x = torch.stack([torch.stack([xx, yy, xx * yy]), torch.stack([1 - xx, yy ** 2, 1 - yy]),
                     torch.stack([(xx > 0.5).float(), (yy > 0.5).float(), xx]),
                     torch.stack([yy, 1 - xx * yy, (xx + yy) / 2])])
    opt = torch.optim.Adam(tok.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        recon, _ = tok(x, generator=g)
        loss = (recon - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------
def test_save_and_load_give_identical_outputs(tmp_path):
    tok = tiny_model(seed=3, in_channels=1, image_range="symmetric")
    tok.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    again = BinaryAutoencoder.from_pretrained(tmp_path)
    x = images(tok.config)
    bits = tok.encode(x, deterministic=True)
    assert again.config == tok.config and not again.training
    assert torch.equal(again.encode_probs(x), tok.encode_probs(x))
    assert torch.equal(again.decode(bits), tok.decode(bits))


def test_config_weights_mismatch_is_a_clear_error(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["K"] = 6
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match the config.*quantize"):
        BinaryAutoencoder.from_pretrained(tmp_path)


def test_corrupt_or_missing_files_are_clear_errors(tmp_path):
    tok = tiny_model()
    for name in ("weights", "config"):
        tok.save_pretrained(tmp_path / name)
    weights = tmp_path / "weights" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupt checkpoint weights"):
        BinaryAutoencoder.from_pretrained(tmp_path / "weights")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        BinaryAutoencoder.from_pretrained(tmp_path / "weights")
    config = tmp_path / "config" / "config.json"
    config.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        BinaryAutoencoder.from_pretrained(tmp_path / "config")
    config.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt checkpoint config"):
        BinaryAutoencoder.from_pretrained(tmp_path / "config")


# ----------------------------------------------------------------------------------------------
# GAN pieces
# ----------------------------------------------------------------------------------------------
def _conv_out(n, k, s, p):
    return (n + 2 * p - k) // s + 1


@pytest.mark.parametrize("size, n_layers, channels", [(32, 2, 1), (32, 3, 3), (64, 3, 3), (16, 1, 3)])
def test_patch_discriminator_shape_and_layers(size, n_layers, channels):
    disc = PatchDiscriminator(channels, ndf=8, n_layers=n_layers)
    n = _conv_out(size, 4, 2, 1)
    for _ in range(n_layers - 1):
        n = _conv_out(n, 4, 2, 1)
    n = _conv_out(_conv_out(n, 4, 1, 1), 4, 1, 1)
    assert disc(torch.rand(2, channels, size, size)).shape == (2, 1, n, n)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in disc.modules()) == n_layers
    assert disc.main[0].weight.shape == (8, channels, 4, 4)


@settings(deadline=None, max_examples=20)
@given(st.lists(st.floats(-3, 3), min_size=1, max_size=12), st.lists(st.floats(-3, 3), min_size=1, max_size=12))
def test_hinge_losses_match_their_definitions(real, fake):
    expect = 0.5 * (sum(max(0.0, 1 - r) for r in real) / len(real) + sum(max(0.0, 1 + f) for f in fake) / len(fake))
    got = hinge_d_loss(torch.tensor(real, dtype=torch.float64), torch.tensor(fake, dtype=torch.float64))
    assert got.item() == pytest.approx(expect, abs=1e-12)
    assert generator_adv_loss(torch.tensor(fake, dtype=torch.float64)).item() == pytest.approx(-np.mean(fake))


@settings(deadline=None, max_examples=20)
@given(st.integers(0, 2**31 - 1), st.floats(0.01, 10.0))
def test_adaptive_weight_matches_the_analytic_gradients(seed, max_weight):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, generator=g, dtype=torch.float64).requires_grad_()
    a, b = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    rec = (w @ a) ** 2        # grad 2 (w.a) a
    g_loss = (w * b).sum()    # grad b
    lam = adaptive_weight(rec, g_loss, w, max_weight)
    manual = (2 * (w @ a) * a).norm() / (b.norm() + 1e-4)
    assert not lam.requires_grad
    assert lam.item() == pytest.approx(min(manual.item(), max_weight), rel=1e-9)
    (rec + lam * g_loss).backward()  # the graphs are still there for the real backward pass
    assert w.grad is not None


def test_one_gan_training_step_composes():
    tok = tiny_model().train()
    disc = PatchDiscriminator(3, ndf=8, n_layers=1)
    g = torch.Generator().manual_seed(0)
    x = images(tok.config, B=4)
    recon, _ = tok(x, generator=g)
    rec_loss = (recon - x).abs().mean()
    g_loss = generator_adv_loss(disc(diff_augment(recon, generator=g)))
    lam = adaptive_weight(rec_loss, g_loss, tok.last_layer, tok.config.disc_weight_max)
    (rec_loss + lam * g_loss).backward()
    d_loss = hinge_d_loss(disc(diff_augment(x, generator=g)), disc(diff_augment(recon.detach(), generator=g)))
    d_loss.backward()
    assert 0 <= lam.item() <= tok.config.disc_weight_max and torch.isfinite(d_loss)
    assert tok.encoder.blocks[0].weight.grad.abs().sum() > 0 and disc.main[0].weight.grad.abs().sum() > 0


def test_diff_augment_is_reproducible_and_keeps_shape():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    a = diff_augment(x, generator=torch.Generator().manual_seed(5))
    b = diff_augment(x, generator=torch.Generator().manual_seed(5))
    c = diff_augment(x, generator=torch.Generator().manual_seed(6))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(diff_augment(x, policy=""), x)
    with pytest.raises(ValueError, match="cutmix"):
        diff_augment(x, policy="color,cutmix")


def test_translation_shifts_each_image_with_zero_fill():
    x = torch.rand(6, 2, 16, 16) + 1  # strictly positive, so the zero fill is visible
    out = rand_translation(x, generator=torch.Generator().manual_seed(0))
    s = int(16 * 0.125 + 0.5)
    for i in range(6):
        matches = []
        for dy in range(-s, s + 1):
            for dx in range(-s, s + 1):
                padded = F.pad(x[i], (s, s, s, s))
                shifted = padded[:, s + dy:s + dy + 16, s + dx:s + dx + 16]
                matches.append(torch.equal(out[i], shifted))
        assert sum(matches) == 1


def test_color_augment_is_a_per_image_affine_map():
    x = torch.rand(3, 1, 8, 8)  # one channel: saturation is the identity, the rest is a*x + b per image
    out = diff_augment(x, policy="color", generator=torch.Generator().manual_seed(1))
    for i in range(3):
        A = torch.stack([x[i].flatten(), torch.ones(64)], 1)
        sol = torch.linalg.lstsq(A, out[i].flatten().unsqueeze(1)).solution
        assert torch.allclose(A @ sol, out[i].flatten().unsqueeze(1), atol=1e-5)
        assert 0.5 - 1e-5 <= sol[0].item() <= 1.5 + 1e-5  # contrast factor U(1/2, 3/2)


# ----------------------------------------------------------------------------------------------
# LPIPS (with random weight files in the official layouts; nothing is downloaded)
# ----------------------------------------------------------------------------------------------
VGG_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    vgg, in_ch = {}, 3
    for i, c in zip(VGG_CONVS, VGG_WIDTHS, strict=True):
        vgg[f"features.{i}.weight"] = torch.randn(c, in_ch, 3, 3, generator=g) * (2 / (9 * in_ch)) ** 0.5
        vgg[f"features.{i}.bias"] = torch.randn(c, generator=g) * 0.01
        in_ch = c
    vgg["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files also hold the classifier
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
           for i, c in enumerate([64, 128, 256, 512, 512])}
    root = tmp_path_factory.mktemp("lpips")
    torch.save(vgg, root / "vgg16.pth")
    torch.save(lin, root / "vgg.pth")
    return root / "vgg16.pth", root / "vgg.pth", vgg, lin


def _reference_lpips(a, b, vgg, lin):
    """LPIPS written out from its definition: scaled input, VGG16 taps, unit-normalised, weighted, averaged."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    taps = {3, 8, 15, 22, 29}

    def feats(x):
        x, out = ((x * 2 - 1) - shift) / scale, []
        for i in range(30):
            if f"features.{i}.weight" in vgg:
                x = F.conv2d(x, vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"], padding=1)
            elif i in (4, 9, 16, 23):
                x = F.max_pool2d(x, 2)
            else:
                x = F.relu(x)
            if i in taps:
                out.append(x / (x.norm(dim=1, keepdim=True) + 1e-10))
        return out

    total = 0
    for k, (fa, fb) in enumerate(zip(feats(a), feats(b), strict=True)):
        total = total + ((fa - fb) ** 2 * lin[f"lin{k}.model.1.weight"]).sum(1).mean(dim=(1, 2))
    return total


def test_lpips_matches_its_definition(lpips_files):
    vgg_path, lin_path, vgg, lin = lpips_files
    lp = LPIPS(vgg_path, lin_path)
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    d = lp(a, b)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(d, _reference_lpips(a, b, vgg, lin), rtol=1e-4, atol=1e-6)
    assert torch.allclose(lp(a, a), torch.zeros(2))
    gray = a[:, :1]
    assert torch.allclose(lp(gray, b[:, :1]), lp(gray.expand(-1, 3, -1, -1), b[:, :1].expand(-1, 3, -1, -1)))
    x = a.clone().requires_grad_()
    lp(x, b).sum().backward()
    assert x.grad.abs().sum() > 0 and all(not p.requires_grad for p in lp.parameters())


def test_lpips_needs_its_weights(lpips_files, tmp_path):
    vgg_path, _, _, lin = lpips_files
    with pytest.raises(ValueError, match="nothing is downloaded"):
        LPIPS(None, None)
    with pytest.raises(FileNotFoundError):
        LPIPS(tmp_path / "missing.pth", tmp_path / "missing.pth")
    partial = {k: v for k, v in lin.items() if not k.startswith("lin4")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing"):
        LPIPS(vgg_path, tmp_path / "partial.pth")
