"""Direct launching (kernels/_direct.py): the compiled kernel kept under the launcher's own key
and launched as triton's JIT launches it.

No GPU here, so these check what can be checked on the CPU, against triton's own binder for sm_90
(the one benchmarks/compile_kernels.py drives): that the key is at least as fine as the JIT's
(two launches with an equal key always have an equal JIT cache key), that the argument list handed
to the compiled kernel is the JIT's bound argument list, that the driver call has the JIT's form,
and that the cache is used as intended on real launcher traffic. Triton runs in subprocesses with
TRITON_INTERPRET unset; the pytest process stays free of it.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

pytestmark = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import triton"], capture_output=True).returncode != 0,
    reason="triton is not installed")

PRELUDE = r'''
import json, os, random, torch
from triton.backends.compiler import GPUTarget
from triton.compiler import make_backend
from triton.runtime.jit import compute_cache_key, create_function_from_signature
from staa._blocks import hidden_features
from staa.kernels import _direct as D, launch as L
from staa.reference import GCParams, SAParams

BACKEND = make_backend(GPUTarget("cuda", 90, 32))
_binders = {}


def jit_key(kernel, args, kwargs):
    """(JIT cache key, bound argument values) as triton's JIT computes them for sm_90."""
    b = _binders.get(kernel)
    if b is None:
        b = _binders[kernel] = (create_function_from_signature(kernel.signature, kernel.params, BACKEND), {})
    kw = dict(kwargs, debug=False, instrumentation_mode="", fpsan_homomorphic_casts=False)
    bound, spec, options = b[0](*args, **kw)
    return compute_cache_key(b[1], spec, options), tuple(bound.values())


def layer(T=3, B=2, C=8, P=6, dtype=torch.float32, blocks=True, h0=False, x=None):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1
    ch = hidden_features(C, 4)
    gc = lambda: GCParams(r(1, C), r(1), r(ch, C), r(ch), 1 + r(ch), r(ch), r(C, ch), r(C))
    gcx, gch, sa = (gc(), gc(), SAParams(r(ch, C), r(ch), r(C, ch), r(C))) if blocks else (None, None, None)
    pos = r(T, C) if blocks else None
    x = torch.randn(T, B, C, P, generator=g).to(dtype) if x is None else x
    hh = torch.randn(B, C, P, generator=g) if h0 else None
    kw = dict(alpha=2.0, v_threshold=1.0, v_reset=0.0, detach_reset=False, surrogate="rect", surrogate_param=1.0)
    out = []
    for path in ("per_step", "persistent"):
        f = L.staa_lif_forward(x, torch.zeros(T, dtype=torch.bool), hh, pos, gcx, gch, sa, **kw, store_v_seq=False,
                               path=path, keep_stats=True)
        L.staa_lif_backward(torch.randn_like(x), None, x, None, hh, pos, gcx, gch, sa, f[3], f[4], **kw, path=path,
                            stats=f[5])
    return out


def recorded(**kw):
    rec = []
    L.launch_hook = lambda kernel, grid, args, kwargs: rec.append((kernel, grid, args, dict(kwargs)))
    try:
        layer(**kw)
    finally:
        L.launch_hook = None
    return rec
'''


def _probe(body: str):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    env.pop("STAA_TRITON_LAUNCH", None)
    res = subprocess.run([sys.executable, "-c", PRELUDE + body], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_argument_list_is_the_jits_bound_list():
    """For every launch of a layer (both loop paths, blocks on and off, fp32 and bf16, with and
    without h0), the positional arguments plus ``constexpr_tail`` are the values the JIT binds."""
    res = _probe(r'''
n = 0
for kw in (dict(), dict(blocks=False), dict(dtype=torch.bfloat16, h0=True), dict(T=1, P=1)):
    for kernel, grid, args, kwargs in recorded(**kw):
        _, bound = jit_key(kernel, args, kwargs)
        ours = args + D.constexpr_tail(kernel, len(args), kwargs)
        assert len(ours) == len(bound), (kernel.__name__, len(ours), len(bound))
        for a, b in zip(ours, bound):
            assert a is b or (not isinstance(a, torch.Tensor) and a == b), (kernel.__name__, a, b)
        n += 1
