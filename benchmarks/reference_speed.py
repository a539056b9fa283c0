"""Speed of the reference's Numba kernels against plain NumPy and the PyTorch core (CPU).

Three implementations of the same algorithm, on the same inputs and the same explicit uniforms:
  numba   reference/ (Numba kernels for the reverse step, the strided kernel and the top-k selection)
  numpy   the same steps in plain NumPy: vectorised where NumPy is, Python loops where the algorithm loops
  torch   minibigr's PyTorch core on the CPU (float64, the reference's precision, and float32)

Timed parts:
  chain       the whole reverse chain, S steps of the DenoiseMLP + posterior + draw (CFG on);
              the MLP is the same NumPy code in the numba and numpy paths, so it dominates both
  step        what Numba replaces in the chain: the S - 1 moves (strided kernel, p0, posterior, draw)
              for every token of a B x N batch, with fixed logits in place of the MLP
  selection   what Numba replaces in the sampler: the per-row top-k of the I steps of an unmasking loop
              (each step's mask and reveal count precomputed, so only the selections are timed)

    python benchmarks/reference_speed.py                 # B=64 N=256 K=24 S=100, width 256, 3 blocks
    python benchmarks/reference_speed.py --chain-tokens 128 --repeat 1    # quicker

One thread everywhere by default (OMP/OpenBLAS/MKL/Numba), so the ratios compare implementations,
not core counts; set --threads to change it.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, default=64, help="images")
    ap.add_argument("--N", type=int, default=256, help="tokens per image")
    ap.add_argument("--K", type=int, default=24, help="bits per token")
    ap.add_argument("--T", type=int, default=256, help="diffusion steps of the schedule")
    ap.add_argument("--S", type=int, default=100, help="visited reverse steps")
    ap.add_argument("--I", type=int, default=20, help="sampler unmasking steps")
    ap.add_argument("--width", type=int, default=256, help="DenoiseMLP width")
    ap.add_argument("--blocks", type=int, default=3, help="DenoiseMLP residual blocks")
    ap.add_argument("--cond-dim", type=int, default=256, help="dimension of the condition h_i")
    ap.add_argument("--chain-tokens", type=int, default=512,
                    help="tokens in the whole-chain timing (the MLP makes B*N tokens take minutes per path)")
    ap.add_argument("--chain-repeat", type=int, default=1, help="best of this many whole-chain runs")
    ap.add_argument("--cfg", type=float, default=2.5)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs of the step and selection parts")
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args()


args = parse_args() if __name__ == "__main__" else None
if args is not None:
    # thread pools read these once, at import: set them before numpy, numba and torch load
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(args.threads)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.timing import best_time  # noqa: E402
from minibigr import sampler as ms  # noqa: E402
from minibigr import transcoder as mt  # noqa: E402
from reference import quantizer as rq  # noqa: E402
from reference import sampler as rs  # noqa: E402
from reference import transcoder as rt  # noqa: E402


# ----------------------------------------------------------------------------------------------
# Plain NumPy versions of the parts the Numba kernels replace
# ----------------------------------------------------------------------------------------------
def numpy_strided_kernel(beta, t_prev, t):
    Q = np.eye(2)
    for s in range(t_prev + 1, t + 1):
        stay, move = beta[s] + (1 - beta[s]) / 2, (1 - beta[s]) / 2
        Q = Q @ np.array([[stay, move], [move, stay]])
    return Q


def numpy_reverse_step(logits, z_t, temperature, flip, k_prev, b_prev, Q, uniform):
    x = logits / temperature
    if flip:
        x = np.where(z_t > 0.5, -x, x)
    p0 = rq.sigmoid(x)
    one = z_t > 0.5
    u_1 = (k_prev * p0 + b_prev) * np.where(one, Q[1, 1], Q[1, 0])
    u_0 = (k_prev * (1 - p0) + b_prev) * np.where(one, Q[0, 1], Q[0, 0])
    return (uniform < u_1 / (u_1 + u_0)).astype(np.float64)


def numpy_select(scores, mask, n_reveal):
    """A stable descending argsort of every row at once, then rank < n_reveal (the PyTorch algorithm)."""
    order = np.argsort(-np.where(mask, scores, -np.inf), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(scores.shape[1])[None], axis=1)
    return (rank < n_reveal[:, None]) & mask


def chain(params, cond, cond_null, uniforms, T, S, cfg, step, kernel):
    """reference.transcoder.reverse_chain (flip objective, linear schedule) with pluggable step parts."""
    k, b, beta = rt.bernoulli_schedule("linear", T)
    ts = rt.visited_steps(T, S)
    c, c_null = rt.embed_cond(params, cond), rt.embed_cond(params, cond_null)
    t_emb = rt.embed_time(params, ts - 1)
    z_t = (uniforms[0] < 0.5).astype(np.float64)
    for i, t in enumerate(ts):
        logits = rt.cfg_mix(rt.denoise_embedded(params, z_t, c + t_emb[i]),
                            rt.denoise_embedded(params, z_t, c_null + t_emb[i]), cfg)
        if i == len(ts) - 1:
            return rt.x0_probs(logits, z_t, 1.0, True)
        t_prev = int(ts[i + 1])
        z_t = step(logits, z_t, 1.0, True, k[t_prev], b[t_prev], kernel(beta, t_prev, int(t)), uniforms[i + 1])


# ----------------------------------------------------------------------------------------------
# The timed workloads
# ----------------------------------------------------------------------------------------------
def moves_numpy_like(step, kernel, logits, z0, uniforms, T, S):
    """The S - 1 chain moves with fixed logits: kernel, p0, posterior, draw."""
    k, b, beta = rt.bernoulli_schedule("linear", T)
    ts = rt.visited_steps(T, S)
    z_t = z0
    for i in range(S - 1):
        t, t_prev = int(ts[i]), int(ts[i + 1])
        z_t = step(logits, z_t, 1.0, True, k[t_prev], b[t_prev], kernel(beta, t_prev, t), uniforms[i])
    return z_t


def moves_torch(logits, z0, uniforms, T, S):
    k, b, beta = (x.numpy() for x in mt.bernoulli_schedule("linear", T))
    ts = mt.visited_steps(T, S)
    z_t = z0
    for i in range(S - 1):
        t, t_prev = int(ts[i]), int(ts[i + 1])
        p0 = torch.sigmoid(mt.flip_to_x0_logits(logits, z_t))
        prob = mt.posterior(p0, z_t, k[t_prev], b[t_prev], mt.kernel_ratio(beta, t_prev, t))
        z_t = (uniforms[i] < prob).to(logits.dtype)
    return z_t


def unmasking_states(scores, I):
    """(mask, n_reveal) before each of the I steps of an unmasking loop (cosine schedule) over scores (I, B, N)."""
    B, N = scores.shape[1:]
    mask, n, states = np.ones((B, N), dtype=bool), np.full(B, N), []
    for i in range(1, I + 1):
        n_reveal = mask.sum(1) - rs.masked_after(n, i, I)
        states.append((mask, n_reveal))
        mask = mask & ~rs.select(scores[i - 1], mask, n_reveal)
    return states


def selections(select, scores, states):
    """Only the selections of the loop: what the Numba kernel replaces."""
    return [select(scores[i], mask, n_reveal) for i, (mask, n_reveal) in enumerate(states)]


def main():
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    B, N, K, T, S, I = args.B, args.N, args.K, args.T, args.S, args.I
    M = args.chain_tokens
    torch.manual_seed(0)
    model = mt.BinaryTranscoder(K, args.cond_dim, args.width, args.blocks, T=T).double()
    with torch.no_grad():
        for p in model.parameters():  # trained-looking weights: the zero-initialised layers too
            p.normal_(0, 0.05)
    params = {name: v.numpy() for name, v in model.denoiser.state_dict().items()}
    model32 = mt.BinaryTranscoder(K, args.cond_dim, args.width, args.blocks, T=T)
    model32.load_state_dict(model.state_dict())
    model32.float()

    cond, cond_null = rng.normal(size=(M, args.cond_dim)), rng.normal(size=(M, args.cond_dim))
    U = rng.random((S, M, K))
    cond_t, null_t, U_t = torch.from_numpy(cond), torch.from_numpy(cond_null), torch.from_numpy(U)
    logits, z0, moves_u = rng.normal(size=(B * N, K)), rng.random((B * N, K)) < 0.5, rng.random((S, B * N, K))
    z0 = z0.astype(np.float64)
    scores = rng.normal(size=(I, B, N))
    states = unmasking_states(scores, I)
    states_t = [(torch.from_numpy(mask), torch.from_numpy(n_reveal)) for mask, n_reveal in states]

    rows = []

    def row(name, runs, repeat):
        rows.append((name, {path: best_time(fn, repeat) for path, fn in runs.items()}))

    row(f"chain: {M} tokens, S={S}, CFG (MLP w={args.width} x{args.blocks})", {
        "numba": lambda: rt.reverse_chain(params, cond, U, T, S, cond_null=cond_null, cfg=args.cfg),
        "numpy": lambda: chain(params, cond, cond_null, U, T, S, args.cfg, numpy_reverse_step, numpy_strided_kernel),
        "torch64": lambda: model.sample(cond_t, null_t, steps=S, cfg=args.cfg, uniforms=U_t).numpy(),
        "torch32": lambda: model32.sample(cond_t.float(), null_t.float(), steps=S, cfg=args.cfg,
                                          uniforms=U_t.float()).double().numpy(),
    }, args.chain_repeat)
    row(f"step: {S - 1} moves x {B}x{N} tokens x K={K}", {
        "numba": lambda: moves_numpy_like(rt.reverse_step, rt.strided_kernel, logits, z0, moves_u, T, S),
        "numpy": lambda: moves_numpy_like(numpy_reverse_step, numpy_strided_kernel, logits, z0, moves_u, T, S),
        "torch64": lambda: moves_torch(torch.from_numpy(logits), torch.from_numpy(z0), torch.from_numpy(moves_u),
                                       T, S).numpy(),
        "torch32": lambda: moves_torch(torch.from_numpy(logits).float(), torch.from_numpy(z0).float(),
                                       torch.from_numpy(moves_u).float(), T, S).double().numpy(),
    }, args.repeat)
    row(f"selection: {I} steps x {B} rows x N={N}", {
        "numba": lambda: np.stack(selections(rs.select, scores, states)),
        "numpy": lambda: np.stack(selections(numpy_select, scores, states)),
        "torch64": lambda: torch.stack(selections(ms.select, torch.from_numpy(scores), states_t)).numpy(),
        "torch32": lambda: torch.stack(selections(ms.select, torch.from_numpy(scores).float(), states_t)).numpy(),
    }, args.repeat)

    # the paths compute the same thing: check before printing any number
    for name, res in rows:
        ref = res["numba"][1]
        for path in ("numpy", "torch64"):
            if name.startswith("chain"):
                np.testing.assert_allclose(res[path][1], ref, rtol=1e-5, err_msg=f"{name}: {path}")
            else:
                np.testing.assert_array_equal(res[path][1], ref, err_msg=f"{name}: {path}")

    print(f"threads={args.threads}  B={B} N={N} K={K} T={T} S={S} I={I}  seconds, best of {args.chain_repeat} "
          f"(chain) / {args.repeat} (step, selection) after a warm-up run\n")
    head = f"{'part':52s} {'numba':>9s} {'numpy':>9s} {'torch64':>9s} {'torch32':>9s}  {'numpy/numba':>11s} " \
           f"{'torch64/numba':>13s} {'torch32/numba':>13s}"
    print(head)
    print("-" * len(head))
    for name, res in rows:
        t = {path: r[0] for path, r in res.items()}
        print(f"{name:52s} {t['numba']:9.4f} {t['numpy']:9.4f} {t['torch64']:9.4f} {t['torch32']:9.4f}  "
              f"{t['numpy'] / t['numba']:10.1f}x {t['torch64'] / t['numba']:12.1f}x {t['torch32'] / t['numba']:12.1f}x")


if __name__ == "__main__":
    main()
