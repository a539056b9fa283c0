"""Official B-AE checkpoints: layout inference, strict loading, round trip, and the authors' forward pass.

The authors' network is re-stated here twice, independently of minibigr.tokenizer: ``official_plan``
lists the blocks their Encoder / Generator constructors build, and ``official_encode_probs`` /
``official_decode`` run an official-layout state dict with plain functional ops in their order.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minibigr.official import BAE_PREFIX, infer_bae_config, load_bae, to_official_bae
from minibigr.tokenizer import BinaryAutoencoder, TokenizerConfig

torch.set_num_threads(1)

STRUCTURE = ("image_size", "in_channels", "nf", "ch_mult", "res_blocks", "attn_resolutions", "emb_dim", "K",
             "norm_first", "gen_mul")


def structure(cfg: TokenizerConfig) -> dict:
    """What the weights determine (gen_mul only through int(res_blocks * gen_mul))."""
    return {**{f: getattr(cfg, f) for f in STRUCTURE if f != "gen_mul"}, "gen_res_blocks": cfg.gen_res_blocks}


def make(seed=0, **kw) -> BinaryAutoencoder:
    base = dict(image_size=8, in_channels=3, nf=32, ch_mult=(1, 2), res_blocks=1, attn_resolutions=(4,),
                emb_dim=32, K=8)
    torch.manual_seed(seed)
    tok = BinaryAutoencoder(TokenizerConfig(**{**base, **kw})).eval()
    with torch.no_grad():  # non-trivial norms so that every parameter matters
        for name, p in tok.named_parameters():
            if "norm" in name or p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return tok


# ----------------------------------------------------------------------------------------------
# The authors' construction and forward pass, re-stated
# ----------------------------------------------------------------------------------------------
def official_plan(cfg: TokenizerConfig) -> tuple[list, list]:
    """(encoder, generator) block lists as (kind, in, out) in the order the authors' constructors build."""
    enc, res, ch = [("conv", cfg.in_channels, cfg.nf)], cfg.image_size, cfg.nf
    mults = (1, *cfg.ch_mult)
    for i in range(len(cfg.ch_mult)):
        ch = cfg.nf * mults[i]
        for _ in range(cfg.res_blocks):
            enc.append(("res", ch, cfg.nf * cfg.ch_mult[i]))
            ch = cfg.nf * cfg.ch_mult[i]
            if res in cfg.attn_resolutions:
                enc.append(("attn", ch, ch))
        if i != len(cfg.ch_mult) - 1:
            enc.append(("resample", ch, ch))
            res //= 2
    enc += [("res", ch, ch), ("attn", ch, ch), ("res", ch, ch), ("norm", ch, ch), ("conv", ch, cfg.emb_dim)]

    ch, res = cfg.nf * cfg.ch_mult[-1], cfg.image_size // 2 ** (len(cfg.ch_mult) - 1)
    gen = [("norm", cfg.emb_dim, cfg.emb_dim)] if cfg.norm_first else []
    gen += [("conv", cfg.emb_dim, ch), ("res", ch, ch), ("attn", ch, ch), ("res", ch, ch)]
    for i in reversed(range(len(cfg.ch_mult))):
        for _ in range(int(cfg.res_blocks * cfg.gen_mul)):
            gen.append(("res", ch, cfg.nf * cfg.ch_mult[i]))
            ch = cfg.nf * cfg.ch_mult[i]
            if res in cfg.attn_resolutions:
                gen.append(("attn", ch, ch))
        if i != 0:
            gen.append(("resample", ch, ch))
            res *= 2
    gen += [("norm", ch, ch), ("conv", ch, cfg.in_channels)]
    return enc, gen


def blocks_of(state: dict, part: str) -> list[dict]:
    prefix, out = f"{BAE_PREFIX}{part}.blocks.", {}
    for k, v in state.items():
        if k.startswith(prefix):
            i, _, rest = k[len(prefix):].partition(".")
            out.setdefault(int(i), {})[rest] = v
    return [out[i] for i in range(len(out))]


