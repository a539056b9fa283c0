"""Entropy-ordered sampling (docs/method.md §5): reveal the most certain tokens first.

All N tokens start masked. At step i = 1..I a predictor gives p (B, N, K) for every token; each
still-masked token is scored by its certainty in [0, 1] (the mean bit entropy expressed as a confidence,
or the authors' confidence), the scores are perturbed with Gumbel noise, and the
best tokens are revealed (bits ~ Bernoulli(p)) until only floor(n * cos(pi/2 * i/I)) stay masked.
Tokens that are given (inpainting) never change and are never counted. The raster and random orders
choose without looking at p, so they choose first and ask the predictor for the chosen tokens only.

``SamplingConfig`` is the one list of sampling settings: the loop's own, and those of the model and
the transcoder that a sampling call passes on (guidance, reverse-chain steps, temperature).
The loop runs on the device without host syncs: counts, ranks and selections are all tensors.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .authors import settings as authors_settings
from .quantizer import quantize

ORDERS = ("entropy", "confidence", "random", "raster")
BLIND_ORDERS = ("random", "raster")           # orders that choose the tokens without looking at p
GUMBEL_SCHEDULES = ("constant", "down", "up")
CFG_SCHEDULES = ("constant", "linear")
MASK_SCHEDULES = ("cosine", "linear")
PRECISIONS = ("float32", "bfloat16")

# predict(tokens (B, N, K), mask (B, N) bool True = masked, step i in 1..I, chosen) -> p (B, N, K), where
# chosen is None (p of every masked token is used) or (B, N) bool: only these tokens' p is used
Predictor = Callable[[torch.Tensor, torch.Tensor, int, torch.Tensor | None], torch.Tensor]


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------
def _setting(default, help: str, choices: tuple[str, ...] | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


# the defaults: what the authors' sampling script runs (script/sample.sh, BiGR-L-d24; minibigr/authors.py)
SCRIPT = authors_settings("script/sample.sh")


@dataclass(frozen=True)
class SamplingConfig:
    """Every setting of a sampling call (BiGR.generate); the defaults are the authors' script/sample.sh's.

    A model's recommended settings are ``model.config.sampling``; ``replace(**overrides)`` changes some.
    """

    num_iter: int = _setting(SCRIPT["num_iter"], "sampling steps I: tokens are revealed over I steps")
    cfg: float = _setting(SCRIPT["cfg"], "classifier-free guidance scale g (1 = the plain conditional model)")
    cfg_schedule: str = _setting(SCRIPT["cfg_schedule"], "guidance per step: constant g, or linear 1 + (g - 1) i/I",
                                 CFG_SCHEDULES)
    gumbel: float = _setting(SCRIPT["gumbel"], "Gumbel temperature of the token order (0 = strictly most certain "
                             "first; both certainty scores lie in [0, 1], so it means about the same for either)")
    gumbel_schedule: str = _setting(SCRIPT["gumbel_schedule"], "Gumbel temperature per step: constant g, down "
                                    "g (1 - i/I), up g i/I", GUMBEL_SCHEDULES)
    order: str = _setting(SCRIPT["order"], "which tokens first: lowest mean bit entropy (the paper), highest "
                          "confidence (the authors' code), random, or raster", ORDERS)
    diffusion_steps: int = _setting(SCRIPT["diffusion_steps"], "reverse-chain steps S of the transcoder (at most "
                                    "its T)")
    temperature: float = _setting(SCRIPT["temperature"], "temperature of the transcoder's logits")
    deterministic: bool = _setting(SCRIPT["deterministic"], "revealed bits are [p > 1/2] instead of Bernoulli(p)")
    mask_schedule: str = _setting(SCRIPT["mask_schedule"], "tokens left masked after step i: n cos(pi/2 i/I), or "
                                  "n (1 - i/I)", MASK_SCHEDULES)
    precision: str = _setting("float32", "matmul precision of backbone and transcoder: bfloat16 autocast is faster "
                              "on GPUs and on CPUs with native bf16; draws, p0 and posterior stay float32",
                              PRECISIONS)

    def __post_init__(self):
        problems = [f"{f.name} {getattr(self, f.name)!r} is not one of {f.metadata['choices']}"
                    for f in dataclasses.fields(self)
                    if f.metadata["choices"] and getattr(self, f.name) not in f.metadata["choices"]]
        for name in ("num_iter", "diffusion_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if not self.gumbel >= 0:
            problems.append(f"gumbel must be >= 0, got {self.gumbel}")
        if not (math.isfinite(self.cfg) and self.cfg >= 0):
            # below 0 the guidance pushes away from the class (anti-guidance): refused, as nothing here needs it
            problems.append(f"cfg must be >= 0 and finite (0 samples the unconditional model, 1 the conditional "
                            f"one, more guides towards the class), got {self.cfg}")
        if problems:
            raise ValueError("invalid sampling settings: " + "; ".join(problems))

    def replace(self, **overrides) -> SamplingConfig:
        """These settings with some changed; a name that is not a setting is an error."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown sampling setting(s) {unknown}; the settings are "
                            f"{[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------
