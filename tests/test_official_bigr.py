"""Loading the authors' BiGR checkpoints: layout round trip, size inference, errors, and an
independent re-implementation of the official forward pass on an official-layout state dict."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minibigr.backbone import Backbone
from minibigr.model import BiGR, BiGRConfig
from minibigr.official import infer_bigr_config, load_bigr, to_official_bigr
from minibigr.transcoder import DenoiseMLP

torch.set_num_threads(1)


def tiny_config(**overrides) -> BiGRConfig:
    base = dict(K=8, num_classes=5, num_tokens=16, dim=32, n_layer=2, n_head=2, multiple_of=32,
                transcoder_width=32, transcoder_blocks=2, T=16, sampling=dict(diffusion_steps=8, num_iter=4))
    return BiGRConfig(**{**base, **overrides})


def trained_looking(model: BiGR, seed: int) -> BiGR:
    """Give every parameter random values (the zero-initialised layers too) so that no path is trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def random_inputs(cfg, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = (torch.rand(B, cfg.num_tokens, cfg.K, generator=g) < 0.5).float()
    labels = torch.randint(0, cfg.num_classes + 1, (B,), generator=g)
    mask = torch.rand(B, cfg.num_tokens, generator=g) < 0.4
    return tokens, labels, mask


def official_forward(sd: dict, tokens, labels, mask, n_head: int, eps: float = 1e-5, base: float = 10000.0):
    """The authors' Transformer.forward (eval, cls_token_num = 1) on their state dict, written here from
    scratch: rotary via complex numbers, attention as an explicit softmax with an all-true mask."""
    B, N, K = tokens.shape
    d = sd["cls_embedding.embedding_table.weight"].shape[1]
    hd, grid = d // n_head, math.isqrt(N)
    n_layer = len({k.split(".")[1] for k in sd if k.startswith("layers.")})

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    cond = sd["cls_embedding.embedding_table.weight"][labels][:, None]                 # (B, 1, d)
    x = tokens @ sd["tok_embeddings.weight"].T + sd["tok_embeddings.bias"]
    x[mask] = sd["mask_tok"][0]
    h = torch.cat([cond, x], dim=1)
    ada = None
    if "adaLN.1.weight" in sd:
        ada = (F.silu(cond) @ sd["adaLN.1.weight"].T + sd["adaLN.1.bias"]).reshape(B, 1, 6, d)

    quarter = hd // 4
    freqs = 1.0 / base ** (torch.arange(quarter, dtype=torch.float64) * 2 / (hd // 2))
    rows, cols = torch.arange(N) // grid, torch.arange(N) % grid
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=1)          # (N, hd/2)
    rot = torch.cat([torch.zeros(1, hd // 2, dtype=torch.complex128),
                     torch.polar(torch.ones_like(angles), angles)])                    # class row: 0

    def rotate(t):                                                                      # (B, L, H, hd)
        z = torch.view_as_complex(t.double().reshape(*t.shape[:-1], hd // 2, 2).contiguous())
        return torch.view_as_real(z * rot[None, :, None]).flatten(-2).to(t.dtype)

    allowed = torch.ones(N + 1, N + 1, dtype=torch.bool)
    for i in range(n_layer):
        p = f"layers.{i}."
        mods = [None] * 6 if ada is None else list((ada + sd[p + "ada_gss"]).unbind(2))
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        a = rms(h, sd[p + "attention_norm.weight"])
        if ada is not None:
            a = a * (1 + scale1) + shift1
        q, k, v = (a @ sd[p + "attention.wqkv.weight"].T).split(d, dim=-1)
        q, k, v = (t.reshape(B, N + 1, n_head, hd) for t in (q, k, v))
        q, k = rotate(q), rotate(k)
        logits = torch.einsum("blhe,bmhe->bhlm", q, k) / math.sqrt(hd)
        att = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
        out = torch.einsum("bhlm,bmhe->blhe", att, v).reshape(B, N + 1, d) @ sd[p + "attention.wo.weight"].T
        h = h + (out if ada is None else gate1 * out)
        f = rms(h, sd[p + "ffn_norm.weight"])
        if ada is not None:
            f = f * (1 + scale2) + shift2
        ff = (F.silu(f @ sd[p + "feed_forward.w1.weight"].T) * (f @ sd[p + "feed_forward.w3.weight"].T)) \
            @ sd[p + "feed_forward.w2.weight"].T
        h = h + (ff if ada is None else gate2 * ff)
    return rms(h, sd["norm.weight"])[:, 1:] + sd["diffusion_pos_embed_learned"]


@given(use_adaLN=st.booleans(), n_head=st.sampled_from([1, 2]), seed=st.integers(0, 2**31))
@settings(deadline=None, max_examples=10)
def test_forward_matches_an_independent_official_implementation(use_adaLN, n_head, seed):
    torch.manual_seed(seed)
    model = trained_looking(BiGR(tiny_config(use_adaLN=use_adaLN, n_head=n_head)), seed)
    tokens, labels, mask = random_inputs(model.config, seed=seed)
    sd = to_official_bigr(model)
    with torch.no_grad():
        expected = official_forward(sd, tokens, labels, mask, n_head=n_head)
        loaded = load_bigr(sd, num_heads=n_head)
        torch.testing.assert_close(loaded(tokens, labels, mask), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model(tokens, labels, mask), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("use_adaLN", [True, False])
def test_official_layout_round_trip(use_adaLN, tmp_path):
    torch.manual_seed(0)
    model = trained_looking(BiGR(tiny_config(use_adaLN=use_adaLN, sampling=dict(diffusion_steps=8, num_iter=4,
                                                                              cfg=3.5))), 1)
    sd = to_official_bigr(model)
    assert "cls_embedding.embedding_table.weight" in sd and "layers.1.attention.wqkv.weight" in sd
    assert ("adaLN.1.weight" in sd) == use_adaLN and ("layers.0.ada_gss" in sd) == use_adaLN
    assert sd["layers.0.ada_gss"].shape == (1, 1, 6, 32) if use_adaLN else True
    assert sd["diffusion_processor.scheduler.k_final"].shape == (17,)
    assert torch.equal(sd["denoise_mlp.x_embedder.weight"], sd["diffusion_processor._denoise_fn.x_embedder.weight"])

    loaded = load_bigr(sd, num_heads=2, sampling=dict(cfg=3.5, num_iter=4, diffusion_steps=8))  # not in weights
    assert loaded.config == model.config and not loaded.training
    tokens, labels, mask = random_inputs(model.config)
    with torch.no_grad():
        assert torch.equal(loaded(tokens, labels, mask), model(tokens, labels, mask))
        x_t, t, c = (torch.rand(5, 8) < 0.5).float(), torch.arange(5.0), torch.randn(5, 32)
        assert torch.equal(loaded.transcoder.denoiser(x_t, t, c), model.transcoder.denoiser(x_t, t, c))
        p = model.transcoder.sample(c, c.flip(0), steps=4, cfg=2.0, generator=torch.Generator().manual_seed(0))
        p2 = loaded.transcoder.sample(c, c.flip(0), steps=4, cfg=2.0, generator=torch.Generator().manual_seed(0))
        assert torch.equal(p, p2)
    # back again gives the same official dict
    sd2 = to_official_bigr(loaded)
    assert sd2.keys() == sd.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    # without the diffusion_processor duplicates it loads the same
    lean = to_official_bigr(model, with_duplicates=False)
    assert not any(k.startswith("diffusion_processor.") for k in lean)
    assert torch.equal(load_bigr(lean, num_heads=2)(tokens, labels, mask), model(tokens, labels, mask))


def test_checkpoint_file_prefers_ema(tmp_path):
    torch.manual_seed(0)
    model, ema = trained_looking(BiGR(tiny_config()), 1), trained_looking(BiGR(tiny_config()), 2)
    path = tmp_path / "bigr_tiny.pt"
    torch.save({"model": to_official_bigr(model), "ema": to_official_bigr(ema)}, path)
    tokens, labels, mask = random_inputs(model.config)
    with torch.no_grad():
        assert torch.equal(load_bigr(path, num_heads=2)(tokens, labels, mask), ema(tokens, labels, mask))
        assert torch.equal(load_bigr(str(path), entry="model", num_heads=2)(tokens, labels, mask),
                           model(tokens, labels, mask))
    torch.save({"model": to_official_bigr(model)}, path)
    with torch.no_grad():
        assert torch.equal(load_bigr(path, num_heads=2)(tokens, labels, mask), model(tokens, labels, mask))
    with pytest.raises(KeyError, match="no 'ema' entry"):
        load_bigr(path, entry="ema", num_heads=2)


def test_sizes_and_schedule_are_read_off_the_weights():
    torch.manual_seed(0)
    cfg = tiny_config(K=6, num_classes=7, num_tokens=36, n_layer=3, transcoder_blocks=1, transcoder_width=24,
                      T=20, schedule="cos", multiple_of=8)
    sd = to_official_bigr(BiGR(cfg))
    inferred = infer_bigr_config(sd, num_heads=2)
    assert {k: getattr(cfg, k) for k in inferred} == inferred
    sampling = dict(num_iter=4, diffusion_steps=8)
    assert load_bigr(sd, num_heads=2, sampling=sampling).config == cfg
    assert load_bigr(sd, num_heads=2).config.sampling.diffusion_steps == 20       # default S = 100, capped at T
    sd.pop("diffusion_processor.scheduler.k_final")
    assert load_bigr(sd, num_heads=2, T=20, schedule="cos", sampling=sampling).config == cfg   # no schedule buffer


@pytest.mark.parametrize("name, heads", [("BiGR-L", 16), ("BiGR-XL", 20), ("BiGR-XXL", 24)])
def test_published_sizes_are_inferred_with_their_heads(name, heads):
    cfg = BiGRConfig.preset(name)
    with torch.device("meta"):                      # shapes only: official-layout keys of the real sizes
        sd = dict(Backbone(cfg).state_dict())
        sd.update({"denoise_mlp." + k: v for k, v in
                   DenoiseMLP(cfg.K, cfg.dim, cfg.transcoder_width, cfg.transcoder_blocks).state_dict().items()})
    inferred = infer_bigr_config(sd)
    assert inferred["n_head"] == heads
    assert {k: getattr(cfg, k) for k in inferred} == inferred


def test_clear_errors():
    torch.manual_seed(0)
    sd = to_official_bigr(BiGR(tiny_config()))
    with pytest.raises(ValueError, match="no published BiGR has width 32; pass num_heads"):
        load_bigr(sd)
    with pytest.raises(ValueError, match=r"overrides contradict the checkpoint: dim=64 \(weights: 32\)"):
        load_bigr(sd, num_heads=2, dim=64)
    with pytest.raises(ValueError, match=r"unexpected \(1\): \['backbone.freqs_cis'\]"):
        load_bigr({**sd, "freqs_cis": torch.zeros(3)}, num_heads=2)
    broken = {k: v for k, v in sd.items() if k != "layers.1.ffn_norm.weight"}
    with pytest.raises(ValueError, match=r"missing \(1\): \['backbone.layers.1.ffn_norm.weight'\]"):
        load_bigr(broken, num_heads=2)
    with pytest.raises(ValueError, match="not a BiGR state dict"):
        load_bigr({"encoder.weight": torch.zeros(2)}, num_heads=2)
    odd = {**sd, "diffusion_processor.scheduler.k_final": torch.linspace(1, 0.3, 17)}
    with pytest.raises(ValueError, match="noise schedule"):
        load_bigr(odd, num_heads=2)
    with pytest.raises(ValueError, match="not divisible"):
        load_bigr(sd, num_heads=3)
