"""``BiGRConfig``: the sizes, training regularisation and recommended sampling settings of a BiGR model.

    config = BiGRConfig.preset("BiGR-L")                       # the published sizes (docs/method.md §2)
    config = BiGRConfig.preset("tiny-32", dim=256)             # any field overridden
    config.sampling                                            # SamplingConfig: what generate() uses

Configs round-trip through JSON (``to_dict`` / ``from_dict``); a checkpoint written before the sampling
settings were grouped under ``sampling`` (they were top-level fields then) still loads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .checkpoint import config_from_dict
from .sampler import SamplingConfig
from .transcoder import DEFAULT_WEIGHTING, OBJECTIVES, SCHEDULES, WEIGHTINGS


@dataclass
class BiGRConfig:
    """Sizes, training regularisation and recommended sampling settings of a BiGR model.

    The defaults are the authors' BiGR-L-d24 (ImageNet 256x256, 16x16 tokens of 24 bits).
    """

    # data
    K: int = 24                      # bits per token (the official "binary_size" / code length)
    num_classes: int = 1000          # C; label C is the null class
    num_tokens: int = 256            # N image tokens, a square h x w grid in raster order
    # backbone
    dim: int = 1024
    n_layer: int = 24
    n_head: int = 16
    multiple_of: int = 256           # SwiGLU hidden = 2/3 * 4d rounded up to this
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    token_dropout: float = 0.1
    resid_dropout: float = 0.1
    ffn_dropout: float = 0.1
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    class_dropout: float = 0.1
    use_adaLN: bool = True
    # transcoder
    transcoder_width: int = 1024
    transcoder_blocks: int = 3
    T: int = 256
    schedule: str = "linear"
    objective: str = "flip"
    focal_gamma: float = 0.0
    loss_weighting: str | None = None   # "weighted" (wBCE) or "plain" BCE; None: the objective's (DEFAULT_WEIGHTING)
    # the recommended sampling settings (what generate() uses unless told otherwise)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self):
        if isinstance(self.sampling, dict):
            self.sampling = SamplingConfig(**self.sampling)
        problems = []
        grid = math.isqrt(self.num_tokens) if self.num_tokens > 0 else 0
        if grid < 1 or grid * grid != self.num_tokens:
            problems.append(f"num_tokens {self.num_tokens} is not a square grid of tokens")
        if self.dim % self.n_head:
            problems.append(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        elif (self.dim // self.n_head) % 4:
            problems.append(f"head_dim {self.dim // self.n_head} must be divisible by 4 (2-D rotary)")
        for name, value, allowed in [("schedule", self.schedule, SCHEDULES), ("objective", self.objective, OBJECTIVES)]:
            if value not in allowed:
                problems.append(f"{name} {value!r} is not one of {allowed}")
        if self.loss_weighting not in (None, *WEIGHTINGS):
            problems.append(f"loss_weighting {self.loss_weighting!r} is not one of {WEIGHTINGS} or None (the "
                            f"objective's own: {DEFAULT_WEIGHTING})")
        for name in ("token_dropout", "resid_dropout", "ffn_dropout", "attn_dropout", "drop_path", "class_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("K", "num_classes", "n_layer", "T", "transcoder_width", "multiple_of"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.sampling.diffusion_steps > self.T:
            problems.append(f"sampling.diffusion_steps must be in 1..T={self.T}, got {self.sampling.diffusion_steps}")
        if problems:
            raise ValueError("invalid BiGRConfig: " + "; ".join(problems))

    @property
    def grid(self) -> int:
        """h = w of the token grid."""
        return math.isqrt(self.num_tokens)

    @classmethod
    def preset(cls, name: str, **overrides) -> BiGRConfig:
        """A named configuration (see ``PRESETS``), with any field overridden; a ``sampling`` override (a dict
        or a SamplingConfig) changes the preset's sampling settings it names."""
        if name not in PRESETS:
            raise ValueError(f"unknown BiGR preset {name!r}; choose one of {sorted(PRESETS)}")
        fields = {**PRESETS[name], **overrides}
        sampling = overrides.get("sampling", {})
        if isinstance(sampling, SamplingConfig):
            sampling = sampling.to_dict()
        fields["sampling"] = {**PRESETS[name].get("sampling", {}), **sampling}
        return cls(**fields)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BiGRConfig:
        """The config of a ``to_dict`` dict, e.g. a checkpoint's config.json. Files written before the sampling
        settings moved under "sampling" hold them as top-level keys; those are moved there."""
        if not isinstance(d, dict):
            raise ValueError(f"a BiGRConfig is a JSON object / dict, got {type(d).__name__}")
        sampling_names = {f.name for f in dataclasses.fields(SamplingConfig)}
        legacy = {k: v for k, v in d.items() if k in sampling_names}
        d = {k: v for k, v in d.items() if k not in sampling_names} | {"sampling": {**legacy, **d.get("sampling", {})}}
        return config_from_dict(cls, d)


