"""Memory: many transform calls keep resident memory flat and leave no wrapper alive."""
import gc
import os
import subprocess
import sys
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import functorch_lite as ft
from functorch_lite import _C

CALLS = 10_000
WARMUP = 500
MAX_GROWTH_BYTES = 3 * 2**20


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Tiny ops spread over the intra-op pool spin-wait; on a busy CI box that is 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def is_wrapper(obj):
    # issubclass(type(...)): isinstance would touch deprecated module attributes in gc's list.
    return issubclass(type(obj), torch.Tensor) and (
        _C._is_batched(obj) or _C._is_grad_wrapper(obj)
    )


def live_wrappers():
    gc.collect()
    return sum(1 for o in gc.get_objects() if is_wrapper(o))


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def per_sample_grads(model):
    def loss(p, xi, yi):
        out = ft.functional_call(model, p, (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    return ft.vmap(ft.grad(loss), in_dims=(None, 0, 0))


def mlp_loss(w1, b1, w2, b2, xi, yi):
    """The tiny model written on its weights: the cheapest per-sample-gradient call."""
    logits = torch.tanh(xi @ w1.t() + b1) @ w2.t() + b2
    return F.cross_entropy(logits.unsqueeze(0), yi.unsqueeze(0))


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_many_calls_of_vmap_grad_keep_memory_flat():
    weights = [p.detach() for p in tiny_model().parameters()]
    x, y = torch.randn(4, 4), torch.randint(0, 3, (4,))
    fn = ft.vmap(ft.grad(mlp_loss, argnums=(0, 1, 2, 3)), in_dims=(None,) * 4 + (0, 0))
    expected = fn(*weights, x, y)
    for _ in range(WARMUP):
        fn(*weights, x, y)
    wrappers_before = live_wrappers()
    before = rss_bytes()
    for _ in range(CALLS):
        out = fn(*weights, x, y)
    growth = rss_bytes() - before
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    del out
    assert growth < MAX_GROWTH_BYTES, f"resident memory grew by {growth / 2**20:.1f} MiB"
    assert live_wrappers() <= wrappers_before
    assert _C._layer_depth() == 0


def test_outputs_and_intermediates_are_freed():
    """Module hooks see every layer's input and output inside vmap(grad): wrappers at both
    levels. All of them, and the outputs, are gone after the call (and gc)."""
    model = tiny_model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(4, 4), torch.randint(0, 3, (4,))
    seen = []

    def record(module, inputs, output):
        for t in (*inputs, output):
            assert _C._is_grad_wrapper(t) and _C._is_alive(t)
            seen.append(weakref.ref(t))

    handles = [m.register_forward_hook(record) for m in model]
    try:
        out = per_sample_grads(model)(params, x, y)
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == 6
    assert not any(is_wrapper(g) for g in out.values())
    refs = [weakref.ref(g) for g in out.values()]
    del out
    gc.collect()
    assert [r for r in refs if r() is not None] == []
    assert [r for r in seen if r() is not None] == [], "intermediates outlived the call"


def test_escaped_wrappers_are_dead_and_free_their_values():
    escaped = []

    def f(x):
        y = x.sin()
        escaped.append(y)
        return y.sum()

    x = torch.randn(3, 5)
    ft.vmap(ft.grad(f))(x)
    ft.grad(f)(x[0])
    ft.vmap(lambda r: escaped.append(r * 2) or r)(x)
    assert len(escaped) == 3
    assert all(is_wrapper(e) and not _C._is_alive(e) for e in escaped)
    refs = [weakref.ref(e) for e in escaped]
    escaped.clear()
    gc.collect()
    assert [r for r in refs if r() is not None] == []


PEAK_RSS_PROGRAM = """
import torch, torch.nn.functional as F
import functorch_lite as ft
lib = {lib}
ft.set_memory_pool_enabled({pool}, "transforms")
g = torch.Generator().manual_seed(0)
ws = [torch.randn(512, 784, generator=g) / 28, torch.randn(10, 512, generator=g) / 23]
x, y = torch.randn(64, 784, generator=g), torch.randint(0, 10, (64,), generator=g)

def loss(ws, xi, yi):
    return F.cross_entropy((ws[1] @ (ws[0] @ xi).relu()).unsqueeze(0), yi.unsqueeze(0))

f = lib.vmap(lib.grad(loss), in_dims=(None, 0, 0))
result = None
for _ in range(30):
    result = f(ws, x, y)  # the previous result dies once this one exists
with open("/proc/self/status") as status:
    print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")))
"""


def peak_rss_kib(lib, pool):
    program = PEAK_RSS_PROGRAM.format(lib=lib, pool=pool)
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"program:\n{program}\nstderr:\n{proc.stderr[-3000:]}"
    return int(proc.stdout.split()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
def test_pooled_per_sample_gradient_loop_peaks_near_torch_func():
    """30 steps of per-sample gradients (100 MiB each): with the pool, peak resident memory is
    at most 1.25x torch.func's (NOTE: [What the pool keeps]), each in a fresh process."""
    reference = peak_rss_kib("torch.func", True)
    pooled = peak_rss_kib("ft", True)
    unpooled = peak_rss_kib("ft", False)
    assert pooled <= 1.25 * reference, (pooled, unpooled, reference)
