"""Training: the binary tokenizer, the code cache, and BiGR (SPEC §1.1, §1.3) on one device or many.

Three jobs, each resumable and each writing next to its checkpoint a JSON-lines log and a loss curve:

    train_tokenizer(...)  L1 (+ LPIPS) + PatchGAN hinge loss with adaptive weight and delayed start
    encode_dataset(...)   run the tokenizer once over a dataset, cache the bits packed and memory-mapped
    train_bigr(...)       masked modeling on cached codes: AdamW groups, warmup, clipping, EMA, bf16

Checkpoints: ``<out>/model/`` (config.json + model.safetensors, EMA weights: what inference loads) and
``<out>/train_state.pt`` (raw weights, optimisers, EMA, step, RNG states), each written to a temp
file and renamed, so a crash never leaves a half-written file. Data order is a function of
(seed, step), so a resumed run sees exactly the batches an uninterrupted one would.

Distributed: launch with ``torchrun --nproc_per_node=G``; gradients are averaged by
DistributedDataParallel (NCCL on GPU, gloo on CPU), every rank draws its own shard of each global
batch, and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import CONFIG_NAME, atomic_write, read_config


# ----------------------------------------------------------------------------------------------
# Settings and per-dataset recipes
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainSettings:
    """What a training run does; saved next to the checkpoint as ``train_settings.json``."""

    out_dir: str
    steps: int = 10_000
    batch_size: int = 64              # global batch (split across ranks)
    lr: float = 1e-4
    warmup: int = 0
    lr_schedule: str = "constant"     # "constant" after warmup (official) or "cosine" to lr/10
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    ema: float = 0.9999
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 1000
    sample_every: int = 0             # 0 = only at the end
    device: str = "auto"
    amp: bool = True                  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False
    extra: dict = field(default_factory=dict)


# Defaults per dataset: the presets and the training settings that `minibigr` uses when not told
# otherwise. The Fashion-MNIST recipe is the one that produced the shipped model.
RECIPES = {
    "fashion-mnist": {
        "tokenizer": "fashion-mnist-32", "model": "tiny-32",
        "tokenizer_train": {"steps": 4000, "batch_size": 32, "lr": 2e-3, "warmup": 200, "lr_schedule": "cosine",
                            "betas": (0.5, 0.9), "ema": 0.999, "weight_decay": 0.0, "ckpt_every": 250},
        "bigr_train": {"steps": 5000, "batch_size": 64, "lr": 1e-3, "warmup": 300, "lr_schedule": "cosine",
                       "ema": 0.999, "ckpt_every": 250},
    },
    "shapes": {
        "tokenizer": "cifar-32", "model": "tiny-32",
        "tokenizer_train": {"steps": 3000, "batch_size": 64, "lr": 2e-4, "warmup": 200, "ema": 0.999,
                            "weight_decay": 0.0},
        "bigr_train": {"steps": 5000, "batch_size": 128, "lr": 6e-4, "warmup": 300, "ema": 0.999,
                       "lr_schedule": "cosine"},
    },
    "cifar10": {
        "tokenizer": "cifar-32", "model": "small-32",
        "tokenizer_train": {"steps": 100_000, "batch_size": 128, "lr": 1e-4, "warmup": 1000, "ema": 0.999,
                            "weight_decay": 0.0},
        "bigr_train": {"steps": 200_000, "batch_size": 256, "lr": 3e-4, "warmup": 2000, "ema": 0.9999},
    },
    "imagenet64": {
        "tokenizer": "imagenet-64", "model": "small-64",
        "tokenizer_train": {"steps": 200_000, "batch_size": 128, "lr": 1e-4, "warmup": 2000, "ema": 0.999,
                            "weight_decay": 0.0},
        "bigr_train": {"steps": 400_000, "batch_size": 512, "lr": 3e-4, "warmup": 5000, "ema": 0.9999},
    },
}


def _recipe(dataset: str) -> dict:
    if dataset not in RECIPES:
        raise ValueError(f"no training recipe for dataset {dataset!r}; known: {', '.join(RECIPES)}")
    return RECIPES[dataset]


def tokenizer_settings(dataset: str, out_dir: str, **overrides) -> TrainSettings:
    """The dataset's tokenizer recipe with ``overrides`` applied."""
    return TrainSettings(out_dir=out_dir, **{**_recipe(dataset)["tokenizer_train"], **overrides})


