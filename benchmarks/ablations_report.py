"""The ablation study's report: Markdown tables, the paper's numbers beside ours, verdicts and plots, all from the
stored results of benchmarks/ablations.py (which runs the study).

Two settings are ranked apart ("<") only when their means differ by more than either one's range over sampling
seeds, otherwise "≈"; a paper's claim is called the same way.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from minibigr.authors import settings as authors_settings

REPO = Path(__file__).resolve().parents[1]
AUTHORS_GUMBEL = authors_settings("script/sample.sh")["gumbel"]

# docs/method.md §8: BiGR-L, ImageNet 256x256, shorter training; FID-50k, seconds per image, linear-probe top-1 (%)
# (their raster took 8.8 s against 0.69 s, about 256 / 20 network passes: one token per step, our raster-1)
PAPER = {
    "order": {"entropy": 3.17, "random": 7.12, "raster-1": 4.51},
    "order_seconds": {"entropy": 0.69, "raster-1": 8.8},
    "objective": {"flip": 3.17, "x0": 4.39, "direct": 5.84},
    "bits": {"bernoulli": 3.17, "deterministic": 3.19},
    "probe": {"flip": 67.5, "unconditional": 68.3},
}

# the probed models of the study, as the report names them
PROBE_LABELS = {"flip": "conditional (flip model of (b))", "unconditional": "unconditional (every label null)",
                "shipped": "reference model (conditional)"}

def _num(x, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _spread(r: dict, metric: str = "fd") -> str:
    """'mean (min–max)' over the sampling seeds."""
    low, high = r[f"{metric}_range"]
    return f"{r[metric]:.2f} ({low:.2f}–{high:.2f})"


def quality_cells(r: dict) -> list[str]:
    """FD mean (range over seeds), class accuracy, precision, recall, CPU seconds per image of one setting."""
    return [_spread(r), _pct(r["class_accuracy"]), _num(r["precision"]), _num(r["recall"]),
            _num(r["cpu_seconds_per_image"], ".3f")]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def apart(a: dict, b: dict, metric: str = "fd") -> bool:
    """Whether two settings' means differ by more than either one's range over seeds."""
    width = max(hi - lo for lo, hi in (a[f"{metric}_range"], b[f"{metric}_range"]))
    return abs(a[metric] - b[metric]) > width


def ranking(results: dict, keys=None) -> str:
    """'a < b ≈ c' by mean FD (lower first) over the keys present (None: all results); '<' only between neighbours
    that are apart."""
    ranked = sorted((k for k in (results if keys is None else keys) if k in results), key=lambda k: results[k]["fd"])
    if not ranked:
        return "—"
    text = ranked[0]
    for prev, key in zip(ranked, ranked[1:], strict=False):
        text += f" {'<' if apart(results[prev], results[key]) else '≈'} {key}"
    return text


def paper_ranking(scores: dict) -> str:
    return " < ".join(sorted(scores, key=scores.get))


def verdict(results: dict, better: str, worse: str) -> str:
    """Does ``better`` beat ``worse`` on FD here: 'holds', 'reversed' or 'not resolved (within the seeds' ranges)'."""
    a, b = results[better], results[worse]
    if not apart(a, b):
        return "not resolved (within the seeds' ranges)"
    return "holds" if a["fd"] < b["fd"] else "reversed"


def top1_se(top1: float, n_test: int) -> float:
    """Standard error (points) of an accuracy measured on n_test images: the probe's spread over its test set."""
    return 100 * math.sqrt(top1 * (1 - top1) / n_test)


def probe_verdict(conditional: dict, unconditional: dict, n_test: int) -> tuple[float, float, str]:
    """Unconditional minus conditional test top-1 (points), two standard errors of that difference (points) and
    whether "unconditional training probes no worse" holds. One training per arm leaves no seed spread, so the
    spread is the test set's: a shortfall is called only beyond two standard errors of the difference of two
    accuracies measured on n_test images each."""
    p, q = conditional["test"]["top1"], unconditional["test"]["top1"]
    gap = 100 * (q - p)
    two_se = 2 * math.hypot(top1_se(p, n_test), top1_se(q, n_test))
    if gap >= 0:
        return gap, two_se, "holds"
    return gap, two_se, "not resolved (within two standard errors)" if -gap <= two_se else "reversed"


QUALITY = ["FD ↓ mean (range)", "class acc.", "precision", "recall", "CPU s / image"]


