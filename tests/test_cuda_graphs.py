"""STAALIF under CUDA graphs: capture-safety checked on the CPU, replays checked on a GPU.

A CUDA graph replays the kernels its capture recorded, on the same addresses: a route that
reads a device value on the host (``.item()``, ``.tolist()``, ``nonzero``, ...) cannot be
captured, and one whose work or allocation sizes follow tensor values would replay the wrong
work. On the CPU the torch route's device branch (what a GPU runs: the TSRD mask selected on
the device, ``staa.ops.torch_impl.HOST_MASK_DEVICES``) is run under a dispatch mode that flags
host reads and records every operation with its output sizes (tests/capture_checks.py): two
inputs of the same shape but other values and other TSRD masks must run the same operations
into the same sizes. tests/interpret/test_capture_safety.py checks the Triton route alike.

The CUDA tests (skipped without a device) capture layers with
``torch.cuda.make_graphed_callables``, ``torch.cuda.graph`` and
``torch.compile(mode="reduce-overhead")`` and compare every replay with eager calls.
"""
from __future__ import annotations

import copy
import importlib.util
import os

import pytest
import torch

import staa
from staa.functional import staa_lif
from staa.ops import torch_impl

from capture_checks import traced as _traced
from helpers import make_neuron, randomize


@pytest.fixture
def device_branch(monkeypatch):
    """Run the torch route's device branch on the CPU (the TSRD mask never read on the host)."""
    monkeypatch.setattr(torch_impl, "HOST_MASK_DEVICES", ())


CONFIGS = {
    "all-blocks": {},
    "no-gc": dict(gc=False),
    "no-sa-soft": dict(sa=False, v_reset=None, detach_reset=True),
    "no-pe-atan": dict(pe=False, surrogate="atan"),
}


def _record_masks(m):
    """Keep every TSRD mask ``m`` draws (its ``_draw_drop`` wrapped on the instance)."""
    masks, draw = [], m._draw_drop

    def recording(*args):
        masks.append(draw(*args))
        return masks[-1]

    m._draw_drop = recording
    return masks


def _train_step(m, x, gy, single: bool):
    """Forward and backward of one sequence through ``m`` (a STAALIF or a network of them): spikes,
    the gradients of x and of every parameter."""
    for layer in m.modules():
        if isinstance(layer, staa.STAALIF):
            layer.reset()
    x = x.detach().requires_grad_(True)
    y = torch.stack([m(x[t]) for t in range(x.shape[0])]) if single else m(x)
    grads = torch.autograd.grad(y, [x, *m.parameters()], gy)
    return y, grads


def _inputs(seed, shape=(5, 2, 6, 3, 3), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 0.8 + 0.4).to(dtype)
    return x, torch.randn(shape, generator=g).to(dtype)