def bigr_settings(dataset: str, out_dir: str, **overrides) -> TrainSettings:
    """The dataset's BiGR recipe with ``overrides`` applied."""
    return TrainSettings(out_dir=out_dir, **{**_recipe(dataset)["bigr_train"], **overrides})


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warmup, then constant or cosine decay to lr/10."""
    if s.warmup and step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    if s.lr_schedule == "cosine":
        progress = (step - s.warmup) / max(1, s.steps - s.warmup)
        return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
    return s.lr


# ----------------------------------------------------------------------------------------------
# Devices and ranks
# ----------------------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Dist:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        rank, local = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local)
        return Dist(rank, world, torch.device(f"cuda:{local}" if cuda else "cpu"))
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    return Dist(0, 1, torch.device(device))


def autocast(d: Dist, enabled: bool):
    """bf16 autocast on CUDA; a no-op context on CPU (CPU bf16 is slower than fp32 here)."""
    if enabled and d.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# Data order: a pure function of (seed, step)
# ----------------------------------------------------------------------------------------------
def batch_indices(n: int, batch_size: int, step: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's sample indices for global step ``step``.

    Each epoch is a fresh permutation seeded by (seed, epoch); the last incomplete batch is dropped.
    The global batch is split into ``world`` contiguous shards.
    """
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} is not divisible by the number of processes {world}")
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"dataset of {n} samples is smaller than one batch of {batch_size}")
    epoch, b = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    batch = perm[b * batch_size:(b + 1) * batch_size]
    shard = batch_size // world
    return batch[rank * shard:(rank + 1) * shard]


def get_batch(dataset, indices: torch.Tensor):
    """(inputs, labels) for a list of indices; uses the dataset's fast batched path when it has one."""
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(indices)
    items = [dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items])


