"""A function of CUDA tensors captured once per key as a CUDA graph, then replayed: one launch instead of one per
kernel, and no host work between them (the reverse chain's S steps are hundreds of small kernels).

    graphs = GraphCache()
    out = graphs(key, fn, x, y)      # fn(x, y) -> tensor; the first call with a key captures, later ones replay

A replay runs the kernels the capture recorded, on the same addresses: the inputs are copied into the graph's own
buffers first, and everything ``fn`` reads besides its inputs (module weights, Python numbers it turns into kernel
arguments) is frozen into the graph. So the key must name all of that which can change: the shapes, the numbers
(cfg, steps, ...), the dtypes and autocast state, and where the weights live (``weights_key``). The output is the
same bits as ``fn`` run eagerly, as long as ``fn`` draws no random numbers inside (pass the draws in).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

# captured graphs kept per cache; each holds its own memory pool for its intermediates, so the oldest goes first
MAX_GRAPHS = 32


def weights_key(module: nn.Module) -> tuple:
    """Where a module's parameters live and in what dtype: a moved or cast module gives another key (its graphs
    would read the old addresses); an in-place update (an optimizer step, ``load_state_dict``) keeps it."""
    return tuple((p.data_ptr(), p.dtype) for p in module.parameters())


def autocast_key(device_type: str = "cuda") -> tuple:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class GraphCache:
    """Captured graphs by key, at most ``size``, the least recently used dropped first."""

    def __init__(self, size: int = MAX_GRAPHS):
        self.size = size
        self.graphs: OrderedDict = OrderedDict()     # key -> (graph, static inputs, static output)

    def __len__(self) -> int:
        return len(self.graphs)

    def __deepcopy__(self, memo) -> GraphCache:
        # a copied module has its own weights: its graphs are captured anew
        return GraphCache(self.size)

    def __call__(self, key, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        if key in self.graphs:
            self.graphs.move_to_end(key)
        else:
            self.graphs[key] = capture(fn, inputs)
            if len(self.graphs) > self.size:
                self.graphs.popitem(last=False)
        graph, static_inputs, static_output = self.graphs[key]
        for static, x in zip(static_inputs, inputs, strict=True):
            static.copy_(x)
        graph.replay()
        return static_output.clone()        # the graph overwrites its output at the next replay


def capture(fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...]):
    """(graph, static inputs, static output) of fn on copies of inputs."""
    static_inputs = [x.clone() for x in inputs]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), uncached_autocast():
        fn(*static_inputs)                  # warm-up off the capture: cuBLAS handles and workspaces are made here
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), uncached_autocast():
        static_output = fn(*static_inputs)
    return graph, static_inputs, static_output


def uncached_autocast() -> torch.autocast:
    """The autocast state in force, without its cache of cast weights: that cache lives outside the graph's pool
    and is freed when the autocast region ends, so the capture must cast inside the graph."""
    enabled, dtype = autocast_key()
    return torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False)
