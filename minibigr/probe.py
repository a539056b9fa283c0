"""Linear probe of BiGR representations (SPEC §1.6).

    feats, labels = extract_features(model, tokenizer, dataset, layers)   # frozen features per block
    result = linear_probe(train_feats, train_labels, test_feats, test_labels)

The features of a block are BiGR.features(tokens, layer): the backbone on an image's unmasked tokens
(deterministic encoding) with the null class, hidden states after that block, averaged over tokens. A
linear classifier (softmax cross-entropy + L2, full-batch L-BFGS) is fitted on standardised features.
The block and the L2 strength are chosen on a held-out 10% of the train split, then the classifier is
refitted on the whole train split and scored once on the test split, so the test split never influences
any choice. The same classifier, chosen the same way, on raw pixels is the baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


# ----------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def block_features(model, tokens: torch.Tensor, layers: Sequence[int],
                   labels: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
    """model.features(tokens, layer, labels) for several blocks from one backbone pass.  -> {layer: (B, d)}.

    Forward hooks read the hidden states after each wanted block while the pass runs up to the deepest.
    labels (B,) puts those classes in the class token instead of the null class (as model.features does).
    """
    n_layer = model.config.n_layer
    layers = sorted({layer % n_layer for layer in layers})
    out: dict[int, torch.Tensor] = {}
    hooks = [model.backbone.layers[i].register_forward_hook(
        lambda _module, _inputs, x, i=i: out.__setitem__(i, x[:, 1:].float().mean(1))) for i in layers]
    try:
        model.features(tokens, layer=layers[-1], labels=labels)
    finally:
        for hook in hooks:
            hook.remove()
    return out


@torch.no_grad()
def extract_features(model, tokenizer, dataset, layers: Sequence[int], batch_size: int = 250,
                     limit: int | None = None, desc: str = "features") -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Frozen features of the first ``limit`` images of ``dataset`` at every block in ``layers``.

    Returns ({layer: (n, d) float32 on the CPU}, labels (n,)).
    """
    from .train import bits_to_tokens, get_batch

    device = next(model.parameters()).device
    n = len(dataset) if limit is None else min(limit, len(dataset))
    feats: dict[int, list[torch.Tensor]] = {}
    labels = []
    for start in tqdm(range(0, n, batch_size), desc=desc, dynamic_ncols=True, leave=False):
        x, y = get_batch(dataset, torch.arange(start, min(n, start + batch_size)))
        tokens = bits_to_tokens(tokenizer.encode(x.to(device), deterministic=True))
        for layer, f in block_features(model, tokens, layers).items():
            feats.setdefault(layer, []).append(f.cpu())
        labels.append(torch.as_tensor(y))
    return {layer: torch.cat(f) for layer, f in feats.items()}, torch.cat(labels)


def pixel_features(dataset, limit: int | None = None, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw pixels as features: ((n, C*H*W), labels (n,))."""
    from .train import get_batch

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
    scores = {}
    for layer, x in feats.items():
        scores[layer] = {}
        for l2 in l2s:
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


def probe_model(model, tokenizer, train, test, layers: Sequence[int] | None = None, limit: int | None = None,
                batch_size: int = 250, holdout: float = 0.1, seed: int = 0, **fit) -> dict:
    """The whole probe: features of both splits (first ``limit`` images of each), the chosen block's test
    top-1 / top-5, and the same classifier on raw pixels.  Returns the linear_probe dict plus "pixels"."""
    layers = list(range(model.config.n_layer)) if layers is None else list(layers)
    device = next(model.parameters()).device      # the classifiers are fitted where the model runs (a GPU: seconds)
    train_feats, train_y = extract_features(model, tokenizer, train, layers, batch_size, limit, "train features")
    test_feats, test_y = extract_features(model, tokenizer, test, layers, batch_size, limit, "test features")
    train_feats, test_feats = ({k: v.to(device) for k, v in f.items()} for f in (train_feats, test_feats))
    train_y, test_y = train_y.to(device), test_y.to(device)
    C = int(getattr(train, "num_classes", 0)) or None
    result = linear_probe(train_feats, train_y, test_feats, test_y, holdout, seed, C, **fit)
    px_train, px_train_y = (t.to(device) for t in pixel_features(train, limit))
    px_test, px_test_y = (t.to(device) for t in pixel_features(test, limit))
    pixels = linear_probe({"pixels": px_train}, px_train_y, {"pixels": px_test}, px_test_y, holdout, seed, C, **fit)
    result["pixels"] = {"heldout": pixels["heldout"]["pixels"], "l2": pixels["l2"], "test": pixels["test"]}
    result["train_images"], result["test_images"] = len(train_y), len(test_y)
    return result


def format_probe(result: dict) -> str:
    """The probe result as a small text table."""
    lines = ["block    held-out top-1 (best l2)"]
    for layer, scores in sorted(result["heldout_l2"].items()):
        l2 = max(scores, key=scores.get)
        lines.append(f"{layer:<8} {scores[l2]:.4f} ({l2:g})" + ("   <- chosen" if layer == result["layer"] else ""))
    lines.append(f"{'pixels':<8} {result['pixels']['heldout']:.4f} ({result['pixels']['l2']:g})")
    lines.append(f"test ({result['test_images']} images; classifier fitted on {result['train_images']} train images)")
    for name, scores in ((f"block {result['layer']}", result["test"]), ("pixels", result["pixels"]["test"])):
        lines.append(f"  {name:<9} top-1 {scores['top1']:.4f}   top-5 {scores['top5']:.4f}")
    return "\n".join(lines)