print(json.dumps(dict(launches=n)))
''')
    assert res["launches"] > 40


def test_key_is_at_least_as_fine_as_the_jits():
    """Perturbed launches (tensors moved off or onto 16-byte alignment, dtypes changed, integers
    changed to 0, 1, 16, 2**31 and others): whenever two launches have an equal key, the JIT's
    cache key is equal too, and each one's twin (every tensor replaced by another at a different
    address with the same key) has the same JIT key. The perturbations do change the JIT's key,
    so the check has teeth."""
    res = _probe(r'''
rng = random.Random(0)
ints = [0, 1, 2, 3, 15, 16, 17, 32, 2 ** 31 - 1, 2 ** 31, -1, 2 ** 40]


def perturb(a):
    if isinstance(a, torch.Tensor):
        kind = rng.randrange(4)
        n = max(a.numel(), 1)
        if kind == 0:  # an aligned tensor of the same dtype
            return torch.empty(n + 8, dtype=a.dtype)[:n]
        if kind == 1:  # off 16-byte alignment
            return torch.empty(n + 8, dtype=a.dtype)[1:n + 1]
        if kind == 2:  # another dtype
            return torch.empty(n, dtype=rng.choice([torch.float32, torch.float16, torch.int8, torch.float64]))
        return a
    if isinstance(a, bool) or not isinstance(a, int):
        return a
    return rng.choice(ints)


