"""BiGRPipeline: loading by name or directory, labels in / images out, tokens as the one currency."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from minibigr import BiGR, BiGRConfig, BiGRPipeline, BinaryAutoencoder, TokenizerConfig
from minibigr.pipeline import load_tokenizer


def tiny_pair(K=6, seed=0):
    torch.manual_seed(seed)
    tok = BinaryAutoencoder(TokenizerConfig.preset("fashion-mnist-32", image_size=16, nf=32, ch_mult=(1, 1, 1),
                                                   emb_dim=32, K=K, attn_resolutions=()))
    model = BiGR(BiGRConfig.preset("tiny-32", K=6, num_tokens=16, num_classes=3, dim=32, n_layer=2, n_head=2,
                                   transcoder_width=32, transcoder_blocks=1,
                                   sampling=dict(num_iter=3, diffusion_steps=4)))
    with torch.no_grad():
        for p in model.parameters():          # no zero-initialised layers: outputs depend on every weight
            p.normal_(0, 0.2)
    return tok.eval(), model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A pipeline directory: tokenizer/ and model/, each a checkpoint."""
    root = tmp_path_factory.mktemp("pipe")
    tok, model = tiny_pair()
    tok.save_pretrained(root / "tokenizer")
    model.save_pretrained(root / "model")
    return root, tok, model


def draw(seed):
    return torch.Generator().manual_seed(seed)


def test_from_pretrained_loads_what_was_saved_in_eval_mode(saved):
    root, tok, model = saved
    pipe = BiGRPipeline.from_pretrained(root)
    assert not pipe.tokenizer.training and not pipe.model.training and pipe.device == torch.device("cpu")
    expected = tok.decode_tokens(model.generate(torch.tensor([0, 2]), generator=draw(1)))
    assert torch.equal(pipe(torch.tensor([0, 2]), generator=draw(1)), expected)


def test_the_model_checkpoint_finds_its_tokenizer_beside_it_or_is_told(saved, tmp_path):
    root, tok, _ = saved
    images = torch.rand(2, 1, 16, 16, generator=draw(0))
    for pipe in (BiGRPipeline.from_pretrained(root / "model"),
                 BiGRPipeline.from_pretrained(root / "model", tokenizer=root / "tokenizer"),
                 BiGRPipeline.from_pretrained(root / "model", tokenizer=root)):
        assert torch.equal(pipe.encode(images), tok.encode_tokens(images, deterministic=True))
    BiGR.from_pretrained(root / "model").save_pretrained(tmp_path / "alone")
    with pytest.raises(FileNotFoundError, match="no tokenizer beside the BiGR.*tokenizer="):
        BiGRPipeline.from_pretrained(tmp_path / "alone")
    with pytest.raises(FileNotFoundError, match="neither a shipped model"):
        BiGRPipeline.from_pretrained(tmp_path / "nothing")


def test_load_tokenizer_takes_a_pipeline_a_checkpoint_or_a_run(saved, tmp_path):
    root, tok, _ = saved
    tok.save_pretrained(tmp_path / "run" / "model")                 # how train_tokenizer lays out a run
    x = torch.rand(1, 1, 16, 16, generator=draw(2))
    for spec in (root, root / "tokenizer", tmp_path / "run", tmp_path / "run" / "model"):
        assert torch.equal(load_tokenizer(spec).encode(x, deterministic=True), tok.encode(x, deterministic=True))


def test_a_tokenizer_and_a_model_that_do_not_fit_are_refused():
    tok, _ = tiny_pair(K=8)
    _, model = tiny_pair(K=6)
    with pytest.raises(ValueError, match="16 tokens of K=8 bits.*16 tokens of K=6 bits"):
        BiGRPipeline(tok, model)


