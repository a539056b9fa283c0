"""The authors' published models by name, from a Hugging Face cache: offline, small files, the real layout.

The fixture writes a fake cache of haoosz/BiGR the way huggingface_hub lays one out (blobs, snapshots that
link to them, refs/main), with every registry file present as a small model of the published architecture
(layers, heads, K, token grid, transcoder blocks; only the widths shrink), and points the hub at it with
HF_HUB_OFFLINE=1: nothing is downloaded.
"""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minibigr import BiGR, BiGRConfig, BiGRPipeline, BinaryAutoencoder, TokenizerConfig, apps, authors, official
from minibigr.cli import main
from minibigr.sampler import SamplingConfig

pytest.importorskip("huggingface_hub")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
# per published model: (layers, transcoder blocks, whether the transcoder is wider than the backbone)
ARCHITECTURES = {"BiGR-L-d24": (24, 3, False), "BiGR-XL-d24": (36, 6, False), "BiGR-XXL-d24": (48, 8, False),
                 "BiGR-XXL-d32": (48, 8, False), "BiGR-L-d32-res512": (24, 6, True)}


def small_bigr(name: str) -> BiGR:
    entry = official.MODELS[name]
    layers, blocks, wider = ARCHITECTURES[name]
    K = 32 if "d32" in name else 24
    dim = 4 * entry.num_heads                                  # head_dim 4: the smallest the 2-D rotary allows
    grid = entry.image_size // 16
    config = BiGRConfig(K=K, num_classes=1000, num_tokens=grid * grid, dim=dim, n_layer=layers, n_head=entry.num_heads,
                        transcoder_width=dim + 16 * wider, transcoder_blocks=blocks)
    torch.manual_seed(len(name))
    return BiGR(config)


def small_bae(name: str) -> BinaryAutoencoder:
    image_size = official.BAES[name].image_size
    config = TokenizerConfig(image_size=image_size, nf=32, ch_mult=(1, 1, 2, 2, 4), res_blocks=1, emb_dim=32,
                             K=32 if "d32" in name else 24, attn_resolutions=(16,) if image_size == 256 else ())
    torch.manual_seed(len(name))
    return BinaryAutoencoder(config).eval()


def put(cache: Path, path: str, obj) -> None:
    """torch.save obj as the repository's file ``path``: a blob named by its hash, linked from the snapshot."""
    repo = cache / "models--haoosz--BiGR"
    tmp = repo / "tmp.pt"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, tmp)
    blob = repo / "blobs" / hashlib.sha256(tmp.read_bytes()).hexdigest()
    blob.parent.mkdir(exist_ok=True)
    tmp.replace(blob)
    link = repo / "snapshots" / COMMIT / path
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf") / "hub"
    for name in official.BAES:
        put(root, official.BAES[name].path, official.to_official_bae(small_bae(name)))
    for name in official.MODELS:
        put(root, official.MODELS[name].path, {"ema": official.to_official_bigr(small_bigr(name))})
    return root


