"""Wall-clock timing shared by the speed benchmarks.

A GPU runs asynchronously: the clock starts and stops only after its queue is drained, so a call is timed to
its last kernel. Every figure is the best of several calls after an untimed one (allocations, caches, Numba's
compiled kernels): the best is the run least disturbed by the rest of the machine.
"""

from __future__ import annotations

import time

import torch


def clock(fn, device: torch.device | str = "cpu") -> tuple[float, object]:
    """(seconds one call of ``fn`` takes on ``device``, its output)."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def best_time(fn, repeat: int, device: torch.device | str = "cpu") -> tuple[float, object]:
    """(best seconds of ``repeat`` calls after one untimed call, the last call's output)."""
    fn()
    times, out = zip(*(clock(fn, device) for _ in range(repeat)), strict=True)
    return min(times), out[-1]
