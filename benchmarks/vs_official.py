"""minibigr against the authors' algorithm, side by side: same weights, same settings, same thread count.

    python benchmarks/vs_official.py                      # both configs, sampling and training, one thread
    python benchmarks/vs_official.py --configs shipped --repeat 1
    python benchmarks/vs_official.py --device cuda        # adds the BiGR-L shape (random weights, bf16)
    python benchmarks/vs_official.py --bf16               # both sides under bf16 autocast (CPUs with native bf16)
    python benchmarks/vs_official.py --configs shipped --compile   # minibigr's training loss compiled
    python benchmarks/vs_official.py --device cuda --cuda-graphs  # minibigr's chain replayed from CUDA graphs

The authors' side is ``benchmarks/official_restated.py`` (their sampling loop and training step, with what
makes them fast or slow kept as it is), loaded with minibigr's weights through
``official.to_official_bigr``. Before timing, the script checks on each config that the two compute the
same thing:

- the backbone conditions h agree (max |difference| printed; float rounding only);
- with every random draw made deterministic (each bit is [p > 1/2], no Gumbel noise), the whole
  sampling loop gives identical tokens on both sides.

Then it times sampling (images/s, one ``generate`` call per repeat, best of ``--repeat``) and a training
step (forward, backward, AdamW step; steps/s, best of ``--repeat`` runs of ``--train-steps`` steps, after one
warm-up run; both sides mask the same numbers of tokens, spread over the schedule), the two sides taking turns, on

  shipped   the shipped Fashion-MNIST model (8 x 8 tokens, K = 16, d = 256): I = 10, S = 50, CFG 3,
            Gumbel 0.03, confidence order, batch 50; training batch 64
  16x16     the same width with 16 x 16 tokens and K = 24 (random weights): I = 20, S = 50, batch 8;
            training batch 32
  BiGR-L    (CUDA only) the published BiGR-L shape, random weights in bf16: I = 20, S = 100, CFG 3,
            batch 32; training batch 32

and prints a table with the ratios (minibigr / authors; > 1 means minibigr is faster).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # `python benchmarks/vs_official.py` from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.official_restated import OfficialBiGR  # noqa: E402
from benchmarks.timing import clock  # noqa: E402
from minibigr import BiGR, BiGRConfig, official, pretrained  # noqa: E402
from minibigr.backbone import ffn_hidden_dim  # noqa: E402
from minibigr.model import masked_counts, masked_probs, spread_mask_counts  # noqa: E402
from minibigr.sampler import sample_tokens  # noqa: E402

CONFIGS = {
    "shipped": dict(sampling=dict(num_iter=10, diffusion_steps=50, cfg=3.0, gumbel=0.03), batch=50, train_batch=64),
    "16x16": dict(sampling=dict(num_iter=20, diffusion_steps=50, cfg=3.0, gumbel=0.03), batch=8, train_batch=32),
    "BiGR-L": dict(sampling=dict(num_iter=20, diffusion_steps=100, cfg=3.0, gumbel=0.03), batch=32, train_batch=32),
}


def build(name: str) -> BiGR:
    """minibigr's model of a config: the shipped weights, or random ones (every layer non-zero)."""
    if name == "shipped":
        return pretrained("fashion-mnist").model
    config = (BiGRConfig.preset("wide-32", num_tokens=256, K=24) if name == "16x16"
              else BiGRConfig.preset("BiGR-L", K=24, num_classes=1000))
    model = BiGR(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():              # the zero-initialised layers too, so no path is trivial
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def restated(model: BiGR) -> OfficialBiGR:
    """The authors' model holding minibigr's weights (a strict load of the official layout)."""
    twin = OfficialBiGR(model.config).to(next(model.parameters()).device)
    twin.load_state_dict(official.to_official_bigr(model), strict=True)
    return twin.eval()


def threshold(p: torch.Tensor) -> torch.Tensor:
    return (p > 0.5).to(p.dtype)


def deterministic_tokens(model: BiGR, labels: torch.Tensor, num_iter: int, cfg: float, steps: int) -> torch.Tensor:
    """minibigr's sampling loop with every draw fixed: chain uniforms 1/2 (each move is [p > 1/2]), no Gumbel
    noise, final bits [p > 1/2]; confidence order as the authors'. The predictor is generate's, spelled out
    so that the chain's uniforms can be given."""
    B, N, K = len(labels), model.config.num_tokens, model.config.K
    settings = model.config.sampling.replace(num_iter=num_iter, cfg=cfg, diffusion_steps=steps, gumbel=0.0,
                                             order="confidence", deterministic=True)
    cond = torch.cat([model.backbone.embed_class(labels, B),
                      model.backbone.embed_class(torch.full_like(labels, model.null_class), B)])

    def predict(tokens, mask, i, chosen):       # confidence order: chosen is None
        h = model.backbone(tokens.repeat(2, 1, 1), cond, mask.repeat(2, 1))
        uniforms = torch.full((steps, int(mask.sum()), K), 0.5)
        return masked_probs(model.transcoder, h, mask, None, steps=steps, cfg=cfg, uniforms=uniforms)

    return sample_tokens(predict, torch.zeros(B, N, K), None, settings, gumbels=torch.zeros(num_iter, B, N))


@torch.no_grad()
def check(model: BiGR, twin: OfficialBiGR) -> tuple[float, bool]:
    """(max |h difference| of the backbone conditions, whether deterministic sampling gives identical tokens)."""
    c = model.config
    g = torch.Generator().manual_seed(1)
    tokens = (torch.rand(4, c.num_tokens, c.K, generator=g) < 0.5).float()
    labels = torch.arange(4) % c.num_classes
    mask = torch.rand(4, c.num_tokens, generator=g) < 0.5
    h_diff = float((model.backbone(tokens, labels, mask) - twin.conditions(tokens, labels, mask)).abs().max())
    ours = deterministic_tokens(model, labels, num_iter=4, cfg=3.0, steps=8)
    theirs = twin.generate(labels, num_iter=4, cfg_scale=3.0, gumbel_temp=0.0, steps=8, draw=threshold)
    return h_diff, bool(torch.equal(ours, theirs))


def timed_pair(ours, theirs, repeat: int, device: torch.device, warmup: bool) -> tuple[float, float]:
    """Best wall times of ``repeat`` calls of each, the two sides alternating (ours, theirs, ours, ...) so that a
    machine that speeds up or slows down during the run does not favour one side; one untimed call of each first
    if ``warmup``."""
    if warmup:
        ours(), theirs()
    times = [(clock(ours, device)[0], clock(theirs, device)[0]) for _ in range(repeat)]
    return min(t[0] for t in times), min(t[1] for t in times)


def trainer(loss_fn, module, counts: list[int], amp):
    """A closure running one training step per mask count: loss_fn(n_mask) (inside the ``amp`` context), backward,
    AdamW (the authors' optimiser settings)."""
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.02)

    def run():
        for n_mask in counts:
            with amp:
                loss = loss_fn(n_mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return run


def timed_training(model: BiGR, twin: OfficialBiGR, B: int, train_steps: int, repeat: int, g: torch.Generator,
                   amp, compile_loss: bool) -> tuple[float, float]:
    """Best seconds of ``train_steps`` training steps at batch B, (minibigr, authors'), after a warm-up run that also
    creates AdamW's state."""
    device = g.device
    tokens = (torch.rand(B, model.config.num_tokens, model.config.K, generator=g, device=device) < 0.5).float()
    labels = (torch.arange(B) % model.config.num_classes).to(device)
    model.train(), twin.train()
    loss = torch.compile(model.loss) if compile_loss else model.loss
    # minibigr's step costs more with more masked tokens and the authors' hardly changes: both sides take the same
    # counts, spread over the schedule, so a run of a few steps costs what the schedule costs on average
    counts = spread_mask_counts(model.config.num_tokens, train_steps)
    return timed_pair(
        trainer(lambda n: loss(tokens, labels, draws=model.loss_draws(B, g, device, n))[0], model, counts, amp),
        trainer(lambda n: twin.loss(tokens, labels, n), twin, counts, amp), repeat, device, True)


def measure(name: str, device: torch.device, repeat: int, train_steps: int, bf16: bool, compile_loss: bool,
            graphs: bool = False) -> dict:
    """Check, then time sampling and training of one config; with ``bf16`` both sides run under bf16 autocast,
    with ``compile_loss`` minibigr's training loss runs through torch.compile (its compilation is warm-up), with
    ``graphs`` minibigr's reverse chain is replayed from CUDA graphs (their capture is warm-up)."""
    spec, cuda = CONFIGS[name], device.type == "cuda"
    model = build(name).to(device)
    model.transcoder.cuda_graphs = graphs
    twin = restated(model)
    h_diff, identical = check(model, twin) if not cuda else (float("nan"), False)
    s = {**spec["sampling"], "precision": "bfloat16" if bf16 else "float32"}
    labels = (torch.arange(spec["batch"]) % model.config.num_classes).to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    g = torch.Generator(device).manual_seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    # sampling: a warm-up call only on CUDA (kernels, allocator); a CPU run is long enough without.
    # minibigr's generate sets its own autocast from the precision setting; the authors' loop runs inside one
    def theirs_sample():
        with amp:
            twin.generate(labels, num_iter=s["num_iter"], cfg_scale=s["cfg"], gumbel_temp=s["gumbel"],
                          steps=s["diffusion_steps"])
    ours, theirs = float("nan"), float("nan")
    if not compile_loss:                  # the compiled-loss row times training only
        ours, theirs = timed_pair(lambda: model.generate(labels, generator=g, order="confidence", **s),
                                  theirs_sample, repeat, device, cuda)
    ours_train, theirs_train = float("nan"), float("nan")
    if not graphs:                        # the CUDA-graphs row times sampling only (training has no chain)
        ours_train, theirs_train = timed_training(model, twin, spec["train_batch"], train_steps, repeat, g, amp,
                                                  compile_loss)
    n = spec["batch"]
    return {"config": name + (" bf16" if bf16 else "") + (" compiled loss" if compile_loss else "")
            + (" CUDA graphs" if graphs else ""),
            "h_diff": h_diff, "identical": identical,
            "sample_ours": n / ours, "sample_theirs": n / theirs,
            "train_ours": train_steps / ours_train, "train_theirs": train_steps / theirs_train,
            "multiply_adds": multiply_adds(model.config, s["num_iter"], s["diffusion_steps"])}


def multiply_adds(config: BiGRConfig, num_iter: int, steps: int) -> tuple[float, float]:
    """Matmul multiply-adds per sampled image with CFG (both halves), (minibigr, authors'): the same backbone at every
    step; the chain for the still-masked tokens against all N, the authors' embedding the condition (d -> w) and the
    timestep (256 -> w -> w) inside every denoiser call."""
    c, L = config, config.num_tokens + 1
    backbone = 2 * num_iter * c.n_layer * (L * (4 * c.dim ** 2 + 3 * c.dim * ffn_hidden_dim(c.dim, c.multiple_of))
                                           + 2 * L * L * c.dim)
    w = c.transcoder_width
    call = c.transcoder_blocks * 5 * w * w + 2 * w * w + 2 * c.K * w         # adaLN 3w + MLP 2w per block, final 2w
    chains = sum(masked_counts(None, c.num_tokens, c.sampling.replace(num_iter=num_iter))[:-1])
    return (backbone + chains * steps * 2 * call,
            backbone + c.num_tokens * num_iter * steps * 2 * (call + c.dim * w + 256 * w + w * w))


def report(rows: list[dict], threads: int, device: torch.device) -> str:
    lines = [f"device {device}, {threads} thread(s); ratio = minibigr / authors' restated (> 1: minibigr faster)",
             "",
             "| config | check: max h diff / identical tokens | sampling img/s: minibigr | authors | ratio "
             "| training steps/s: minibigr | authors | ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        sample_ratio, train_ratio = r["sample_ours"] / r["sample_theirs"], r["train_ours"] / r["train_theirs"]
        lines.append(f"| {r['config']} | {r['h_diff']:.1e} / {'yes' if r['identical'] else 'no'} "
                     f"| {r['sample_ours']:.3f} | {r['sample_theirs']:.3f} | {sample_ratio:.2f}x "
                     f"| {r['train_ours']:.2f} | {r['train_theirs']:.2f} | {train_ratio:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), help="default: shipped 16x16 (+ BiGR-L on CUDA)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for both sides")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs; the best counts")
    ap.add_argument("--train-steps", type=int, default=8, help="training steps per timed run")
    ap.add_argument("--bf16", action="store_true", help="both sides under bf16 autocast (always for BiGR-L on CUDA)")
    ap.add_argument("--compile", action="store_true", help="minibigr's training loss through torch.compile")
    ap.add_argument("--cuda-graphs", action="store_true", help="minibigr's reverse chain replayed from CUDA graphs")
    args = ap.parse_args()
    if args.cuda_graphs and args.device.split(":")[0] != "cuda":
        ap.error("--cuda-graphs needs --device cuda")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = args.configs or (["shipped", "16x16"] + (["BiGR-L"] if device.type == "cuda" else []))
    rows = []
    for name in names:
        bf16 = args.bf16 or (device.type == "cuda" and name == "BiGR-L")
        rows.append(measure(name, device, args.repeat, args.train_steps, bf16, args.compile, args.cuda_graphs))
        print(report(rows[-1:], args.threads, device).splitlines()[-1], flush=True)
    print()
    print(report(rows, args.threads, device))
    print("\nmultiply-adds per sampled image (matmuls, both CFG halves): what each side computes, before any overhead")
    for r in rows:
        ours, theirs = r["multiply_adds"]
        print(f"  {r['config']}: minibigr {ours / 1e9:.1f} G, authors {theirs / 1e9:.1f} G ({theirs / ours:.2f}x)")


if __name__ == "__main__":
    main()
