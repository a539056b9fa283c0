"""BiGR backbone + model: shapes, presets, masking, training signal, generation, features, persistence."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minibigr import authors
from minibigr import model as model_module
from minibigr.backbone import Backbone, apply_rope, rope_2d
from minibigr.config import PRESETS
from minibigr.model import (
    BiGR,
    BiGRConfig,
    gather_tokens,
    label_drops,
    mask_count,
    masked_counts,
    masked_positions,
    masked_probs,
    random_mask,
    spread_mask_counts,
)
from minibigr.sampler import RevealOrder, SamplingConfig
from minibigr.transcoder import DenoiseMLP

torch.set_num_threads(1)


def tiny_config(**overrides) -> BiGRConfig:
    base = dict(K=8, num_classes=5, num_tokens=16, dim=32, n_layer=2, n_head=2, multiple_of=16,
                transcoder_width=32, transcoder_blocks=2, T=16,
                sampling=SamplingConfig(diffusion_steps=8, num_iter=4, cfg=2.0, gumbel=0.5))
    return BiGRConfig(**{**base, **overrides})


def quiet_config(**overrides) -> BiGRConfig:
    """No dropout anywhere: deterministic forward passes in training mode."""
    return tiny_config(token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0, **overrides)


def tiny_model(seed=0, **overrides) -> BiGR:
    torch.manual_seed(seed)
    return BiGR(tiny_config(**overrides))


def lively_model(seed=0) -> BiGR:
    """A tiny model without the zero-initialised layers, so the transcoder's p is not 1/2 everywhere."""
    model = tiny_model(seed).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def random_tokens(B, cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, cfg.num_tokens, cfg.K, generator=g) < 0.5).float()


# ----------------------------------------------------------------------------------------------
# Shapes, config, presets
# ----------------------------------------------------------------------------------------------
def test_shapes_and_dtypes():
    model = tiny_model().eval()
    cfg = model.config
    tokens, labels = random_tokens(3, cfg), torch.tensor([0, 4, 5])
    mask = torch.zeros(3, cfg.num_tokens, dtype=torch.bool)
    mask[:, ::3] = True
    h = model(tokens, labels, mask)
    assert h.shape == (3, cfg.num_tokens, cfg.dim) and h.dtype == torch.float32
    loss, stats = model.loss(tokens, labels)
    assert loss.ndim == 0 and loss.requires_grad
    assert set(stats) == {"loss", "bce", "n_mask"} and 1 <= stats["n_mask"] <= cfg.num_tokens
    feats = model.features(tokens)
    assert feats.shape == (3, cfg.dim) and feats.dtype == torch.float32
    x_t = (torch.rand(7, cfg.K) < 0.5).float()
    assert model.transcoder.denoiser(x_t, torch.arange(7.0), torch.randn(7, cfg.dim)).shape == (7, cfg.K)


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    cfg = model.config
    tokens = random_tokens(2, cfg)
    with pytest.raises(ValueError, match="tokens must be"):
        model(tokens[:, :-1], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must be in"):
        model(tokens, torch.tensor([0, cfg.num_classes + 1]))
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        model.loss(tokens, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="mask must be"):
        model(tokens, torch.tensor([0, 1]), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="layer must be"):
        model.features(tokens, layer=cfg.n_layer)
    with pytest.raises(ValueError, match="given must be"):
        model.generate(torch.tensor([0, 1]), tokens=tokens, given=torch.ones(2, 3, dtype=torch.bool))


def test_config_validation_and_json_round_trip():
    cfg = BiGRConfig.preset("tiny-32", sampling=dict(cfg=4.0))
    assert BiGRConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.grid == 8 and cfg.sampling.cfg == 4.0
    assert cfg.sampling == SamplingConfig(**{**PRESETS["tiny-32"]["sampling"], "cfg": 4.0})   # the rest: the preset's
    with pytest.raises(ValueError, match="unknown BiGR preset 'nope'.*tiny-32"):
        BiGRConfig.preset("nope")
    with pytest.raises(ValueError, match="unknown BiGRConfig fields \\['bogus'\\]"):
        BiGRConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="not a square grid"):
        tiny_config(num_tokens=15)
    with pytest.raises(ValueError, match="divisible by 4"):
        tiny_config(dim=36, n_head=6)
    with pytest.raises(ValueError, match="order 'best' is not one of"):
        tiny_config(sampling=dict(order="best"))
    with pytest.raises(ValueError, match="diffusion_steps must be in 1..T=16, got 17"):
        tiny_config(sampling=dict(diffusion_steps=17))
    with pytest.raises(ValueError, match="loss_weighting 'focal' is not one of"):
        tiny_config(loss_weighting="focal")