@pytest.fixture
def hub(cache, monkeypatch):
    """The hub pointed at the fake cache, offline (env for new processes, constants for this one)."""
    from huggingface_hub import constants

    for key, value in (("HF_HUB_CACHE", str(cache)), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.parametrize("name", list(official.MODELS))
def test_every_published_model_loads_by_name_with_its_sizes_read_off_the_file(hub, name):
    entry = official.MODELS[name]
    model = official.load_bigr(name)
    expected = small_bigr(name)
    c = model.config
    layers, blocks, _ = ARCHITECTURES[name]
    assert (c.n_layer, c.n_head, c.transcoder_blocks, c.num_classes) == (layers, entry.num_heads, blocks, 1000)
    assert (c.K, c.num_tokens, c.dim, c.transcoder_width) == (expected.config.K, (entry.image_size // 16) ** 2,
                                                              expected.config.dim, expected.config.transcoder_width)
    assert c.sampling == SamplingConfig(**authors.settings(entry.sampling)) and not model.training
    tokens = torch.rand(1, c.num_tokens, c.K).round()
    assert torch.equal(model(tokens, torch.tensor([207])), expected.eval()(tokens, torch.tensor([207])))


@pytest.mark.parametrize("name", list(official.BAES))
def test_every_published_bae_loads_by_name_with_its_sizes_read_off_the_file(hub, name):
    tok = official.load_bae(name)
    expected = small_bae(name)
    assert tok.config.image_size == official.BAES[name].image_size and not tok.training
    for field in ("K", "ch_mult", "attn_resolutions", "emb_dim", "nf", "norm_first"):
        assert getattr(tok.config, field) == getattr(expected.config, field), field
    assert tok.grid_size == (official.BAES[name].image_size // 16,) * 2


def test_a_published_pipeline_samples_classes_by_name_at_256_and_512(hub):
    pipe = BiGRPipeline.from_pretrained("BiGR-L-d24")
    assert pipe.class_names[207] == "golden retriever" and pipe.tokenizer.config.K == 24
    fast = dict(num_iter=2, diffusion_steps=2)
    images = pipe(["golden retriever", 360], generator=torch.Generator().manual_seed(0), **fast)
    assert images.shape == (2, 3, 256, 256)
    assert torch.equal(images, pipe([207, 360], generator=torch.Generator().manual_seed(0), **fast))
    big = BiGRPipeline.from_pretrained("BiGR-L-d32-res512", dtype=torch.bfloat16)
    assert big.model.backbone.tok_embeddings.weight.dtype == torch.bfloat16
    assert big.tokenizer.config.image_size == 512 and big.model.config.num_tokens == 32 * 32
    assert big(1, generator=torch.Generator().manual_seed(0), **fast).shape == (1, 3, 512, 512)
    source, mask = torch.rand(1, 3, 512, 512), torch.zeros(512, 512, dtype=torch.bool)
    mask[256:] = True
    painted = apps.inpaint(big, source, mask, "otter", generator=torch.Generator().manual_seed(0), **fast)
    assert painted.shape == (1, 3, 512, 512) and torch.equal(painted[..., :256, :], source[..., :256, :])
    with pytest.raises(ValueError, match="unknown class name 'golden retreiver'; close matches: golden retriever"):
        pipe(["golden retreiver"])
    with pytest.raises(ValueError, match="'crane' is ambiguous: it is class 134 and 517"):
        pipe(["crane"])


def test_a_missing_extra_a_missing_file_and_a_corrupt_file_are_one_clear_error_each(hub, monkeypatch, tmp_path):
    with monkeypatch.context() as m:
        m.setitem(__import__("sys").modules, "huggingface_hub", None)        # as if it were not installed
        with pytest.raises(official.MissingExtra, match=r"pip install 'minibigr\[hub\]'"):
            official.load_bigr("BiGR-L-d24")
    missing = official.Published("gpt/bigr_M_d24.pt", 1.0, 256, "d24", 16, {})
    monkeypatch.setitem(official.MODELS, "BiGR-M-d24", missing)
    with pytest.raises(FileNotFoundError, match=rf"haoosz/BiGR/gpt/bigr_M_d24.pt is not in the Hugging Face cache "
                                                rf"\({hub}\) and downloading is off \(HF_HUB_OFFLINE=1\)"):
        official.load_bigr("BiGR-M-d24")
    with pytest.raises(ValueError, match="no published BiGR model named 'BiGR-L'; did you mean BiGR-L-d24"):
        official.load_bigr("BiGR-L")
    corrupt = tmp_path / "hub"
    put(corrupt, "gpt/bigr_L_d24.pt", {})
    blob = next((corrupt / "models--haoosz--BiGR" / "blobs").iterdir())
    blob.write_bytes(b"not a checkpoint")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(corrupt))
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*gpt/bigr_L_d24.pt"):
        official.load_bigr("BiGR-L-d24")


def test_lean_loading_maps_the_file_and_keeps_only_the_ema_weights(tmp_path):
    """The model takes the file's tensors (memory-mapped), not copies; the other entry is never read."""
    ema, raw = small_bigr("BiGR-L-d24"), small_bigr("BiGR-XL-d24")
    torch.save({"ema": official.to_official_bigr(ema), "model": official.to_official_bigr(raw)}, tmp_path / "c.pt")
    loaded = official.load_bigr(tmp_path / "c.pt", num_heads=16)
    assert all(not p.is_meta for p in loaded.parameters())
    assert loaded.config.n_layer == 24 and loaded.config.dim == ema.config.dim
    for (name, p), q in zip(loaded.state_dict().items(), ema.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    half = official.load_bigr(tmp_path / "c.pt", num_heads=16, dtype=torch.bfloat16)
    assert half.backbone.layers[0].attention.wqkv.weight.dtype == torch.bfloat16
    assert torch.equal(half.backbone.mask_tok, ema.backbone.mask_tok.bfloat16())


def write_image(path: Path, size: int, mask: bool = False) -> Path:
    rng = np.random.default_rng(0)
    if mask:
        array = np.zeros((size, size), np.uint8)
        array[size // 2:] = 255
    else:
        array = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


def test_cli_samples_and_inpaints_with_a_published_model_by_name(hub, tmp_path, capsys):
    out = tmp_path / "x.png"
    fast = ["--num-iter", "2", "--diffusion-steps", "2"]
    assert main(["sample", "--model", "BiGR-L-d24", "--labels", "golden retriever", "207", "--per-class", "1",
                 "--out", str(out), "--device", "cpu", *fast]) == 0
    with np.load(out.with_suffix(".npz")) as saved:
        assert saved["labels"].tolist() == [207, 207] and saved["images"].shape == (2, 3, 256, 256)
    painted = tmp_path / "p.png"
    assert main(["inpaint", "--model", "BiGR-L-d24", "--image", str(write_image(tmp_path / "in.png", 256)),
                 "--mask", str(write_image(tmp_path / "m.png", 256, mask=True)), "--label", "otter",
                 "--out", str(painted), "--device", "cpu", *fast]) == 0
    with Image.open(painted) as image:
        assert image.size == (256, 256)
    capsys.readouterr()
    assert main(["sample", "--model", "BiGR-L-d24", "--labels", "golden retreiver", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minibigr sample: error: unknown class name") and "golden retriever" in err