def twin(a):
    # another tensor with the same key: same dtype, same side of 16-byte alignment, another address
    if not isinstance(a, torch.Tensor):
        return a
    n, item = max(a.numel(), 1), a.element_size()
    if a.data_ptr() % 16 == 0:
        return torch.empty(n + 64, dtype=a.dtype)[16 // item:][:n]
    off = rng.choice(range(1, 16 // item))
    return torch.empty(n + 64, dtype=a.dtype)[off:off + n]


groups, changed, n, twins = {}, 0, 0, 0
for kernel, grid, args, kwargs in recorded() + recorded(blocks=False):
    base = jit_key(kernel, args, kwargs)[0]
    for _ in range(30):
        new = tuple(perturb(a) if rng.random() < 0.3 else a for a in args)
        k, _b = jit_key(kernel, new, kwargs)
        ours = (kernel, D.spec(new), tuple(kwargs.items()))
        prev = groups.setdefault(ours, k)
        assert prev == k, (kernel.__name__, "equal key, different JIT key")
        changed += k != base
        n += 1
        # every tensor replaced by another with the same key: the JIT's key must not change
        other = tuple(twin(a) for a in new)
        assert D.spec(other) == D.spec(new)
        assert jit_key(kernel, other, kwargs)[0] == k, (kernel.__name__, "equal key, different JIT key")
        twins += 1
print(json.dumps(dict(samples=n, keys=len(groups), changed=changed, twins=twins)))
''')
    assert res["samples"] >= 900 and res["changed"] > 300 and res["keys"] > 300, res
    assert res["twins"] == res["samples"]


def test_launcher_traffic_hits_the_cache_with_the_jits_key():
    """Two identical layers through the real launchers with the driver calls replaced: the first
    fills the cache (one JIT launch per specialisation), the second launches every kernel directly;
    each direct launch's arguments have the JIT key of the launch that filled its entry and are the
    JIT's bound list. A misaligned input makes new specialisations; STAA_TRITON_LAUNCH=jit uses none."""
    res = _probe(r'''
stats = dict(first=0, direct=0, jit=0)
D.current_device, D.current_stream = (lambda: 0), (lambda device: "stream")


def first_launch(kernel, grid, args, kwargs):
    stats["first"] += 1
    key, bound = jit_key(kernel, args, kwargs)
    return (kernel, kwargs, key), D.constexpr_tail(kernel, len(args), kwargs)


def driver_launch(entry, grid, args, device):
    stats["direct"] += 1
    (kernel, kwargs, key), tail = entry
    now, bound = jit_key(kernel, args, kwargs)
    assert now == key, kernel.__name__
    assert all(a is b or a == b for a, b in zip(args + tail, bound)) and len(args + tail) == len(bound)
    assert device == 0


D.first_launch, D.driver_launch = first_launch, driver_launch
D.clear()
layer()
one = dict(stats)
layer()
two = {k: stats[k] - one[k] for k in stats}
base = D.cached()
T, B, C, P = 3, 2, 8, 6
x = torch.empty(T * B * C * P + 1)[1:].view(T, B, C, P).copy_(torch.randn(T, B, C, P))  # 4 bytes off alignment
layer(x=x)
misaligned = {k: stats[k] - one[k] - two[k] for k in stats}
os.environ["STAA_TRITON_LAUNCH"] = "jit"
jit_base = D.fixed_key(L.staa_fwd_elem_kernel, [(), (), None], {})
print(json.dumps(dict(one=one, two=two, misaligned=misaligned, kept=base, jit_base=jit_base)))
''')
    assert res["one"]["first"] > 0 and res["one"]["direct"] > 0  # per-step launches repeat within the call
    assert res["two"]["first"] == 0 and res["two"]["direct"] == res["one"]["first"] + res["one"]["direct"]
    assert res["misaligned"]["first"] > 0  # the kernels reading x see another specialisation
    assert res["kept"] == res["one"]["first"]
    assert res["jit_base"] is False


def test_driver_call_has_the_jits_form_and_first_launch_keeps_the_compiled_kernel():
    res = _probe(r'''
import inspect
calls = []


class Compiled:
    function, packed_metadata = "fn", "meta"

    def launch_metadata(self, grid, stream, *args):
        return ("md", grid, stream, len(args))

    def run(self, *a):
        calls.append(a)


def kernel_fn(a, b, N, K: "constexpr" = 7, M: "constexpr" = 9):
    pass


class Kernel:
    fn = staticmethod(kernel_fn)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            calls.append(("jit", grid, args, kwargs))
            return Compiled()
        return launch


D.current_stream = lambda device: "s%d" % device
k = Kernel()
entry = D.first_launch(k, (4,), (1, 2, 3), dict(K=5, num_warps=4))
assert calls.pop() == ("jit", (4,), (1, 2, 3), dict(K=5, num_warps=4))
assert entry[1] == (5, 9)  # K given, M's default; num_warps is an option, not a parameter
D.driver_launch(entry, (4, 2), (1, 2, 3), 1)
call = calls.pop()
from triton import knobs
hooks = (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
assert call == (4, 2, 1, "s1", "fn", "meta", ("md", (4, 2), "s1", 5), *hooks, 1, 2, 3, 5, 9), call


class Other:
    fn = staticmethod(kernel_fn)

    def __getitem__(self, grid):
        return lambda *a, **k: object()  # not a compiled kernel: keep launching through the JIT


assert D.first_launch(Other(), (1,), (1, 2, 3), {}) is D._JIT
os.environ["STAA_TRITON_LAUNCH"] = "bogus"
try:
    D.mode()
    raise AssertionError("no error")
except ValueError as e:
    bogus = str(e)
os.environ["STAA_TRITON_LAUNCH"] = "direct"
D.unsupported.cache_clear()
import triton
triton.__version__ = "3.2.0"
try:
    D.mode()
    raise AssertionError("no error")
except RuntimeError as e:
    old = str(e)
os.environ.pop("STAA_TRITON_LAUNCH")
print(json.dumps(dict(bogus=bogus, old=old, default=D.mode())))
''')
    assert "'direct', 'jit' or unset" in res["bogus"] and "'bogus'" in res["bogus"]
    assert "triton 3.2.0" in res["old"] and "STAA_TRITON_LAUNCH" in res["old"]
    assert res["default"] == "jit"  # the default falls back only when unset
