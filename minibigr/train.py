"""Training: the binary tokenizer and BiGR (docs/method.md §1.3, §3), on one device or many.

Two jobs, each resumable and each writing next to its checkpoint a JSON-lines log and a loss curve;
between them the tokenizer encodes the dataset once (minibigr.codes):

    train_tokenizer(...)  L1 (+ LPIPS) + PatchGAN hinge loss with adaptive weight and delayed start
    train_bigr(...)       masked modeling on cached codes: AdamW groups, warmup, clipping, EMA, bf16
    train_pipeline(...)   the whole recipe of a dataset: tokenizer -> code cache -> BiGR

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

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import CONFIG_NAME, atomic_write, read_config
from .codes import CodeCache, encode_dataset
from .config import BiGRConfig
from .data import batch_indices, get_batch, load_dataset
from .gan import PatchDiscriminator, adaptive_weight, diff_augment, generator_adv_loss, hinge_d_loss
from .images import save_image_grid
from .model import BiGR
from .pipeline import BiGRPipeline
from .quantizer import DRAWS
from .tokenizer import BinaryAutoencoder, TokenizerConfig


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
    lr_schedule: str = "constant"     # "constant" after warmup (official) or "cosine" to final_lr * lr
    final_lr: float = 0.1             # the cosine schedule's last lr, as a fraction of lr (0: decayed to zero)
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    ema: float = 0.9999
    seed: int = 0
    codes_draw: str = "threshold"     # BiGR's training codes: "threshold" [p > 1/2], or "bernoulli" as the authors
    log_every: int = 50
    ckpt_every: int = 1000
    ckpt_minutes: float | None = None  # also checkpoint this long after the last one; None: 2 on a CPU, 15 on a GPU
    sample_every: int = 0             # 0 = only at the end
    device: str = "auto"
    amp: bool = True                  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.codes_draw not in DRAWS:
            raise ValueError(f"codes_draw must be one of {DRAWS}, got {self.codes_draw!r}")


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


# a folder of class sub-folders of images (--data-dir) at 32x32 RGB: the shapes recipe's CPU-sized models; the class
# count comes from the folders (the code cache records it)
RECIPES["folder"] = RECIPES["shapes"]


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
    """Linear warmup, then constant or cosine decay to final_lr * lr."""
    if s.warmup and step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    if s.lr_schedule == "cosine":
        progress = (step - s.warmup) / max(1, s.steps - s.warmup)
        return s.lr * (s.final_lr + (1 - s.final_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
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


@contextlib.contextmanager
def seeded_init(seed: int):
    """Inside, torch's global RNG is seeded with ``seed`` (the caller's state comes back after): a model built
    here starts from the same weights for the same seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def seed_run(s: TrainSettings, d: Dist) -> torch.Generator:
    """The run's RNGs from its seed: the returned generator (batches' masks, timesteps, label drops) and torch's
    global RNG (dropout, the discriminator's initial weights), per rank. A resumed run restores both instead."""
    torch.manual_seed(s.seed + 7919 * d.rank)
    return _seeded(s.seed + 7919 * d.rank, d.device)


def rng_state(generator: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "generator": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict, generator: torch.Generator):
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_train_state(out_dir: Path, kind: str, main: bool = True) -> dict | None:
    """The run's training state, or None; says on rank 0 which it is ("resuming from step N" / "starting")."""
    path = out_dir / "train_state.pt"
    if not path.exists():
        if main:
            tqdm.write(f"{kind}: no checkpoint yet in {out_dir}, starting from step 0")
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot resume: training state {path} is unreadable ({e}); delete it to start over") from e
    if main:
        tqdm.write(f"{kind}: resuming from step {state['step']} (checkpoint {path})")
    return state