# The published models (ImageNet 256x256, B-AE d24: 16x16 tokens of 24 bits), sampled as the authors' script does
# (the SamplingConfig defaults, script/sample.sh: no file of theirs samples XL or XXL), and small models for 32x32
# and 64x64 data.
PRESETS: dict[str, dict] = {
    "BiGR-L": dict(K=24, num_classes=1000, num_tokens=256, dim=1024, n_layer=24, n_head=16,
                   transcoder_blocks=3, transcoder_width=1024),
    "BiGR-XL": dict(K=24, num_classes=1000, num_tokens=256, dim=1280, n_layer=36, n_head=20,
                    transcoder_blocks=6, transcoder_width=1280),
    "BiGR-XXL": dict(K=24, num_classes=1000, num_tokens=256, dim=1536, n_layer=48, n_head=24,
                     transcoder_blocks=8, transcoder_width=1536),
    # 32x32 images -> 8x8 tokens of 16 bits, 10 classes; trains on a 2-core CPU in about 30 minutes
    # Sampling defaults: the shipped Fashion-MNIST model's, chosen by its ablation study (benchmarks/ablations.md
    # (h)): the fastest setting whose FD lies within the FD-best one's seed range, the random order at CFG 1.5 with
    # I = 10, S = 10. The random order reads no Gumbel temperature; 0.01 (the authors') is the one
    # order="entropy" / "confidence" then get.
    "tiny-32": dict(K=16, num_classes=10, num_tokens=64, dim=128, n_layer=4, n_head=4, multiple_of=64,
                    transcoder_blocks=2, transcoder_width=256,
                    sampling=dict(num_iter=10, cfg=1.5, gumbel=0.01, order="random", diffusion_steps=10)),
    # CIFAR-10 size, for a GPU; 64 tokens as tiny-32, so its sampling settings (not tuned on this model)
    "small-32": dict(K=16, num_classes=10, num_tokens=64, dim=384, n_layer=8, n_head=6, multiple_of=128,
                     transcoder_blocks=3, transcoder_width=512),
    # ImageNet 64x64 -> 16x16 tokens of 24 bits, 1000 classes; 256 tokens as BiGR-L, so the authors' script's
    # sampling settings (not tuned on this model)
    "small-64": dict(K=24, num_classes=1000, num_tokens=256, dim=512, n_layer=12, n_head=8, multiple_of=128,
                     transcoder_blocks=3, transcoder_width=768),
}
PRESETS["small-32"]["sampling"] = PRESETS["tiny-32"]["sampling"]
# tiny-32 twice as wide: the shipped Fashion-MNIST model (GPU-trained). Width and epochs, not depth,
# lifted its linear probe above raw pixels (README, "Shipped model").
PRESETS["wide-32"] = {**PRESETS["tiny-32"], "dim": 256}
