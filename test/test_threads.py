"""Transforms from several threads at once: levels are per thread, results match one thread."""
import copy
import threading

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import functorch_lite as ft
from functorch_lite import _C

NUM_THREADS = 4
ROUNDS = 20
TIMEOUT_S = 60


def f(x, y):
    return (torch.sin(x) * y).sum() + (x * x).mean()


TRANSFORMS = {
    "vmap": lambda: ft.vmap(lambda x, y: torch.sin(x) * y + x.sum()),
    "grad": lambda: ft.grad(f),
    "vmap(grad)": lambda: ft.vmap(ft.grad(f)),
    "grad(grad)": lambda: ft.grad(lambda x, y: ft.grad(f)(x, y).sum()),
    "vmap(vmap)": lambda: ft.vmap(ft.vmap(torch.mul)),
}


def run_threads(target, n=NUM_THREADS):
    """Runs target(i) in n threads; re-raises the first failure, fails on a hang."""
    errors = []

    def guarded(i):
        try:
            target(i)
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_threads_match_one_thread(name):
    gen = torch.Generator().manual_seed(0)
    inputs = [
        (torch.randn(5, 6, generator=gen, dtype=torch.float64),
         torch.randn(5, 6, generator=gen, dtype=torch.float64))
        for _ in range(NUM_THREADS)
    ]
    expected = [TRANSFORMS[name]()(*args) for args in inputs]
    results = [[] for _ in range(NUM_THREADS)]
    start = threading.Barrier(NUM_THREADS, timeout=TIMEOUT_S)

    def work(i):
        fn = TRANSFORMS[name]()
        start.wait()  # all threads transform at once
        for _ in range(ROUNDS):
            results[i].append(fn(*inputs[i]))
            assert _C._layer_depth() == 0

    run_threads(work)
    for i in range(NUM_THREADS):
        assert len(results[i]) == ROUNDS
        for r in results[i]:
            torch.testing.assert_close(r, expected[i], rtol=0, atol=0)


def test_per_sample_grads_with_a_module_per_thread():
    """functional_call swaps a module's tensors while it runs (as torch.func's does), so a module
    must not be shared between threads; one copy per thread gives the single-thread results."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def per_sample_grads(module):
        def loss(p, xi, yi):
            out = ft.functional_call(module, p, (xi.unsqueeze(0),))
            return F.cross_entropy(out, yi.unsqueeze(0))

        return ft.vmap(ft.grad(loss), in_dims=(None, 0, 0))

    inputs = [(torch.randn(6, 4), torch.randint(0, 3, (6,))) for _ in range(NUM_THREADS)]
    expected = [per_sample_grads(model)(params, *args) for args in inputs]
    start = threading.Barrier(NUM_THREADS, timeout=TIMEOUT_S)

    def work(i):
        fn = per_sample_grads(copy.deepcopy(model))
        start.wait()
        for _ in range(ROUNDS):
            out = fn(params, *inputs[i])
            for k in expected[i]:
                torch.testing.assert_close(out[k], expected[i][k], rtol=0, atol=0)

    run_threads(work)


def test_each_thread_has_its_own_level_stack():
    """Levels pushed by one thread are invisible to another."""
    inside = threading.Barrier(NUM_THREADS, timeout=TIMEOUT_S)
    depths = [None] * NUM_THREADS

    def work(i):
        def body(x):
            def inner(y):
                inside.wait()  # every thread is two levels deep at once
                depths[i] = _C._layer_depth()
                inside.wait()
                return y.sin().sum()

            return ft.grad(inner)(x)

        out = ft.vmap(body)(torch.randn(3, 2))
        assert out.shape == (3, 2)

    run_threads(work)
    # vmap plus grad: depth 2 in every thread, though 4 threads held 8 levels between them.
    assert depths == [2] * NUM_THREADS


def test_an_exception_in_one_thread_leaves_other_threads_levels_intact():
    """Thread 0 raises in Python and thread 1 in C++ (.item() under vmap), inside vmap(grad),
    while the other threads are suspended inside their own vmap(grad)."""
    inside = threading.Barrier(NUM_THREADS, timeout=TIMEOUT_S)
    raised = threading.Barrier(NUM_THREADS, timeout=TIMEOUT_S)  # passed once 0 and 1 unwound
    failing = {0: (ValueError, "boom in thread 0"), 1: (RuntimeError, r"vmap: \.item\(\)")}
    seen = {}

    def work(i):
        x = torch.randn(4, 3, dtype=torch.float64)

        def g(xi):
            levels = (_C._layer_depth(), _C._level_of(xi))
            inside.wait()  # all threads are inside their transforms
            if i == 0:
                raise ValueError("boom in thread 0")
            if i == 1:
                xi.detach().sum().item()
            raised.wait()  # thread 0 and thread 1 have unwound
            assert (_C._layer_depth(), _C._level_of(xi)) == levels
            assert _C._is_alive(xi)
            return (xi.sin() * xi).sum()

        fn = ft.vmap(ft.grad(g))
        if i in failing:
            exc, match = failing[i]
            with pytest.raises(exc, match=match):
                fn(x)
            assert _C._layer_depth() == 0
            raised.wait()
            # The thread that raised can transform again.
            torch.testing.assert_close(ft.vmap(ft.grad(lambda y: y.sin().sum()))(x), x.cos())
        else:
            seen[i] = fn(x)
            torch.testing.assert_close(seen[i], x.cos() * x + x.sin())
            assert _C._layer_depth() == 0

    run_threads(work)
    assert sorted(seen) == list(range(2, NUM_THREADS))