def claims_section(summary: dict, s: dict) -> list[str]:
    """The paper's claims, each with what the numbers here say (s: the study's settings)."""
    n_test = s["probe_test"]
    rows = []
    order = summary.get("order", {"arms": {}, "best": {}})
    arms, entropy = order["arms"], entropy_arms(order)
    comparisons = [("order", arms, entropy.get("best"), "raster-1", "entropy order beats raster (one per step)"),
                   ("order", arms, entropy.get("best"), "random", "entropy order beats random order"),
                   ("order", arms, entropy.get("authors"), "random", "entropy order beats random order"),
                   ("order", arms, "raster-1", "random", "raster (one per step) beats random")]
    comparisons += [("objective", summary.get("objective", {}), better, worse, f"{better} objective beats {worse}")
                    for better, worse in (("flip", "x0"), ("x0", "direct"), ("flip", "direct"))]
    for stage, res, better, worse, claim in comparisons:
        if better in res and worse in res:
            named = f"{claim} ({better} vs {worse})" if stage == "order" else claim
            rows.append([named, f"{res[better]['fd']:.2f} vs {res[worse]['fd']:.2f}", verdict(res, better, worse)])
    bits = summary.get("bits", {})
    if "bernoulli" in bits and "deterministic" in bits:
        same = not apart(bits["bernoulli"], bits["deterministic"])
        rows.append(["final bits: Bernoulli ≈ deterministic (3.17 vs 3.19)",
                     f"{bits['bernoulli']['fd']:.2f} vs {bits['deterministic']['fd']:.2f}",
                     "holds (within the seeds' ranges)" if same else "differ here"])
    probe = summary.get("probe", {})
    if "flip" in probe and "unconditional" in probe:
        gap, two_se, said = probe_verdict(probe["flip"], probe["unconditional"], n_test)
        rows.append(["unconditional training probes no worse (+0.8 points)", f"{gap:+.1f} points (± {two_se:.1f})",
                     said])
    if not rows:
        return []
    return ["## Which of the paper's claims hold here", "",
            *table(["paper's claim", "here (FD means; probe: test top-1)", "verdict"], rows), "",
            "A claim is called only when the two means differ by more than the range over sampling seeds of either "
            "(probe: by more than two standard errors over its test images)." + capped_note(summary, s),
            ""]


def capped_note(summary: dict, s: dict) -> str:
    """What the objective claims compare when a training was still improving at the step cap."""
    capped = capped_objectives(summary.get("objective", {}), s)
    if not capped:
        return ""
    return (f" The objective claims compare {', '.join(capped)} as they stood at the {s['max_steps']}-step cap, "
            "their held-out loss still falling (section (b)): not at convergence.")


def entropy_arms(order: dict) -> dict[str, str]:
    """The names of the entropy order's arms: at its FD-best sweep temperature ("best") and at the authors' ("authors",
    the lowest of at most two)."""
    names = sorted((n for n in order.get("arms", {}) if n.startswith("entropy ")),
                   key=lambda n: float(n.split("=")[1]))
    best = order.get("best", {}).get("entropy")
    out = {"authors": names[0]} if names else {}
    if best is not None and f"entropy g={best:g}" in names:
        out["best"] = f"entropy g={best:g}"
    return out


def paper_key(arm: str) -> str:
    """The paper's name of an arm of the order study: "entropy g=0.01" -> "entropy"."""
    return arm.split(" ")[0]


def order_section(res: dict, authors_gumbel: float, image_prefix: str) -> list[str]:
    sweep, best, arms = res["sweep"], res["best"], res["arms"]
    gumbels = sorted({r["sampling"]["gumbel"] for results in sweep.values() for r in results})
    cell = {(o, r["sampling"]["gumbel"]): r for o, results in sweep.items() for r in results}

    def sweep_cells(order: str, g: float) -> list[str]:
        r = cell.get((order, g))
        if r is None:
            return ["—", "—"]
        fd = f"**{r['fd']:.2f}**" if best.get(order) == g else f"{r['fd']:.2f}"
        return [fd, _num(r["recall"])]

    sweep_rows = [[f"{g:g}" + (" (authors')" if g == authors_gumbel else ""),
                   *(c for order in sweep for c in sweep_cells(order, g))] for g in gumbels]
    arm_rows = [[name, *quality_cells(r), _num(PAPER["order"].get(paper_key(name))),
                 _num(PAPER["order_seconds"].get(paper_key(name)))] for name, r in arms.items()]
    entropy = entropy_arms(res)
    return ["## (a) Sampling order (reference model)", "",
            "First the Gumbel temperature of the two orders that read the model's certainty, one sampling seed "
            "each (FD and recall; bold: each order's FD-best temperature). Both scores lie in [0, 1] "
            "(docs/method.md §5), so a temperature means about the same for either.", "",
            *table(["Gumbel", *(f"{order} {m}" for order in sweep for m in ("FD ↓", "recall"))], sweep_rows), "",
            f"![FD against the Gumbel temperature]({image_prefix}ablations_order.png)", "",
            f"Then each certainty order at the authors' temperature ({authors_gumbel:g}, script/sample.sh) and at its "
            "FD-best one, against the orders that do not read the certainty, with every sampling seed:", "",
            *table(["order", *QUALITY, "paper FID", "paper s / image"], arm_rows), "",
            f"Ranking by FD here: {ranking(arms)}; the paper's orders here: "
            f"{ranking(arms, [entropy.get('best'), 'random', 'raster-1'])} (paper: entropy < raster-1 < random). "
            "raster-1 reveals one token per step (I = N, linear schedule) as the paper's raster does; the others "
            "share the reference schedule.", ""]