@pytest.mark.parametrize("objective, weighting, expected", [("flip", None, "weighted"), ("x0", None, "plain"),
                                                            ("x0", "weighted", "weighted"), ("flip", "plain", "plain")])
def test_loss_weighting_defaults_to_the_authors_choice_per_objective(objective, weighting, expected):
    assert BiGR(tiny_config(objective=objective, loss_weighting=weighting)).transcoder.weighting == expected


def test_configs_written_before_the_sampling_group_still_load():
    """Checkpoints of earlier versions hold the sampling settings as top-level fields of config.json."""
    cfg = BiGRConfig.preset("tiny-32")
    old = {k: v for k, v in cfg.to_dict().items() if k != "sampling"}
    old.update(num_iter=7, cfg=2.5, cfg_schedule="linear", gumbel=0.2, gumbel_schedule="down", order="confidence",
               diffusion_steps=30, temperature=0.9)
    loaded = BiGRConfig.from_dict(old)
    assert loaded.sampling == SamplingConfig(num_iter=7, cfg=2.5, cfg_schedule="linear", gumbel=0.2,
                                             gumbel_schedule="down", order="confidence", diffusion_steps=30,
                                             temperature=0.9)
    assert {k: v for k, v in loaded.to_dict().items() if k != "sampling"} == \
        {k: v for k, v in cfg.to_dict().items() if k != "sampling"}


def test_sampling_settings_are_checked_by_name_and_value():
    s = SamplingConfig()
    assert s.replace(cfg=1.0).cfg == 1.0 and s.cfg == 3.0            # frozen: replace returns a new one
    with pytest.raises(TypeError, match="unknown sampling setting.*cfg_scale.*num_iter"):
        s.replace(cfg_scale=2.0)
    for bad, message in [(dict(num_iter=0), "num_iter must be >= 1"), (dict(temperature=0.0), "temperature"),
                         (dict(gumbel=-1.0), "gumbel must be >= 0"), (dict(cfg=-1.0), "cfg must be >= 0"),
                         (dict(mask_schedule="sqrt"), "mask_schedule"),
                         (dict(cfg_schedule="cos"), "cfg_schedule"), (dict(gumbel_schedule="x"), "gumbel_schedule")]:
        with pytest.raises(ValueError, match=message):
            SamplingConfig(**bad)
    model = tiny_model()
    with pytest.raises(TypeError, match="unknown sampling setting"):
        model.generate(torch.tensor([0]), cfg_scale=2.0)


def test_bigr_builds_on_the_meta_device():
    """How a big checkpoint is loaded without allocating its weights twice: build on meta, then assign."""
    with torch.device("meta"):
        model = BiGR(BiGRConfig.preset("BiGR-XXL"))
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 1480
    assert model.backbone.layers[0].attention.wqkv.weight.is_meta
    # what the meta build cannot hold is computed on the CPU: the schedule and the rotary tables
    assert not model.transcoder.k.is_meta and model.transcoder.k[-1] == 0
    assert not model.backbone.rope.is_meta


def count_params_meta(cfg: BiGRConfig) -> int:
    """Parameters of the backbone + the transcoder's denoiser (= what the official model.parameters()
    counts: its diffusion_processor shares the denoiser), built without allocating memory."""
    with torch.device("meta"):
        modules = [Backbone(cfg), DenoiseMLP(cfg.K, cfg.dim, cfg.transcoder_width, cfg.transcoder_blocks)]
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.mark.parametrize("name, published", [("BiGR-L", 336.3e6), ("BiGR-XL", 799.4e6), ("BiGR-XXL", 1480.0e6)])
def test_published_presets_have_the_authors_parameter_counts(name, published):
    cfg = BiGRConfig.preset(name)
    assert (cfg.K, cfg.num_classes, cfg.num_tokens, cfg.use_adaLN) == (24, 1000, 256, True)
    assert abs(count_params_meta(cfg) - published) / published < 0.005


def test_model_parameters_are_backbone_plus_denoiser():
    model = tiny_model()
    n = sum(p.numel() for p in model.parameters())
    assert n == count_params_meta(model.config)
    assert n == sum(p.numel() for m in (model.backbone, model.transcoder.denoiser) for p in m.parameters())


