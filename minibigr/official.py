"""The authors' published checkpoints (github.com/haoosz/BiGR) as minibigr modules (docs/method.md §10).

    model = official.load_bigr("BiGR-L-d24")        # by name: from the Hugging Face Hub (haoosz/BiGR) and its cache
    tok = official.load_bae("d24")
    model = official.load_bigr("bigr_L_d24.pt")     # or a file you have, or a state dict

``MODELS`` and ``BAES`` list every published file: where it is in the repository, its size, its image
size, the B-AE a model reads and the authors' file whose sampling settings the model takes (minibigr.authors).
Every size is read off the tensor shapes; only what shapes cannot tell (number of heads, image size) comes from the
registry or an argument. Loading is exact (the same inputs give the same outputs as the authors' code) and lean: the
model is built on the meta device and takes the file's tensors, memory-mapped, so a checkpoint needs
about its own size in memory. Files are read with ``torch.load(..., weights_only=True)``: tensors only.
"""

from __future__ import annotations

import difflib
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .authors import settings as authors_settings
from .backbone import ffn_hidden_dim
from .checkpoint import build_empty, load_strict, read_state_dict
from .config import PRESETS, BiGRConfig
from .model import BiGR
from .sampler import SamplingConfig
from .tokenizer import BinaryAutoencoder, TokenizerConfig
from .transcoder import SCHEDULES, bernoulli_schedule

# ----------------------------------------------------------------------------------------------
# The registry of published checkpoints, and the Hugging Face Hub
# ----------------------------------------------------------------------------------------------
HUB_REPO = "haoosz/BiGR"


@dataclass(frozen=True)
class Published:
    """One checkpoint file of the authors' Hugging Face repository."""

    path: str                       # the file in the repository
    gigabytes: float                # its size, as the authors' README gives it
    image_size: int
    bae: str | None = None          # a BiGR model: the name (in BAES) of the B-AE whose tokens it reads
    num_heads: int | None = None    # a BiGR model: attention heads (the one size the weights cannot tell)
    sampling: str | None = None     # a BiGR model: the authors' file whose sampling settings it takes (authors.QUOTED)


# The authors sample BiGR-L-d24 with script/sample.sh and the 512 model with script/sample_512.sh; no file of
# theirs samples XL or XXL, so those take sample.sh's settings too.

BAES = {
    "d24": Published("bae/bae_d24/binaryae_ema_1000000.th", 0.332, 256),
    "d32": Published("bae/bae_d32/binaryae_ema_950000.th", 0.332, 256),
    "d32-512": Published("bae/bae_d32_512/binaryae_ema_720000.th", 0.315, 512),
}
MODELS = {
    "BiGR-L-d24": Published("gpt/bigr_L_d24.pt", 1.35, 256, "d24", 16, "script/sample.sh"),
    "BiGR-XL-d24": Published("gpt/bigr_XL_d24.pt", 3.20, 256, "d24", 20, "script/sample.sh"),
    "BiGR-XXL-d24": Published("gpt/bigr_XXL_d24.pt", 5.92, 256, "d24", 24, "script/sample.sh"),
    "BiGR-XXL-d32": Published("gpt/bigr_XXL_d32.pt", 5.92, 256, "d32", 24, "script/sample.sh"),
    "BiGR-L-d32-res512": Published("gpt/bigr_L_d32_512.pt", 1.49, 512, "d32-512", 16, "script/sample_512.sh"),
}


@functools.cache
def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, in the index order the published models were trained with."""
    return (Path(__file__).parent / "imagenet_classes.txt").read_text().splitlines()


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def hub_file(path: str) -> Path:
    """A file of the authors' repository, from the Hugging Face cache or downloaded into it (with the hub's
    progress bar). The hub's own settings apply: HF_HUB_CACHE / HF_HOME for the cache, HF_HUB_OFFLINE=1
    for never downloading."""
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise MissingExtra(f"downloading {HUB_REPO}/{path} needs huggingface_hub: pip install 'minibigr[hub]'"
                           ) from None
    try:
        return Path(hf_hub_download(HUB_REPO, path))
    except LocalEntryNotFoundError as e:
        offline = "downloading is off (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "the Hub is unreachable"
        raise FileNotFoundError(f"{HUB_REPO}/{path} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                                f"{offline}: fetch it once where the network is on (`hf download {HUB_REPO} {path}`)"
                                ) from e


def _registered(source, registry: dict, kind: str) -> Published | None:
    """The registry entry that ``source`` names; None for a file path or a state dict."""
    if isinstance(source, str) and source in registry:
        return registry[source]
    if isinstance(source, str) and not os.path.exists(source) and "/" not in source and "." not in source:
        close = difflib.get_close_matches(source, registry, n=3, cutoff=0.5)
        raise ValueError(f"no published {kind} named {source!r}" + (f"; did you mean {', '.join(close)}?" if close
                         else "") + f" The names are {', '.join(registry)}; a file path works too.")
    return None


def _read(source) -> dict:
    """A checkpoint's dict from a path (memory-mapped where the file allows) or a dict in memory."""
    return read_state_dict(source, mmap=True) if isinstance(source, (str, os.PathLike)) else source