def still_improving(train: dict, s: dict) -> bool:
    """Whether the step cap, not the early-stopping rule, ended a training: it stopped at max_steps with its best
    round fewer than patience rounds back."""
    rounds_since_best = (train["stopped_at"] - train["best_step"]) // s["eval_every"]
    return train["stopped_at"] >= s["max_steps"] and rounds_since_best < s["patience"]


def capped_objectives(res: dict, s: dict) -> list[str]:
    """The objectives whose training the step cap ended while it was still improving."""
    return [o for o, r in res.items() if still_improving(r["train"], s)]


def last_gain(train: dict, s: dict) -> float:
    """The held-out loss's relative fall over the last patience rounds (0.0048: it fell by 0.48 %)."""
    losses = [row["loss"] for row in train["history"]][-s["patience"] - 1:]
    return 1 - losses[-1] / losses[0]


def converged_cell(train: dict, s: dict) -> str:
    if not still_improving(train, s):
        return "yes"
    return f"no: −{100 * last_gain(train, s):.2f}% in its last {s['patience'] * s['eval_every']} steps"


# how the report names each objective arm: direct is the paper's ablation, with minibigr's loss (their code has none)
OBJECTIVE_NAMES = {"flip": "flip", "x0": "x0", "direct": "direct (weighted BCE, not in the authors' code)"}


def objective_section(res: dict, s: dict, image_prefix: str) -> list[str]:
    rows = [[OBJECTIVE_NAMES[o], *quality_cells(res[o]), str(res[o]["train"]["best_step"]),
             str(res[o]["train"]["stopped_at"]),
             converged_cell(res[o]["train"], s), _num(res[o]["train"]["heldout_loss"], ".4f"),
             _num(res[o]["train"]["heldout_bce"], ".4f"), _num(res[o]["train"]["cpu_seconds"] / 60, ".0f"),
             _num(PAPER["objective"][o])]
            for o in res]
    capped = capped_objectives(res, s)
    lines = ["## (b) Transcoder objective (tiny-32 from scratch, each trained until its held-out loss stopped "
             f"improving or to the {s['max_steps']}-step cap)", "",
             *table(["objective", *QUALITY, "best step", "stopped at", "converged", "held-out loss", "held-out BCE",
                     "train CPU min", "paper FID"], rows), "",
             f"Ranking by FD here: {ranking(res)} (paper: {paper_ranking(PAPER['objective'])}). "
             "flip and x0 train as in the authors' code (`llama/bindiff/binarylatent.py`: flip with their weighted "
             "BCE, x0 with a plain BCE), so their held-out losses differ in kind; their held-out BCE (the plain BCE of "
             "the implied z_0 probabilities given z_t, t and h) compares them. direct is the paper's \"without "
             "Bernoulli denoising\" ablation, which the authors' code does not contain: here one MLP head predicts "
             "z_0 from h alone, trained with the weighted BCE; its held-out BCE is BCE(z_0 | h), a different task "
             "from flip's and x0's BCE(z_0 | z_t, t, h), so it is not ranked against theirs. The best step's EMA "
             "model is the one sampled. direct predicts z_0 in one pass, without the reverse chain, hence its lower "
             "CPU s / image.", ""]
    if capped:
        lines += [f"Not converged: {', '.join(capped)} reached the {s['max_steps']}-step cap with the held-out loss "
                  "still falling, so this ranks the objectives at equal training steps, not at convergence.", ""]
    return lines + [f"![held-out BCE against training steps]({image_prefix}ablations_training.png)", ""]