# ----------------------------------------------------------------------------------------------
# EMA, optimiser, checkpoints, logs
# ----------------------------------------------------------------------------------------------
class EMA:
    """Exponential moving average of a module's floating-point state: shadow = d * shadow + (1 - d) * live."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, live: nn.Module):
        for (_, shadow), (_, value) in zip(self.module.state_dict().items(), live.state_dict().items(), strict=True):
            if shadow.dtype.is_floating_point:
                shadow.lerp_(value, 1 - self.decay)
            else:
                shadow.copy_(value)


def adamw(groups, s: TrainSettings, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, lr=s.lr, betas=tuple(s.betas), fused=device.type == "cuda")


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    module = getattr(module, "module", module)
    return getattr(module, "_orig_mod", module)


def atomic_save(obj, path: Path):
    """torch.save to a temp file, then rename: readers only ever see a complete file."""
    atomic_write(str(path), lambda tmp: torch.save(obj, tmp))


def rng_state(generator: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "generator": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict, generator: torch.Generator):
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_train_state(out_dir: Path) -> dict | None:
    path = out_dir / "train_state.pt"
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot resume: training state {path} is unreadable ({e}); delete it to start over") from e


class RunLog:
    """JSON-lines log, a tqdm bar with an ETA, and a loss-curve PNG next to the checkpoint (rank 0 only)."""

    def __init__(self, out_dir: Path, total: int, start: int, desc: str, enabled: bool):
        self.out_dir, self.enabled = out_dir, enabled
        self.path = out_dir / "log.jsonl"
        if enabled and self.path.exists():  # resuming: drop rows written after the checkpoint we restart from
            kept = [row for row in read_log(self.path) if row["step"] <= start]
            self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        self.bar = tqdm(total=total, initial=start, desc=desc, disable=not enabled, dynamic_ncols=True)
        self.t0 = time.time()

    def step(self, n: int = 1):
        self.bar.update(n)

    def write(self, step: int, stats: dict):
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time() - self.t0, 2), **stats}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items() if isinstance(v, float)}, refresh=False)

    def plot(self, keys: tuple[str, ...]):
        if self.enabled and self.path.exists():
            plot_log(self.path, self.out_dir / "loss.png", keys)

    def close(self):
        self.bar.close()


def read_log(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_log(log_path: Path, png_path: Path, keys: tuple[str, ...]):
    """Loss curves (log scale) from a JSON-lines log.

    Drawn on a bare Figure, not through pyplot: the caller's matplotlib backend (a notebook's inline
    one, say) is left alone and no figure stays registered anywhere.
    """
    from matplotlib.figure import Figure

    rows = read_log(log_path)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and r[key] > 0]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=key)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)


def save_image_grid(images: torch.Tensor, path: Path, nrow: int):
    """images (B, C, H, W) in [0, 1] -> one PNG grid, rows of ``nrow`` images."""
    from PIL import Image

    B, C, H, W = images.shape
    ncol = nrow
    rows = math.ceil(B / ncol)
    grid = torch.ones(C, rows * (H + 2) + 2, ncol * (W + 2) + 2)
    for i, img in enumerate(images.float().clamp(0, 1).cpu()):
        r, c = divmod(i, ncol)
        grid[:, 2 + r * (H + 2):2 + r * (H + 2) + H, 2 + c * (W + 2):2 + c * (W + 2) + W] = img
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array[..., 0] if C == 1 else array).save(path)


def _settings_check(out_dir: Path, s: TrainSettings, kind: str):
    """Write the settings once; on resume refuse a run whose settings changed in a way resume cannot honour."""
    path = out_dir / "train_settings.json"
    record = {"kind": kind, **asdict(s)}
    record["betas"] = list(record["betas"])
    if path.exists():
        old = json.loads(path.read_text())
        for key in ("kind", "batch_size", "seed"):
            if old.get(key) != record[key]:
                raise ValueError(f"{out_dir} holds a {old.get('kind')} run with {key}={old.get(key)!r}; this run "
                                 f"asks for {record[key]!r}. Use another --out directory or the same settings.")
    path.write_text(json.dumps(record, indent=2))


def _config_check(out_dir: Path, config, ignore: tuple[str, ...] = ()) -> None:
    """On resume, refuse a model config other than the one the run began with (its weights would not fit, or
    training would silently change); fields in ``ignore`` (sampling defaults) may differ."""
    if not (out_dir / "model" / CONFIG_NAME).exists():
        return
    old, new = read_config(out_dir / "model"), json.loads(json.dumps(config.to_dict()))   # tuples -> lists
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
               if k not in ignore and old.get(k) != new.get(k)]
    if changed:
        raise ValueError(f"{out_dir} holds a run of another model config ({'; '.join(changed)}). "
                         "Use another --out directory or the config it began with (same --preset / --set).")


# ----------------------------------------------------------------------------------------------
# Tokenizer training
# ----------------------------------------------------------------------------------------------
def train_tokenizer(tokenizer, dataset, s: TrainSettings, lpips=None, disc_lr: float | None = None) -> nn.Module:
    """Train a BinaryAutoencoder on images. Returns the EMA tokenizer (what ``<out>/model`` holds).

    Generator step: L1 + perceptual (when ``lpips`` is given) + lambda * hinge G loss + code weight *
    p(1-p), with lambda = adaptive_weight(...) switched on after ``cfg.disc_start`` steps.
    Discriminator step (after disc_start): hinge loss on real vs reconstructed images, DiffAugment
    on both when ``cfg.diff_aug``.
    """
    from .tokenizer import PatchDiscriminator, adaptive_weight, diff_augment, generator_adv_loss, hinge_d_loss

    d = setup_distributed(s.device)
    out = Path(s.out_dir)
    cfg = tokenizer.config
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        _settings_check(out, s, "tokenizer")
    generator = torch.Generator(device=d.device).manual_seed(s.seed + 7919 * d.rank)
    tokenizer = tokenizer.to(d.device).train()
    disc = PatchDiscriminator(cfg.in_channels, cfg.ndf, cfg.disc_layers).to(d.device).train()
    ema = EMA(tokenizer, s.ema)
    opt_g = adamw([{"params": tokenizer.parameters(), "weight_decay": 0.0}], s, d.device)
    opt_d = adamw([{"params": disc.parameters(), "weight_decay": 0.0}], s, d.device)
    disc_scale = (disc_lr or s.lr) / s.lr             # the discriminator follows the same schedule, scaled

    start = 0
    state = load_train_state(out)
    if state is not None:
        _config_check(out, cfg)
        tokenizer.load_state_dict(state["model"])
        disc.load_state_dict(state["disc"])
        ema.module.load_state_dict(state["ema"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        restore_rng(state["rng"], generator)
        start = state["step"]

    ddp_tok, ddp_disc = _maybe_ddp(tokenizer, d), _maybe_ddp(disc, d)
    log = RunLog(out, s.steps, start, "tokenizer", d.main)

    def checkpoint(step):
        if d.main:
            atomic_save({"step": step, "model": tokenizer.state_dict(), "disc": disc.state_dict(),
                         "ema": ema.module.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                         "rng": rng_state(generator)}, out / "train_state.pt")
            ema.module.save_pretrained(out / "model")
            log.plot(("l1", "g_loss", "d_loss"))

    for step in range(start, s.steps):
        idx = batch_indices(len(dataset), s.batch_size, step, s.seed, d.rank, d.world)
        x, _ = get_batch(dataset, idx)
        x = x.to(d.device, non_blocking=True)
        for opt, scale in ((opt_g, 1.0), (opt_d, disc_scale)):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, s) * scale
        gan_on = step >= cfg.disc_start

        with autocast(d, s.amp):
            recon, stats = ddp_tok(x, generator=generator)
        rec = (x - recon.float()).abs().mean()
        if lpips is not None and cfg.perceptual_weight > 0:
            rec = rec + cfg.perceptual_weight * lpips(x, recon.float()).mean()
        loss = rec + cfg.code_weight * stats["code_reg"]
        row = {"l1": (x - recon.detach().float()).abs().mean().item()}
        if gan_on:
            fake = diff_augment(recon, generator=generator) if cfg.diff_aug else recon
            disc.requires_grad_(False)
            g_loss = generator_adv_loss(ddp_disc(fake))
            disc.requires_grad_(True)
            lam = adaptive_weight(rec, g_loss, unwrap(ddp_tok).last_layer, cfg.disc_weight_max)
            loss = loss + lam * g_loss
            row.update(g_loss=g_loss.item(), d_weight=float(lam))
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        _clip(tokenizer, s.grad_clip)
        opt_g.step()

        if gan_on:
            real = x.detach()
            fake = recon.detach()
            if cfg.diff_aug:
                real, fake = diff_augment(real, generator=generator), diff_augment(fake, generator=generator)
            d_loss = hinge_d_loss(ddp_disc(real), ddp_disc(fake))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            row["d_loss"] = d_loss.item()

        ema.update(tokenizer)
        log.step()
        done = step + 1
        if done % s.log_every == 0 or done == s.steps:
            row["lr"] = lr_at(step, s)
            log.write(done, row)
        if done % s.ckpt_every == 0 or done == s.steps:
            checkpoint(done)
        if d.main and (done == s.steps or (s.sample_every and done % s.sample_every == 0)):
            _tokenizer_preview(ema.module, x, out / f"recon_{done:07d}.png")
    log.close()
    return ema.module


def _maybe_ddp(module: nn.Module, d: Dist) -> nn.Module:
    if d.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [d.device.index] if d.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def _clip(module: nn.Module, max_norm: float):
    if max_norm and max_norm > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)


@torch.no_grad()
def _tokenizer_preview(tokenizer, x: torch.Tensor, path: Path, n: int = 8):
    """Originals (top row) over deterministic reconstructions (bottom row)."""
    x = x[:n]
    recon = tokenizer.decode(tokenizer.encode(x, deterministic=True))
    save_image_grid(torch.cat([x, recon.float()]), path, nrow=len(x))


# ----------------------------------------------------------------------------------------------
# The code cache
# ----------------------------------------------------------------------------------------------
class CodeCache:
    """Cached tokens of a dataset: bits packed 8 per byte in a memory-mapped .npy, plus labels.

    Files: ``codes.npy`` uint8 (n, N, ceil(K/8)), ``labels.npy`` int64 (n,), ``codes.json`` (K, h, w, n).
    get_batch(indices) -> (tokens (B, N, K) float {0,1}, labels (B,)).
    """

    def __init__(self, directory):
        directory = Path(directory)
        meta_path = directory / "codes.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"no code cache in {directory} (expected codes.json); run `minibigr encode` first")
        self.meta = json.loads(meta_path.read_text())
        self.K, self.h, self.w = self.meta["K"], self.meta["h"], self.meta["w"]
        self.codes = np.load(directory / "codes.npy", mmap_mode="r")
        self.labels = np.load(directory / "labels.npy")
        if self.codes.shape[0] != len(self.labels) or self.codes.shape[0] != self.meta["n"]:
            raise ValueError(f"code cache in {directory} is incomplete: {self.codes.shape[0]} codes, "
                             f"{len(self.labels)} labels, {self.meta['n']} expected")

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, indices: torch.Tensor):
        idx = np.sort(np.asarray(indices))                      # sorted reads are faster on a memmap
        order = np.argsort(np.argsort(np.asarray(indices)))
        packed = np.asarray(self.codes[idx])[order]
        bits = np.unpackbits(packed, axis=-1, count=self.K, bitorder="little")
        return torch.from_numpy(bits.astype(np.float32)), torch.from_numpy(self.labels[idx][order])


def bits_to_tokens(bits: torch.Tensor) -> torch.Tensor:
    """Tokenizer grid (B, K, h, w) -> sequence (B, N, K) in raster order (N = h * w)."""
    return bits.flatten(2).transpose(1, 2)


def tokens_to_bits(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Sequence (B, N, K) -> tokenizer grid (B, K, h, w)."""
    B, N, K = tokens.shape
    if N != h * w:
        raise ValueError(f"{N} tokens do not fill a {h}x{w} grid")
    return tokens.transpose(1, 2).reshape(B, K, h, w)