# ----------------------------------------------------------------------------------------------
# B-AE tokenizer (`.th` files; keys prefixed "ae.")
# ----------------------------------------------------------------------------------------------
BAE_PREFIX = "ae."
BAE_LOGSIGMA = "generator.logsigma."  # the authors' ELBO head: never used to encode or decode, so dropped


def _bae_blocks(state: dict, part: str) -> list[dict[str, torch.Tensor]]:
    """The flat ``{part}.blocks.{i}.*`` list as one {suffix: tensor} dict per block, in order."""
    prefix, blocks = f"{part}.blocks.", {}
    for key, value in state.items():
        if key.startswith(prefix):
            index, _, rest = key[len(prefix):].partition(".")
            blocks.setdefault(int(index), {})[rest] = value
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        raise ValueError(f"B-AE state dict has no contiguous {prefix}0..n blocks (found {sorted(blocks)[:20]})")
    return [blocks[i] for i in range(len(blocks))]


def _bae_kind(block: dict[str, torch.Tensor]) -> str:
    """res / attn / resample (Downsample or Upsample) / conv / norm, told apart by parameter names."""
    if "norm1.weight" in block:
        return "res"
    if "q.weight" in block:
        return "attn"
    if "conv.weight" in block:
        return "resample"
    if set(block) == {"weight", "bias"}:
        return "conv" if block["weight"].dim() == 4 else "norm"
    raise ValueError(f"unrecognised B-AE block with parameters {sorted(block)}")


def _bae_levels(blocks: list[dict], part: str) -> list[tuple[int, bool, int]]:
    """Split the per-resolution body at each resample block -> [(res blocks, has attention, width)]."""
    levels, current = [], []
    for block in [*blocks, None]:
        if block is not None and _bae_kind(block) != "resample":
            current.append(block)
            continue
        kinds = [_bae_kind(b) for b in current]
        res = [b for b in current if _bae_kind(b) == "res"]
        if not res or set(kinds) - {"res", "attn"}:
            raise ValueError(f"unexpected {part} level layout {kinds}")
        levels.append((len(res), "attn" in kinds, res[-1]["conv1.weight"].shape[0]))
        current = []
    return levels


def _bae_check_tail(kinds: list[str], tail: list[str], part: str) -> None:
    if kinds[-len(tail):] != tail:
        raise ValueError(f"{part} does not end with {tail} as the official B-AE does (got {kinds[-len(tail):]})")