def bits_section(res: dict) -> list[str]:
    rows = [[k, *quality_cells(res[k]), _num(PAPER["bits"][k])] for k in ("bernoulli", "deterministic") if k in res]
    return ["## (c) Final bits: Bernoulli draw vs threshold (reference model)", "",
            *table(["final bits", *QUALITY, "paper FID"], rows), ""]


def probe_section(res: dict, s: dict) -> list[str]:
    rows = []
    for name, label in PROBE_LABELS.items():
        if name in res:
            r = res[name]
            rows.append([label, str(r["layer"]), _pct(r["heldout"][str(r["layer"])]), _pct(r["test"]["top1"]),
                         _pct(r["test"]["top5"]), _num(PAPER["probe"].get(name), ".1f")])
    if "pixels" in res:
        p = res["pixels"]
        rows.append(["raw pixels (same classifier)", "—", _pct(p["heldout"]["pixels"]), _pct(p["test"]["top1"]),
                     _pct(p["test"]["top5"]), "—"])
    lines = ["## (d) Linear probe: conditional vs unconditional training", "",
             *table(["features", "block", "held-out top-1", "test top-1", "test top-5", "paper top-1"], rows), "",
             f"Frozen features (null class, unmasked tokens, mean over tokens) of the first {s['probe_train']} train "
             f"and {s['probe_test']} test images; block and L2 strength chosen on a held-out 10% of those train "
             "images, the test images scored once.", ""]
    if "flip" in res and "unconditional" in res:
        gap, two_se, said = probe_verdict(res["flip"], res["unconditional"], s["probe_test"])
        lines += [f"Unconditional minus conditional test top-1 here: {gap:+.1f} points, two standard errors "
                  f"± {two_se:.1f} (paper: +0.8): {said}.", ""]
    return lines


# how the report names each training-codes arm
CODE_NAMES = {"threshold-codes": "threshold [p > 1/2] (the shipped model's)",
              "bernoulli-codes": "Bernoulli draw of a random flip (the authors' train_ddp.py)"}


def codes_verdict(res: dict, n_test: int) -> str:
    """Which training codes the comparison favours: by FD (apart only beyond the seeds' ranges), then by the probe
    (apart only beyond two standard errors); 'neither' when both are within them."""
    threshold, bernoulli = res["threshold-codes"], res["bernoulli-codes"]
    if apart(threshold, bernoulli):
        return "bernoulli" if bernoulli["fd"] < threshold["fd"] else "threshold"
    gap, two_se, _ = probe_verdict(threshold["probe"], bernoulli["probe"], n_test)
    if abs(gap) > two_se:
        return "bernoulli" if gap > 0 else "threshold"
    return "neither"


def codes_section(res: dict, s: dict) -> list[str]:
    rows = [[CODE_NAMES[name], *quality_cells(r), _pct(r["probe"]["test"]["top1"]), str(r["probe"]["layer"]),
             _num(r["train"]["loss"], ".4f"), _num(stage_time(r["train"])[1] / 60, ".0f")] for name, r in res.items()]
    lines = [f"## (g) Training codes: threshold vs Bernoulli draws (tiny-32 from scratch, {s['codes_steps']} steps "
             "each)", "",
             *table(["training codes", *QUALITY, "probe test top-1", "probe block", "held-out loss",
                     "train CPU min"], rows), "",
             f"Both models: the same initialisation and batches (seed {s['seed']}), batch {s['batch_size']}, AdamW lr "
             f"{s['lr']:g} with {s['warmup']} warmup steps, then a cosine decay to zero at step {s['codes_steps']}, "
             f"EMA {s['ema']}; the final EMA model is sampled ({s['codes_precision']}, the reference model's sampling "
             "settings) and probed as in (d). The held-out loss reads the threshold codes of the last "
             f"{s['heldout']} train images for both, so it favours the model trained on them. A Bernoulli draw "
             "flips the bits the tokenizer is unsure of at every step, and the random flip doubles the images; the "
             "model learns the codes' distribution rather than one code per image.", ""]
    if len(res) == 2:
        said = codes_verdict(res, s["probe_test"])
        gap, two_se, _ = probe_verdict(res["threshold-codes"]["probe"], res["bernoulli-codes"]["probe"],
                                       s["probe_test"])
        lines += [f"Ranking by FD: {ranking(res)}; probe, Bernoulli minus threshold test top-1: {gap:+.1f} points "
                  f"(two standard errors ± {two_se:.1f}). Verdict: " + (
                      "neither kind of codes is apart from the other, by FD over the seeds or by the probe over its "
                      "test images." if said == "neither" else
                      f"{said} codes are better here, at this budget (FD first, then the probe)."), ""]
    return lines


