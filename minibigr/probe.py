"""Linear probe of BiGR representations (docs/method.md §6).

    feats, labels = extract_features(pipe, dataset, layers)               # frozen features per block
    result = linear_probe(train_feats, train_labels, test_feats, test_labels)

The features of a block are BiGR.features(tokens, layer): the backbone on an image's unmasked tokens
(deterministic encoding) with the null class, hidden states after that block, averaged over tokens. A
linear classifier (softmax cross-entropy + L2, full-batch L-BFGS) is fitted on standardised features.
The block and the L2 strength are chosen on a held-out 10% of the train split, then the classifier is
refitted on the whole train split and scored once on the test split, so the test split never influences
any choice. The same classifier, chosen the same way, on raw pixels is the baseline.

Pooling is a third choice made on the held-out split. Besides the paper's mean over all tokens ("mean"),
the probe tries "RxR": the mean over each cell of an R x R split of the token grid, cells concatenated
(R^2 d features). Why: the global mean throws away where things are, which a linear classifier on pixels
keeps; on small aligned images (Fashion-MNIST: 8 x 8 tokens, d = 256) the 2 x 2 cells hold that coarse
layout in 1024 numbers, as many as the pixel baseline's 32 x 32. The paper's pooling is always reported too, so
numbers stay comparable with the paper's (docs/method.md §8).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import get_batch, iterate_batches
from .pipeline import BiGRPipeline


# ----------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------
def pool_tokens(h: torch.Tensor, regions: int = 1) -> torch.Tensor:
    """Hidden states of the image tokens (B, N, d) -> (B, d * regions^2).

    regions = 1 is the paper's feature, the mean over all N tokens. regions = R averages each cell of an
    R x R split of the sqrt(N) x sqrt(N) token grid (cells of equal size, so a coarser split is the mean
    of a finer one: see regroup) and lays the cells out channel-major: (d, R, R) flattened.
    """
    h = h.float()
    if regions == 1:
        return h.mean(1)
    B, N, d = h.shape
    side = grid_side(N, regions)
    return F.avg_pool2d(h.transpose(1, 2).reshape(B, d, side, side), side // regions).flatten(1)


def regroup(features: torch.Tensor, regions: int, coarser: int) -> torch.Tensor:
    """Features pooled over regions x regions cells (n, d * regions^2) -> over coarser x coarser cells
    (n, d * coarser^2), coarser dividing regions; coarser = 1 is the mean over all tokens."""
    if regions % coarser:
        raise ValueError(f"{coarser}x{coarser} cells cannot be made from {regions}x{regions} cells")
    n = len(features)
    grid = features.reshape(n, -1, regions, regions)
    return F.avg_pool2d(grid, regions // coarser).reshape(n, -1)


def grid_side(num_tokens: int, regions: int) -> int:
    """The side of the square token grid, checked to split into regions x regions equal cells."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens or side % regions:
        raise ValueError(f"{regions}x{regions} pooling does not split {num_tokens} tokens into equal cells: "
                         f"it needs a square token grid whose side it divides")
    return side


def parse_pools(spec: str, num_tokens: int) -> list[int]:
    """"mean,2x2" -> [1, 2]: the region counts per side to choose from (each must split the token grid)."""
    pools = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        rows, _, cols = name.partition("x")
        if name == "mean":
            pools.append(1)
        elif rows.isdigit() and rows == cols and int(rows) > 0:
            pools.append(int(rows))
        else:
            raise ValueError(f"--pool takes 'mean' and square grids like '2x2', got {name!r}")
    if not pools:
        raise ValueError(f"--pool {spec!r} names no pooling, so it does not split the tokens at all: "
                         f"give 'mean' and/or grids like '2x2'")
    for regions in pools:
        if regions > 1:
            grid_side(num_tokens, regions)
    return sorted(set(pools))


def pool_name(regions: int) -> str:
    return "mean" if regions == 1 else f"{regions}x{regions}"


@torch.no_grad()
def block_features(model, tokens: torch.Tensor, layers: Sequence[int], labels: torch.Tensor | None = None,
                   regions: int = 1) -> dict[int, torch.Tensor]:
    """model.features(tokens, layer, labels) for several blocks from one backbone pass.  -> {layer: (B, d)}.

    Forward hooks read the hidden states after each wanted block while the pass runs up to the deepest.
    labels (B,) puts those classes in the class token instead of the null class (as model.features does).
    regions > 1 pools over cells of the token grid instead (pool_tokens): (B, d * regions^2).
    """
    n_layer = model.config.n_layer
    layers = sorted({layer % n_layer for layer in layers})
    out: dict[int, torch.Tensor] = {}
    hooks = [model.backbone.layers[i].register_forward_hook(
        lambda _module, _inputs, x, i=i: out.__setitem__(i, pool_tokens(x[:, 1:], regions))) for i in layers]
    try:
        model.features(tokens, layer=layers[-1], labels=labels)
    finally:
        for hook in hooks:
            hook.remove()
    return out


