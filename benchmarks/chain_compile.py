"""The reverse chain three ways: the denoiser module step by step, the fused chain (the default), and the module
through ``torch.compile``; on CUDA a fourth, the fused chain replayed from a CUDA graph. Same transcoder, conditions
and uniforms for all.

    python benchmarks/chain_compile.py                   # shipped transcoder, 3200 tokens, CFG 3, S = 50, 1 thread
    python benchmarks/chain_compile.py --bf16 --threads 2
    python benchmarks/chain_compile.py --device cuda --bf16 --tokens 16384

The conditions are Gaussian (the chain's cost does not depend on their values). Prints, per path, the best wall
time of ``--repeat`` calls after one untimed call (for ``torch.compile``, its compilation), the ratio to the fused
chain, and how far its p0 is from the fused chain's: the largest difference, and the share of final bits that come out
differently on one shared draw. The fused chain is bit-identical to the module path (tests/test_transcoder.py), and
so is the graphed one (tests/test_cuda_graph.py); a compiled chain is not, since inductor fuses and reorders the
elementwise work.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # `python benchmarks/chain_compile.py` from anywhere

import torch  # noqa: E402

from benchmarks.timing import best_time  # noqa: E402
from minibigr import pretrained  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=3200, help="tokens in the chain (M)")
    ap.add_argument("--steps", type=int, default=50, help="visited steps S")
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bf16", action="store_true", help="the denoiser under bf16 autocast (p0 and draws float32)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    transcoder = pretrained("fashion-mnist", device=device).model.transcoder
    g = torch.Generator().manual_seed(0)
    d = transcoder.denoiser.c_embedder.in_features
    cond, cond_null = torch.randn(args.tokens, d, generator=g), torch.randn(1, d, generator=g).expand(args.tokens, d)
    uniforms = torch.rand(args.steps, args.tokens, transcoder.K, generator=g)
    cond, cond_null, uniforms = cond.to(device), cond_null.to(device), uniforms.to(device)
    amp = torch.autocast(device.type, torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    def chain(fused: bool, graphs: bool = False):
        def run():
            transcoder.cuda_graphs = graphs
            with amp:
                return transcoder.sample(cond, cond_null, steps=args.steps, cfg=args.cfg, uniforms=uniforms,
                                         fused=fused)
        return run

    rows = [("module, eager", *best_time(chain(False), args.repeat, device)),
            ("fused, eager (default)", *best_time(chain(True), args.repeat, device))]
    if device.type == "cuda":                                   # the untimed call captures the graph
        rows.append(("fused, CUDA graph", *best_time(chain(True, graphs=True), args.repeat, device)))
    eager_forward = transcoder.denoiser.forward_embedded
    transcoder.denoiser.forward_embedded = torch.compile(eager_forward)      # the module path now runs compiled
    try:
        rows.append(("module, torch.compile", *best_time(chain(False), args.repeat, device)))
    finally:
        transcoder.denoiser.forward_embedded = eager_forward

    base_time, base_p0 = rows[1][1], rows[1][2]
    final_u = torch.rand(base_p0.shape, generator=g).to(device)    # one draw of the final bits, shared by all paths
    precision = "bf16 autocast" if args.bf16 else "float32"
    print(f"chain of {args.tokens} tokens, S = {args.steps}, CFG {args.cfg}, {precision}, {args.threads} thread(s), "
          f"{device}, torch {torch.__version__}")
    print("| path | s | fused / path | max abs p0 diff vs fused | bits drawn differently |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds, p0 in rows:
        diff = float((p0 - base_p0).abs().max())
        flipped = float(((final_u < p0) != (final_u < base_p0)).float().mean())
        print(f"| {name} | {seconds:.3f} | {base_time / seconds:.2f}x | {diff:.1e} | {flipped:.2%} |")


if __name__ == "__main__":
    main()
