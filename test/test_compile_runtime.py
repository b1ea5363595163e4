"""The compile runtime's memory pool, and the branch-free max pooling inductor_compile uses."""

import itertools
import os
import threading

import expecttest
import pytest
import torch
import torch.func
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

import functorch_lite
from functorch_lite.compile import (
    aot_function,
    empty_memory_pool,
    inductor_compile,
    is_memory_pool_enabled,
    memory_pool_stats,
    nop,
    set_memory_pool_enabled,
    set_memory_pool_limit,
)
from functorch_lite.compile._pooling import max_pool2d_with_indices, pooling_decompositions

aten = torch.ops.aten
LARGE = (256, 1024)  # 1 MiB of float32: pooled (at least 128 KiB)


DEFAULT_LIMIT = memory_pool_stats()["limit_bytes"]


@pytest.fixture(autouse=True)
def fresh_pool():
    """Each test starts with an empty pool, enabled, at the default limit."""
    empty_memory_pool()
    yield
    set_memory_pool_enabled(True)
    set_memory_pool_limit(DEFAULT_LIMIT)
    empty_memory_pool()


def outer(a, b):
    return a[:, None] * b[None, :]


def outer_args(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(LARGE[0], generator=g), torch.randn(LARGE[1], generator=g)


def counts():
    stats = memory_pool_stats()
    return stats["allocated"], stats["reused"]


# ---------------------------------------------------------------------------------------
# The memory pool (NOTE: [The memory pool of compiled graphs]).


def test_pool_is_installed_and_on_by_default():
    stats = memory_pool_stats()
    assert is_memory_pool_enabled()
    assert stats["installed"]
    assert stats["limit_bytes"] == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4


def test_dropped_output_block_is_reused_by_the_next_call():
    compiled = aot_function(outer, nop)
    out = compiled(*outer_args())
    address = out.data_ptr()
    allocated, reused = counts()
    del out
    assert memory_pool_stats()["free_bytes"] >= LARGE[0] * LARGE[1] * 4
    out = compiled(*outer_args(1))
    assert counts() == (allocated, reused + 1)
    assert out.data_ptr() == address
    torch.testing.assert_close(out, outer(*outer_args(1)))


def test_live_output_is_never_overwritten():
    compiled = aot_function(outer, nop)
    first = compiled(*outer_args(0))
    kept = first.clone()
    view = first[3]  # a view keeps the block alive as well
    del first
    second = compiled(*outer_args(1))
    assert second.data_ptr() != view.data_ptr() - 3 * LARGE[1] * 4
    torch.testing.assert_close(view, kept[3])
    torch.testing.assert_close(second, outer(*outer_args(1)))


def test_small_and_eager_allocations_are_not_pooled():
    before = counts()
    aot_function(lambda a, b: a * b, nop)(torch.randn(100), torch.randn(100))
    torch.empty(LARGE).fill_(1)  # eager, outside any compiled graph
    assert counts() == before


def test_disabled_pool_serves_nothing():
    set_memory_pool_enabled(False)
    assert not is_memory_pool_enabled()
    before = counts()
    out = aot_function(outer, nop)(*outer_args())
    assert counts() == before
    torch.testing.assert_close(out, outer(*outer_args()))


def test_limit_frees_blocks_beyond_it():
    set_memory_pool_limit(0)
    aot_function(outer, nop)(*outer_args())  # the output dies at once
    stats = memory_pool_stats()
    assert stats["free_bytes"] == 0 and stats["used_bytes"] == 0


def test_block_freed_on_another_thread_returns_to_the_pool():
    compiled = aot_function(outer, nop)
    box = [compiled(*outer_args())]
    thread = threading.Thread(target=box.clear)
    thread.start()
    thread.join()
    _, reused = counts()
    compiled(*outer_args())
    assert counts()[1] == reused + 1


def test_concurrent_first_calls_compile_once_and_never_share_a_live_block():
    compiled = aot_function(outer, nop)
    errors = []

    def worker(seed):
        try:
            for i in range(20):
                args = outer_args(seed * 100 + i)
                out = compiled(*args)
                torch.testing.assert_close(out, outer(*args))
        except Exception as e:  # reported below: pytest does not see thread exceptions
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert compiled.cache.num_compiles == 1  # the threads' first calls compiled once, in turn
    assert memory_pool_stats()["used_bytes"] == 0


def test_exception_in_a_compiled_graph_leaves_the_pool_off():
    def failing_compiler(gm, example_inputs):
        def run(*args):
            torch.empty(LARGE)  # allocated in the pool
            raise RuntimeError("boom")

        return run

    with pytest.raises(RuntimeError, match="boom"):
        aot_function(outer, failing_compiler)(*outer_args())
    before = counts()
    torch.empty(LARGE).fill_(1)  # would be pooled if the guard had stayed entered
    assert counts() == before


def test_training_graphs_run_in_the_pool_and_match_eager():
    w = torch.randn(512, 512, requires_grad=True)
    x = torch.randn(256, 512)

    def f(w, x):
        return (x @ w).relu().sum()

    compiled = aot_function(f, nop)
    for _ in range(2):
        (grad,) = torch.autograd.grad(compiled(w, x), w)
        (expected,) = torch.autograd.grad(f(w, x), w)
        torch.testing.assert_close(grad, expected)
    assert counts()[1] > 0


def test_pooled_memory_is_reported_to_the_profiler():
    compiled = aot_function(outer, nop)
    compiled(*outer_args())
    with torch.profiler.profile(profile_memory=True) as prof:
        out = compiled(*outer_args())
        del out
    mul = [e for e in prof.key_averages() if e.key == "aten::mul"]
    assert mul and mul[0].cpu_memory_usage == LARGE[0] * LARGE[1] * 4


def test_resizing_a_pooled_output_returns_its_block():
    compiled = aot_function(outer, nop)
    out = compiled(*outer_args())
    expected = out.clone()
    out.resize_(2 * LARGE[0], LARGE[1])  # a new, larger block; the old one is freed
    torch.testing.assert_close(out[: LARGE[0]], expected)
    assert memory_pool_stats()["free_bytes"] >= LARGE[0] * LARGE[1] * 4


class TestPoolErrors(expecttest.TestCase):
    def test_negative_limit(self):
        with self.assertRaises(ValueError) as ctx:
            set_memory_pool_limit(-1)
        self.assertExpectedInline(
            str(ctx.exception), """set_memory_pool_limit: limit_bytes must be >= 0, got -1"""
        )


# ---------------------------------------------------------------------------------------
# functorch_lite::max_pool2d_tiled (NOTE: [Non-overlapping max pooling without branches]).

SHAPES = [(2, 3, 8, 8), (3, 7, 9), (1, 1, 5, 6), (64, 8, 26, 26), (1, 2, 3, 40)]
KERNELS = [(2, 2), (3, 3), (2, 3), (1, 1), (4, 1)]


def awkward_input(shape, dtype):
    """ReLU outputs (ties at zero) with NaNs and infinities sprinkled in."""
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype).relu()
    x.view(-1)[::17] = float("nan")
    x.view(-1)[5::23] = float("nan")
    x.view(-1)[7::29] = float("inf")
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,kernel", list(itertools.product(SHAPES, KERNELS)))
def test_tiled_max_pool_equals_eager_values_and_indices(shape, kernel, dtype):
    x = awkward_input(shape, dtype)
    for x in (x, x.transpose(-1, -2)):  # the second is not contiguous
        if x.shape[-2] < kernel[0] or x.shape[-1] < kernel[1]:
            continue
        values, indices = aten.max_pool2d_with_indices(x, list(kernel), list(kernel))
        got_values, got_indices = torch.ops.functorch_lite.max_pool2d_tiled(x, *kernel)
        torch.testing.assert_close(got_values, values, equal_nan=True, atol=0, rtol=0)
        assert torch.equal(got_indices, indices)