def mask_ratio(i: int, num_iter: int, schedule: str = "cosine") -> float:
    """Fraction of tokens still masked after step i: cos(pi/2 * i/I) (generation), or 1 - i/I
    ("linear", which enrichment uses: its groups are small and already surrounded by context)."""
    if schedule == "cosine":
        # clipped at 0: at i = I the rounded angle can land an ulp past pi/2 (I = 13, 26, 47, ...)
        # and floor(n * -6e-17) would leave -1 tokens masked
        return max(0.0, math.cos(math.pi / 2 * i / num_iter))
    if schedule == "linear":
        return 1 - i / num_iter
    raise ValueError(f"unknown mask schedule {schedule!r}; choose one of {MASK_SCHEDULES}")


def masked_after(n: torch.Tensor, i: int, num_iter: int, schedule: str = "cosine") -> torch.Tensor:
    """floor(n * ratio(i)) per row.  n (B,) int64 -> (B,) int64."""
    return torch.floor(n.to(torch.float64) * mask_ratio(i, num_iter, schedule)).to(torch.int64)


def gumbel_scale(g: float, schedule: str, i: int, num_iter: int) -> float:
    """Gumbel temperature at step i: constant g, "down" g (1 - i/I), "up" g i/I."""
    if schedule == "constant":
        return g
    if schedule == "down":
        return g * (1 - i / num_iter)
    if schedule == "up":
        return g * i / num_iter
    raise ValueError(f"unknown gumbel schedule {schedule!r}; choose one of {GUMBEL_SCHEDULES}")


def cfg_scale(g: float, schedule: str, i: int, num_iter: int) -> float:
    """CFG scale at step i: constant g, or "linear" 1 + (g - 1) i/I."""
    if schedule == "constant":
        return g
    if schedule == "linear":
        return 1 + (g - 1) * i / num_iter
    raise ValueError(f"unknown cfg schedule {schedule!r}; choose one of {CFG_SCHEDULES}")


