"""The reverse chain replayed from CUDA graphs: the cache's bookkeeping (on any machine) and, on a CUDA device,
the same bits as the eager fused chain."""

import copy

import pytest
import torch

from minibigr import cuda_graph
from minibigr import transcoder as mt
from minibigr.transcoder import BinaryTranscoder


class FakeGraph:
    """Stands in for a captured graph on a machine without CUDA: replay runs fn on the static inputs."""

    def __init__(self, fn, inputs):
        self.fn, self.inputs = fn, [x.clone() for x in inputs]
        self.output = fn(*self.inputs)

    def replay(self):
        self.output.copy_(self.fn(*self.inputs))


@pytest.fixture
def captures(monkeypatch) -> list:
    """Every capture made from now on, as a FakeGraph."""
    made = []

    def fake_capture(fn, inputs):
        graph = FakeGraph(fn, inputs)
        made.append(graph)
        return graph, graph.inputs, graph.output
    monkeypatch.setattr(cuda_graph, "capture", fake_capture)
    return made


def test_a_key_is_captured_once_then_replayed_on_new_inputs(captures):
    graphs = cuda_graph.GraphCache(size=2)

    def fn(x, y):
        return x * 2 + y

    x, y = torch.arange(4.0), torch.ones(4)
    assert torch.equal(graphs("a", fn, x, y), fn(x, y))
    out = graphs("a", fn, x + 5, y)                      # replay: the new inputs copied in, not recaptured
    assert torch.equal(out, fn(x + 5, y)) and len(captures) == 1
    out.zero_()                                          # the caller's copy, not the graph's output buffer
    assert torch.equal(graphs("a", fn, x, y), fn(x, y))


def test_the_least_recently_used_graph_goes_first(captures):
    graphs = cuda_graph.GraphCache(size=2)
    def fn(x):
        return x + 1

    x = torch.zeros(3)
    graphs("a", fn, x)
    graphs("b", fn, x)
    graphs("a", fn, x)                                   # a is now the most recent
    graphs("c", fn, x)                                   # evicts b
    assert list(graphs.graphs) == ["a", "c"] and len(graphs) == 2
    graphs("b", fn, x)
    assert len(captures) == 4 and list(graphs.graphs) == ["c", "b"]


def test_a_copied_module_starts_with_no_graphs(captures):
    transcoder = BinaryTranscoder(K=4, cond_dim=8, width=16, blocks=1)
    transcoder.graphs("a", lambda x: x, torch.zeros(2))
    assert len(copy.deepcopy(transcoder).graphs) == 0 and len(transcoder.graphs) == 1


def test_weights_key_changes_when_weights_move_not_when_they_are_updated_in_place():
    transcoder = BinaryTranscoder(K=4, cond_dim=8, width=16, blocks=1)
    key = cuda_graph.weights_key(transcoder.denoiser)
    with torch.no_grad():
        for p in transcoder.parameters():
            p.add_(1.0)                                  # an optimizer step: the graph reads the new values
    assert cuda_graph.weights_key(transcoder.denoiser) == key
    assert cuda_graph.weights_key(transcoder.double().denoiser) != key


@torch.no_grad()
def test_the_graphed_chain_runs_the_fused_chain_on_the_captured_inputs(captures):
    """The plumbing of the graphed chain, with fake graphs on the CPU: its p0 is the fused chain's on the same
    uniforms, at the capture and at a replay on new inputs, one capture per key (S, M, K and CFG among it)."""
    torch.manual_seed(0)
    transcoder = BinaryTranscoder(K=8, cond_dim=16, width=32, blocks=2)
    for p in transcoder.parameters():
        p.normal_(0, 0.3)
    M, S = 24, 10
    ts = mt.visited_steps(transcoder.T, S)
    for k, cfg in enumerate((3.0, 3.0, 2.0)):
        cond, cond_null, uniforms = torch.randn(M, 16), torch.randn(M, 16), torch.rand(S, M, 8)
        c = transcoder.denoiser.embed_cond(torch.cat([cond, cond_null]))
        t_emb = transcoder.denoiser.embed_time(torch.as_tensor(ts - 1))
        graphed = transcoder._graphed_chain(c, t_emb, uniforms, ts=ts, cfg=cfg, temperature=1.0, work=torch.float32)
        eager = transcoder.sample(cond, cond_null, steps=S, cfg=cfg, uniforms=uniforms)
        assert torch.equal(graphed, eager)
        assert len(captures) == (1 if k < 2 else 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_the_graphed_chain_gives_the_eager_fused_chains_bits(bf16, cfg):
    torch.manual_seed(0)
    transcoder = BinaryTranscoder(K=16, cond_dim=64, width=128, blocks=3).cuda()
    with torch.no_grad():
        for p in transcoder.parameters():
            p.normal_(0, 0.3)                            # the zero-inits would make every logit 0
    M, S = 300, 20

    def sample(graphed, cond, cond_null, uniforms):
        transcoder.cuda_graphs = graphed
        with torch.autocast("cuda", torch.bfloat16, enabled=bf16):
            return transcoder.sample(cond, cond_null, steps=S, cfg=cfg, uniforms=uniforms)

    for k in range(3):                                   # the capture, then two replays on new inputs
        cond, cond_null = torch.randn(M, 64, device="cuda"), torch.randn(M, 64, device="cuda")
        uniforms = torch.rand(S, M, 16, device="cuda")
        if k == 2:
            with torch.no_grad():
                for p in transcoder.parameters():
                    p.mul_(1.1)                          # updated in place: the replay reads the new weights
        graphed, eager = (sample(g, cond, cond_null, uniforms) for g in (True, False))
        assert torch.equal(graphed, eager)
        assert len(transcoder.graphs) == 1