def test_presets_build_and_the_published_sizes_sample_as_the_authors_script():
    for name in PRESETS:
        BiGRConfig.preset(name)
    script = authors.settings("script/sample.sh")
    for name in ("BiGR-L", "BiGR-XL", "BiGR-XXL"):
        assert BiGRConfig.preset(name).sampling == SamplingConfig(**script)
    assert SamplingConfig() == SamplingConfig(**script)
    assert (script["cfg"], script["num_iter"], script["gumbel"], script["order"]) == (3.0, 20, 0.01, "confidence")
    tiny = BiGRConfig.preset("tiny-32")
    assert (tiny.grid, tiny.K, tiny.num_classes) == (8, 16, 10)
    assert 0.5e6 < count_params_meta(tiny) < 5e6


# ----------------------------------------------------------------------------------------------
# Masked modeling
# ----------------------------------------------------------------------------------------------
@given(N=st.integers(1, 300), data=st.data())
@settings(deadline=None, max_examples=60)
def test_mask_count_formula(N, data):
    s = data.draw(st.integers(0, N - 1))
    n = mask_count(s, N)
    assert n == max(1, math.floor(N * math.cos(math.pi / 2 * s / N)))
    assert 1 <= n <= N and mask_count(0, N) == N


def test_spread_mask_counts_cover_the_schedule_evenly():
    """A few fixed counts average what the cosine schedule masks (within a token), in schedule order."""
    N = 64
    counts = spread_mask_counts(N, 8)
    assert counts == sorted(counts, reverse=True) and all(1 <= n <= N for n in counts)
    expected = sum(mask_count(s, N) for s in range(N)) / N
    assert abs(sum(counts) / len(counts) - expected) < 1


@given(B=st.integers(1, 5), N=st.integers(1, 40), data=st.data(), seed=st.integers(0, 2**31))
@settings(deadline=None, max_examples=40)
def test_random_mask_hides_exactly_n_per_sample(B, N, data, seed):
    n = data.draw(st.integers(1, N))
    mask, idx = random_mask(B, N, n, torch.Generator().manual_seed(seed))
    assert mask.dtype == torch.bool and (mask.sum(1) == n).all()
    assert torch.equal(torch.zeros_like(mask).scatter_(1, idx, True), mask)
    assert torch.equal(masked_positions(mask, n), idx.sort(1).values)


def test_loss_masks_exactly_n_mask_tokens_per_sample():
    model = tiny_model()
    seen = []
    model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[2].clone()))
    tokens, labels = random_tokens(4, model.config), torch.tensor([0, 1, 2, 3])
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        _, stats = model.loss(tokens, labels, generator=g)
        assert (seen[-1].sum(1) == stats["n_mask"]).all()
    assert len({int(m.sum()) for m in seen}) > 1      # the masking rate varies from batch to batch


@pytest.mark.parametrize("objective", ["flip", "x0", "direct"])
def test_loss_on_explicit_draws_equals_the_generator_path(objective):
    """loss_draws makes every draw of a step that loss(generator=) makes, in the same order: same value."""
    model = BiGR(quiet_config(objective=objective, class_dropout=0.5))
    tokens, labels = random_tokens(6, model.config), torch.arange(6) % 5
    from_generator, _ = model.loss(tokens, labels, generator=torch.Generator().manual_seed(4))
    draws = model.loss_draws(6, torch.Generator().manual_seed(4))
    assert draws.drop.any() and draws.idx.shape[0] == 6
    assert (draws.t is None) == (objective == "direct")
    assert torch.equal(model.loss(tokens, labels, draws=draws)[0], from_generator)
    with pytest.raises(ValueError, match="n_mask must be in 1..16"):
        model.loss_draws(6, n_mask=0)