def time_section(res: list[dict], image_prefix: str) -> list[str]:
    iters = sorted({r["sampling"]["num_iter"] for r in res})
    steps = sorted({r["sampling"]["diffusion_steps"] for r in res})
    cell = {(r["sampling"]["num_iter"], r["sampling"]["diffusion_steps"]): r for r in res}
    rows = [[f"I = {i}", *(f"{_spread(cell[i, s])}, {cell[i, s]['cpu_seconds_per_image']:.3f} s"
                           if (i, s) in cell else "—" for s in steps)] for i in iters]
    return ["## (e) FD vs time: sampling iterations I x diffusion steps S (reference model; paper's Figure 3)", "",
            *table(["FD mean (range), CPU s / image", *(f"S = {s}" for s in steps)], rows), "",
            f"![FD vs seconds per image]({image_prefix}ablations_time.png)", ""]


def fd_best(res: list[dict]) -> dict:
    return min(res, key=lambda r: r["fd"])


def order_name(sampling: dict) -> str:
    """An order, with its Gumbel temperature where the order reads it: "random", "entropy g=1"."""
    return sampling["order"] if sampling["order"] == "random" else f"{sampling['order']} g={sampling['gumbel']:g}"


def order_label(r: dict) -> str:
    """A guidance point's order name, with its precision where it is not the study's bfloat16 (the order study
    samples in float32)."""
    sampling = r["sampling"]
    name = order_name(sampling)
    return name if sampling.get("precision", "bfloat16") == "bfloat16" else f"{name}, {sampling['precision']}"


def guidance_section(res: list[dict], image_prefix: str) -> list[str]:
    best = fd_best(res)
    rows = [[f"**{r['sampling']['cfg']:g}**" if r is best else f"{r['sampling']['cfg']:g}", order_label(r),
             *quality_cells(r)] for r in sorted(res, key=lambda r: (order_label(r), r["sampling"]["cfg"]))]
    tied = [r for r in res if r is not best and not apart(r, best)]
    ref = best["reference"]
    cfgs: dict[str, list[str]] = {}
    for r in sorted(res, key=lambda r: r["sampling"]["cfg"]):
        cfgs.setdefault(order_label(r), []).append(f"{r['sampling']['cfg']:g}")
    scored = "; ".join(f"{label} at CFG {', '.join(values)}" for label, values in cfgs.items())
    return ["## (f) Guidance: CFG scale (reference model; the paper's CFG figure)", "",
            "The random order, and the FD-best certainty-ordered arm of (a) at its temperature, at each CFG scale "
            f"scored so far: {scored}.", "",
            *table(["CFG", "order", *QUALITY], rows), "",
            f"FD-best: CFG {best['sampling']['cfg']:g}, {order_label(best)} (FD "
            f"{_spread(best)}); {len(tied)} other point(s) within its seeds' ranges. Real test images against the "
            f"train images: precision {ref['precision']:.2f}, recall {ref['recall']:.2f}, class accuracy "
            f"{_pct(ref['class_accuracy_test'])}.", "",
            f"![FD, precision and recall against CFG]({image_prefix}ablations_guidance.png)", ""]


def sampling_label(sampling: dict) -> str:
    """An order study setting with its I and S: "random, I = 10, S = 10"."""
    return f"{order_name(sampling)}, I = {sampling['num_iter']}, S = {sampling['diffusion_steps']}"


def defaults_section(res: dict) -> list[str]:
    """(h): the rule's choice of the shipped model's recommended settings, and whether it holds with every seed."""
    chosen, best = res["scored"], res["best"]
    cells = "; ".join(f"I = {i}, S = {s}" for i, s in res["steps"])
    verdict = ("within that range: these are the rule's recommended settings" if res["holds"] else
               "outside that range: the rule's choice does not hold here, so the next candidate is to be scored")
    return ["## (h) The shipped model's recommended settings", "",
            "One rule: among the settings whose FD mean lies within the FD-best one's seed range, the fastest (CPU s "
            f"/ image). Orders, (a): within the range of {res['best_arm']}: {', '.join(res['order'])} (fastest first). "
            f"Iterations and diffusion steps, (e): {cells}. Both choices together, at the study's CFG "
            f"{chosen['sampling']['cfg']:g} and in the order study's precision ({res['chosen']['precision']}), scored "
            "with every seed:", "",
            *table(["settings", *QUALITY], [[sampling_label(res["chosen"]), *quality_cells(chosen)],
                                           [f"{res['best_arm']} (FD-best of (a))", *quality_cells(best)]]), "",
            f"{sampling_label(res['chosen'])}: FD {chosen['fd']:.2f} against {res['best_arm']}'s range "
            f"{best['fd_range'][0]:.2f}–{best['fd_range'][1]:.2f}, {verdict}.", ""]