def kind_of(block: dict) -> tuple:
    if "norm1.weight" in block:
        return ("res", block["conv1.weight"].shape[1], block["conv1.weight"].shape[0])
    if "q.weight" in block:
        return ("attn", block["q.weight"].shape[1], block["q.weight"].shape[0])
    if "conv.weight" in block:
        return ("resample", block["conv.weight"].shape[1], block["conv.weight"].shape[0])
    w = block["weight"]
    return ("conv", w.shape[1], w.shape[0]) if w.dim() == 4 else ("norm", w.shape[0], w.shape[0])


def gn(x, b, prefix=""):
    return F.group_norm(x, 32, b[prefix + "weight"], b[prefix + "bias"], eps=1e-6)


def run_block(x, b, down: bool):
    kind = kind_of(b)[0]
    if kind == "conv":
        return F.conv2d(x, b["weight"], b["bias"], padding=1)
    if kind == "norm":
        return gn(x, b)
    if kind == "resample":
        if down:
            return F.conv2d(F.pad(x, (0, 1, 0, 1)), b["conv.weight"], b["conv.bias"], stride=2)
        return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), b["conv.weight"], b["conv.bias"],
                        padding=1)
    if kind == "res":
        h = F.conv2d(F.silu(gn(x, b, "norm1.")), b["conv1.weight"], b["conv1.bias"], padding=1)
        h = F.conv2d(F.silu(gn(h, b, "norm2.")), b["conv2.weight"], b["conv2.bias"], padding=1)
        if b["conv1.weight"].shape[0] != b["conv1.weight"].shape[1]:
            x = F.conv2d(x, b["conv_out.weight"], b["conv_out.bias"])
        return x + h
    h = gn(x, b, "norm.")
    q, k, v = (F.conv2d(h, b[f"{n}.weight"], b[f"{n}.bias"]) for n in "qkv")
    B, C, H, W = q.shape
    w = torch.bmm(q.reshape(B, C, H * W).permute(0, 2, 1), k.reshape(B, C, H * W)) * C ** -0.5
    w = torch.softmax(w, dim=2)
    h = torch.bmm(v.reshape(B, C, H * W), w.permute(0, 2, 1)).reshape(B, C, H, W)
    return x + F.conv2d(h, b["proj_out.weight"], b["proj_out.bias"])


def official_encode_probs(state, x):
    for b in blocks_of(state, "encoder"):
        x = run_block(x, b, down=True)
    return torch.sigmoid(F.conv2d(x, state["ae.quantize.proj.0.weight"], state["ae.quantize.proj.0.bias"]))


def official_decode(state, bits):
    x = torch.einsum("bnhw,nd->bdhw", bits, state["ae.quantize.embed.weight"])
    for b in blocks_of(state, "generator"):
        x = run_block(x, b, down=False)
    return x


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------
configs = st.fixed_dictionaries({
    "in_channels": st.sampled_from([1, 3]),
    "ch_mult": st.sampled_from([(1,), (1, 2), (1, 1, 2), (2, 1)]),
    "res_blocks": st.sampled_from([1, 2]),
    "attn": st.sets(st.integers(0, 2), max_size=2),
    "norm_first": st.booleans(),
    "gen_mul": st.sampled_from([1.0, 1.5, 2.0]),
    "K": st.integers(1, 12),
    "emb_dim": st.sampled_from([32, 64]),
    "seed": st.integers(0, 2**31 - 1),
})