def test_the_training_step_on_explicit_draws_is_one_graph():
    """With its draws made outside, BiGR.loss compiles whole: no graph break (a generator inside breaks it at
    every draw, and drawing the mask count as a Python integer breaks it once more)."""
    import torch._dynamo

    model = tiny_model()
    tokens, labels = random_tokens(4, model.config), torch.arange(4) % 5
    draws = model.loss_draws(4, torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model.loss)(tokens, labels, draws=draws)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_class_dropout_uses_the_null_class():
    drops = label_drops(2000, 0.3, generator=torch.Generator().manual_seed(0))
    assert drops.dtype == torch.bool and 0.25 < drops.float().mean() < 0.35
    assert not label_drops(2000, 0.0).any()

    # loss() drops labels in training mode only
    model = tiny_model(class_dropout=0.5)
    seen = []
    model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    tokens, y = random_tokens(200, model.config), torch.arange(200) % 5
    model.loss(tokens, y, generator=torch.Generator().manual_seed(1))
    hit = seen[-1] != y
    assert (seen[-1][hit] == 5).all() and 0.4 < hit.float().mean() < 0.6
    model.eval().loss(tokens, y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(seen[-1], y)


def test_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    model = BiGR(quiet_config(class_dropout=0.0))
    labels = torch.arange(8) % 4
    tokens = random_tokens(4, model.config, seed=1)[labels]       # each class has its own image
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=1e-2)

    def eval_loss():
        with torch.no_grad():
            return sum(float(model.loss(tokens, labels, generator=torch.Generator().manual_seed(s))[0])
                       for s in range(8)) / 8

    before = eval_loss()
    g = torch.Generator().manual_seed(2)
    for _ in range(400):
        loss, _ = model.loss(tokens, labels, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert eval_loss() < 0.5 * before


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = BiGR(quiet_config(class_dropout=0.5))
    tokens, labels = random_tokens(6, model.config), torch.arange(6) % 5
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):      # the zero-initialised output layers need one step before gradients flow back
        loss, _ = model.loss(tokens, labels, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss, _ = model.loss(tokens, labels, generator=g)
    opt.zero_grad()
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


@pytest.mark.parametrize("use_adaLN", [True, False])
def test_backbone_at_positions_equals_the_full_pass_gathered(use_adaLN):
    """positions= computes the last block only where asked: the same conditions (and gradients) as the full
    pass at those positions, with dropout off."""
    model = lively_model() if use_adaLN else tiny_model(use_adaLN=False).eval()
    cfg = model.config
    tokens, labels = random_tokens(3, cfg), torch.tensor([0, 2, cfg.num_classes])
    mask, idx = random_mask(3, cfg.num_tokens, 5, torch.Generator().manual_seed(1))
    full = model.backbone(tokens, labels, mask)
    part = model.backbone(tokens, labels, mask, positions=idx)
    torch.testing.assert_close(part, full.gather(1, idx[..., None].expand(-1, -1, cfg.dim)), rtol=1e-5, atol=1e-6)
    grads = []
    for h in (full.gather(1, idx[..., None].expand(-1, -1, cfg.dim)), part):
        model.zero_grad()
        h.pow(2).sum().backward(retain_graph=True)
        grads.append(torch.cat([p.grad.flatten() for p in model.backbone.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="positions must be integer"):
        model.backbone(tokens, labels, mask, layer=0, positions=idx)


def test_param_groups_follow_the_official_rule():
    model = tiny_model()
    decay, no_decay = model.param_groups(0.02)
    assert decay["weight_decay"] == 0.02 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}
    named = dict(model.named_parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == len(named)
    for name, p in named.items():
        should_decay = p.ndim >= 2 and not name.startswith("transcoder.")
        assert (id(p) in ids) == should_decay, name
    assert id(named["backbone.layers.0.attention.wqkv.weight"]) in ids
    assert id(named["backbone.norm.weight"]) not in ids and id(named["backbone.tok_embeddings.bias"]) not in ids


# ----------------------------------------------------------------------------------------------
# Attention, positions, the class token
# ----------------------------------------------------------------------------------------------
def test_attention_is_bidirectional():
    model = tiny_model().eval()
    tokens, labels = random_tokens(2, model.config), torch.tensor([1, 2])
    changed = tokens.clone()
    changed[:, -1] = 1 - changed[:, -1]
    h, h2 = model(tokens, labels), model(changed, labels)
    assert (h[:, 0] - h2[:, 0]).abs().max() > 1e-4


@given(grid=st.integers(1, 6), heads_dim=st.sampled_from([4, 8, 16, 32]), seed=st.integers(0, 2**31))
@settings(deadline=None, max_examples=30)
def test_rope_rotates_pairs_by_row_then_column(grid, heads_dim, seed):
    base = 10000.0
    rope = rope_2d(grid, heads_dim, base)
    assert rope.shape == (1 + grid * grid, heads_dim // 2, 2)
    x = torch.randn(1 + grid * grid, heads_dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = apply_rope(x, rope)
    # class token: rows of zeros, so the rotated vector is zero
    assert (out[0] == 0).all()
    # independent check with complex numbers: pair m of the first half turns by row * f_m, pair m of
    # the second half by column * f_m, f_m = base^(-m / (head_dim / 4)) over head_dim / 4 pairs
    quarter = heads_dim // 4
    f = base ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    for pos in range(grid * grid):
        r, c = divmod(pos, grid)
        angle = torch.cat([r * f, c * f])
        z = torch.complex(x[1 + pos, 0::2], x[1 + pos, 1::2]) * torch.polar(torch.ones_like(angle), angle)
        expected = torch.stack([z.real, z.imag], dim=-1).flatten()
        torch.testing.assert_close(out[1 + pos], expected, rtol=1e-5, atol=1e-5)


@given(seed=st.integers(0, 2**31), shift=st.tuples(st.integers(0, 2), st.integers(0, 2)))
@settings(deadline=None, max_examples=20)
def test_rope_scores_depend_on_relative_position_only(seed, shift):
    grid, hd = 5, 16
    rope = rope_2d(grid, hd)
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(hd, generator=g, dtype=torch.float64), torch.randn(hd, generator=g, dtype=torch.float64)

    def score(p1, p2):
        i, j = 1 + p1[0] * grid + p1[1], 1 + p2[0] * grid + p2[1]
        return apply_rope(q, rope[i]) @ apply_rope(k, rope[j])

    a, b = (0, 1), (2, 0)
    moved_a, moved_b = (a[0] + shift[0], a[1] + shift[1]), (b[0] + shift[0], b[1] + shift[1])
    torch.testing.assert_close(score(a, b), score(moved_a, moved_b), rtol=1e-5, atol=1e-5)  # float32 tables


@given(grid=st.integers(1, 8), heads=st.integers(1, 4), hd=st.sampled_from([4, 16, 64]), seed=st.integers(0, 2**31),
       bf16=st.booleans())
@settings(deadline=None, max_examples=30)
def test_rope_complex_product_equals_rotating_the_real_halves(grid, heads, hd, seed, bf16):
    """The complex product is x0 cos - x1 sin, x1 cos + x0 sin to float32 rounding, on (B, H, L, hd) queries
    laid out as the attention's (a permuted view), in float32 and bf16."""
    rope = rope_2d(grid, hd)
    L = 1 + grid * grid
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(2, L, 3, heads, hd, generator=g)
    q = qkv.to(torch.bfloat16 if bf16 else torch.float32).permute(2, 0, 3, 1, 4)[0]     # (2, H, L, hd) view
    x0, x1 = q.float()[..., 0::2], q.float()[..., 1::2]
    cos, sin = rope[..., 0], rope[..., 1]
    expected = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2).type_as(q)
    torch.testing.assert_close(apply_rope(q, rope), expected)


def test_rope_table_survives_a_dtype_cast():
    """The table is a real buffer: module.to(bfloat16) rounds it, a complex one would lose its sines."""
    backbone = Backbone(tiny_config()).to(torch.bfloat16)
    assert backbone.rope.dtype == torch.bfloat16
    torch.testing.assert_close(backbone.rope.float(), rope_2d(4, backbone.dim // tiny_config().n_head), atol=1e-2,
                               rtol=0)
    assert backbone.rope[1:, :, 1].abs().sum() > 0


@pytest.mark.parametrize("use_adaLN", [True, False])
def test_class_token_has_zero_query_and_key(use_adaLN):
    """The official rotary table zeroes the class token's q and k: nothing attends *to* it by content
    (its logit is 0 for every query) and it attends uniformly to every position."""
    torch.manual_seed(0)
    model = BiGR(tiny_config(use_adaLN=use_adaLN)).eval()
    bb = model.backbone
    cfg = model.config
    tokens, labels = random_tokens(2, cfg), torch.tensor([1, 3])
    x = torch.cat([bb.cls_embedding(labels)[:, None], bb.tok_embeddings(tokens)], 1)    # block-0 input
    attn = bb.layers[0].attention
    q, k, v = attn.qkv(x, bb.rope)
    assert (q[:, :, 0] == 0).all() and (k[:, :, 0] == 0).all()
    assert (q[:, :, 1:].abs().sum(-1) > 0).all() and (v[:, :, 0].abs().sum(-1) > 0).all()
    # so the class token's attention output is the plain average of all values
    y = attn(x, bb.rope)
    uniform = attn.wo(v.mean(2).reshape(2, cfg.dim))
    torch.testing.assert_close(y[:, 0], uniform)
    # and the class still conditions the image tokens (through values, and adaLN when on)
    assert (model(tokens, labels) - model(tokens, labels.flip(0))).abs().max() > 1e-4


def test_class_mix_interpolates_class_embeddings():
    model = tiny_model().eval()
    tokens, y1, y2 = random_tokens(2, model.config), torch.tensor([0, 1]), torch.tensor([2, 3])
    torch.testing.assert_close(model(tokens, (y1, y2, 1.0)), model(tokens, y1))
    torch.testing.assert_close(model(tokens, (y1, y2, torch.tensor([0.0, 0.0]))), model(tokens, y2))
    table = model.backbone.cls_embedding.embedding_table.weight
    mixed = 0.3 * table[y1] + 0.7 * table[y2]
    torch.testing.assert_close(model(tokens, (y1, y2, 0.3)), model(tokens, mixed))


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------
def generate_with_order(model, labels, **kwargs):
    """generate, plus revealed_at (B, N): the step 1..I that revealed each token (0: given), from the callback."""
    reveal = RevealOrder()
    out = model.generate(labels, callback=reveal, **kwargs)
    return out, reveal.revealed_at


def test_generate_returns_bits_and_reveals_everything():
    model = tiny_model()
    labels = torch.tensor([0, 3, 4])
    out, revealed_at = generate_with_order(model, labels, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, model.config.num_tokens, model.config.K)
    assert ((out == 0) | (out == 1)).all()
    assert ((revealed_at >= 1) & (revealed_at <= model.config.sampling.num_iter)).all()
    assert model.training                              # generate restores the caller's mode
    again = model.generate(labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_bfloat16_precision_runs_the_matmuls_in_bf16_and_draws_in_float32():
    """precision="bfloat16" autocasts backbone and transcoder; p0, the posterior and every draw stay float32."""
    model = lively_model()
    labels = torch.tensor([0, 3, 4])
    seen = []
    model.transcoder.denoiser.final_layer.linear.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    for precision, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        seen.clear()
        out = model.generate(labels, generator=torch.Generator().manual_seed(0), precision=precision)
        assert set(seen) == {dtype}
        assert out.dtype == torch.float32 and ((out == 0) | (out == 1)).all()
    h = torch.randn(6, model.config.dim)
    g = [torch.Generator().manual_seed(1) for _ in range(2)]
    p32 = model.transcoder.sample(h[:3], h[3:], steps=4, cfg=2.0, generator=g[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p16 = model.transcoder.sample(h[:3], h[3:], steps=4, cfg=2.0, generator=g[1])
    assert p16.dtype == torch.float32
    assert (p16 - p32).abs().max() < 0.1          # bf16 matmuls move p0 a little; the same draws keep it close


@pytest.mark.parametrize("ragged", [False, True])
def test_generate_keeps_given_tokens(ragged):
    model = tiny_model().eval()
    cfg = model.config
    tokens = random_tokens(3, cfg, seed=5)
    given = torch.zeros(3, cfg.num_tokens, dtype=torch.bool)
    given[:, : cfg.num_tokens // 2] = True
    if ragged:
        given[1, -1] = True                           # rows with different numbers of tokens to generate
    out, revealed_at = generate_with_order(model, torch.tensor([0, 1, 2]), tokens=tokens, given=given, cfg=1.5,
                                           cfg_schedule="linear", generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[given], tokens[given])
    assert ((out == 0) | (out == 1)).all()
    assert (revealed_at[given] == 0).all() and (revealed_at[~given] > 0).all()
    everything = torch.ones_like(given)
    assert torch.equal(model.generate(torch.tensor([0, 1, 2]), tokens=tokens, given=everything), tokens)


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_one_step_generation_equals_backbone_then_transcoder(cfg_scale):
    """I = 1 reveals every token from one prediction: the result must be the backbone on all-masked
    tokens (conditional and null class) followed by the transcoder on every token, same draws."""
    model = tiny_model().eval()
    cfg = model.config
    B, N = 2, cfg.num_tokens
    labels = torch.tensor([1, 4])
    out = model.generate(labels, num_iter=1, cfg=cfg_scale, deterministic=True, diffusion_steps=5,
                         generator=torch.Generator().manual_seed(7))
    tokens, mask = torch.zeros(B, N, cfg.K), torch.ones(B, N, dtype=torch.bool)
    with torch.no_grad():
        h = model(tokens, labels, mask).flatten(0, 1)
        h_null = model(tokens, torch.full_like(labels, cfg.num_classes), mask).flatten(0, 1)
        p = model.transcoder.sample(h, h_null if cfg_scale != 1.0 else None, steps=5, cfg=cfg_scale,
                                    generator=torch.Generator().manual_seed(7))
    assert torch.equal(out, (p > 0.5).float().view(B, N, cfg.K))


def test_fixed_count_gather_gives_the_tokens_of_the_general_path():
    """masked_probs with the host-known count (a fixed-size gather) and without it (boolean indexing) feed the
    chain the same tokens in the same order: on the same generator they return the same p."""
    model = lively_model()
    cfg = model.config
    B, N, n = 3, cfg.num_tokens, 5
    scores = torch.rand(B, N, generator=torch.Generator().manual_seed(0))
    mask = scores.argsort(1).argsort(1) < n                       # exactly n masked tokens per row, scattered
    h = torch.randn(2 * B, N, cfg.dim, generator=torch.Generator().manual_seed(1))
    chain = dict(steps=6, temperature=0.8, cfg=2.0)
    fixed = masked_probs(model.transcoder, h, mask, n, torch.Generator().manual_seed(2), **chain)
    general = masked_probs(model.transcoder, h, mask, None, torch.Generator().manual_seed(2), **chain)
    assert torch.equal(fixed, general)
    assert (fixed[~mask] == 0.5).all() and not (fixed[mask] == 0.5).all()


@pytest.mark.parametrize("order", ["entropy", "raster", "random"])
@pytest.mark.parametrize("given_half", [False, True])
def test_generate_gives_the_same_tokens_without_the_host_counts(given_half, order, monkeypatch):
    """The fast path (counts known on the host) is a speed-up only: forcing the general path changes nothing."""
    model = lively_model()
    cfg = model.config
    labels, tokens = torch.tensor([0, 2, 4]), random_tokens(3, cfg, seed=2)
    given = None
    if given_half:
        given = torch.zeros(3, cfg.num_tokens, dtype=torch.bool)
        given[:, ::2] = True
    kw = dict(tokens=tokens if given_half else None, given=given, num_iter=5, order=order)
    assert masked_counts(given, cfg.num_tokens, cfg.sampling.replace(num_iter=5)) is not None
    fast = model.generate(labels, generator=torch.Generator().manual_seed(9), **kw)
    monkeypatch.setattr(model_module, "masked_counts", lambda *args: None)
    general = model.generate(labels, generator=torch.Generator().manual_seed(9), **kw)
    assert torch.equal(fast, general)


@pytest.mark.parametrize("order", ["entropy", "raster", "random"])
def test_blind_orders_run_the_chain_only_for_the_tokens_they_reveal(order, monkeypatch):
    """Raster and random orders choose without p: each token's reverse chain runs once, at the step that reveals
    it; the entropy order runs it for every still-masked token at every step."""
    model = lively_model()
    B, N, I = 3, model.config.num_tokens, 5
    rows = []
    sample = model.transcoder.sample
    monkeypatch.setattr(model.transcoder, "sample", lambda h, *a, **k: rows.append(len(h)) or sample(h, *a, **k))
    tokens = model.generate(torch.tensor([0, 2, 4]), generator=torch.Generator().manual_seed(1), num_iter=I,
                            order=order)
    still_masked = masked_counts(None, N, model.config.sampling.replace(num_iter=I))     # before steps 1..I, after I
    before, after = still_masked[:-1], still_masked[1:]
    per_step = before if order == "entropy" else [a - b for a, b in zip(before, after, strict=True)]
    assert rows == [B * n for n in per_step if n > 0] and set(tokens.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("order", ["entropy", "random"])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_generate_runs_large_batches_in_chunks_of_images_with_the_same_tokens(order, cfg_scale, monkeypatch):
    """Past GENERATE_ELEMENTS the backbone runs chunk after chunk of images, never on more rows than one chunk's,
    and the tokens do not change: the "direct" objective draws nothing in its chain, so both ways see the same
    draws (with a diffusion chain each chunk would draw its uniforms in turn)."""
    torch.manual_seed(0)
    model = BiGR(tiny_config(objective="direct")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    cfg, guided = model.config, cfg_scale != 1.0
    labels, given = torch.tensor([0, 1, 2, 3, 4]), torch.zeros(5, cfg.num_tokens, dtype=torch.bool)
    given[1:, :3] = True                                    # rows with different counts: the general path too
    kw = dict(tokens=random_tokens(5, cfg, seed=3), given=given, order=order, cfg=cfg_scale, num_iter=4)
    whole = model.generate(labels, generator=torch.Generator().manual_seed(4), **kw)
    rows = []
    model.backbone.register_forward_hook(lambda module, args, out: rows.append(len(out)))
    per_image = (1 + guided) * (1 + cfg.num_tokens) * cfg.dim
    monkeypatch.setattr(model_module, "GENERATE_ELEMENTS", 2 * per_image + 1)     # chunks of 2, 2 and 1 images
    chunked = model.generate(labels, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(chunked, whole)
    assert rows and max(rows) == 2 * (1 + guided) and sum(rows) == len(rows) // 3 * 5 * (1 + guided)


def test_generate_is_short():
    """generate reads as the algorithm (docs/method.md §5): the speed-only code lives in helpers."""
    import inspect

    assert len(inspect.getsource(BiGR.generate).splitlines()) <= 45


def test_generate_class_mix_endpoints():
    model = tiny_model().eval()
    y1, y2 = torch.tensor([0, 1]), torch.tensor([3, 2])
    kw = dict(num_iter=3, diffusion_steps=4)
    plain = model.generate(y1, generator=torch.Generator().manual_seed(3), **kw)
    mixed = model.generate(y1, class_mix=(y2, 1.0), generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(plain, mixed)
    other = model.generate(y2, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(model.generate(y1, class_mix=(y2, 0.0), generator=torch.Generator().manual_seed(3), **kw),
                       other)
    with pytest.raises(ValueError, match=rf"labels must be in 0..{model.null_class - 1}"):
        model.generate(y1, class_mix=(torch.tensor([3, model.null_class + 1]), 0.5), **kw)
    with pytest.raises(ValueError, match=r"labels must be an integer tensor of shape \(2,\)"):
        model.generate(y1, class_mix=(torch.tensor([3]), 0.5), **kw)


def test_generate_samples_the_null_class_only_when_asked_by_name():
    """Label C is the null class: a plain label C is refused (it used to sample the unconditional model silently);
    allow_null=True, or the name 'null' in a pipeline, asks for it."""
    model = tiny_model().eval()
    null = torch.full((2,), model.null_class)
    kw = dict(num_iter=2, diffusion_steps=3)
    with pytest.raises(ValueError, match=rf"{model.null_class} is the null class.*allow_null=True.*'null'"):
        model.generate(null, **kw)
    asked = model.generate(null, allow_null=True, generator=torch.Generator().manual_seed(0), **kw)
    assert asked.shape == (2, model.config.num_tokens, model.config.K)
    with pytest.raises(ValueError, match="labels must be in"):
        model.generate(null + 1, allow_null=True, **kw)


# ----------------------------------------------------------------------------------------------
# Features and persistence
# ----------------------------------------------------------------------------------------------
def test_features_average_unmasked_hidden_states_with_the_null_class():
    model = tiny_model(n_layer=3).train()
    cfg = model.config
    tokens = random_tokens(2, cfg)
    null = torch.full((2,), cfg.num_classes)
    feats = model.features(tokens)
    assert model.training
    torch.testing.assert_close(feats, model.features(tokens, labels=null))
    torch.testing.assert_close(feats, model.features(tokens, layer=1))           # default: (3 - 1) // 2
    assert not torch.allclose(feats, model.features(tokens, labels=torch.tensor([0, 1])))
    torch.testing.assert_close(model.features(tokens, layer=-1), model.features(tokens, layer=2))
    model.eval()
    with torch.no_grad():
        bb = model.backbone
        x = torch.cat([bb.cls_embedding(null)[:, None], bb.tok_embeddings(tokens)], 1)
        mod = bb.adaLN(bb.cls_embedding(null)).view(2, 1, 6, cfg.dim)
        for block in bb.layers[:2]:
            x = block(x, mod, bb.rope)
    torch.testing.assert_close(feats, x[:, 1:].mean(1))


def test_gather_tokens_takes_rows_per_sample():
    x = torch.arange(2 * 4 * 3).view(2, 4, 3)
    idx = torch.tensor([[3, 0], [1, 2]])
    assert torch.equal(gather_tokens(x, idx), torch.stack([x[0, 3], x[0, 0], x[1, 1], x[1, 2]]))


def test_save_and_load_give_identical_outputs(tmp_path):
    model = tiny_model(seed=3).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = BiGR.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config and not loaded.training
    tokens, labels = random_tokens(2, model.config), torch.tensor([0, 5])
    torch.testing.assert_close(loaded(tokens, labels), model(tokens, labels), rtol=0, atol=0)
    x_t, t, c = (torch.rand(4, 8) < 0.5).float(), torch.arange(4.0), torch.randn(4, 32)
    assert torch.equal(loaded.transcoder.denoiser(x_t, t, c), model.transcoder.denoiser(x_t, t, c))
    kw = dict(num_iter=2, diffusion_steps=3, allow_null=True)          # label 5: the null class
    assert torch.equal(loaded.generate(labels, generator=torch.Generator().manual_seed(0), **kw),
                       model.generate(labels, generator=torch.Generator().manual_seed(0), **kw))


def test_load_rejects_a_config_that_does_not_fit(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    with pytest.raises(ValueError, match=r"missing \(8\): \['backbone.layers.2"):
        BiGR.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "transcoder_width": 48}))
    mismatch = r"shape mismatch.*denoiser.blocks.0.mlp.0.weight: checkpoint \(32, 32\) vs model \(48, 48\)"
    with pytest.raises(ValueError, match=mismatch):
        BiGR.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt checkpoint weights"):
        BiGR.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        BiGR.from_pretrained(tmp_path / "nowhere")