def test_tiled_max_pool_gradient_equals_eager():
    x = awkward_input((2, 3, 9, 8), torch.float32).nan_to_num()
    grad = torch.randn(2, 3, 4, 4)
    indices = torch.ops.functorch_lite.max_pool2d_tiled(x, 2, 2)[1]
    got = aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], 0, 1, False, indices)
    xr = x.clone().requires_grad_()
    F.max_pool2d(xr, 2).backward(grad)
    assert torch.equal(got, xr.grad)


def test_tiled_max_pool_meta_shapes():
    values, indices = torch.ops.functorch_lite.max_pool2d_tiled(
        torch.empty(4, 3, 9, 7, device="meta"), 2, 3
    )
    assert values.shape == indices.shape == (4, 3, 4, 2)
    assert values.dtype == torch.float32 and indices.dtype == torch.int64


@pytest.mark.parametrize(
    "args",
    [
        dict(kernel_size=[2, 2], stride=[1, 1]),  # overlapping windows
        dict(kernel_size=[2, 2], padding=[1, 1]),
        dict(kernel_size=[2, 2], dilation=[2, 2]),
        dict(kernel_size=[2, 2], ceil_mode=True),
        dict(kernel_size=[2, 2], dtype=torch.bfloat16),
        dict(kernel_size=[2, 2], device="meta"),
        dict(kernel_size=[5, 5]),  # larger than the input
    ],
    ids=["overlap", "padding", "dilation", "ceil_mode", "bfloat16", "not_cpu", "too_big"],
)
def test_other_poolings_keep_the_default_lowering(args):
    args = dict(args)
    x = torch.randn(2, 3, 4, 4, dtype=args.pop("dtype", torch.float32), device=args.pop("device", "cpu"))
    assert max_pool2d_with_indices(x, **args) is NotImplemented