def infer_bae_config(state: dict[str, torch.Tensor], image_size: int = 256) -> dict:
    """Structural TokenizerConfig fields of an official B-AE state dict (no ``ae.`` prefix), from shapes.

    Encoder: conv_in, then per level res_blocks x (ResBlock [+ AttnBlock]) and a Downsample between
    levels, then ResBlock, AttnBlock, ResBlock, GroupNorm, conv to emb_dim. The generator mirrors it,
    with an optional leading GroupNorm (norm_first) and int(res_blocks * gen_mul) blocks per level.
    """
    enc = _bae_blocks(state, "encoder")
    kinds = [_bae_kind(b) for b in enc]
    if kinds[0] != "conv":
        raise ValueError(f"encoder must start with a conv, got {kinds[0]}")
    _bae_check_tail(kinds, ["res", "attn", "res", "norm", "conv"], "encoder")
    in_channels, nf = enc[0]["weight"].shape[1], enc[0]["weight"].shape[0]
    levels = _bae_levels(enc[1:-5], "encoder")
    res_blocks = {n for n, _, _ in levels}
    if len(res_blocks) != 1:
        raise ValueError(f"encoder levels have different numbers of res blocks: {[n for n, _, _ in levels]}")
    if any(width % nf for _, _, width in levels):
        raise ValueError(f"encoder widths {[w for _, _, w in levels]} are not multiples of nf={nf}")
    if "quantize.embed.weight" not in state:
        raise ValueError("B-AE state dict has no quantize.embed.weight")
    K, emb_dim = state["quantize.embed.weight"].shape

    gen = _bae_blocks(state, "generator")
    gkinds = [_bae_kind(b) for b in gen]
    norm_first = gkinds[0] == "norm"
    head = ["norm"] * norm_first + ["conv", "res", "attn", "res"]
    if gkinds[:len(head)] != head:
        raise ValueError(f"generator must start with {head}, got {gkinds[:len(head)]}")
    _bae_check_tail(gkinds, ["norm", "conv"], "generator")
    gen_blocks = {n for n, _, _ in _bae_levels(gen[len(head):-2], "generator")}
    if len(gen_blocks) != 1:
        raise ValueError(f"generator levels have different numbers of res blocks: {sorted(gen_blocks)}")
    out_channels = gen[-1]["weight"].shape[0]
    if out_channels != in_channels:
        raise ValueError(f"generator outputs {out_channels} channels but the encoder reads {in_channels}")
    n_enc, n_gen = res_blocks.pop(), gen_blocks.pop()
    return dict(
        image_size=image_size, in_channels=int(in_channels), nf=int(nf),
        ch_mult=tuple(int(w // nf) for _, _, w in levels), res_blocks=n_enc,
        attn_resolutions=tuple(image_size // 2 ** i for i, (_, attn, _) in enumerate(levels) if attn),
        emb_dim=int(emb_dim), K=int(K), norm_first=norm_first, gen_mul=n_gen / n_enc,
    )


def _strip_bae_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys under ``ae.`` without it (the discriminator / LPIPS of a full BinaryGAN dump are left out);
    a dict that is already unprefixed is returned as is."""
    if any(k.startswith(BAE_PREFIX) for k in state):
        return {k[len(BAE_PREFIX):]: v for k, v in state.items() if k.startswith(BAE_PREFIX)}
    if any(k.startswith("encoder.blocks.") for k in state):
        return dict(state)
    raise ValueError(f"not a B-AE state dict: no 'ae.encoder.blocks.*' keys (first keys: {sorted(state)[:5]})")


def load_bae(state_dict_or_path, image_size: int | None = None, dtype: torch.dtype | None = None, **overrides):
    """The authors' B-AE as a minibigr BinaryAutoencoder: a name of ``BAES`` ("d24", "d32", "d32-512"; from the
    Hugging Face Hub), a ``binaryae_*.th`` file, or its state dict.

    Sizes, attention resolutions, norm_first and gen_mul are read off the weights; image_size cannot be
    (the weights fit any size) and decides which resolution the attention levels stand for: the registry's
    for a name, else 256. overrides set any other TokenizerConfig field (the official images are in [0,1]:
    image_range="unit"). The model is returned in eval mode, in ``dtype`` if given.
    """
    entry = _registered(state_dict_or_path, BAES, "B-AE")
    source = hub_file(entry.path) if entry else state_dict_or_path
    image_size = image_size or (entry.image_size if entry else 256)
    state = _strip_bae_prefix(_read(source))
    state = {k: v for k, v in state.items() if not k.startswith(BAE_LOGSIGMA)}
    config = TokenizerConfig.from_dict({**infer_bae_config(state, image_size), **overrides})
    return _build(BinaryAutoencoder, config, state, source, dtype)


def _build(cls, config, state: dict, source, dtype: torch.dtype | None):
    """cls(config) built on the meta device, holding the state's tensors (cast to ``dtype``), in eval mode."""
    model = build_empty(cls, config)
    if dtype is not None:
        model.to(dtype)
    where = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    load_strict(model, state, f"{cls.__name__} weights from {where}", assign=True)
    return model.eval()


def to_official_bae(tok, with_logsigma: bool = True) -> dict[str, torch.Tensor]:
    """A minibigr BinaryAutoencoder as an official B-AE state dict (keys ``ae.*``).

    with_logsigma adds the authors' unused ELBO head (``generator.logsigma.{0,2}``) as zeros, so that
    their strict ``load_state_dict`` accepts the dict; it never affects encoding or decoding.
    """
    state = {BAE_PREFIX + k: v.detach().clone() for k, v in tok.state_dict().items()}
    if with_logsigma:
        ch, out = tok.config.nf * tok.config.ch_mult[0], tok.config.in_channels
        shapes = {"0.weight": (ch, ch, 3, 3), "0.bias": (ch,), "2.weight": (out, ch, 1, 1), "2.bias": (out,)}
        for name, shape in shapes.items():
            state[BAE_PREFIX + BAE_LOGSIGMA + name] = torch.zeros(shape)
    return state


# ----------------------------------------------------------------------------------------------
# BiGR (``bigr_*.pt``: a dict whose "ema" and "model" entries are state dicts)
# ----------------------------------------------------------------------------------------------
BIGR_DENOISER = "denoise_mlp."
BIGR_DIFFUSION = "diffusion_processor."                  # the denoiser again, plus the schedule buffers
BIGR_DENOISER_COPY = "diffusion_processor._denoise_fn."
BIGR_SCHEDULE = "diffusion_processor.scheduler."
PUBLISHED_HEADS = {1024: 16, 1280: 20, 1536: 24}         # BiGR-L / XL / XXL: head_dim 64


def _bigr_state(source, entry: str | None) -> dict[str, torch.Tensor]:
    """The state dict of a BiGR checkpoint: ``entry`` if given, else "ema" when present, else "model",
    else the dict itself (already a state dict)."""
    if entry is not None:
        return read_state_dict(source, entry)
    state = read_state_dict(source)
    for name in ("ema", "model"):
        if isinstance(state.get(name), dict):
            return state[name]
    return state


def _count_indices(state: dict, prefix: str) -> int:
    """How many consecutive ``{prefix}{i}.`` groups the keys hold (0..n-1, no gaps)."""
    found = {int(k[len(prefix):].split(".", 1)[0]) for k in state
             if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0].isdigit()}
    if found and found != set(range(len(found))):
        raise ValueError(f"{prefix}* indices are not 0..{len(found) - 1}: {sorted(found)}")
    return len(found)


def _bigr_schedule(k_final: torch.Tensor) -> tuple[int, str]:
    """T and the name of the noise schedule whose k_t the checkpoint's ``k_final`` (length T + 1) holds."""
    T = k_final.numel() - 1
    for name in SCHEDULES:
        k, _, _ = bernoulli_schedule(name, T)
        if torch.allclose(k_final.double().cpu(), k, atol=1e-5):
            return T, name
    raise ValueError(f"the checkpoint's noise schedule (T={T}) is none of {SCHEDULES}")


def infer_bigr_config(state: dict[str, torch.Tensor], num_heads: int | None = None) -> dict:
    """BiGRConfig fields read off an official BiGR state dict's shapes (every size but the heads)."""
    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise ValueError(f"not a BiGR state dict: no {key!r} (first keys: {sorted(state)[:5]})")
        return state[key]

    table = need("cls_embedding.embedding_table.weight")              # (C + 1, d)
    dim = table.shape[1]
    n_layer = _count_indices(state, "layers.")
    if n_layer == 0:
        raise ValueError("not a BiGR state dict: no 'layers.{i}.*' keys")
    hidden = need("layers.0.feed_forward.w1.weight").shape[0]
    multiple_of = next((m for m in (256, 128, 64, 32, 16, 8, 4, 2, 1) if ffn_hidden_dim(dim, m) == hidden), None)
    if multiple_of is None:
        raise ValueError(f"SwiGLU width {hidden} is not 2/3 * 4 * {dim} rounded up to a multiple of 256 .. 1")
    if num_heads is None:
        if dim not in PUBLISHED_HEADS:
            raise ValueError(f"no published BiGR has width {dim}; pass num_heads= (the heads cannot be read "
                             f"off the weights)")
        num_heads = PUBLISHED_HEADS[dim]
    fields = dict(
        K=need("tok_embeddings.weight").shape[1], num_classes=table.shape[0] - 1,
        num_tokens=need("diffusion_pos_embed_learned").shape[1], dim=dim, n_layer=n_layer, n_head=num_heads,
        multiple_of=multiple_of, use_adaLN="adaLN.1.weight" in state,
        transcoder_width=need(BIGR_DENOISER + "x_embedder.weight").shape[0],
        transcoder_blocks=_count_indices(state, BIGR_DENOISER + "blocks."),
    )
    if BIGR_SCHEDULE + "k_final" in state:
        fields["T"], fields["schedule"] = _bigr_schedule(state[BIGR_SCHEDULE + "k_final"])
    return fields


def _from_official_bigr(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official keys -> minibigr keys; the diffusion_processor duplicates are dropped."""
    out = {}
    for k, v in state.items():
        if k.startswith(BIGR_DENOISER):
            out["transcoder.denoiser." + k[len(BIGR_DENOISER):]] = v
        elif not k.startswith(BIGR_DIFFUSION):
            out["backbone." + k] = v
    return out


def load_bigr(state_dict_or_path, entry: str | None = None, num_heads: int | None = None,
              dtype: torch.dtype | None = None, **overrides):
    """The authors' BiGR as a minibigr BiGR: a name of ``MODELS`` (e.g. "BiGR-L-d24"; from the Hugging Face
    Hub), a ``bigr_*.pt`` file, its dict, or a bare state dict.

    Every size is read off the weights (entry "ema" when present, else "model"; nothing else of the file
    is read into memory); only the number of heads cannot be, and defaults to the published model of that
    width (1024 -> 16, 1280 -> 20, 1536 -> 24). The recommended sampling settings are those of the authors' file
    the registry names for a name (minibigr.authors), else the SamplingConfig defaults (the authors' sample.sh).
    overrides set other BiGRConfig fields (dropouts, objective, ``sampling=`` a dict or a SamplingConfig of the
    settings to change); one that contradicts the weights is an error. Loading is strict. The model is returned in
    eval mode, in ``dtype`` if given (e.g. bfloat16).
    """
    published_entry = _registered(state_dict_or_path, MODELS, "BiGR model")
    source = hub_file(published_entry.path) if published_entry else state_dict_or_path
    num_heads = num_heads or (published_entry.num_heads if published_entry else None)
    state = _bigr_state(_read(source), entry)
    if not any(k.startswith(BIGR_DENOISER) for k in state):      # only the diffusion_processor copy was kept
        state = {**state, **{BIGR_DENOISER + k[len(BIGR_DENOISER_COPY):]: v for k, v in state.items()
                             if k.startswith(BIGR_DENOISER_COPY)}}
    inferred = infer_bigr_config(state, num_heads)
    same = {"multiple_of": lambda m: ffn_hidden_dim(inferred["dim"], m) == ffn_hidden_dim(inferred["dim"],
                                                                                        inferred["multiple_of"])}
    clashes = [f"{k}={v!r} (weights: {inferred[k]!r})" for k, v in overrides.items()
               if k in inferred and inferred[k] != v and not (k in same and same[k](v))]
    if clashes:
        raise ValueError(f"overrides contradict the checkpoint: {', '.join(clashes)}")
    # the published model of this size, if it is one: its preset's fields
    published = next((p for p in PRESETS.values() if p["dim"] == inferred["dim"] and p["n_layer"] == inferred["n_layer"]
                      and p["transcoder_blocks"] == inferred["transcoder_blocks"]), {})
    fields = {**published, **inferred, **overrides}
    asked = overrides.get("sampling", {})
    sampling = {**(authors_settings(published_entry.sampling) if published_entry else published.get("sampling", {})),
                **(asked.to_dict() if isinstance(asked, SamplingConfig) else asked)}
    if "diffusion_steps" not in sampling:           # the default S = 100 needs T >= 100
        sampling["diffusion_steps"] = min(SamplingConfig.diffusion_steps, fields.get("T", 256))
    return _build(BiGR, BiGRConfig(**{**fields, "sampling": sampling}), _from_official_bigr(state), source, dtype)


def to_official_bigr(model, with_duplicates: bool = True) -> dict[str, torch.Tensor]:
    """A minibigr BiGR as an official state dict (what their ``load_state_dict`` takes as "ema"/"model").

    with_duplicates adds the ``diffusion_processor`` copy of the denoiser and the schedule buffers
    (k_final, b_final, beta, cumbeta; float32, length T + 1) that the authors' module also holds.
    """
    cfg = model.config
    if cfg.objective == "direct":
        raise ValueError("the 'direct' objective has no official counterpart (no Bernoulli denoiser)")
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().clone().cpu()
        if k.startswith("backbone."):
            state[k[len("backbone."):]] = v
        elif k.startswith("transcoder.denoiser."):
            name = k[len("transcoder.denoiser."):]
            state[BIGR_DENOISER + name] = v
            if with_duplicates:
                state[BIGR_DENOISER_COPY + name] = v.clone()
        else:
            raise ValueError(f"no official name for {k!r}")
    if with_duplicates:
        k, b, beta = bernoulli_schedule(cfg.schedule, cfg.T)
        for name, value in (("k_final", k), ("b_final", b), ("beta", beta), ("cumbeta", torch.cumprod(beta, 0))):
            state[BIGR_SCHEDULE + name] = value.float()
    return state
