"""Zero-shot applications: what is outside the mask never changes, in tokens and in pixels."""

import pytest
import torch

from minibigr import BiGRPipeline, apps
from minibigr.model import BiGR, BiGRConfig
from minibigr.tokenizer import BinaryAutoencoder, TokenizerConfig


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    tok = BinaryAutoencoder(TokenizerConfig.preset("fashion-mnist-32", nf=32, ch_mult=(1, 1, 1), emb_dim=32, K=6,
                                                        attn_resolutions=()))
    model = BiGR(BiGRConfig.preset("tiny-32", K=6, num_tokens=64, dim=32, n_layer=2, n_head=2,
                                   transcoder_width=32, transcoder_blocks=1,
                                   sampling=dict(num_iter=4, diffusion_steps=4)))
    for p in model.parameters():          # leave the zero-init: random outputs make the checks non-trivial
        torch.nn.init.normal_(p, std=0.2)
    return BiGRPipeline(tok.eval(), model.eval())


def images(n=3):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def left_half_mask(n=3):
    mask = torch.zeros(n, 1, 32, 32, dtype=torch.bool)
    mask[..., :, :13] = True             # not on a token boundary: 13 px cover token columns 0..3
    return mask


def test_token_mask_marks_every_token_touching_the_mask():
    regen = apps.token_mask(left_half_mask(1), (8, 8)).view(8, 8)
    assert regen[:, :4].all() and not regen[:, 4:].any()


def test_inpaint_keeps_pixels_and_tokens_outside_the_mask(pipe):
    x, mask = images(), left_half_mask()
    states = []                                 # the sampler's callback sees the tokens after every step
    out = apps.inpaint(pipe, x, mask, labels=3, generator=torch.Generator().manual_seed(0),
                       callback=lambda step: states.append(step.tokens))
    assert out.shape == x.shape
    assert torch.equal(out[~mask.expand_as(x)], x[~mask.expand_as(x)])
    assert not torch.equal(out[mask.expand_as(x)], x[mask.expand_as(x)])
    # tokens: the regenerated sequence keeps every token outside the token mask
    regen = apps.token_mask(mask, (8, 8))
    source, tokens = pipe.encode(x), states[-1]
    assert len(states) == pipe.model.config.sampling.num_iter
    assert torch.equal(tokens[~regen], source[~regen])
    assert set(tokens.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out, apps.blend(pipe.decode(tokens), x, mask))