def pooled_graph_targets(fn, *args):
    table = pooling_decompositions({})
    return {n.target for n in make_fx(fn, decomposition_table=table)(*args).graph.nodes}


def test_decomposition_picks_the_kernel_only_for_tiling_windows():
    x = torch.randn(2, 3, 8, 8)
    assert torch.ops.functorch_lite.max_pool2d_tiled.default in pooled_graph_targets(
        lambda x: F.max_pool2d(x, 2), x
    )
    assert aten.max_pool2d_with_indices.default in pooled_graph_targets(
        lambda x: F.max_pool2d(x, 3, stride=1), x
    )


class TestTiledPoolErrors(expecttest.TestCase):
    def test_window_does_not_fit(self):
        with self.assertRaises(RuntimeError) as ctx:
            torch.ops.functorch_lite.max_pool2d_tiled(torch.randn(1, 2, 2), 3, 3)
        self.assertExpectedInline(
            str(ctx.exception).splitlines()[0],
            """max_pool2d_tiled: the window 3x3 does not fit the input""",
        )

    def test_wrong_rank(self):
        with self.assertRaises(RuntimeError) as ctx:
            torch.ops.functorch_lite.max_pool2d_tiled(torch.randn(4, 4), 2, 2)
        self.assertExpectedInline(
            str(ctx.exception).splitlines()[0],
            """max_pool2d_tiled: expected a 3-D or 4-D input, got 2-D""",
        )


def cnn_loss(params, x, y):
    wc, bc, wf, bf = params
    h = F.max_pool2d(F.relu(F.conv2d(x.unsqueeze(0), wc, bc)), 2)
    return F.cross_entropy(F.linear(h.flatten(1), wf, bf), y.unsqueeze(0))


def test_inductor_per_sample_grads_of_a_cnn_equal_torch_func(recwarn):
    torch.manual_seed(0)
    params = [torch.randn(4, 1, 3, 3), torch.randn(4), torch.randn(10, 4 * 5 * 5), torch.randn(10)]
    x, y = torch.randn(6, 1, 12, 12), torch.randint(0, 10, (6,))
    compiled = aot_function(
        functorch_lite.vmap(functorch_lite.grad(cnn_loss), in_dims=(None, 0, 0)), inductor_compile
    )
    expected = torch.func.vmap(torch.func.grad(cnn_loss), in_dims=(None, 0, 0))(params, x, y)
    for _ in range(2):  # the second call runs in recycled memory
        for got, want in zip(compiled(params, x, y), expected):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert not [w for w in recwarn if "inductor_compile:" in str(w.message)]


# ---------------------------------------------------------------------------------------
# Double backward through a compiled function: refused by name, never silently constant.


def sin_squared(w):
    return (w.sin() ** 2).sum()


def test_create_graph_first_order_grads_equal_eager():
    w = torch.randn(5, requires_grad=True)
    (got,) = torch.autograd.grad(aot_function(sin_squared, nop)(w), w, create_graph=True)
    (want,) = torch.autograd.grad(sin_squared(w), w)
    torch.testing.assert_close(got, want)
    (plain,) = torch.autograd.grad(aot_function(sin_squared, nop)(w), w)
    assert not plain.requires_grad


class TestDoubleBackward(expecttest.TestCase):
    def check_refused(self, fn, *args):
        w = args[0]
        (g,) = torch.autograd.grad(aot_function(fn, nop)(*args), w, create_graph=True)
        with self.assertRaises(RuntimeError) as ctx:
            # w.sum() keeps the sum differentiable: without the error, g's share would vanish.
            torch.autograd.grad(g.sum() + w.sum(), args)
        return str(ctx.exception)

    def test_grad_of_grad_names_the_api(self):
        w = torch.randn(5, requires_grad=True)
        self.assertExpectedInline(
            self.check_refused(sin_squared, w),
            """aot_function: the backward of a compiled function cannot be differentiated again (double backward needs the joint graph of the joint graph, which is not built). Please take higher-order gradients of the function uncompiled.""",
        )

    def test_grad_that_depends_only_on_another_input_is_refused_too(self):
        w, x = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
        self.check_refused(lambda w, x: (w * x).sum(), w, x)