@settings(deadline=None, max_examples=10)
@given(configs)
def test_minibigr_matches_the_authors_layout_and_forward_pass(c):
    levels = len(c["ch_mult"])
    attn = tuple(sorted({8 // 2 ** i for i in c["attn"] if i < levels}, reverse=True))
    tok = make(c["seed"], in_channels=c["in_channels"], ch_mult=c["ch_mult"], res_blocks=c["res_blocks"],
               attn_resolutions=attn, norm_first=c["norm_first"], gen_mul=c["gen_mul"], K=c["K"],
               emb_dim=c["emb_dim"])
    state = to_official_bae(tok)
    enc_plan, gen_plan = official_plan(tok.config)
    assert [kind_of(b) for b in blocks_of(state, "encoder")] == enc_plan
    assert [kind_of(b) for b in blocks_of(state, "generator")] == gen_plan

    loaded = load_bae(state, image_size=8)
    assert structure(loaded.config) == structure(tok.config) and not loaded.training
    g = torch.Generator().manual_seed(c["seed"])
    x = torch.rand(2, c["in_channels"], 8, 8, generator=g)
    bits = (torch.rand(2, c["K"], *tok.encode_probs(x).shape[2:], generator=g) < 0.5).float()
    with torch.no_grad():
        assert torch.allclose(loaded.encode_probs(x), official_encode_probs(state, x), atol=1e-5)
        assert torch.allclose(loaded.decode(bits), official_decode(state, bits).clamp(0, 1), atol=1e-5)


def test_round_trip_is_exact_with_and_without_prefix_and_logsigma(tmp_path):
    tok = make(seed=4, ch_mult=(1, 2, 2), image_size=16, attn_resolutions=(8, 4), gen_mul=2.0)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    bits = tok.encode(x, generator=torch.Generator().manual_seed(1))
    full = to_official_bae(tok)
    assert {k for k in full if "logsigma" in k} == {f"ae.generator.logsigma.{n}" for n in
                                                    ("0.weight", "0.bias", "2.weight", "2.bias")}
    bare = {k[len(BAE_PREFIX):]: v for k, v in to_official_bae(tok, with_logsigma=False).items()}
    gan_dump = {**full, "disc.main.0.weight": torch.zeros(1), "perceptual.lin0.model.1.weight": torch.zeros(1)}
    torch.save(full, tmp_path / "binaryae_ema.th")
    for source in (full, bare, gan_dump, tmp_path / "binaryae_ema.th", str(tmp_path / "binaryae_ema.th")):
        loaded = load_bae(source, image_size=16)
        assert torch.equal(loaded.encode_probs(x), tok.encode_probs(x))
        assert torch.equal(loaded.decode(bits), tok.decode(bits))


@pytest.mark.parametrize("kw", [
    dict(ch_mult=(1, 2, 2), image_size=32, attn_resolutions=(8,)),
    dict(ch_mult=(1, 1, 2), image_size=16, attn_resolutions=(16, 4), norm_first=False),
    dict(ch_mult=(1, 2), attn_resolutions=(), res_blocks=2, gen_mul=1.5, in_channels=1),
])
def test_config_inference_from_shapes(kw):
    tok = make(**kw)
    state = {k[len(BAE_PREFIX):]: v for k, v in to_official_bae(tok).items()}
    inferred = infer_bae_config(state, image_size=tok.config.image_size)
    assert inferred == {f: getattr(tok.config, f) for f in STRUCTURE}


def test_image_size_sets_the_attention_resolutions():
    state = to_official_bae(make(ch_mult=(1, 2, 2), image_size=16, attn_resolutions=(4,)))
    loaded = load_bae(state, image_size=64)
    assert loaded.config.attn_resolutions == (16,) and loaded.config.latent_size == 16


def test_overrides_and_official_defaults():
    state = to_official_bae(make())
    assert load_bae(state, image_size=8).config.image_range == "unit"
    assert load_bae(state, image_size=8, image_range="symmetric", ndf=16).config.ndf == 16
    with pytest.raises(ValueError, match="unknown TokenizerConfig fields"):
        load_bae(state, image_size=8, bogus=1)
    with pytest.raises(ValueError, match="do not match"):
        load_bae(state, image_size=8, K=3)


def test_bad_state_dicts_are_clear_errors(tmp_path):
    state = to_official_bae(make())
    with pytest.raises(ValueError, match="not a B-AE state dict"):
        load_bae({"model.layers.0.weight": torch.zeros(1)})
    missing = {k: v for k, v in state.items() if k != "ae.generator.blocks.2.conv2.bias"}
    with pytest.raises(ValueError, match=r"missing.*generator\.blocks\.2\.conv2\.bias"):
        load_bae(missing, image_size=8)
    wrong = {**state, "ae.quantize.proj.0.weight": torch.zeros(8, 16, 1, 1)}
    with pytest.raises(ValueError, match=r"shape mismatch.*quantize\.proj\.0\.weight"):
        load_bae(wrong, image_size=8)
    no_tail = {k: v for k, v in state.items() if not k.startswith("ae.encoder.blocks.9.")}
    with pytest.raises(ValueError, match="encoder"):
        load_bae(no_tail, image_size=8)
    (tmp_path / "bad.th").write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_bae(tmp_path / "bad.th")
    with pytest.raises(FileNotFoundError):
        load_bae(tmp_path / "absent.th")