@torch.no_grad()
def extract_features(pipe: BiGRPipeline, dataset, layers: Sequence[int], batch_size: int = 250,
                     limit: int | None = None, desc: str = "features",
                     regions: int = 1) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Frozen features of the first ``limit`` images of ``dataset`` at every block in ``layers``.

    Returns ({layer: (n, d * regions^2) float32 on the CPU}, labels (n,)).
    """
    n = len(dataset) if limit is None else min(limit, len(dataset))
    feats: dict[int, list[torch.Tensor]] = {}
    labels = []
    for x, y in iterate_batches(dataset, torch.arange(n), batch_size, desc=desc):
        for layer, f in block_features(pipe.model, pipe.encode(x), layers, regions=regions).items():
            feats.setdefault(layer, []).append(f.cpu())
        labels.append(torch.as_tensor(y))
    return {layer: torch.cat(f) for layer, f in feats.items()}, torch.cat(labels)


def pixel_features(dataset, limit: int | None = None, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw pixels as features: ((n, C*H*W), labels (n,))."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    xs, ys = zip(*(get_batch(dataset, torch.arange(s, min(n, s + batch_size))) for s in range(0, n, batch_size)),
                 strict=True)
    return torch.cat(xs).flatten(1), torch.cat([torch.as_tensor(y) for y in ys])


# ----------------------------------------------------------------------------------------------
# The linear classifier
# ----------------------------------------------------------------------------------------------
L2S = (1e-4, 1e-3, 1e-2)      # L2 strengths tried on the held-out split (pixels overfit with the smallest)


@dataclass
class LinearClassifier:
    """logits = ((x - mean) / std) W + b."""

    mean: torch.Tensor     # (d,)
    std: torch.Tensor      # (d,)
    weight: torch.Tensor   # (d, C)
    bias: torch.Tensor     # (C,)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - self.mean) / self.std) @ self.weight + self.bias


def fit_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None, l2: float = 1e-3,
               max_iter: int = 200) -> LinearClassifier:
    """Softmax regression on standardised features: minimise mean CE + l2/2 ||W||^2 with full-batch
    L-BFGS (strong Wolfe line search) from zero weights, which is deterministic.  x (n, d), y (n,)."""
    if x.dim() != 2 or y.shape != (len(x),):
        raise ValueError(f"features must be (n, d) with labels (n,), got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.float(), y.long()
    C = int(y.max()) + 1 if num_classes is None else num_classes
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    weight = torch.zeros(x.shape[1], C, device=x.device, requires_grad=True)
    bias = torch.zeros(C, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight + bias, y) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearClassifier(mean, std, weight.detach(), bias.detach())


def topk_accuracy(logits: torch.Tensor, y: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{"top1": ..., "top5": ...}: share of rows whose label is among the k largest logits."""
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    return {f"top{k}": float((ranked[:, :k] == y[:, None]).any(1).float().mean()) for k in ks}