# ------------------------------------------------------------------ CPU: capture safety
@pytest.mark.parametrize("single", [False, True], ids=["multi-step", "single-step"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_device_branch_reads_nothing_on_the_host(device_branch, name, single):
    m = make_neuron(6, 5, 1, tsrd=0.5, step_mode="s" if single else "m", **CONFIGS[name]).train()
    x, gy = _inputs(0)
    with _traced() as trace:
        _train_step(m, x, gy, single)
    assert trace.ops, "the trace recorded nothing"
    assert trace.reads == []


def test_host_reads_are_detected_on_the_cpu_branch():
    """The CPU branch reads the mask with .tolist() (free on the CPU): the trace must see it."""
    m = make_neuron(6, 5, 1, tsrd=0.5).train()
    x, gy = _inputs(0)
    with _traced() as trace:
        _train_step(m, x, gy, False)
    assert "Tensor.tolist" in trace.reads


def _op_sequence(m, x, gy, single, seed):
    masks = _record_masks(m)
    torch.manual_seed(seed)
    with _traced() as trace:
        _train_step(m, x, gy, single)
    del m._draw_drop
    return trace.ops, torch.cat(masks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("single", [False, True], ids=["multi-step", "single-step"])
def test_device_branch_runs_the_same_ops_into_the_same_sizes_whatever_the_values(device_branch, single, dtype):
    """What a CUDA graph needs: other input values and other TSRD masks, same work and allocations."""
    m = make_neuron(6, 5, 1, tsrd=0.5, step_mode="s" if single else "m").train()
    x1, gy1 = _inputs(1, dtype=dtype)
    x2, gy2 = _inputs(2, dtype=dtype)
    ops1, mask1 = _op_sequence(m, x1, gy1, single, seed=3)
    ops2, mask2 = _op_sequence(m, x2, gy2, single, seed=11)
    assert not torch.equal(mask1, mask2), "the two runs drew the same TSRD mask; pick other seeds"
    assert len(ops1) == len(ops2)
    assert ops1 == ops2


def test_op_sequences_differ_on_the_cpu_branch():
    """The comparison above can fail: the CPU branch skips the aggregator at dropped steps."""
    m = make_neuron(6, 5, 1, tsrd=0.5).train()
    x, gy = _inputs(1)
    ops1, mask1 = _op_sequence(m, x, gy, False, seed=3)
    ops2, mask2 = _op_sequence(m, x, gy, False, seed=11)
    assert not torch.equal(mask1, mask2) and ops1 != ops2


@pytest.mark.parametrize("single", [False, True], ids=["multi-step", "single-step"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_device_branch_equals_the_cpu_branch(monkeypatch, name, single):
    """Selecting dropped steps on the device gives the same spikes and input gradients (bit for bit)
    and the same weight gradients up to the order of the sums (zero rows of dropped steps join them)."""
    m = make_neuron(6, 5, 1, tsrd=0.5, step_mode="s" if single else "m", **CONFIGS[name]).train().double()
    x, gy = _inputs(4, dtype=torch.float64)
    results = []
    for devices in (("cpu",), ()):
        monkeypatch.setattr(torch_impl, "HOST_MASK_DEVICES", devices)
        masks = _record_masks(m)
        torch.manual_seed(5)
        results.append(_train_step(m, x, gy, single))
        del m._draw_drop
        assert any(mk.any() for mk in masks), "no step was dropped; pick another seed"
    (y1, g1), (y2, g2) = results
    assert torch.equal(y1, y2)
    assert torch.equal(g1[0], g2[0])
    for a, b in zip(g1[1:], g2[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_compiled_single_step_continues_an_eager_chain():
    """A compiled call after eager ones starts its device counter at the host index (step 2 here)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    T = 4
    m = make_neuron(4, T, 2, tsrd=0.0, step_mode="s").eval()
    x = torch.randn(T, 2, 4, 3, 3)
    want = torch.stack([m(x[t]) for t in range(T)])
    m.reset()
    step = torch.compile(m, fullgraph=True, backend=CompileCounterWithBackend("aot_eager"))
    got = [m(x[0]), m(x[1])] + [step(x[t]) for t in range(2, T)]
    assert torch.equal(torch.stack(got), want)
    assert m.t == T


@pytest.mark.parametrize("eager_steps", [0, 2])
def test_capture_branch_of_single_step_equals_the_eager_chain(monkeypatch, eager_steps):
    """The branch a single-step call takes while a CUDA graph is captured (device step counter),
    forced on the CPU after ``eager_steps`` eager calls: the eager chain's spikes, last state and
    gradients; the counter starts at the host index and ``t`` reads it back."""
    import staa.neuron as neuron

    T = 4
    m = make_neuron(4, T, 3, tsrd=0.0, step_mode="s").double()
    x, gy = _inputs(6, shape=(T, 2, 4, 3, 3), dtype=torch.float64)
    want_y, want_g = _train_step(m, x, gy, single=True)
    want_v = m.v.clone()
    capturing = {"on": False}
    monkeypatch.setattr(neuron, "_capturing", lambda _x: capturing["on"])
    m.reset()
    xg = x.clone().requires_grad_(True)
    ys = []
    for t in range(T):
        capturing["on"] = t >= eager_steps
        ys.append(m(xg[t]))
    got = torch.autograd.grad(torch.stack(ys), [xg, *m.parameters()], gy)
    assert m._step is not None and not m._t_on_host  # the device counter was used
    assert torch.equal(torch.stack(ys), want_y) and torch.equal(m.v, want_v)
    for a, b in zip(got, want_g):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert m.t == T
    capturing["on"] = True
    m._step = None  # the host index (T) is known: a call past the sequence is refused there too
    with pytest.raises(ValueError, match="reset"):
        m(xg[0])


# ------------------------------------------------------------------ CUDA: replays
def _has_triton() -> bool:
    return (importlib.util.find_spec("triton") is not None
            and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CUDA graphs)")
BACKENDS = [
    "torch",
    pytest.param("triton", marks=pytest.mark.skipif(not _has_triton(),
                                                    reason="needs triton with compiled kernels (TRITON_INTERPRET unset)")),
]
SHAPE = (6, 2, 16, 5, 5)  # [T, B, C, H, W]


class _Stack(torch.nn.Module):
    """Two multi-step STAALIF layers around a per-channel affine map: ``[T, B, C, H, W]`` in and out.
    (Elementwise, not a convolution: a convolution's algorithm may differ between eager and captured
    calls, and a rounding difference can flip a spike.)"""

    def __init__(self, C, T, backend, tsrd):
        super().__init__()
        self.lif1 = staa.STAALIF(C, T, tsrd=tsrd, backend=backend)
        self.scale = torch.nn.Parameter(torch.ones(C, 1, 1))
        self.shift = torch.nn.Parameter(torch.zeros(C, 1, 1))
        self.lif2 = staa.STAALIF(C, T, tsrd=tsrd, v_reset=None, backend=backend)

    def forward(self, x):
        return self.lif2(self.lif1(x) * self.scale + (self.shift + 0.5))


def _cuda_inputs(seed, shape=SHAPE):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape, generator=g, device="cuda") * 0.8 + 0.4
    return x, torch.randn(shape, generator=g, device="cuda")


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_graphed_stack_replays_equal_eager(backend):
    """make_graphed_callables on a layer stack, TSRD off: spikes and every gradient as eager."""
    net = randomize(_Stack(SHAPE[2], SHAPE[0], backend, tsrd=0.0), seed=1, scale=0.3).cuda().train()
    ref = copy.deepcopy(net)
    x0, _ = _cuda_inputs(0)
    graphed = torch.cuda.make_graphed_callables(net, (x0.requires_grad_(True),))
    for seed in (1, 2, 3):
        x, gy = _cuda_inputs(seed)
        xg = x.clone().requires_grad_(True)
        net.zero_grad(set_to_none=True)
        y = graphed(xg)
        y.backward(gy)
        want_y, want_g = _train_step(ref, x, gy, single=False)
        assert torch.equal(y, want_y)
        _close(xg.grad, want_g[0])
        for p, g in zip(net.parameters(), want_g[1:]):
            _close(p.grad, g)


@cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_graphed_replays_draw_new_tsrd_masks(backend):
    """TSRD on: each replay draws its own mask on the device, and equals eager given that mask."""
    T = 8
    shape = (T,) + SHAPE[1:]
    torch.manual_seed(0)
    m = randomize(staa.STAALIF(shape[2], T, tsrd=0.5, backend=backend), seed=2, scale=0.3).cuda().train()
    masks = _record_masks(m)
    x0, _ = _cuda_inputs(0, shape)
    graphed = torch.cuda.make_graphed_callables(m, (x0.requires_grad_(True),))
    static_mask = masks[-1]  # drawn during the capture; every replay rewrites it
    seen = []
    for seed in (1, 2, 3, 4):
        x, gy = _cuda_inputs(seed, shape)
        xg = x.clone().requires_grad_(True)
        m.zero_grad(set_to_none=True)
        y = graphed(xg)
        y.backward(gy)
        mask = static_mask.clone()
        assert not mask[0]  # step 0 is never dropped
        seen.append(tuple(mask.tolist()))
        xe = x.clone().requires_grad_(True)
        want_y, _, _ = staa_lif(xe, m.params(), m.cfg, drop=mask, backend=backend)
        want_g = torch.autograd.grad(want_y, [xe, *m.parameters()], gy)
        assert torch.equal(y, want_y)
        _close(xg.grad, want_g[0])
        for p, g in zip(m.parameters(), want_g[1:]):
            _close(p.grad, g)
    assert len(set(seen)) > 1, f"four replays drew the same mask {seen[0]}"


@cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_captured_single_step_chain_equals_eager(backend):
    """reset() and T single-step calls captured whole in one CUDA graph: each replay equals the eager
    chain, and the device step counter ends at T (``m.t`` reads it)."""
    T = SHAPE[0]
    m = randomize(staa.STAALIF(SHAPE[2], T, tsrd=0.0, step_mode="s", backend=backend), seed=3,
                  scale=0.3).cuda().train()
    ref = copy.deepcopy(m)
    x, gy = _cuda_inputs(0)
    x.requires_grad_(True)

    def chain():
        m.reset()
        torch.stack([m(x[t]) for t in range(T)]).backward(gy)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            chain()
    torch.cuda.current_stream().wait_stream(side)
    x.grad = None
    m.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        m.reset()
        ys = torch.stack([m(x[t]) for t in range(T)])
        ys.backward(gy)
    for seed in (1, 2):
        xs, gys = _cuda_inputs(seed)
        with torch.no_grad():
            x.copy_(xs)
            gy.copy_(gys)
        graph.replay()
        want_y, want_g = _train_step(ref, xs, gys, single=True)
        assert torch.equal(ys, want_y)
        _close(x.grad, want_g[0])
        for p, g in zip(m.parameters(), want_g[1:]):
            _close(p.grad, g)
        assert m.t == T


def _reduce_overhead_counters():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    return counters


@cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_reduce_overhead_single_step_chain_equals_eager(backend):
    """A compiled single-step layer called T times per sequence (the step index from the device
    counter, never a frozen int) over several sequences: as eager, and no cudagraph skipped."""
    counters = _reduce_overhead_counters()
    T = SHAPE[0]
    m = randomize(staa.STAALIF(SHAPE[2], T, tsrd=0.0, step_mode="s", backend=backend), seed=4,
                  scale=0.3).cuda().train()
    ref = copy.deepcopy(m)
    step = torch.compile(m, mode="reduce-overhead")
    for seed in (1, 2, 3):
        x, gy = _cuda_inputs(seed)
        torch.compiler.cudagraph_mark_step_begin()
        m.reset()
        xg = x.clone().requires_grad_(True)
        y = torch.stack([step(xg[t]) for t in range(T)])
        got = torch.autograd.grad(y, [xg, *m.parameters()], gy)
        want_y, want_g = _train_step(ref, x, gy, single=True)
        assert torch.equal(y, want_y)
        for a, b in zip(got, want_g):
            _close(a, b)
        assert m.t == T
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])


@cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_reduce_overhead_training_step_has_no_cudagraph_skips(backend):
    """The recipe of docs/performance.md: model compiled with mode="reduce-overhead", TSRD on;
    TSRD off gives eager's spikes and gradients."""
    for tsrd in (0.0, 0.5):
        counters = _reduce_overhead_counters()
        net = randomize(_Stack(SHAPE[2], SHAPE[0], backend, tsrd=tsrd), seed=5, scale=0.3).cuda().train()
        ref = copy.deepcopy(net)
        compiled = torch.compile(net, mode="reduce-overhead")
        opt = torch.optim.SGD(net.parameters(), lr=0.0)  # the step runs; the weights stay for the comparison
        for seed in (1, 2, 3, 4):
            x, gy = _cuda_inputs(seed)
            torch.compiler.cudagraph_mark_step_begin()
            opt.zero_grad(set_to_none=True)
            y = compiled(x)
            y.backward(gy)
            opt.step()
            if tsrd == 0.0:
                want_y, want_g = _train_step(ref, x, gy, single=False)
                assert torch.equal(y, want_y)
                for p, g in zip(net.parameters(), want_g[1:]):
                    _close(p.grad, g)
        assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