class CheckpointClock:
    """When to checkpoint: every ``ckpt_every`` steps, at the last step, and whenever ``ckpt_minutes`` have passed
    since the last checkpoint (so an interrupted CPU run loses minutes, not hours). Resume is exact whenever the
    checkpoint was written: the data order is a function of (seed, step) and the RNG states are saved."""

    def __init__(self, s: TrainSettings, device: torch.device):
        minutes = s.ckpt_minutes if s.ckpt_minutes is not None else (15.0 if device.type == "cuda" else 2.0)
        self.every, self.last_step, self.seconds = s.ckpt_every, s.steps, 60 * minutes
        self.since = time.monotonic()

    def due(self, done: int) -> bool:
        if done % self.every == 0 or done == self.last_step or (self.seconds
                                                                and time.monotonic() - self.since >= self.seconds):
            self.since = time.monotonic()
            return True
        return False


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
    d = setup_distributed(s.device)
    out = Path(s.out_dir)
    cfg = tokenizer.config
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        _settings_check(out, s, "tokenizer")
    generator = seed_run(s, d)
    tokenizer = tokenizer.to(d.device).train()
    disc = PatchDiscriminator(cfg.in_channels, cfg.ndf, cfg.disc_layers).to(d.device).train()
    ema = EMA(tokenizer, s.ema)
    opt_g = adamw([{"params": tokenizer.parameters(), "weight_decay": 0.0}], s, d.device)
    opt_d = adamw([{"params": disc.parameters(), "weight_decay": 0.0}], s, d.device)
    disc_scale = (disc_lr or s.lr) / s.lr             # the discriminator follows the same schedule, scaled

    start = 0
    state = load_train_state(out, "tokenizer", d.main)
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

    clock = CheckpointClock(s, d.device)
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
        # the logged numbers stay tensors until a row is written: no host sync at the other steps
        row = {"l1": (x - recon.detach().float()).abs().mean()}
        if gan_on:
            fake = diff_augment(recon, generator=generator) if cfg.diff_aug else recon
            disc.requires_grad_(False)
            g_loss = generator_adv_loss(ddp_disc(fake))
            disc.requires_grad_(True)
            lam = adaptive_weight(rec, g_loss, unwrap(ddp_tok).last_layer, cfg.disc_weight_max)
            loss = loss + lam * g_loss
            row.update(g_loss=g_loss.detach(), d_weight=lam)
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
            row["d_loss"] = d_loss.detach()

        ema.update(tokenizer)
        log.step()
        done = step + 1
        if done % s.log_every == 0 or done == s.steps:
            log.write(done, {**{k: float(v) for k, v in row.items()}, "lr": lr_at(step, s)})
        if clock.due(done):
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
    recon = tokenizer.decode(tokenizer.encode(x, deterministic=True))       # (n, C, H, W)
    save_image_grid(torch.cat([x, recon.float()]), path, nrow=len(x))


