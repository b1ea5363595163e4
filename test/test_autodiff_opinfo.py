"""OpInfo-driven checks: vjp(op), jvp(op) and vmap(vjp(op)) against autograd and the for-loop."""
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.testing._internal.common_methods_invocations import op_db
from torch.utils import _pytree as pytree

import functorch_lite as ft
from functorch_lite._forward import jvp

# NOTE: [Which OpInfos test_autodiff_opinfo checks]
# A fixed table ("name" or "name.variant_test_name") of representative operators (unary and
# binary pointwise, reductions, linear algebra, views and indexing, shape ops, nn.functional),
# float64 on CPU, the first SAMPLES_PER_OP samples of each. For every sample the differentiable floating-point tensors
# among (input, *args) are the primals; the op's floating-point outputs are the outputs.
#   vjp       functorch_lite.vjp's vjp_fn(cotangents) equals torch.autograd.grad.
#   jvp       functorch_lite.jvp equals torch.autograd.forward_ad (when op.supports_forward_ad).
#   vmap_vjp  vmap(vjp_fn) over B cotangents equals the loop of vjp_fn calls.
# The whole file is sized to run in well under the ~3 minute budget on one core. Every test
# counts the samples it compared and fails when that is fewer than MIN_CHECKED (a test that
# skipped every sample would otherwise pass having checked nothing).
OPS = [
    # unary pointwise
    "abs", "acos", "asin", "atan", "cos", "cosh", "sin", "sinh", "tan", "tanh", "exp", "expm1",
    "log", "log1p", "log2", "sqrt", "rsqrt", "reciprocal", "sigmoid", "erf", "erfinv", "neg",
    "square", "lgamma", "digamma", "sinc", "logit", "frac", "nan_to_num",
    # binary / ternary pointwise
    "add", "sub", "mul", "div.no_rounding_mode", "pow", "atan2", "maximum", "minimum", "hypot",
    "fmod", "remainder", "where", "clamp", "lerp", "addcmul", "addcdiv", "xlogy", "copysign",
    # reductions
    "sum", "mean", "prod", "amax", "amin", "logsumexp", "var", "std", "norm", "cumsum",
    "cumprod", "max.reduction_with_dim", "min.reduction_no_dim", "median", "linalg.vector_norm",
    # linear algebra
    "mm", "bmm", "mv", "matmul", "addmm", "dot", "outer", "einsum", "linalg.det", "linalg.inv",
    "trace", "tril", "triu", "linalg.matrix_sqrth", "linalg.polar",
    # views, indexing, shape
    "reshape", "view", "transpose", "permute", "squeeze", "unsqueeze", "expand", "narrow",
    "select", "flatten", "t", "diagonal", "split", "chunk", "cat", "stack", "flip", "roll",
    "index_select", "gather", "take_along_dim", "masked_fill", "repeat", "unfold", "movedim",
    # nn.functional
    "nn.functional.relu", "nn.functional.gelu", "nn.functional.silu", "nn.functional.elu",
    "nn.functional.softplus", "nn.functional.leaky_relu", "nn.functional.hardtanh",
    "softmax", "log_softmax", "nn.functional.linear", "nn.functional.layer_norm",
    "nn.functional.mse_loss", "nn.functional.cross_entropy", "nn.functional.conv2d",
]
# OpInfos of OPS that torch 2.13's op_db does not have yet: left out there.
NEW_IN_TORCH_2_14 = {"linalg.matrix_sqrth", "linalg.polar"}
SAMPLES_PER_OP = 8
MIN_CHECKED = 1
B = 3

# (op key, check) -> why it does not pass yet. strict: fixing one makes its case XPASS and fail,
# so the entry gets removed.
XFAIL = {}


def _key(op):
    return f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name


def _ops():
    by_name = {_key(op): op for op in op_db if _key(op) in OPS}
    missing = sorted(set(OPS) - set(by_name) - NEW_IN_TORCH_2_14)
    assert not missing, f"not in op_db: {missing}"
    return [by_name[n] for n in OPS if n in by_name]


