"""Eager transforms allocate from the memory pool: the contract (a block is reused only after
the last tensor using it has died) for results kept, viewed, shared with numpy and made on
other threads, and the bound on what the pool keeps (NOTE: [Eager transforms allocate from the
pool], NOTE: [What the pool keeps])."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.func
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import functorch_lite as ft
from functorch_lite import _C

DEFAULT_LIMIT = ft.memory_pool_stats()["limit_bytes"]


@pytest.fixture(autouse=True)
def fresh_pool():
    """Each test starts with an empty pool, enabled, at the default limit."""
    ft.empty_memory_pool()
    yield
    ft.set_memory_pool_enabled(True)
    ft.set_memory_pool_limit(DEFAULT_LIMIT)
    ft.empty_memory_pool()


def counts():
    stats = ft.memory_pool_stats()
    return stats["allocated"], stats["reused"]


def loss(w, x, y):
    """A linear classifier's loss on one sample; its per-sample gradient is pooled when
    batch * w.numel() * 4 bytes reach 128 KiB."""
    return F.cross_entropy((w @ x).unsqueeze(0), y.unsqueeze(0))


def inputs(seed, batch=16, classes=32, features=128):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(classes, features, generator=g)
    x = torch.randn(batch, features, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    return w, x, y


per_sample = ft.vmap(ft.grad(loss), in_dims=(None, 0, 0))
reference = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))


def expect(seed):
    return reference(*inputs(seed))


# ---------------------------------------------------------------------------------------
# The pool serves live transforms, and can be turned off.


def test_per_sample_gradients_come_from_the_pool_and_are_reused_once_dropped():
    allocated, reused = counts()
    out = per_sample(*inputs(0))
    assert counts()[0] > allocated, "the per-sample gradient was not pooled"
    address = out.data_ptr()
    del out
    _, reused = counts()
    out = per_sample(*inputs(1))
    assert counts()[1] > reused
    assert out.data_ptr() == address
    torch.testing.assert_close(out, expect(1))


@pytest.mark.parametrize("scope", ["transforms", "all"])
def test_switched_off_the_pool_serves_no_transform(scope):
    ft.set_memory_pool_enabled(False, scope)
    assert not ft.is_memory_pool_enabled(scope)
    assert ft.is_memory_pool_enabled("compiled") == (scope == "transforms")
    before = counts()
    out = per_sample(*inputs(0))
    assert counts() == before
    torch.testing.assert_close(out, expect(0))


def test_allocations_outside_transforms_and_after_an_error_are_not_pooled():
    def fails(w, x, y):
        torch.empty(256, 1024).fill_(1)  # pooled: inside the level
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ft.vmap(fails, in_dims=(None, 0, 0))(*inputs(0))
    before = counts()
    torch.empty(256, 1024).fill_(1)  # the level is gone, and so is its pool scope
    assert counts() == before


@pytest.mark.parametrize(
    "transform",
    [
        lambda w, x: ft.jacrev(lambda w: (w @ x).tanh())(w),
        lambda w, x: ft.jacfwd(lambda w: (w @ x).tanh())(w),
        lambda w, x: ft.hessian(lambda w: (w @ x[:64]).tanh().sum())(w[:8, :64]),
        lambda w, x: ft.vjp(lambda w: w.repeat(8, 8).sin(), w)[1](torch.ones(256, 1024))[0],
        lambda w, x: ft.jvp(lambda w: w.repeat(8, 8).sin(), (w,), (torch.ones(32, 128),))[1],
    ],
    ids=["jacrev", "jacfwd", "hessian", "vjp", "jvp"],
)
def test_every_transform_keeps_its_results_across_calls(transform):
    w, x, _ = inputs(0)
    before = sum(counts())
    first = transform(w, x[0])
    assert sum(counts()) > before, "nothing came from the pool"
    kept = first.clone()
    for seed in (1, 2):
        w2, x2, _ = inputs(seed)
        transform(w2, x2[0])
    torch.testing.assert_close(first, kept, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------
# The contract: a block is reused only after the last tensor using it has died.

KEEP = st.sampled_from(["drop", "tensor", "view", "numpy", "from_numpy", "storage"])


def keep(out, how):
    """What the caller keeps of a result, and how to read it back as a tensor."""
    if how == "tensor":
        return out, lambda: out
    if how == "view":
        view = out[1:, 3]
        return view, lambda: view
    if how == "numpy":
        array = out.numpy()
        return array, lambda: torch.tensor(array)
    if how == "from_numpy":
        back = torch.from_numpy(out.numpy())
        return back, lambda: back
    storage = out.untyped_storage()
    return storage, lambda: torch.empty(0).set_(storage).view(out.shape)


@settings(max_examples=30, deadline=None)
@given(plan=st.lists(st.tuples(KEEP, st.integers(0, 3)), min_size=2, max_size=8))
def test_kept_results_are_never_overwritten(plan):
    """A random sequence of calls, each result dropped or kept (as a tensor, a view, a numpy
    array, a tensor over that array, its storage): at the end every kept result still holds
    what it held when returned."""
    kept = []
    for how, seed in plan:
        out = per_sample(*inputs(seed))
        if how == "drop":
            continue
        snapshot = out.clone()
        holder, read = keep(out, how)
        shape_of = out.shape
        del out  # only the holder keeps the block alive now
        kept.append((holder, read, snapshot, seed, how, shape_of))
    for _, read, snapshot, seed, how, shape in kept:
        value = read().reshape(-1)
        expected = snapshot[1:, 3].reshape(-1) if how == "view" else snapshot.reshape(-1)
        torch.testing.assert_close(value, expected, rtol=0, atol=0)
        full = expect(seed)
        torch.testing.assert_close(snapshot, full)


def test_result_returned_from_a_nested_call_outlives_the_levels():
    outer = ft.vmap(lambda w, x, y: ft.grad(loss)(w, x, y) * 2, in_dims=(None, 0, 0))
    first = outer(*inputs(0))
    kept = first.clone()
    second = outer(*inputs(1))
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    torch.testing.assert_close(second, expect(1) * 2)


def run_in_subprocess(program):
    """Runs a program that may crash the interpreter: a crash is a failure showing it."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(program)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"program:\n{program}\nstderr:\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_threads_keep_and_drop_results_concurrently():
    """Four threads call vmap(grad) at once, each keeping every other result and handing the
    rest to another thread to drop: every kept result is intact at the end."""
    out = run_in_subprocess("""
        import queue, threading
        import torch, torch.nn.functional as F
        import functorch_lite as ft

        def loss(w, x, y):
            return F.cross_entropy((w @ x).unsqueeze(0), y.unsqueeze(0))

        f = ft.vmap(ft.grad(loss), in_dims=(None, 0, 0))
        w = torch.randn(32, 128)
        to_drop, errors, done = queue.Queue(), [], []

        def dropper():
            while (item := to_drop.get()) is not None:
                del item

        def worker(seed):
            try:
                g = torch.Generator().manual_seed(seed)
                kept = []
                for i in range(40):
                    x = torch.randn(16, 128, generator=g)
                    y = torch.randint(0, 32, (16,), generator=g)
                    out = f(w, x, y)
                    if i % 2:
                        kept.append((out, out.clone()))
                    else:
                        to_drop.put(out)
                    del out
                for out, snapshot in kept:
                    assert torch.equal(out, snapshot)
                done.append(seed)
            except Exception as e:  # reported below
                errors.append(repr(e))

        drop = threading.Thread(target=dropper)
        drop.start()
        threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        to_drop.put(None)
        drop.join()
        assert not errors, errors
        stats = ft.memory_pool_stats()
        assert stats["reused"] > 0, stats
        print(len(done))
    """)
    assert out.strip() == "4"