def test_labels_may_be_a_tensor_a_list_or_one_int(saved):
    _, tok, model = saved
    pipe = BiGRPipeline(tok, model)
    a = pipe(torch.tensor([1, 1]), generator=draw(3))
    assert torch.equal(pipe([1, 1], generator=draw(3)), a)
    assert torch.equal(pipe(1, generator=draw(3)), pipe(torch.tensor([1]), generator=draw(3)))
    with pytest.raises(ValueError, match="class labels must be integers"):
        pipe([0.5])
    with pytest.raises(ValueError, match=r"one class label per image.*\(2, 2\)"):
        pipe(torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must be in 0..2"):
        pipe([7])
    # the null class only by name: its number is refused, "null" samples the unconditional model
    with pytest.raises(ValueError, match="3 is the null class"):
        pipe([3])
    torch.testing.assert_close(pipe(["null"], generator=draw(3)),
                               pipe.decode(model.generate(torch.tensor([3]), allow_null=True, generator=draw(3))))
    assert pipe(["null", 1]).shape[0] == 2
    with pytest.raises(TypeError, match="unknown sampling setting"):
        pipe([0], guidance=2.0)
    assert pipe.to("cpu") is pipe


def test_an_empty_batch_gives_no_images(saved):
    _, tok, model = saved
    pipe = BiGRPipeline(tok, model)
    assert model.generate(torch.zeros(0, dtype=torch.long)).shape == (0, model.config.num_tokens, model.config.K)
    assert pipe([]).shape == (0, tok.config.in_channels, tok.config.image_size, tok.config.image_size)


def test_encode_and_decode_run_large_batches_in_chunks(saved, monkeypatch):
    """Past TOKENIZER_ELEMENTS numbers of image the tokenizer runs chunk after chunk, never on more images than one
    chunk's: the same tokens (a stochastic encode draws its bits in the same order), the same images up to float
    rounding (the convolutions' kernels may differ with the batch size)."""
    from minibigr import pipeline

    _, tok, model = saved
    pipe = BiGRPipeline(tok, model)
    tokens = (torch.rand(7, 16, 6, generator=draw(0)) < 0.5).float()
    images = pipe.decode(tokens)
    encoded = pipe.encode(images, draw="bernoulli", generator=draw(1))
    batches = []
    hook = tok.generator.register_forward_hook(lambda m, args, out: batches.append(len(out)))
    monkeypatch.setattr(pipeline, "TOKENIZER_ELEMENTS", 3 * 16 * 16 + 5)            # chunks of 3, 3 and 1 images
    try:
        assert torch.allclose(pipe.decode(tokens), images, atol=1e-4)
        assert torch.equal(pipe.encode(images, draw="bernoulli", generator=draw(1)), encoded)
    finally:
        hook.remove()
    assert batches == [3, 3, 1]
    assert pipe.decode(tokens[:0]).shape == (0, *images.shape[1:]) and pipe.encode(images[:0]).shape == (0, 16, 6)


def test_sampling_overrides_reach_the_model(saved):
    _, tok, model = saved
    pipe = BiGRPipeline(tok, model)
    kw = dict(num_iter=1, deterministic=True, order="raster", cfg=1.0)
    assert torch.equal(pipe([0, 1], generator=draw(4), **kw),
                       tok.decode_tokens(model.generate(torch.tensor([0, 1]), generator=draw(4), **kw)))
    assert not torch.equal(pipe([0, 1], generator=draw(4), **kw), pipe([0, 1], generator=draw(4)))


def test_loading_builds_on_meta_keeps_the_file_dtype_out_and_leaves_the_global_rng_alone(saved, tmp_path):
    """from_pretrained builds on the meta device and takes the file's tensors: a float16 file (as shipped) loads
    as float32 values equal to it, and no random initialisation runs."""
    root, _, model = saved
    model.save_pretrained(tmp_path / "half")
    weights = tmp_path / "half" / "model.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(weights).items()}, weights)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    loaded = BiGR.from_pretrained(tmp_path / "half")
    assert torch.equal(torch.rand(3), expected)
    for (name, p), q in zip(loaded.state_dict().items(), model.state_dict().values(), strict=True):
        assert p.dtype == q.dtype and not p.is_meta, name
        if p.is_floating_point():
            assert torch.equal(p, q.half().to(q.dtype)), name