def _is_diff(t):
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _samples(op):
    for i, sample in enumerate(op.sample_inputs("cpu", torch.float64, requires_grad=True)):
        if i >= SAMPLES_PER_OP:
            return
        leaves, spec = pytree.tree_flatten((sample.input, tuple(sample.args)))
        diff_idx = [k for k, t in enumerate(leaves) if _is_diff(t) and t.requires_grad]
        if not diff_idx:
            continue
        leaves = [t.detach() if isinstance(t, torch.Tensor) else t for t in leaves]
        yield leaves, spec, dict(sample.kwargs), diff_idx


def _function(op, leaves, spec, kwargs, diff_idx):
    """f(*primals) -> tuple of the op's floating-point outputs."""

    def f(*primals):
        full = list(leaves)
        for k, p in zip(diff_idx, primals):
            full[k] = p
        inp, args = pytree.tree_unflatten(full, spec)
        out = op(inp, *args, **kwargs)
        return tuple(o for o in pytree.tree_leaves(out) if _is_diff(o))

    return f


def _cases(check):
    params = []
    for op in _ops():
        key = _key(op)
        reason = XFAIL.get((key, check))
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        params.append(pytest.param(op, id=key, marks=marks))
    return params


def _assert_checked(op, checked):
    assert checked >= MIN_CHECKED, (
        f"{_key(op)}: {checked} samples checked, fewer than {MIN_CHECKED} (of the first "
        f"{SAMPLES_PER_OP}, the ones with differentiable inputs and outputs)")


def _assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-6, equal_nan=True)


@pytest.fixture(autouse=True)
def _quiet_fallback():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.parametrize("op", _cases("vjp"))
def test_vjp_matches_autograd(op):
    checked = 0
    for leaves, spec, kwargs, diff_idx in _samples(op):
        f = _function(op, leaves, spec, kwargs, diff_idx)
        primals = [leaves[k] for k in diff_idx]
        out, vjp_fn = ft.vjp(f, *primals)
        if not out:
            continue
        cts = tuple(torch.randn_like(o) for o in out)
        ours = vjp_fn(cts)
        ref_primals = [p.clone().requires_grad_() for p in primals]
        ref_out = f(*ref_primals)
        _assert_close(out, tuple(o.detach() for o in ref_out))
        ref = torch.autograd.grad(ref_out, ref_primals, cts, allow_unused=True)
        ref = [torch.zeros_like(p) if g is None else g for g, p in zip(ref, primals)]
        _assert_close(list(ours), ref)
        checked += 1
    _assert_checked(op, checked)


@pytest.mark.parametrize("op", _cases("jvp"))
def test_jvp_matches_forward_ad(op):
    if not op.supports_forward_ad:
        pytest.skip("the op has no forward-AD formulas")
    checked = 0
    for leaves, spec, kwargs, diff_idx in _samples(op):
        f = _function(op, leaves, spec, kwargs, diff_idx)
        primals = tuple(leaves[k] for k in diff_idx)
        tangents = tuple(torch.randn_like(p) for p in primals)
        out, tangents_out = jvp(f, primals, tangents)
        with fwAD.dual_level():
            ref = f(*[fwAD.make_dual(p, t) for p, t in zip(primals, tangents)])
            ref_out = tuple(fwAD.unpack_dual(o).primal for o in ref)
            ref_t = tuple(fwAD.unpack_dual(o).tangent for o in ref)
        ref_t = tuple(torch.zeros_like(o) if t is None else t for o, t in zip(ref_out, ref_t))
        _assert_close(out, ref_out)
        _assert_close(tangents_out, ref_t)
        checked += 1
    _assert_checked(op, checked)


@pytest.mark.parametrize("op", _cases("vmap_vjp"))
def test_vmap_of_vjp_matches_the_loop(op):
    checked = 0
    for leaves, spec, kwargs, diff_idx in _samples(op):
        f = _function(op, leaves, spec, kwargs, diff_idx)
        out, vjp_fn = ft.vjp(f, *[leaves[k] for k in diff_idx])
        if not out:
            continue
        cts = tuple(torch.randn(B, *o.shape, dtype=o.dtype) for o in out)
        ours = ft.vmap(vjp_fn)(cts)
        loop = [vjp_fn(tuple(c[b] for c in cts)) for b in range(B)]
        ref = [torch.stack([grads[k] for grads in loop]) for k in range(len(diff_idx))]
        _assert_close(list(ours), ref)
        checked += 1
    _assert_checked(op, checked)