def holdout_split(n: int, holdout: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of range(n) into (fit indices, held-out indices)."""
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_out = max(1, round(n * holdout))
    return perm[n_out:], perm[:n_out]


def select_layer(feats: dict, labels: torch.Tensor, holdout: float = 0.1, seed: int = 0, num_classes=None,
                 l2s: Sequence[float] = L2S, max_iter: int = 200) -> tuple[int, float, dict]:
    """The block (and L2 strength) whose features give the best held-out top-1, from the train split only.

    feats {layer: (n, d)} and labels (n,) of the train split. Returns (best layer, its l2,
    {layer: {l2: held-out top-1}}); ties go to the first block / l2 in order.
    """
    fit_idx, out_idx = holdout_split(len(labels), holdout, seed)
    scores = {layer: {} for layer in feats}
    grid = [(layer, l2) for layer in feats for l2 in l2s]
    # disable=None: a bar on a terminal only, not in notebooks or logs
    for layer, l2 in tqdm(grid, desc="held-out fits", dynamic_ncols=True, leave=False, disable=None):
        x = feats[layer]
        clf = fit_linear(x[fit_idx], labels[fit_idx], num_classes, l2=l2, max_iter=max_iter)
        scores[layer][l2] = topk_accuracy(clf.logits(x[out_idx]), labels[out_idx], ks=(1,))["top1"]
    layer, l2 = max(((layer, l2) for layer in scores for l2 in scores[layer]), key=lambda k: scores[k[0]][k[1]])
    return layer, l2, scores


def linear_probe(train_feats: dict, train_labels: torch.Tensor, test_feats: dict, test_labels: torch.Tensor,
                 holdout: float = 0.1, seed: int = 0, num_classes: int | None = None, l2s: Sequence[float] = L2S,
                 max_iter: int = 200) -> dict:
    """Choose the block and L2 strength on a held-out part of the train split, refit on the whole train
    split, test once.

    Returns {"layer", "l2": the choice, "heldout": {layer: best held-out top-1}, "heldout_l2": {layer: {l2:
    held-out top-1}}, "test": {"top1", "top5"}}.
    """
    C = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    layer, l2, scores = select_layer(train_feats, train_labels, holdout, seed, C, l2s, max_iter)
    clf = fit_linear(train_feats[layer], train_labels, C, l2=l2, max_iter=max_iter)
    return {"layer": layer, "l2": l2, "heldout": {k: max(v.values()) for k, v in scores.items()},
            "heldout_l2": scores, "test": topk_accuracy(clf.logits(test_feats[layer]), test_labels)}


def parse_layers(spec: str, n_layer: int) -> list[int]:
    """"all" -> every block; "1,3,-1" -> those blocks (0-based, negative from the end)."""
    if spec == "all":
        return list(range(n_layer))
    try:
        layers = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--layers must be 'all' or comma-separated block numbers, got {spec!r}") from None
    bad = [i for i in layers if not -n_layer <= i < n_layer]
    if bad or not layers:
        raise ValueError(f"layers {bad or spec!r} out of range: this model has blocks 0..{n_layer - 1}")
    return sorted({i % n_layer for i in layers})


def probe_model(pipe: BiGRPipeline, train, test, layers: Sequence[int] | None = None, pools: Sequence[int] = (1, 2),
                limit: int | None = None, batch_size: int = 250, holdout: float = 0.1, seed: int = 0, **fit) -> dict:
    """The whole probe: features of both splits (first ``limit`` images of each), one linear_probe per
    pooling (region counts per side, 1 = the paper's mean), the pooling whose best block scores highest
    on the held-out split, and the same classifier on raw pixels.

    Returns the chosen pooling's linear_probe dict plus "pool" (its name), "pools" ({name: linear_probe
    dict} for every pooling, the paper's "mean" among them when asked for) and "pixels".
    """
    layers = list(range(pipe.model.config.n_layer)) if layers is None else list(layers)
    pools = sorted(set(pools))
    fine = math.lcm(*pools)                       # extract once at the finest grid, average cells for the others
    device = pipe.device                          # the classifiers are fitted where the model runs (a GPU: seconds)
    train_feats, train_y = extract_features(pipe, train, layers, batch_size, limit, "train features", fine)
    test_feats, test_y = extract_features(pipe, test, layers, batch_size, limit, "test features", fine)
    train_y, test_y = train_y.to(device), test_y.to(device)
    C = int(getattr(train, "num_classes", 0)) or None
    results = {}
    for regions in pools:
        train_r, test_r = ({k: regroup(v, fine, regions).to(device) for k, v in f.items()}
                           for f in (train_feats, test_feats))
        results[pool_name(regions)] = linear_probe(train_r, train_y, test_r, test_y, holdout, seed, C, **fit)
    chosen = max(results, key=lambda name: max(results[name]["heldout"].values()))   # ties: the coarser pooling
    result = {**results[chosen], "pool": chosen, "pools": results}
    px_train, px_train_y = (t.to(device) for t in pixel_features(train, limit))
    px_test, px_test_y = (t.to(device) for t in pixel_features(test, limit))
    pixels = linear_probe({"pixels": px_train}, px_train_y, {"pixels": px_test}, px_test_y, holdout, seed, C, **fit)
    result["pixels"] = {"heldout": pixels["heldout"]["pixels"], "l2": pixels["l2"], "test": pixels["test"]}
    result["train_images"], result["test_images"] = len(train_y), len(test_y)
    return result


def format_probe(result: dict) -> str:
    """The probe result as a small text table: held-out top-1 per block and pooling, then the test split."""
    pools = result["pools"]
    lines = ["held-out top-1 (best l2)", f"{'block':<8} " + "".join(f"{name:<17}" for name in pools)]
    for layer in sorted(result["heldout_l2"]):
        cells = []
        for r in pools.values():
            scores = r["heldout_l2"][layer]
            l2 = max(scores, key=scores.get)
            cells.append(f"{scores[l2]:.4f} ({l2:g})".ljust(17))
        lines.append(f"{layer:<8} " + "".join(cells) + ("<- chosen" if layer == result["layer"] else ""))
    lines.append(f"{'pixels':<8} {result['pixels']['heldout']:.4f} ({result['pixels']['l2']:g})")
    lines.append(f"chosen on the held-out split: block {result['layer']}, {result['pool']} pooling")
    lines.append(f"test ({result['test_images']} images; classifier fitted on {result['train_images']} train images)")
    rows = [(f"block {r['layer']}, {name}", r["test"], name == result["pool"]) for name, r in pools.items()]
    for name, scores, chosen in rows + [("pixels", result["pixels"]["test"], False)]:
        lines.append(f"  {name:<16} top-1 {scores['top1']:.4f}   top-5 {scores['top5']:.4f}"
                     + ("   <- chosen" if chosen else ""))
    return "\n".join(lines)