# ----------------------------------------------------------------------------------------------
# Scores: higher = more certain = revealed first
# ----------------------------------------------------------------------------------------------
def bit_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) = -[p log p + (1 - p) log(1 - p)] of each bit, in nats (0 to ln 2).  p (...) -> (...)."""
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


def inverse_bit_entropy(h: torch.Tensor) -> torch.Tensor:
    """The q in [0, 1/2] with H(q) = h, for h in [0, ln 2] nats, by bisection (H rises on [0, 1/2]).

    Halving [0, 1/2] once per bit of the dtype's mantissa, and twice more, leaves an interval below its resolution.
    h (...) -> (...).
    """
    lo, hi = torch.zeros_like(h), torch.full_like(h, 0.5)
    for _ in range(2 - int(math.log2(torch.finfo(h.dtype).eps))):
        mid = (lo + hi) / 2
        below = bit_entropy(mid) < h
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


def entropy_certainty(p: torch.Tensor) -> torch.Tensor:
    """The paper's low-entropy-first score on the confidence's scale: 1 - 2 q, where H(q) = mean_k H(p_k).

    q is the minority probability of one bit whose entropy is the token's mean bit entropy, so the score is the
    ``confidence`` |2 p - 1| of that bit: 1 when every bit is certain, 0 when every bit is a coin flip, and exactly
    the confidence when all K bits are equally certain. It orders tokens by their mean bit entropy (low first), and
    a Gumbel temperature perturbs it about as much as it perturbs the confidence (benchmarks/gumbel_scale.py).
    p (B, N, K) -> (B, N).
    """
    return 1 - 2 * inverse_bit_entropy(bit_entropy(p).mean(-1))


def confidence(p: torch.Tensor) -> torch.Tensor:
    """The authors' certainty (llama/gpt.py, generate_with_cfg): mean_k |p_k - 1/2| * 2 in [0, 1].
    p (B, N, K) -> (B, N)."""
    return (p - 0.5).abs().mean(-1) * 2


CERTAINTY = {"entropy": entropy_certainty, "confidence": confidence}   # the orders that read p: higher = first


def gumbel_noise(shape, generator: torch.Generator | None = None, device=None,
                 dtype=torch.float32) -> torch.Tensor:
    """G ~ Gumbel(0, 1) = -log(-log u)."""
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    neg_log_u = (-torch.log(u.clamp_min(tiny))).clamp_min(tiny)
    return -torch.log(neg_log_u)


def perturbed_scores(p: torch.Tensor | None, order: str, gumbel: float, G: torch.Tensor) -> torch.Tensor:
    """Certainty + gumbel * G per token.  p (B, N, K), G (B, N) -> (B, N).

    "random" is pure Gumbel noise (a uniformly random order whatever the temperature);
    "raster" reveals positions left to right, top to bottom, and ignores the noise. Neither reads p
    (BLIND_ORDERS: p may be None).
    """
    if order in CERTAINTY:
        return CERTAINTY[order](p) + gumbel * G
    if order == "random":
        return G
    if order == "raster":
        B, N = G.shape
        return -torch.arange(N, device=G.device, dtype=G.dtype).expand(B, N)
    raise ValueError(f"unknown order {order!r}; choose one of {ORDERS}")


def select(scores: torch.Tensor, mask: torch.Tensor, n_reveal: torch.Tensor) -> torch.Tensor:
    """The n_reveal[b] highest-scoring masked tokens of each row.

    scores (B, N), mask (B, N) bool, n_reveal (B,) int64 -> (B, N) bool. Ties go to the lower index
    (stable sort), so any implementation that sorts stably picks the same tokens.
    """
    scores = scores.masked_fill(~mask, float("-inf"))
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return (rank < n_reveal[:, None]) & mask


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingStep:
    """What a ``callback`` sees after step i of I: the state of the loop, nothing it could change.

    tokens (B, N, K) after the step; mask (B, N) bool, True = still masked after the step; chosen (B, N) bool,
    the tokens this step revealed; p (B, N, K) the bit probabilities the step used, and scored (B, N) bool the
    tokens whose p it computed (every token masked before the step for a certainty order, only the chosen
    ones for a blind order; p is 1/2 elsewhere); settings the run's SamplingConfig.
    """

    i: int
    tokens: torch.Tensor
    mask: torch.Tensor
    chosen: torch.Tensor
    p: torch.Tensor
    scored: torch.Tensor
    settings: SamplingConfig


# callback(step) after every step; it must draw no random numbers (the run's draws stay the same with or without it)
Callback = Callable[[SamplingStep], None]


class RevealOrder:
    """A ``callback`` that records which step revealed each token.

        order = RevealOrder()
        tokens = model.generate(labels, callback=order)
        order.revealed_at                             # (B, N) int64: step 1..I, 0 for given tokens
    """

    def __init__(self):
        self.revealed_at: torch.Tensor | None = None

    def __call__(self, step: SamplingStep) -> None:
        if self.revealed_at is None:
            self.revealed_at = torch.zeros(step.mask.shape, dtype=torch.int64, device=step.mask.device)
        self.revealed_at[step.chosen] = step.i


class StepRecorder:
    """A ``callback`` that keeps a copy of every step, for pictures of the run (``minibigr.animate`` draws them).

        recorder = StepRecorder()
        tokens = model.generate(labels, callback=recorder)
        recorder.steps                                # [RecordedStep, ...], one per step, on the CPU

    Each step keeps the tokens and the masks after it, the certainty of every token whose p the step computed (the
    run's own score for a certainty order; the confidence for a blind one, which reads no certainty, so only the
    tokens it reveals have one; NaN elsewhere) and the step that revealed each token so far. It draws no random
    numbers: a run gives the same tokens with it.
    """

    def __init__(self):
        self.steps: list[RecordedStep] = []

    def __call__(self, step: SamplingStep) -> None:
        score = CERTAINTY.get(step.settings.order, confidence)
        certainty = score(step.p.float()).masked_fill(~step.scored, float("nan"))         # (B, N)
        before = self.steps[-1].revealed_at if self.steps else torch.full(step.mask.shape, float("nan"))
        revealed_at = torch.where(step.chosen.cpu(), float(step.i), before)                  # (B, N)
        self.steps.append(RecordedStep(step.i, step.settings.num_iter, step.tokens.cpu(), step.mask.cpu(),
                                       step.chosen.cpu(), certainty.cpu(), revealed_at))


@dataclass(frozen=True)
class RecordedStep:
    """One step of a run, as ``StepRecorder`` keeps it: step i of I; tokens (B, N, K), mask (B, N) (True = still
    masked), chosen (B, N) (revealed at this step), certainty (B, N) (NaN where not scored), revealed_at (B, N) (the
    step that revealed each token so far, NaN for the still masked and the given)."""

    i: int
    num_iter: int
    tokens: torch.Tensor
    mask: torch.Tensor
    chosen: torch.Tensor
    certainty: torch.Tensor
    revealed_at: torch.Tensor


@torch.no_grad()
def sample_tokens(predict: Predictor, tokens: torch.Tensor, given: torch.Tensor | None, settings: SamplingConfig,
                  generator: torch.Generator | None = None, gumbels: torch.Tensor | None = None,
                  uniforms: torch.Tensor | None = None, callback: Callback | None = None) -> torch.Tensor:
    """BiGR's entropy-ordered iterative unmasking (docs/method.md §5); any order of ``ORDERS``.

    tokens (B, N, K): values of the given tokens (the rest are ignored); given (B, N) bool marks
    tokens to keep (None: generate everything). The loop uses the settings' num_iter, order, gumbel,
    gumbel_schedule, deterministic and mask_schedule. gumbels (I, B, N) and uniforms (I, B, N, K) make
    the Gumbel and Bernoulli draws explicit; otherwise they come from ``generator``.
    ``callback(step)`` sees a ``SamplingStep`` after every step (it must not draw random numbers).
    Returns tokens (B, N, K) in {0,1}.
    """
    s = settings
    B, N, K = tokens.shape
    if given is None:
        given = torch.zeros(B, N, dtype=torch.bool, device=tokens.device)
    mask = ~given
    tokens = tokens.masked_fill(mask[..., None], 0.0)
    n_start = mask.sum(1)                                           # (B,) tokens to generate per row

    def noise(i: int, dtype: torch.dtype) -> torch.Tensor:          # G (B, N) of step i
        return gumbels[i - 1] if gumbels is not None else gumbel_noise(
            (B, N), generator=generator, device=tokens.device, dtype=dtype)

    for i in range(1, s.num_iter + 1):
        # 1. reveal tokens until floor(n * ratio(i)) stay masked
        n_reveal = mask.sum(1) - masked_after(n_start, i, s.num_iter, s.mask_schedule)
        if s.order in BLIND_ORDERS:
            # 2. the order alone chooses; the model's bit probabilities are needed for the chosen tokens only
            chosen = select(perturbed_scores(None, s.order, 0.0, noise(i, torch.float32)), mask, n_reveal)
            p = predict(tokens, mask, i, chosen)                    # (B, N, K)
        else:
            # 2. the model's bit probabilities for every masked token; the most certain (Gumbel-perturbed) chosen
            p = predict(tokens, mask, i, None)                      # (B, N, K)
            scores = perturbed_scores(p, s.order, gumbel_scale(s.gumbel, s.gumbel_schedule, i, s.num_iter),
                                      noise(i, p.dtype))
            chosen = select(scores, mask, n_reveal)                 # (B, N)
        # 3. draw the chosen tokens' bits
        bits = quantize(p, deterministic=s.deterministic, generator=generator,
                        uniform=uniforms[i - 1] if uniforms is not None else None)
        tokens = torch.where(chosen[..., None], bits, tokens)
        scored = chosen if s.order in BLIND_ORDERS else mask        # the tokens whose p this step computed
        mask = mask & ~chosen
        if callback is not None:
            callback(SamplingStep(i, tokens, mask, chosen, p, scored, s))
    return tokens