def untimed_note(names: list[str]) -> str:
    whose = "its" if len(names) == 1 else "their"
    return (f"; the wall-clock of {', '.join(names)}: {whose} last invocation only, as rounds were not timed yet"
            if names else "")


def last_invocation(minutes: float) -> str:
    return ("the last invocation only read stored results" if minutes < 1
            else f"the last invocation took {minutes:.0f} min")


def report_markdown(summary: dict, meta: dict, image_prefix: str = "") -> str:
    """The whole report; ``image_prefix`` is where the PNGs are relative to the Markdown file."""
    s = meta["settings"]
    lines = ["# Ablations on Fashion-MNIST (docs/method.md §8)", "",
             f"`{meta['command']}`: every sampling setting scored on {s['num_samples']} class-balanced samples for "
             f"each of {s['seeds']} sampling seeds ({s['seed']}, {s['seed'] + 1}, ...), {s['precision']} sampling; "
             f"reference model: {s['model'] or 'the shipped one'}, sampled with the study's base settings "
             f"({meta['sampling_line']}; its recommended ones when the study began, now chosen by (h)) unless a table "
             "varies one; from-scratch models: tiny-32 at batch "
             f"{s['batch_size']}, AdamW lr {s['lr']:g} (warmup {s['warmup']}, then constant), EMA {s['ema']}, seed "
             f"{s['seed']}, on the shipped tokenizer's codes less the last {s['heldout']} train images, which give "
             f"the held-out loss every {s['eval_every']} steps (stop after {s['patience']} evaluations without a new "
             f"best, at most {s['max_steps']} steps). {meta['machine']}; {meta['cpu_minutes']:.0f} min of process "
             f"CPU time and {meta['compute_minutes']:.0f} min wall-clock summed over all stages (a training resumed "
             f"across invocations counts all its rounds{untimed_note(meta.get('untimed', []))}; "
             f"{last_invocation(meta['wall_minutes'])}).", "",
             "FD: Fréchet distance to the train images in the features of the project's Fashion-MNIST CNN (lower is "
             f"better; {s['num_samples']} real test images score {_num(meta.get('real_fd'))} at the same count: "
             "the floor), mean over seeds with the range (min–max). Class accuracy: the CNN's prediction equals the "
             "asked-for class. Precision / recall: k-NN manifolds (k = 3). CPU s / image: sampling + decoding, "
             "process CPU time. The paper's numbers are FID-50k of BiGR-L on ImageNet 256×256: compare rankings, "
             "not values.", ""]
    if meta.get("missing"):
        lines += [f"Not yet scored, so left out ({len(meta['missing'])}; the first absent result of each): "
                  + ", ".join(f"`{name}`" for name in meta["missing"]) + ".", ""]
    lines += claims_section(summary, s)
    if "order" in summary:
        lines += order_section(summary["order"], AUTHORS_GUMBEL, image_prefix)
    if "objective" in summary:
        lines += objective_section(summary["objective"], s, image_prefix)
    if "bits" in summary:
        lines += bits_section(summary["bits"])
    if "probe" in summary:
        lines += probe_section(summary["probe"], s)
    if "time" in summary:
        lines += time_section(summary["time"], image_prefix)
    if "guidance" in summary:
        lines += guidance_section(summary["guidance"], image_prefix)
    if "codes" in summary:
        lines += codes_section(summary["codes"], s)
    if "defaults" in summary:
        lines += defaults_section(summary["defaults"])
    if any(k in summary for k in ("order", "objective", "bits", "probe")):
        lines += [f"![FD per ablation]({image_prefix}ablations_bars.png)", ""]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _error(results: list[dict], metric: str = "fd") -> list[list[float]]:
    """matplotlib's yerr: the distance from each mean down to the seeds' min and up to their max."""
    return [[r[metric] - r[f"{metric}_range"][0] for r in results],
            [r[f"{metric}_range"][1] - r[metric] for r in results]]


