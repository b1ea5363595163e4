"""OpInfo-driven check of vmap(jvp(op)) with the vmap fallback off, against torch.func.

NOTE: [Which OpInfos test_vmap_jvp_opinfo checks]
Every OpInfo of op_db with forward-AD formulas and float64 CPU support, except random ones,
its first SAMPLES_PER_OP samples (a cap that keeps this file to a few minutes on one core).
The floating-point tensors among (input, *args) are the primals, the floating-point outputs the
outputs. Each sample runs vmap(lambda p, t: jvp(f, p, t)) with in_dims batching the primals, the
tangents, or both (B perturbed copies stacked at dim 0), with the for-loop fallback disabled, so
every operator on the way, forward-AD helpers included, needs a batching rule. The reference is
torch.func on the same inputs; a sample that torch.func itself rejects is not checked.
"""
import contextlib
import warnings

import pytest
import torch
import torch.func
from torch.testing._internal.common_methods_invocations import op_db
from torch.utils import _pytree as pytree

import functorch_lite as ft
from functorch_lite import _C
from vmap_opinfo_utils import is_random_op

SAMPLES_PER_OP = 3
B = 3
PATTERNS = {"primals": (0, None), "tangents": (None, 0), "both": (0, 0)}
_SCALES = (1.0, 0.75, 0.5)

# op key -> why vmap(jvp) of it does not match torch.func yet.
XFAIL = {}


def _marks(op):
    if _key(op) in XFAIL:
        return [pytest.mark.xfail(reason=XFAIL[_key(op)], strict=True)]
    return []


def _key(op):
    return f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name


def _ops():
    return [op for op in op_db
            if op.supports_forward_ad and torch.float64 in op.supported_dtypes("cpu")
            and not is_random_op(op)]


def _is_float(t):
    return isinstance(t, torch.Tensor) and t.is_floating_point()


@contextlib.contextmanager
def _fallback_off():
    previous = _C._is_vmap_fallback_enabled()
    _C._set_vmap_fallback_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _C._set_vmap_fallback_enabled(previous)


def _cases(op):
    torch.manual_seed(0)
    for i, sample in enumerate(op.sample_inputs("cpu", torch.float64, requires_grad=True)):
        if i >= SAMPLES_PER_OP:
            return
        leaves, spec = pytree.tree_flatten((sample.input, tuple(sample.args)))
        idx = [k for k, t in enumerate(leaves) if _is_float(t) and t.requires_grad]
        if not idx:
            continue
        leaves = [t.detach() if isinstance(t, torch.Tensor) else t for t in leaves]
        kwargs = dict(sample.kwargs)

        def f(*primals, leaves=leaves, spec=spec, idx=idx, kwargs=kwargs):
            full = list(leaves)
            for k, p in zip(idx, primals):
                full[k] = p
            inp, args = pytree.tree_unflatten(full, spec)
            out = op(inp, *args, **kwargs)
            return tuple(o for o in pytree.tree_leaves(out) if _is_float(o))

        primals = tuple(leaves[k] for k in idx)
        yield f, primals


def _batched(t):
    return torch.stack([t * s for s in _SCALES])


def _run(T, f, primals, tangents, in_dims):
    return T.vmap(lambda p, t: T.jvp(f, p, t), in_dims=in_dims)(primals, tangents)


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize(
    "op", [pytest.param(op, id=_key(op), marks=_marks(op)) for op in _ops()])
def test_vmap_of_jvp_matches_torch_func(op, pattern):
    in_dims = PATTERNS[pattern]
    checked = 0
    for f, primals in _cases(op):
        tangents = tuple(torch.randn_like(p) for p in primals)
        p_in = tuple(_batched(p) for p in primals) if in_dims[0] == 0 else primals
        t_in = tuple(_batched(t) for t in tangents) if in_dims[1] == 0 else tangents
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = _run(torch.func, f, p_in, t_in, in_dims)
        except Exception:  # noqa: BLE001 - torch.func rejects this sample: nothing to match
            continue
        with _fallback_off():
            actual = _run(ft, f, p_in, t_in, in_dims)
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6, equal_nan=True,
                                   check_stride=False)
        checked += 1
    if checked == 0:
        pytest.skip("torch.func's vmap(jvp) rejects every sample (or there are none)")