def test_outpaint_is_inpaint_of_the_complement(pipe):
    x, mask = images(), left_half_mask()
    a = apps.outpaint(pipe, x, mask, labels=1, generator=torch.Generator().manual_seed(5))
    b = apps.inpaint(pipe, x, ~mask, labels=1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(a[mask.expand_as(x)], x[mask.expand_as(x)])


def test_edit_depends_on_the_new_class(pipe):
    x, mask = images(), left_half_mask()
    a = apps.edit(pipe, x, mask, new_labels=torch.tensor([0, 0, 0]), generator=torch.Generator().manual_seed(2))
    b = apps.edit(pipe, x, mask, new_labels=[7, 7, 7], generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)
    assert torch.equal(a[~mask.expand_as(x)], b[~mask.expand_as(x)])


def test_interpolate_ends_are_the_pure_classes(pipe):
    strip = apps.interpolate(pipe, 2, 5, alphas=(1.0, 0.5, 0.0), generator=torch.Generator().manual_seed(4))
    assert strip.shape == (3, 1, 32, 32)
    assert torch.equal(strip[0], pipe([2], generator=torch.Generator().manual_seed(4))[0])
    assert torch.equal(strip[2], pipe([5], generator=torch.Generator().manual_seed(4))[0])


def test_enrich_regenerates_every_token_once_per_group(pipe, monkeypatch):
    x = images(2)
    regenerated = []                            # the tokens each generate call may change
    generate = pipe.model.generate

    def recording(labels, **kwargs):
        regenerated.append(~kwargs["given"])
        assert (labels == pipe.model.null_class).all() and kwargs["mask_schedule"] == "linear"
        return generate(labels, **kwargs)

    monkeypatch.setattr(pipe.model, "generate", recording)
    out = apps.enrich(pipe, x, r=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert len(regenerated) == 4
    assert torch.equal(torch.stack(regenerated).sum(0), torch.ones(2, 64, dtype=torch.long))
    assert all(int(r[0].view(8, 8)[:2, :2].sum()) == 1 for r in regenerated)    # one place of each 2x2 block
    for r in (3, 0):
        with pytest.raises(ValueError, match=f"r={r} must be a positive divisor of the 8x8 token grid"):
            apps.enrich(pipe, x, r=r)


def test_enrich_in_four_passes_starts_each_pass_from_the_last(pipe, monkeypatch):
    """passes=4, as the authors' apps/enrich.py: 4 x 4 generate calls, each pass a new random split of the 2 x 2
    places, and every call starts from the tokens the previous one returned."""
    calls = []
    generate = pipe.model.generate

    def recording(labels, **kwargs):
        out = generate(labels, **kwargs)
        calls.append((kwargs["tokens"].clone(), ~kwargs["given"], out))
        return out

    monkeypatch.setattr(pipe.model, "generate", recording)
    apps.enrich(pipe, images(1), r=2, passes=4, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 16
    for (_, _, before), (tokens, _, _) in zip(calls, calls[1:], strict=False):
        assert torch.equal(tokens, before)                                     # fed back, call after call
    for p in range(4):
        regen = torch.stack([c[1] for c in calls[4 * p:4 * p + 4]])
        assert torch.equal(regen.sum(0), torch.ones(1, 64, dtype=torch.long))  # each pass: every token once
    splits = {tuple(int(c[1][0].view(8, 8)[:2, :2].flatten().int().argmax()) for c in calls[4 * p:4 * p + 4])
              for p in range(4)}
    assert len(splits) > 1                                                     # the passes split the places anew
    with pytest.raises(ValueError, match="passes must be >= 1"):
        apps.enrich(pipe, images(1), passes=0)


def test_token_masks_from_pixels_any_pixel_or_the_nearest_one():
    """"any": a token is regenerated when any of its 4 x 4 pixels is masked; "nearest" (the authors'
    F.interpolate(mode="nearest")): when the top-left pixel of its patch is."""
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    mask[0, 0, 3, 3] = True                      # the bottom-right pixel of token (0, 0)
    mask[0, 0, 4, 8] = True                      # the top-left pixel of token (1, 2)
    anyp, nearest = (apps.token_mask(mask, (8, 8), rule).view(8, 8) for rule in ("any", "nearest"))
    assert anyp[0, 0] and anyp[1, 2] and int(anyp.sum()) == 2
    assert not nearest[0, 0] and nearest[1, 2] and int(nearest.sum()) == 1
    with pytest.raises(ValueError, match="mask_from_pixels"):
        apps.token_mask(mask, (8, 8), "centre")


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_inpaint_reveals_on_the_mask_schedule_it_is_given(pipe, schedule):
    """mask_schedule="linear" (the authors' inpaint_with_cfg default) keeps floor(n (1 - i/I)) of the n regenerated
    tokens masked after step i; cosine floor(n cos(pi/2 i/I))."""
    import math

    masked = []
    x, mask = images(1), left_half_mask(1)
    apps.inpaint(pipe, x, mask, 3, generator=torch.Generator().manual_seed(0), mask_schedule=schedule,
                 callback=lambda step: masked.append(int(step.mask.sum())))
    n, I = int(apps.token_mask(mask, (8, 8)).sum()), pipe.model.config.sampling.num_iter
    ratio = {"cosine": lambda i: max(0.0, math.cos(math.pi / 2 * i / I)), "linear": lambda i: 1 - i / I}[schedule]
    assert masked == [math.floor(n * ratio(i)) for i in range(1, I + 1)]


def test_inpaint_encodes_the_source_by_threshold_or_bernoulli_draw(pipe):
    x, mask = images(1), left_half_mask(1)
    keep = ~apps.token_mask(mask, (8, 8))
    for draw, expected in (("threshold", pipe.encode(x)),
                           ("bernoulli", pipe.encode(x, "bernoulli", torch.Generator().manual_seed(5)))):
        seen = []
        apps.inpaint(pipe, x, mask, 3, generator=torch.Generator().manual_seed(5), draw=draw,
                     callback=lambda step, seen=seen: seen.append(step.tokens))
        assert torch.equal(seen[-1][keep], expected[keep])                   # the kept tokens are the source's


def test_mask_shape_errors(pipe):
    with pytest.raises(ValueError, match="does not match"):
        apps.inpaint(pipe, images(), torch.zeros(16, 16, dtype=torch.bool), labels=0)


def test_generate_runs_the_transcoder_on_exactly_the_masked_tokens(pipe, monkeypatch):
    model = pipe.model
    from minibigr.sampler import masked_after

    rows = []
    sample = model.transcoder.sample

    def counting(cond, *args, **kwargs):
        rows.append(cond.shape[0])
        return sample(cond, *args, **kwargs)

    monkeypatch.setattr(model.transcoder, "sample", counting)
    B, N, I = 2, 64, 4
    given = torch.zeros(B, N, dtype=torch.bool)
    given[:, :16] = True                        # 48 of 64 tokens to generate in every row
    tokens = torch.ones(B, N, 6)
    out = model.generate(torch.tensor([1, 2]), tokens=tokens, given=given, num_iter=I, order="entropy",
                         generator=torch.Generator().manual_seed(0))    # a certainty order: every masked token
    expected = [B * int(masked_after(torch.tensor([48]), i - 1, I)) for i in range(1, I + 1)]
    assert rows == expected
    assert torch.equal(out[given], tokens[given])