# ---------------------------------------------------------------------------------------
# What the pool keeps (NOTE: [What the pool keeps]).


def test_a_loop_keeps_at_most_one_and_a_half_times_its_peak():
    w, x, y = inputs(0, batch=64)
    result = None
    for _ in range(20):
        result = per_sample(w, x, y)  # the previous result dies once this one exists
        stats = ft.memory_pool_stats()
        held = stats["used_bytes"] + stats["free_bytes"]
        assert held <= 1.5 * stats["peak_used_bytes"] + 4096
    assert counts()[1] > 0
    del result


def test_limit_and_empty_free_the_cached_blocks():
    per_sample(*inputs(0))  # dropped at once: its blocks are cached
    assert ft.memory_pool_stats()["free_bytes"] > 0
    ft.set_memory_pool_limit(0)
    assert ft.memory_pool_stats()["free_bytes"] == 0
    ft.set_memory_pool_limit(DEFAULT_LIMIT)
    per_sample(*inputs(0))
    ft.empty_memory_pool()
    assert ft.memory_pool_stats()["free_bytes"] == 0


def test_sizes_no_longer_asked_for_are_freed():
    """Calls with 1 MiB outputs, then calls with 256 KiB ones: once the peak of the recent calls
    is the small one, the cached 1 MiB block is over the bound and freed (the limit, a quarter
    of physical memory, would have kept it)."""
    double = ft.vmap(lambda x: x * 2)
    big, small = torch.randn(64, 4096), torch.randn(64, 1024)
    for _ in range(3):
        double(big)  # dropped at once
    assert ft.memory_pool_stats()["free_bytes"] >= big.numel() * 4
    for _ in range(3):
        double(small)
    stats = ft.memory_pool_stats()
    assert stats["free_bytes"] < big.numel() * 4, stats
    assert stats["used_bytes"] + stats["free_bytes"] <= 1.5 * stats["peak_used_bytes"], stats


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: ft.set_memory_pool_enabled(True, "eager"), ValueError),
        (lambda: ft.is_memory_pool_enabled("everything"), ValueError),
        (lambda: ft.set_memory_pool_limit(-1), ValueError),
        (lambda: ft.set_memory_pool_limit(1.5), TypeError),
    ],
)
def test_bad_arguments_raise(call, error):
    with pytest.raises(error):
        call()
    assert _C._layer_depth() == 0
