"""How much a Gumbel temperature reshuffles the token order, for the entropy and the confidence score.

    python benchmarks/gumbel_scale.py                        # shipped model, 100 images, a quarter of the tokens
    python benchmarks/gumbel_scale.py --plot docs/gumbel_scale.png

The sampler reveals the tokens of highest certainty + g G (G ~ Gumbel(0, 1)). Whether a temperature g means the same
for two scores depends on how widely each score spreads over the masked tokens. This script takes the bit
probabilities p of every token at the first sampling step (all tokens masked; the model's recommended CFG and
reverse-chain steps), scores them both ways (``minibigr.sampler.CERTAINTY``) and, for temperatures from 0.001 to 10,
measures the **displaced share**: of the n tokens the noise-free score picks, the share that the perturbed score
does not pick (mean over images and noise draws). 0 means no reshuffle; a fully random order displaces 1 - n/N on
average (measured too, as a line). The "half-random temperature" of a score is where its displaced share reaches
half the random order's: the two scores' half-random temperatures, and their ratio, are the table's last lines.
For comparison the table also scores the tokens by minus their summed bit entropies in nats (0 to K ln 2), a scale
no order uses, to show how far a temperature's meaning moves when the score is not normalised.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # `python benchmarks/gumbel_scale.py` from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

from minibigr import pretrained  # noqa: E402
from minibigr.sampler import CERTAINTY, bit_entropy, gumbel_noise  # noqa: E402

# the two orders' scores, and the unnormalised one for comparison
SCORES = {**CERTAINTY, "summed nats": lambda p: -bit_entropy(p).sum(-1)}


def first_step_probs(model, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """p (B, N, K) of every token at the first step of a certainty-ordered run (every token is masked then)."""
    seen = []

    def keep_first(step):
        if step.i == 1:
            seen.append(step.p)

    model.generate(labels, generator=generator, order="confidence", num_iter=2, callback=keep_first)
    return seen[0]


def displaced_share(scores: torch.Tensor, n: int, gumbel: float, draws: int, generator: torch.Generator) -> float:
    """Mean share of the n best-scoring tokens of each row that the Gumbel-perturbed scores do not pick.

    scores (B, N); gumbel = inf gives the fully random order (the noise alone).
    """
    B, N = scores.shape
    clean = torch.zeros(B, N, dtype=torch.bool).scatter_(1, scores.topk(n, dim=1).indices, True)
    shares = []
    for _ in range(draws):
        G = gumbel_noise((B, N), generator=generator, dtype=scores.dtype)
        noisy = G if math.isinf(gumbel) else scores + gumbel * G
        picked = torch.zeros(B, N, dtype=torch.bool).scatter_(1, noisy.topk(n, dim=1).indices, True)
        shares.append(1 - (clean & picked).sum(1).double().mean().item() / n)
    return float(np.mean(shares))


def half_random_temperature(gumbels: np.ndarray, shares: np.ndarray, random_share: float) -> float:
    """The temperature where the displaced share first reaches half the random order's (log-linear interpolation
    between the grid points around it); nan if the grid never reaches it."""
    target = random_share / 2
    above = np.nonzero(shares >= target)[0]
    if len(above) == 0 or above[0] == 0:
        return float("nan")
    k = above[0]
    lo, hi = math.log(gumbels[k - 1]), math.log(gumbels[k])
    frac = (target - shares[k - 1]) / (shares[k] - shares[k - 1])
    return math.exp(lo + frac * (hi - lo))


def measure(model, per_class: int, reveal: int | None, gumbels: np.ndarray, draws: int, seed: int) -> dict:
    """The displaced share of each certainty score at each temperature, and of the random order."""
    g = torch.Generator().manual_seed(seed)
    C, N = model.config.num_classes, model.config.num_tokens
    labels = torch.arange(C).repeat_interleave(per_class)
    p = first_step_probs(model, labels, g).double()
    n = reveal or N // 4
    out = {"n": n, "N": N, "images": len(labels), "gumbels": gumbels.tolist(),
           "random": displaced_share(torch.zeros(len(labels), N, dtype=torch.float64), n, math.inf, draws, g)}
    for name, score in SCORES.items():
        s = score(p)
        shares = np.array([displaced_share(s, n, float(gumbel), draws, g) for gumbel in gumbels])
        out[name] = {"shares": shares.tolist(), "spread": float(s.std(1).mean()),
                     "half_random": half_random_temperature(gumbels, shares, out["random"])}
    return out


def table(result: dict) -> str:
    orders = list(SCORES)
    lines = [f"displaced share of the {result['n']} best of {result['N']} tokens at the first step "
             f"({result['images']} images; fully random order: {result['random']:.3f})", "",
             "| Gumbel | " + " | ".join(orders) + " |", "|---:|" + "---:|" * len(orders)]
    for k, gumbel in enumerate(result["gumbels"]):
        lines.append(f"| {gumbel:.3g} | " + " | ".join(f"{result[o]['shares'][k]:.3f}" for o in orders) + " |")
    half = [result[o]["half_random"] for o in orders]
    lines += ["", "| | " + " | ".join(orders) + " |", "|---|" + "---:|" * len(orders),
              "| spread of the score over a row's tokens (std) | "
              + " | ".join(f"{result[o]['spread']:.4f}" for o in orders) + " |",
              "| half-random temperature | " + " | ".join(f"{h:.3g}" for h in half) + " |",
              "", "ratio of the entropy and confidence orders' half-random temperatures: "
              f"{max(half[:2]) / min(half[:2]):.2f}"]
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name in CERTAINTY:
        ax.plot(result["gumbels"], result[name]["shares"], marker="o", ms=3, label=f"{name} order")
        ax.axvline(result[name]["half_random"], ls=":", lw=1, color=ax.lines[-1].get_color())
    ax.axhline(result["random"], color="k", ls="--", lw=1, label="random order")
    ax.axhline(result["random"] / 2, color="grey", ls=":", lw=1, label="half the random order's")
    ax.set(xscale="log", xlabel="Gumbel temperature g", ylabel="displaced share of the picks",
           title=f"first step, {result['n']} of {result['N']} tokens picked")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fashion-mnist", help="shipped name or pipeline directory")
    ap.add_argument("--per-class", type=int, default=10, help="images per class")
    ap.add_argument("--reveal", type=int, help="tokens picked (default: a quarter of the tokens)")
    ap.add_argument("--draws", type=int, default=20, help="noise draws per temperature")
    ap.add_argument("--points", type=int, default=25, help="temperatures, log-spaced from 0.001 to 10")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plot", help="write the curves to this PNG")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = pretrained(args.model).model
    result = measure(model, args.per_class, args.reveal, np.logspace(-3, 1, args.points), args.draws, args.seed)
    print(table(result))
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return result


if __name__ == "__main__":
    main()
