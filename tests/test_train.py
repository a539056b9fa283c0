"""Training plumbing: data order, code cache, exact kill-and-resume, and 2-process DDP (gloo)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from minibigr.codes import CodeCache, encode_dataset
from minibigr.data import batch_indices
from minibigr.model import BiGR, BiGRConfig
from minibigr.pipeline import BiGRPipeline
from minibigr.tokenizer import BinaryAutoencoder, TokenizerConfig
from minibigr.train import TrainSettings, lr_at, plot_log, train_bigr, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]


class TinyImages:
    """16 random 16x16 RGB images with labels 0..3: a dataset in the (image, label) protocol."""

    def __init__(self, n=16, size=16, channels=3):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, channels, size, size, generator=g)
        self.y = torch.arange(n) % 4

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def tiny_tokenizer():
    cfg = TokenizerConfig.preset("cifar-32", image_size=16, nf=32, ch_mult=(1, 1), res_blocks=1,
                                 attn_resolutions=(), emb_dim=32, K=6, ndf=8, disc_layers=1, disc_start=2)
    torch.manual_seed(0)
    return BinaryAutoencoder(cfg)


def tiny_bigr(K=6, num_tokens=64):
    cfg = BiGRConfig.preset("tiny-32", K=K, num_tokens=num_tokens, num_classes=4, dim=32, n_layer=2, n_head=2,
                            transcoder_width=32, transcoder_blocks=1)
    torch.manual_seed(0)
    return BiGR(cfg)


def test_batch_indices_cover_each_epoch_once_and_shard_evenly():
    n, bs = 50, 8
    per_epoch = n // bs
    seen = torch.cat([batch_indices(n, bs, s, seed=3) for s in range(per_epoch)])
    assert len(set(seen.tolist())) == per_epoch * bs        # no repeats inside an epoch
    assert not torch.equal(batch_indices(n, bs, 0, 3), batch_indices(n, bs, per_epoch, 3))  # new epoch, new order
    shards = [batch_indices(n, bs, 5, 3, rank=r, world=2) for r in range(2)]
    assert torch.equal(torch.cat(shards), batch_indices(n, bs, 5, 3))
    with pytest.raises(ValueError, match="divisible"):
        batch_indices(n, 7, 0, 0, world=2)


def test_lr_warmup_then_cosine():
    s = TrainSettings(out_dir="x", steps=100, lr=1.0, warmup=10, lr_schedule="cosine")
    assert lr_at(0, s) == pytest.approx(0.1) and lr_at(9, s) == pytest.approx(1.0)
    assert lr_at(100, s) == pytest.approx(0.1)
    assert all(lr_at(i, s) >= lr_at(i + 1, s) for i in range(10, 99))
    to_zero = TrainSettings(out_dir="x", steps=100, lr=1.0, warmup=10, lr_schedule="cosine", final_lr=0.0)
    assert lr_at(10, to_zero) == pytest.approx(1.0) and lr_at(55, to_zero) == pytest.approx(0.5)
    assert lr_at(100, to_zero) == 0.0


def test_code_cache_round_trip(tmp_path):
    tok = tiny_tokenizer()
    data = TinyImages()
    cache = encode_dataset(tok, data, tmp_path / "codes", batch_size=5)
    tokens, labels = cache.get_batch(torch.tensor([3, 0, 15]))
    assert torch.equal(tokens, tok.encode_tokens(data.x, deterministic=True)[[3, 0, 15]])
    assert torch.equal(labels, data.y[[3, 0, 15]])
    assert (cache.K, cache.h, cache.w) == (tok.config.K, *tok.grid_size)
    (tmp_path / "codes" / "labels.npy").unlink()
    np.save(tmp_path / "codes" / "labels.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="incomplete"):
        CodeCache(tmp_path / "codes")


def test_plot_log_writes_a_png_and_leaves_the_backend_alone(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    previous = matplotlib.get_backend()
    plt.switch_backend("svg")                   # stands in for a notebook's inline backend
    try:
        (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n')
        plot_log(tmp_path / "log.jsonl", tmp_path / "loss.png", ("loss",))
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == []
    finally:
        plt.switch_backend(previous)
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _bigr_codes(tmp_path):
    return encode_dataset(tiny_tokenizer(), TinyImages(), tmp_path / "codes", batch_size=8)


def test_the_cache_keeps_what_a_bernoulli_draw_needs(tmp_path):
    """probs.npy holds round(255 p) of each image and of its mirror; a Bernoulli batch picks one of the two by a
    fair coin and draws each bit with probability q / 255, from the generator it is given."""
    tok = tiny_tokenizer().eval()
    data = TinyImages()
    cache = encode_dataset(tok, data, tmp_path / "codes", batch_size=5)
    p = tok.encode_token_probs(data.x)                                              # (n, N, K)
    mirror = tok.encode_token_probs(data.x.flip(-1))
    q = torch.from_numpy(np.array(cache.probs)).float() / 255                      # (n, 2, N, K)
    assert q.shape == (len(data), 2, *p.shape[1:])
    assert (q[:, 0] - p).abs().max() <= 0.5 / 255 + 1e-6 and (q[:, 1] - mirror).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(cache.get_batch(range(len(data)))[0], (p > 0.5).float())   # threshold: exactly [p > 1/2]
    # the mean of many draws of one row is the mean of its two views' probabilities, within sampling error
    rows = torch.zeros(4000, dtype=torch.long) + 3
    bits, labels = cache.get_batch(rows, "bernoulli", torch.Generator().manual_seed(0))
    expected = (q[3, 0] + q[3, 1]) / 2                                              # (N, K)
    sd = (expected * (1 - expected) / len(rows)).sqrt()
    assert ((bits.mean(0) - expected).abs() <= 5 * sd + 1e-3).all() and (labels == data.y[3]).all()
    # the same generator state gives the same bits; the next draw other ones
    g = torch.Generator().manual_seed(7)
    first = cache.get_batch([0, 5, 2], "bernoulli", g)[0]
    assert torch.equal(first, cache.get_batch([0, 5, 2], "bernoulli", torch.Generator().manual_seed(7))[0])
    assert not torch.equal(first, cache.get_batch([0, 5, 2], "bernoulli", g)[0])
    with pytest.raises(ValueError, match="unknown draw"):
        cache.get_batch([0], "sample")
    (tmp_path / "codes" / "probs.npy").unlink()                     # a cache written before probabilities were kept
    with pytest.raises(ValueError, match="holds no probabilities.*encode"):
        CodeCache(tmp_path / "codes").get_batch([0], "bernoulli", g)


@pytest.mark.parametrize("codes_draw", ["threshold", "bernoulli"])
def test_bigr_resume_is_exact(tmp_path, codes_draw):
    codes = _bigr_codes(tmp_path)
    settings = dict(steps=6, batch_size=4, lr=1e-3, warmup=2, ema=0.9, log_every=1, device="cpu",
                    codes_draw=codes_draw)
    train_bigr(tiny_bigr(num_tokens=codes.h * codes.w), codes, TrainSettings(out_dir=str(tmp_path / "a"), **settings))
    # the same run in two parts: stop after 3 steps (a checkpoint), then resume to 6
    part = {**settings, "steps": 3}
    train_bigr(tiny_bigr(num_tokens=codes.h * codes.w), codes, TrainSettings(out_dir=str(tmp_path / "b"), **part))
    train_bigr(tiny_bigr(num_tokens=codes.h * codes.w), codes, TrainSettings(out_dir=str(tmp_path / "b"), **settings))
    a = torch.load(tmp_path / "a" / "train_state.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "train_state.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs after resume"
    rows = [json.loads(line) for line in open(tmp_path / "a" / "log.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert (tmp_path / "a" / "loss.png").stat().st_size > 0
    with pytest.raises(ValueError, match="codes_draw"):
        TrainSettings(out_dir="x", codes_draw="sampled")
    assert (tmp_path / "a" / "model" / "model.safetensors").exists()


def test_tokenizer_resume_is_exact_across_gan_start(tmp_path):
    data = TinyImages()
    settings = dict(steps=4, batch_size=4, lr=1e-3, ema=0.9, log_every=1, device="cpu")
    train_tokenizer(tiny_tokenizer(), data, TrainSettings(out_dir=str(tmp_path / "a"), **settings))
    train_tokenizer(tiny_tokenizer(), data, TrainSettings(out_dir=str(tmp_path / "b"), **{**settings, "steps": 2}))
    train_tokenizer(tiny_tokenizer(), data, TrainSettings(out_dir=str(tmp_path / "b"), **settings))
    a = torch.load(tmp_path / "a" / "train_state.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "train_state.pt", weights_only=True)
    for key in ("model", "disc", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs after resume"
    rows = [json.loads(line) for line in open(tmp_path / "a" / "log.jsonl")]
    assert "d_loss" not in rows[0] and "d_loss" in rows[-1]       # the GAN switched on at disc_start=2


def test_a_run_trained_with_its_tokenizer_is_a_pipeline(tmp_path):
    """train_bigr(..., tokenizer=) keeps a copy of the tokenizer in the run: from_pretrained(run) loads both."""
    tok = tiny_tokenizer().eval()
    codes = encode_dataset(tok, TinyImages(), tmp_path / "codes", batch_size=8)
    ema = train_bigr(tiny_bigr(num_tokens=codes.h * codes.w), codes, TrainSettings(
        out_dir=str(tmp_path / "run"), steps=2, batch_size=4, lr=1e-3, device="cpu", sample_every=2), tokenizer=tok)
    assert (tmp_path / "run" / "samples_0000002.png").stat().st_size > 0
    for spec in (tmp_path / "run", tmp_path / "run" / "model"):
        pipe = BiGRPipeline.from_pretrained(spec)
        assert pipe.model.config == ema.config
        images = torch.rand(2, 3, 16, 16)
        assert torch.equal(pipe.encode(images), tok.encode_tokens(images, deterministic=True))
        tokens = pipe.model.generate(torch.tensor([0, 3]), generator=torch.Generator().manual_seed(0))
        assert torch.equal(tokens, ema.generate(torch.tensor([0, 3]), generator=torch.Generator().manual_seed(0)))


def test_resume_refuses_changed_batch_size(tmp_path):
    codes = _bigr_codes(tmp_path)
    s = dict(steps=1, lr=1e-3, device="cpu")
    n = codes.h * codes.w
    train_bigr(tiny_bigr(num_tokens=n), codes, TrainSettings(out_dir=str(tmp_path / "r"), batch_size=4, **s))
    with pytest.raises(ValueError, match="batch_size"):
        train_bigr(tiny_bigr(num_tokens=codes.h * codes.w), codes,
                   TrainSettings(out_dir=str(tmp_path / "r"), batch_size=8, **s))


def test_resume_refuses_changed_model_config_but_not_sampling_defaults(tmp_path):
    codes = _bigr_codes(tmp_path)
    s = TrainSettings(out_dir=str(tmp_path / "r"), steps=1, batch_size=4, lr=1e-3, device="cpu")
    n = codes.h * codes.w
    train_bigr(tiny_bigr(num_tokens=n), codes, s)
    wider = BiGR(BiGRConfig(**{**tiny_bigr(num_tokens=n).config.to_dict(), "dim": 64}))
    with pytest.raises(ValueError, match="dim: 32 -> 64"):
        train_bigr(wider, codes, s)
    other_cfg = BiGR(BiGRConfig(**{**tiny_bigr(num_tokens=n).config.to_dict(),
                                   "sampling": dict(cfg=1.5, order="raster")}))
    train_bigr(other_cfg, codes, TrainSettings(**{**s.__dict__, "steps": 2}))
    assert torch.load(tmp_path / "r" / "train_state.pt", weights_only=True)["step"] == 2


def test_cli_train_sets_config_fields_and_guards_resume(tmp_path, capsys):
    from minibigr.cli import main

    _bigr_codes(tmp_path)
    out = tmp_path / "cli"
    small = ["--set", "dim=32", "--set", "n_layer=1", "--set", "n_head=2", "--set", "transcoder_width=32",
             "--set", "use_adaLN=false"]
    run = ["train", "--codes", str(tmp_path / "codes"), "--out", str(out), "--batch-size", "4", "--device", "cpu"]
    assert main([*run, "--steps", "1", *small]) == 0
    config = json.loads((out / "model" / "config.json").read_text())
    assert (config["dim"], config["n_layer"], config["n_head"], config["use_adaLN"]) == (32, 1, 2, False)
    assert main([*run, "--steps", "2", *small, "--set", "dim=64"]) == 2
    assert "dim: 32 -> 64" in capsys.readouterr().err
    assert main([*run, "--steps", "2", *small, "--set", "sampling.cfg=1.5"]) == 0      # a sampling default may change
    assert json.loads((out / "model" / "config.json").read_text())["sampling"]["cfg"] == 1.5
    for bad, named in (("width=3", "width"), ("dim=wide", "dim"), ("use_adaLN=maybe", "use_adaLN"), ("dim", "dim")):
        assert main([*run, "--steps", "2", "--set", bad]) == 2
        err = capsys.readouterr().err
        assert "--set" in err and named in err and "Traceback" not in err


CLI_TRAIN = ["train", "--batch-size", "4", "--device", "cpu", "--steps", "24", "--ckpt-every", "2", "--set",
             "dim=32", "--set", "n_layer=1", "--set", "n_head=2", "--set", "transcoder_width=32"]


def test_cli_train_with_the_same_seed_ends_with_the_same_weights_even_when_killed(tmp_path):
    """--seed fixes everything: initial weights, dropout, masks, timesteps. Two runs of one command end bit-identical,
    and so does a third that is killed mid-way and run again (it resumes); another seed ends elsewhere."""
    _bigr_codes(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def command(out, seed=3):
        args = [*CLI_TRAIN, "--codes", str(tmp_path / "codes"), "--out", str(tmp_path / out), "--seed", str(seed)]
        return [sys.executable, "-c", f"from minibigr.cli import main; raise SystemExit(main({args!r}))"]

    for out, seed in (("a", 3), ("b", 3), ("other", 4)):
        subprocess.run(command(out, seed), env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.Popen(command("killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "train_state.pt"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(state, weights_only=True)["step"]
    assert killed_at < 24, "the run finished before it could be killed; make it longer"
    subprocess.run(command("killed"), env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    weights = {run: load_file(tmp_path / run / "model" / "model.safetensors") for run in ("a", "b", "killed", "other")}
    for run in ("b", "killed"):
        for name, value in weights["a"].items():
            assert torch.equal(value, weights[run][name]), f"{name} differs between run a and run {run}"
    assert not torch.equal(weights["a"]["backbone.mask_tok"], weights["other"]["backbone.mask_tok"])


RUN_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_train import TinyImages, tiny_bigr, tiny_tokenizer
from minibigr.train import CodeCache, TrainSettings, train_bigr
codes = CodeCache({codes!r})
model = train_bigr(tiny_bigr(num_tokens=codes.h * codes.w), codes, TrainSettings(
    out_dir={out!r}, steps={steps}, batch_size=4, lr=1e-3, ema=0.9, ckpt_every=2, log_every=1, device="cpu"))
"""


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    _bigr_codes(tmp_path)
    steps = 40
    script = RUN_SCRIPT.format(tests=str(ROOT / "tests"), codes=str(tmp_path / "codes"), out=str(tmp_path / "k"),
                               steps=steps)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    state = tmp_path / "k" / "train_state.pt"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(state, weights_only=True)["step"]
    assert killed_at < steps, "the run finished before it could be killed; make it longer"
    subprocess.run([sys.executable, "-c", script], env=env, check=True, stdout=subprocess.DEVNULL)
    straight = RUN_SCRIPT.format(tests=str(ROOT / "tests"), codes=str(tmp_path / "codes"),
                                 out=str(tmp_path / "s"), steps=steps)
    subprocess.run([sys.executable, "-c", straight], env=env, check=True, stdout=subprocess.DEVNULL)
    a = load_file(tmp_path / "k" / "model" / "model.safetensors")
    b = load_file(tmp_path / "s" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs: killed at step {killed_at} and resumed"


DDP_SCRIPT = """
import os, sys, torch
from safetensors.torch import save_file
sys.path.insert(0, {tests!r})
from test_train import tiny_bigr
from minibigr.train import CodeCache, TrainSettings, train_bigr
codes = CodeCache({codes!r})
model = tiny_bigr(num_tokens=codes.h * codes.w)
train_bigr(model, codes, TrainSettings(out_dir={out!r}, steps=3, batch_size=8, lr=1e-3, ema=0.9, device="cpu"))
save_file({{k: v.contiguous() for k, v in model.state_dict().items()}},
          os.path.join({out!r}, "rank%s.safetensors" % os.environ["RANK"]))
"""


def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    codes = _bigr_codes(tmp_path)
    out = tmp_path / "ddp"
    out.mkdir()
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=str(ROOT / "tests"), codes=str(tmp_path / "codes"),
                                                        out=str(out))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    start = tiny_bigr(num_tokens=codes.h * codes.w).state_dict()
    assert any(not torch.equal(r0[k], start[k]) for k in r0), "no weight moved"
    for name in r0:
        assert torch.equal(r0[name], r1[name]), f"ranks disagree on {name}"
    assert (out / "model" / "model.safetensors").exists()