def plot_time(results: list[dict], path: Path) -> None:
    """FD (mean, bars: range over seeds) against CPU seconds per image, one line per S, points labelled by I. The
    FD axis starts at 0."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in sorted({r["sampling"]["diffusion_steps"] for r in results}):
        line = sorted((r for r in results if r["sampling"]["diffusion_steps"] == s),
                      key=lambda r: r["cpu_seconds_per_image"])
        ax.errorbar([r["cpu_seconds_per_image"] for r in line], [r["fd"] for r in line], yerr=_error(line),
                    fmt="o-", capsize=3, label=f"S = {s}")
        for r in line:
            ax.annotate(f"I={r['sampling']['num_iter']}", (r["cpu_seconds_per_image"], r["fd"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_ylim(0, 1.15 * max(r["fd_range"][1] for r in results))
    ax.set_xlabel("CPU seconds per image")
    ax.set_ylabel("FD (own-classifier features)")
    ax.set_title("FD vs sampling time (reference model)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_guidance(results: list[dict], path: Path) -> None:
    """FD, precision and recall (means, bars: range over seeds) against the CFG scale, one line per order (and
    temperature); real test images' precision and recall dashed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, metric, label in zip(axes, ("fd", "precision", "recall"), ("FD ↓", "precision", "recall"), strict=True):
        for name in sorted({order_label(r) for r in results}):
            line = sorted((r for r in results if order_label(r) == name), key=lambda r: r["sampling"]["cfg"])
            ax.errorbar([r["sampling"]["cfg"] for r in line], [r[metric] for r in line], yerr=_error(line, metric),
                        fmt="o-", capsize=3, label=name)
        if metric != "fd":
            ax.axhline(results[0]["reference"][metric], color="gray", ls="--", label="real test images")
        ax.set_xlabel("CFG scale")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(bottom=0)
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_order(order: dict, path: Path) -> None:
    """FD (one seed) against the Gumbel temperature for each certainty order, the random order's FD (mean, its
    range shaded) as the infinite-temperature limit. Temperature 0 sits at the left edge of the log axis."""
    sweep = order["sweep"]
    positive = [r["sampling"]["gumbel"] for results in sweep.values() for r in results if r["sampling"]["gumbel"] > 0]
    if not positive:
        return
    zero_at = min(positive) / 3
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, results in sweep.items():
        line = sorted(results, key=lambda r: r["sampling"]["gumbel"])
        ax.plot([r["sampling"]["gumbel"] or zero_at for r in line], [r["fd"] for r in line], "o-",
                label=f"{name} order")
    if "random" in order["arms"]:
        r = order["arms"]["random"]
        ax.axhline(r["fd"], color="k", ls="--", lw=1, label="random order (3 seeds)")
        ax.axhspan(*r["fd_range"], color="k", alpha=0.1)
    ax.axvline(AUTHORS_GUMBEL, color="grey", ls=":", lw=1, label="the authors' temperature")
    ax.set_xscale("log")
    ax.set_xticks([zero_at, *sorted(set(positive))], ["0", *(f"{g:g}" for g in sorted(set(positive)))])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("Gumbel temperature g")
    ax.set_ylabel("FD (own-classifier features)")
    ax.set_title("FD of the certainty orders against the temperature (one seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def trainings(summary: dict) -> dict:
    """{label: training record} of the from-scratch models: the objectives' and the unconditional probe's."""
    out = {o: r["train"] for o, r in summary.get("objective", {}).items()}
    if "train" in summary.get("probe", {}).get("unconditional", {}):
        out["flip, unconditional"] = summary["probe"]["unconditional"]["train"]
    return out


def plot_training(records: dict, path: Path) -> None:
    """Held-out BCE of the implied z_0 (comparable across objectives) against training steps, one line per
    from-scratch model, its sampled step marked; the right panel is the last two thirds of the steps, where a
    training still improving shows its slope."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    last = max(row["step"] for train in records.values() for row in train["history"])
    for ax, first in zip(axes, (0, last / 3), strict=True):
        for label, train in records.items():
            rows = [row for row in train["history"] if row["step"] >= first]
            line, = ax.plot([row["step"] for row in rows], [row["bce"] for row in rows], label=label)
            ax.plot(train["best_step"], train["heldout_bce"], "o", color=line.get_color())
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out BCE of z_0")
    axes[0].set_title("From-scratch trainings (dot: the step sampled)")
    axes[1].set_title(f"From step {last / 3:.0f} on")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(summary: dict, path: Path, n_test: int) -> None:
    """One panel per ablation: our FD (mean, bars: range over seeds) or the probe's test top-1 (bars: one standard
    error over its n_test images) as bars, with our number and the paper's written above each."""
    panels = []
    for stage, title in (("order", "sampling order"), ("objective", "transcoder objective"), ("bits", "final bits")):
        if stage in summary:
            res = summary[stage]["arms"] if stage == "order" else summary[stage]
            paper = ({k: PAPER["order"][paper_key(k)] for k in res if paper_key(k) in PAPER["order"]}
                     if stage == "order" else PAPER[stage])
            panels.append((title, {k.replace(" g=", "\ng="): v["fd"] for k, v in res.items()},
                           {k.replace(" g=", "\ng="): v for k, v in paper.items()}, "FD", _error(list(res.values())),
                           ".2f"))
    if "probe" in summary:
        names = {"flip": "cond.", "unconditional": "uncond.", "shipped": "reference", "pixels": "pixels"}
        top1 = [v["test"]["top1"] for v in summary["probe"].values()]
        se = [top1_se(p, n_test) for p in top1]
        panels.append(("linear probe", {names[k]: 100 * p for k, p in zip(summary["probe"], top1, strict=True)},
                       {names[k]: v for k, v in PAPER["probe"].items()}, "test top-1 (%)", [se, se], ".1f"))
    if not panels:
        return
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for ax, (title, ours, paper, ylabel, yerr, fmt) in zip(axes[0], panels, strict=True):
        bars = ax.bar(list(ours), list(ours.values()), yerr=yerr, capsize=3, color="tab:blue")
        for bar, key, up in zip(bars, ours, yerr[1], strict=True):
            text = format(bar.get_height(), fmt) + (f"\npaper {paper[key]:g}" if key in paper else "")
            # above the error bar's cap, not across it
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height() + up), ha="center", va="bottom",
                        fontsize=7, textcoords="offset points", xytext=(0, 2))
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.3 * max(v + up for v, up in zip(ours.values(), yerr[1], strict=True)))
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(summary: dict, meta: dict, out: Path, publish: bool = False, repo: Path = REPO) -> list[Path]:
    """<out>/ablations.md, the PNGs and summary.json; with ``publish`` also benchmarks/ablations.md and docs/*.png.
    Returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "ablations.md"]
    written[0].write_text(report_markdown(summary, meta))
    if "order" in summary and summary["order"]["sweep"]:
        plot_order(summary["order"], out / "ablations_order.png")
        written.append(out / "ablations_order.png")
    if "time" in summary:
        plot_time(summary["time"], out / "ablations_time.png")
        written.append(out / "ablations_time.png")
    if "guidance" in summary:
        plot_guidance(summary["guidance"], out / "ablations_guidance.png")
        written.append(out / "ablations_guidance.png")
    if "objective" in summary:
        plot_training(trainings(summary), out / "ablations_training.png")
        written.append(out / "ablations_training.png")
    if any(k in summary for k in ("order", "objective", "bits", "probe")):
        plot_bars(summary, out / "ablations_bars.png", meta["settings"]["probe_test"])
        written.append(out / "ablations_bars.png")
    (out / "summary.json").write_text(json.dumps({"meta": meta, **summary}, indent=2))
    if publish:
        (repo / "benchmarks" / "ablations.md").write_text(report_markdown(summary, meta, image_prefix="../docs/"))
        published = [repo / "benchmarks" / "ablations.md"]
        for png in written[1:]:
            shutil.copyfile(png, repo / "docs" / png.name)
            published.append(repo / "docs" / png.name)
        written += published
    return written


def stage_time(result: dict) -> tuple[float, float]:
    """A result's own (wall, process CPU) seconds. A training counts its rounds itself, which a resumed one needs
    (the stage's clocks saw only the last invocation); the larger of the two, since a training done in one
    invocation also spent time outside its rounds (building the model). Any other stage has its stage's."""
    wall, cpu = result.get("seconds", 0.0), result.get("stage_cpu_seconds", 0.0)
    if "history" in result:
        rounds = result["history"]
        wall = max(wall, sum(r.get("seconds", 0.0) for r in rounds))
        cpu = max(cpu, sum(r["cpu_seconds"] for r in rounds))
    return wall, cpu


def untimed_trainings(results: list[dict]) -> list[str]:
    """The trainings with rounds logged before rounds were timed: their wall-clock is their last invocation's."""
    return [r["objective"] + (" (unconditional)" if r["unconditional"] else "") for r in results
            if "history" in r and any("seconds" not in row for row in r["history"])]