@torch.no_grad()
def encode_dataset(tokenizer, dataset, out_dir, batch_size: int = 256, device: str = "auto",
                   deterministic: bool = True) -> CodeCache:
    """Encode every image once and write the code cache (see CodeCache). Deterministic codes by default."""
    d = setup_distributed(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer.to(d.device).eval()
    n = len(dataset)
    codes = labels = None
    generator = torch.Generator(device=d.device).manual_seed(0)
    for start in tqdm(range(0, n, batch_size), desc="encode", dynamic_ncols=True):
        idx = torch.arange(start, min(n, start + batch_size))
        x, y = get_batch(dataset, idx)
        bits = tokenizer.encode(x.to(d.device), deterministic=deterministic, generator=generator)
        tokens = bits_to_tokens(bits).to(torch.uint8).cpu().numpy()     # (B, N, K)
        if codes is None:
            K, h, w = bits.shape[1:]
            tmp_codes = out / "codes.npy.tmp"
            codes = np.lib.format.open_memmap(tmp_codes, mode="w+", dtype=np.uint8,
                                              shape=(n, h * w, (K + 7) // 8))
            labels = np.zeros(n, dtype=np.int64)
        codes[start:start + len(idx)] = np.packbits(tokens, axis=-1, bitorder="little")
        labels[start:start + len(idx)] = np.asarray(y)
    codes.flush()
    del codes
    os.replace(out / "codes.npy.tmp", out / "codes.npy")
    np.save(out / "labels.npy", labels)
    (out / "codes.json").write_text(json.dumps({"K": int(K), "h": int(h), "w": int(w), "n": n}))
    return CodeCache(out)


# ----------------------------------------------------------------------------------------------
# BiGR training
# ----------------------------------------------------------------------------------------------
class _LossModule(nn.Module):
    """Routes DDP's forward to BiGR.loss so gradient averaging hooks fire."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens, labels, generator):
        return self.model.loss(tokens, labels, generator=generator)


def train_bigr(model, codes: CodeCache, s: TrainSettings, tokenizer=None, sample_labels=None) -> nn.Module:
    """Train BiGR on cached codes. Returns the EMA model (what ``<out>/model`` holds).

    ``tokenizer`` (optional) decodes periodic sample grids of ``sample_labels`` (default: every class).
    """
    d = setup_distributed(s.device)
    out = Path(s.out_dir)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        _settings_check(out, s, "bigr")
    if model.config.K != codes.K or model.config.num_tokens != codes.h * codes.w:
        raise ValueError(f"model expects {model.config.num_tokens} tokens of K={model.config.K} bits; the code "
                         f"cache holds {codes.h * codes.w} tokens of K={codes.K} bits")
    generator = torch.Generator(device=d.device).manual_seed(s.seed + 7919 * d.rank)
    model = model.to(d.device).train()
    ema = EMA(model, s.ema)
    opt = adamw(model.param_groups(s.weight_decay), s, d.device)

    start = 0
    state = load_train_state(out)
    if state is not None:
        from .model import SAMPLING_FIELDS

        _config_check(out, model.config, ignore=SAMPLING_FIELDS)
        model.load_state_dict(state["model"])
        ema.module.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        restore_rng(state["rng"], generator)
        start = state["step"]

    step_module = _maybe_ddp(_LossModule(model), d)
    if s.compile:
        step_module = torch.compile(step_module)
    log = RunLog(out, s.steps, start, "bigr", d.main)
    num_classes = model.config.num_classes
    labels_to_show = torch.as_tensor(sample_labels if sample_labels is not None else range(num_classes))

    def checkpoint(step):
        if d.main:
            atomic_save({"step": step, "model": model.state_dict(), "ema": ema.module.state_dict(),
                         "opt": opt.state_dict(), "rng": rng_state(generator)}, out / "train_state.pt")
            ema.module.save_pretrained(out / "model")
            log.plot(("loss", "bce"))

    for step in range(start, s.steps):
        idx = batch_indices(len(codes), s.batch_size, step, s.seed, d.rank, d.world)
        tokens, labels = codes.get_batch(idx)
        tokens, labels = tokens.to(d.device, non_blocking=True), labels.to(d.device, non_blocking=True)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, s)
        with autocast(d, s.amp):
            loss, stats = step_module(tokens, labels, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip or float("inf"))
        opt.step()
        ema.update(model)
        log.step()
        done = step + 1
        if done % s.log_every == 0 or done == s.steps:
            log.write(done, {"loss": loss.item(), "bce": stats["bce"].item(), "grad_norm": grad_norm.item(),
                             "lr": lr_at(step, s)})
        if done % s.ckpt_every == 0 or done == s.steps:
            checkpoint(done)
        if d.main and tokenizer is not None and (done == s.steps or (s.sample_every and done % s.sample_every == 0)):
            sample_grid(ema.module, tokenizer, labels_to_show, out / f"samples_{done:07d}.png", seed=s.seed)
    log.close()
    return ema.module


@torch.no_grad()
def sample_grid(model, tokenizer, labels: torch.Tensor, path: Path, per_class: int = 8, seed: int = 0,
                **sampling) -> torch.Tensor:
    """One row per label, ``per_class`` samples each, decoded and saved as a PNG. Returns the images."""
    model.eval()
    device = next(model.parameters()).device
    labels = labels.to(device).repeat_interleave(per_class)
    generator = torch.Generator(device=device).manual_seed(seed)
    tokens = model.generate(labels, generator=generator, **sampling)
    h, w = tokenizer.grid_size
    images = tokenizer.to(device).decode(tokens_to_bits(tokens, h, w))
    save_image_grid(images, path, nrow=per_class)
    return images


# ----------------------------------------------------------------------------------------------
# The whole recipe: tokenizer -> code cache -> BiGR
# ----------------------------------------------------------------------------------------------
def train_pipeline(dataset: str, out_dir, data_dir=None, device: str = "auto",
                   tokenizer_overrides: dict | None = None, bigr_overrides: dict | None = None):
    """Train a tokenizer, cache the codes, train BiGR; every stage resumes where it stopped.

    Layout: ``<out>/tokenizer/``, ``<out>/codes/``, ``<out>/bigr/``. Returns (tokenizer, model) (EMA weights).
    """
    from .data import load_dataset
    from .model import BiGR, BiGRConfig
    from .tokenizer import BinaryAutoencoder, TokenizerConfig

    recipe, out = _recipe(dataset), Path(out_dir)
    images = load_dataset(dataset, "train", data_dir=data_dir)
    saved = out / "tokenizer" / "model"      # a started run continues with the config it began with
    tok_cfg = (TokenizerConfig.from_dict(read_config(saved)) if (saved / CONFIG_NAME).exists()
               else TokenizerConfig.preset(recipe["tokenizer"]))
    tokenizer = train_tokenizer(BinaryAutoencoder(tok_cfg), images,
                                tokenizer_settings(dataset, str(out / "tokenizer"), device=device,
                                                   **(tokenizer_overrides or {})))
    bigr_started = (out / "bigr" / "train_state.pt").exists()
    if bigr_started and (out / "codes" / "codes.json").exists():
        codes = CodeCache(out / "codes")      # resuming BiGR: keep the exact codes it was trained on
    else:
        codes = encode_dataset(tokenizer, images, out / "codes", device=device)
    model = BiGR(BiGRConfig.preset(recipe["model"], K=codes.K, num_tokens=codes.h * codes.w))
    model = train_bigr(model, codes, bigr_settings(dataset, str(out / "bigr"), device=device, **(bigr_overrides or {})),
                       tokenizer=tokenizer)
    return tokenizer.eval(), model.eval()