# ----------------------------------------------------------------------------------------------
# BiGR training
# ----------------------------------------------------------------------------------------------
class _LossModule(nn.Module):
    """Routes DDP's forward to BiGR.loss so gradient averaging hooks fire."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens, labels, draws):
        return self.model.loss(tokens, labels, draws=draws)


def train_bigr(model, codes: CodeCache, s: TrainSettings, tokenizer=None, sample_labels=None) -> nn.Module:
    """Train BiGR on cached codes. Returns the EMA model (what ``<out>/model`` holds).

    With the ``tokenizer`` the codes came from, the run directory becomes a whole pipeline (a copy in
    ``<out>/tokenizer/``: ``BiGRPipeline.from_pretrained(out)`` loads both) and periodic sample grids of
    ``sample_labels`` (default: every class) are written.
    """
    d = setup_distributed(s.device)
    out = Path(s.out_dir)
    if model.config.K != codes.K or model.config.num_tokens != codes.h * codes.w:
        raise ValueError(f"model expects {model.config.num_tokens} tokens of K={model.config.K} bits; the code "
                         f"cache holds {codes.h * codes.w} tokens of K={codes.K} bits")
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        _settings_check(out, s, "bigr")
        if tokenizer is not None:
            tokenizer.save_pretrained(out / "tokenizer")
    generator = seed_run(s, d)
    model = model.to(d.device).train()
    ema = EMA(model, s.ema)
    opt = adamw(model.param_groups(s.weight_decay), s, d.device)

    start = 0
    state = load_train_state(out, "bigr", d.main)
    if state is not None:
        _config_check(out, model.config, ignore=("sampling",))
        model.load_state_dict(state["model"])
        ema.module.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        restore_rng(state["rng"], generator)
        start = state["step"]

    step_module = _maybe_ddp(_LossModule(model), d)
    if s.compile:
        step_module = torch.compile(step_module)
    log = RunLog(out, s.steps, start, "bigr", d.main)
    preview = None if tokenizer is None else BiGRPipeline(tokenizer.to(d.device).eval(), ema.module)
    labels_to_show = torch.as_tensor(sample_labels if sample_labels is not None else range(model.config.num_classes))

    def checkpoint(step):
        if d.main:
            atomic_save({"step": step, "model": model.state_dict(), "ema": ema.module.state_dict(),
                         "opt": opt.state_dict(), "rng": rng_state(generator)}, out / "train_state.pt")
            ema.module.save_pretrained(out / "model")
            log.plot(("loss", "bce"))

    clock = CheckpointClock(s, d.device)
    for step in range(start, s.steps):
        idx = batch_indices(len(codes), s.batch_size, step, s.seed, d.rank, d.world)
        tokens, labels = codes.get_batch(idx, s.codes_draw, generator)       # a Bernoulli draw takes its bits first
        tokens, labels = tokens.to(d.device, non_blocking=True), labels.to(d.device, non_blocking=True)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, s)
        # the step's random draws come first, outside the (possibly compiled) step: no graph breaks there
        draws = model.loss_draws(len(tokens), generator, d.device)
        with autocast(d, s.amp):
            loss, stats = step_module(tokens, labels, draws)
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
        if clock.due(done):
            checkpoint(done)
        if d.main and preview is not None and (done == s.steps or (s.sample_every and done % s.sample_every == 0)):
            # a row per class, from the same seed each time: the grids show the model, not the noise
            images = preview(labels_to_show.repeat_interleave(8), generator=_seeded(s.seed, d.device))
            save_image_grid(images, out / f"samples_{done:07d}.png", nrow=8)
    log.close()
    return ema.module


def _seeded(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# The whole recipe: tokenizer -> code cache -> BiGR
# ----------------------------------------------------------------------------------------------
def train_pipeline(dataset: str, out_dir, data_dir=None, device: str = "auto",
                   tokenizer_overrides: dict | None = None, bigr_overrides: dict | None = None,
                   limit: int | None = None) -> BiGRPipeline:
    """Train a tokenizer, cache the codes, train BiGR; every stage resumes where it stopped.

    Layout: ``<out>/tokenizer/``, ``<out>/codes/``, ``<out>/bigr/`` (a pipeline directory: its ``model/`` and
    a copy of the tokenizer). ``limit``: the first ``limit`` train images only (an in-memory dataset). Returns the
    pipeline of EMA weights, in eval mode.
    """
    recipe, out = _recipe(dataset), Path(out_dir)
    images = load_dataset(dataset, "train", data_dir=data_dir)
    if limit is not None:
        images = images.first(limit)
    saved = out / "tokenizer" / "model"      # a started run continues with the config it began with
    tok_cfg = (TokenizerConfig.from_dict(read_config(saved)) if (saved / CONFIG_NAME).exists()
               else TokenizerConfig.preset(recipe["tokenizer"]))
    tok_settings = tokenizer_settings(dataset, str(out / "tokenizer"), device=device, **(tokenizer_overrides or {}))
    with seeded_init(tok_settings.seed):
        tokenizer = BinaryAutoencoder(tok_cfg)
    tokenizer = train_tokenizer(tokenizer, images, tok_settings)
    bigr_started = (out / "bigr" / "train_state.pt").exists()
    if bigr_started and (out / "codes" / "codes.json").exists():
        codes = CodeCache(out / "codes")      # resuming BiGR: keep the exact codes it was trained on
    else:
        codes = encode_dataset(tokenizer, images, out / "codes")
    settings = bigr_settings(dataset, str(out / "bigr"), device=device, **(bigr_overrides or {}))
    classes = {"num_classes": codes.num_classes} if codes.num_classes else {}
    with seeded_init(settings.seed):
        model = BiGR(BiGRConfig.preset(recipe["model"], K=codes.K, num_tokens=codes.h * codes.w, **classes))
    model = train_bigr(model, codes, settings, tokenizer=tokenizer)
    return BiGRPipeline(tokenizer.eval(), model.eval())
