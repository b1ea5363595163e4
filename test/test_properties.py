"""Property tests (hypothesis): vmap equals the for-loop, grad equals finite differences."""
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import functorch_lite as ft
from functorch_lite import _C

def examples(n):
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,  # the same examples on every run, so a CI failure reproduces
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@pytest.fixture(autouse=True)
def _quiet_fallback():
    """Ops without a batching rule take the for-loop fallback, which warns once per op."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def randn(shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# Ops for "vmap equals the loop". Each entry: name -> (min sample rank, build), where
# build(draw, rank) draws the op's arguments for a sample of that rank and returns x -> out.
def _dim(draw, rank):
    return draw(st.integers(-rank, rank - 1))


def _dim_pair(draw, rank):
    return draw(st.permutations(range(rank)))[:2]


UNARY_OPS = {
    "sin": (0, lambda draw, r: torch.sin),
    "exp": (0, lambda draw, r: torch.exp),
    "tanh": (0, lambda draw, r: torch.tanh),
    "abs": (0, lambda draw, r: torch.abs),
    "neg": (0, lambda draw, r: torch.neg),
    "sigmoid": (0, lambda draw, r: torch.sigmoid),
    "relu": (0, lambda draw, r: torch.relu),
    "pow": (0, lambda draw, r: lambda x: x.pow(2)),
    # Rank >= 1: with 0-dim samples a Python float promotes to float64 (see the xfail below).
    "mul_scalar": (1, lambda draw, r: lambda x: x * 1.5 - 0.5),
    "clamp": (0, lambda draw, r: lambda x: x.clamp(-0.5, 0.5)),
    "where": (1, lambda draw, r: lambda x: torch.where(x > 0, x, x * 0.1)),
    "clone_mul_": (0, lambda draw, r: lambda x: x.clone().mul_(2).add_(1)),
}

REDUCTION_OPS = {
    "sum_all": (0, lambda draw, r: torch.sum),
    "mean_all": (0, lambda draw, r: torch.mean),
    "amax_all": (1, lambda draw, r: torch.amax),
    "sum_dim": (1, lambda draw, r: (lambda d, k: lambda x: x.sum(d, keepdim=k))(
        _dim(draw, r), draw(st.booleans()))),
    "mean_dim": (1, lambda draw, r: (lambda d, k: lambda x: x.mean(d, keepdim=k))(
        _dim(draw, r), draw(st.booleans()))),
    "amax_dim": (1, lambda draw, r: (lambda d: lambda x: x.amax(d))(_dim(draw, r))),
    "logsumexp": (1, lambda draw, r: (lambda d: lambda x: x.logsumexp(d))(_dim(draw, r))),
    "softmax": (1, lambda draw, r: (lambda d: lambda x: x.softmax(d))(_dim(draw, r))),
    "cumsum": (1, lambda draw, r: (lambda d: lambda x: x.cumsum(d))(_dim(draw, r))),
    "norm": (1, lambda draw, r: lambda x: x.norm()),
    "var_dim": (1, lambda draw, r: (lambda d: lambda x: x.var(d, correction=0))(_dim(draw, r))),
    "argmax_dim": (1, lambda draw, r: (lambda d: lambda x: x.argmax(d))(_dim(draw, r))),
    "min_dim": (1, lambda draw, r: (lambda d: lambda x: x.min(d).values)(_dim(draw, r))),
    "sort": (1, lambda draw, r: (lambda d: lambda x: x.sort(d).values)(_dim(draw, r))),
}

VIEW_OPS = {
    "transpose": (2, lambda draw, r: (lambda p: lambda x: x.transpose(*p))(_dim_pair(draw, r))),
    "permute": (1, lambda draw, r: (lambda p: lambda x: x.permute(p))(
        draw(st.permutations(range(r))))),
    "unsqueeze": (0, lambda draw, r: (lambda d: lambda x: x.unsqueeze(d))(
        draw(st.integers(-r - 1, r)))),
    "squeeze": (1, lambda draw, r: (lambda d: lambda x: x.squeeze(d))(_dim(draw, r))),
    "flatten": (0, lambda draw, r: lambda x: x.flatten()),
    "reshape": (0, lambda draw, r: lambda x: x.reshape(-1, 1)),
    "movedim": (1, lambda draw, r: (lambda a, b: lambda x: x.movedim(a, b))(
        _dim(draw, r), _dim(draw, r))),
    "select": (1, lambda draw, r: (lambda d: lambda x: x.select(d, -1))(_dim(draw, r))),
    "narrow": (1, lambda draw, r: (lambda d: lambda x: x.narrow(d, 0, 1))(_dim(draw, r))),
    "diagonal": (2, lambda draw, r: (lambda p: lambda x: x.diagonal(0, *p))(_dim_pair(draw, r))),
    "expand": (0, lambda draw, r: lambda x: x.expand(2, *x.shape)),
    "index": (1, lambda draw, r: lambda x: x[..., :1]),
    "t_view_of_view": (2, lambda draw, r: lambda x: x.transpose(0, 1).unsqueeze(0).squeeze(0)),
}

BINARY_OPS = {
    "add": torch.add,
    "mul": torch.mul,
    "sub": torch.sub,
    "maximum": torch.maximum,
    "atan2": torch.atan2,
    "div": lambda x, y: x / (y.abs() + 1),
}

OPS = {**UNARY_OPS, **REDUCTION_OPS, **VIEW_OPS}
shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3)


def batched(sample_shape, batch_size, in_dim, seed):
    """A tensor whose slices along in_dim are the samples."""
    shape = list(sample_shape)
    shape.insert(in_dim % (len(shape) + 1), batch_size)
    return randn(shape, seed)


def loop(func, in_dims, args, batch_size, out_dim):
    """vmap's definition: call func per sample and stack along out_dim."""
    outs = []
    for b in range(batch_size):
        sample = [a if d is None else a.select(d, b) for a, d in zip(args, in_dims)]
        outs.append(func(*sample))
    return torch.stack(outs, out_dim)


@examples(300)
@given(data=st.data(), name=st.sampled_from(sorted(OPS)), sample=shapes,
       batch_size=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_vmap_of_an_op_equals_the_loop(data, name, sample, batch_size, seed):
    min_rank, build = OPS[name]
    sample = sample + [2] * max(0, min_rank - len(sample))
    rank = len(sample)
    op = build(data.draw, rank)
    in_dim = data.draw(st.integers(-rank - 1, rank), label="in_dim")
    x = batched(sample, batch_size, in_dim, seed)
    out_rank = op(x.select(in_dim, 0)).dim()
    out_dim = data.draw(st.integers(-out_rank - 1, out_rank), label="out_dim")
    expected = loop(op, (in_dim,), (x,), batch_size, out_dim)
    actual = ft.vmap(op, in_dims=in_dim, out_dims=out_dim)(x)
    torch.testing.assert_close(actual, expected)
    assert _C._layer_depth() == 0


@examples(150)
@given(data=st.data(), name=st.sampled_from(sorted(BINARY_OPS)), sample=shapes,
       batch_size=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_vmap_of_a_broadcasting_binary_op_equals_the_loop(data, name, sample, batch_size, seed):
    op = BINARY_OPS[name]
    # y's sample shape is a suffix of x's with some sizes set to 1, so the two broadcast.
    suffix = sample[len(sample) - data.draw(st.integers(0, len(sample)), label="y_rank"):]
    y_sample = [data.draw(st.sampled_from([s, 1])) for s in suffix]
    x_dim = data.draw(st.one_of(st.none(), st.integers(-len(sample) - 1, len(sample))))
    y_dim = data.draw(st.one_of(st.none(), st.integers(-len(y_sample) - 1, len(y_sample))))
    if x_dim is None and y_dim is None:
        x_dim = 0
    x = randn(sample, seed) if x_dim is None else batched(sample, batch_size, x_dim, seed)
    seed_y = seed + 1
    y = randn(y_sample, seed_y) if y_dim is None else batched(y_sample, batch_size, y_dim, seed_y)
    swap = data.draw(st.booleans(), label="y first")
    args, dims = ((y, x), (y_dim, x_dim)) if swap else ((x, y), (x_dim, y_dim))
    expected = loop(op, dims, args, batch_size, 0)
    actual = ft.vmap(op, in_dims=dims)(*args)
    torch.testing.assert_close(actual, expected)


def test_a_python_scalar_keeps_the_dtype_of_0_dim_samples():
    x = torch.randn(3)
    for f in (lambda x: x * 1.5, lambda x: 0.5 - x, lambda x: x.add(1.5)):
        assert ft.vmap(f)(x).dtype == torch.float32


# Smooth functions for "grad equals finite differences": a chain of ops from SMOOTH (each
# keeps the input finite and moderate), then a reduction to a scalar.
SMOOTH = {
    "sin": torch.sin,
    "cos": torch.cos,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": torch.nn.functional.softplus,
    "atan": torch.atan,
    "square": lambda x: x * x,
    "cube": lambda x: 0.3 * x.pow(3),
    "log1p_sq": lambda x: torch.log1p(x * x),
    "exp_scaled": lambda x: torch.exp(0.3 * x),
    "affine": lambda x: 0.7 * x + 0.2,
    "softmax": lambda x: torch.softmax(x, -1),
    "logsumexp_keep": lambda x: x - x.logsumexp(-1, keepdim=True),
    "cumsum": lambda x: 0.5 * x.cumsum(-1),
    "flip": lambda x: x.flip(-1),
    "roll_mul": lambda x: x * x.roll(1, -1),
    "transpose": lambda x: x.transpose(0, -1),
    "reshape": lambda x: x.reshape(x.shape[::-1]),
}

REDUCE = {
    "sum": lambda x: x.sum(),
    "mean_sq": lambda x: (x * x).mean(),
    "weighted": lambda x: (x * torch.linspace(-1, 1, x.numel(), dtype=x.dtype).view(x.shape)).sum(),
    "norm": lambda x: (x * x + 1).sum().sqrt(),
    "amax_smooth": lambda x: x.logsumexp(-1).sum(),
}

chains = st.lists(st.sampled_from(sorted(SMOOTH)), min_size=1, max_size=4)


def compose(names, reduce):
    def f(x):
        for n in names:
            x = SMOOTH[n](x)
        return REDUCE[reduce](x)

    return f


def finite_differences(f, args, argnum, eps=1e-6):
    x = args[argnum]
    grad = torch.zeros_like(x)
    flat = grad.view(-1)
    for i in range(x.numel()):
        step = torch.zeros_like(x).view(-1)
        step[i] = eps
        step = step.view(x.shape)
        plus = list(args)
        minus = list(args)
        plus[argnum], minus[argnum] = x + step, x - step
        flat[i] = (f(*plus) - f(*minus)) / (2 * eps)
    return grad


@examples(120)
@given(names=chains, reduce=st.sampled_from(sorted(REDUCE)),
       shape=st.lists(st.integers(1, 3), min_size=1, max_size=2), seed=st.integers(0, 2**31))
def test_grad_equals_finite_differences(names, reduce, shape, seed):
    f = compose(names, reduce)
    x = randn(shape, seed, torch.float64)
    expected = finite_differences(f, (x,), 0)
    torch.testing.assert_close(ft.grad(f)(x), expected, rtol=1e-5, atol=1e-6)


@examples(60)
@given(names_x=chains, names_y=chains, reduce=st.sampled_from(sorted(REDUCE)),
       shape=st.lists(st.integers(1, 3), min_size=1, max_size=2), seed=st.integers(0, 2**31))
def test_grad_of_two_arguments_equals_finite_differences(names_x, names_y, reduce, shape, seed):
    fx, fy = compose(names_x, "sum"), compose(names_y, "sum")

    def f(x, y):
        return REDUCE[reduce](torch.sin(x) * y) + fx(x) * fy(y)

    x, y = randn(shape, seed, torch.float64), randn(shape, seed + 1, torch.float64)
    gx, gy = ft.grad(f, argnums=(0, 1))(x, y)
    torch.testing.assert_close(gx, finite_differences(f, (x, y), 0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gy, finite_differences(f, (x, y), 1), rtol=1e-5, atol=1e-6)


@examples(60)
@given(names=chains, reduce=st.sampled_from(sorted(REDUCE)),
       shape=st.lists(st.integers(1, 3), min_size=1, max_size=2),
       batch_size=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_vmap_of_grad_equals_the_loop_of_grads(names, reduce, shape, batch_size, seed):
    f = compose(names, reduce)
    x = randn([batch_size, *shape], seed, torch.float64)
    expected = loop(ft.grad(f), (0,), (x,), batch_size, 0)
    torch.testing.assert_close(ft.vmap(ft.grad(f))(x), expected)
