"""vmap(op) equals a for-loop over the samples, for a fixed table of torch's OpInfos (op_db).

Three table-driven tests (see NOTE: [Batched OpInfo cases] in vmap_opinfo_utils.py):
- test_vmap_matches_loop: every OpInfo of OPS, each tensor argument batched at dim 0 and at the
  last dim, alone and all together, plus two nested vmap levels;
- test_has_batching_rule: the same with the for-loop fallback disabled, for the OpInfos whose
  operators all have batching rules (or decompose into operators that do);
- test_vmap_vjp_matches_loop: vmap over vjp (what vmap(grad) and jacrev run), which exercises
  the backward operators, with the fallback disabled.
The whole op_db is covered by benchmarks/opinfo_coverage.py (docs/opinfo_coverage.md).
"""
import functools
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import functorch_lite  # noqa: E402
from functorch_lite import _C  # noqa: E402
import vmap_opinfo_utils as U  # noqa: E402

MAX_SAMPLES = 6  # samples per OpInfo, which keeps the file under a few minutes on 2 cores
# NOTE: [Minimum checked cases]
# A test that skips every sample passes having checked nothing. So each test counts what it
# compared: at least MIN_CASES batched cases per OpInfo (one sample batched at dim 0, at the last
# dim and at two levels is three), and at least one vmap(vjp) sample, else it fails and lists why
# the samples were left out. Only an OpInfo with no differentiable output is skipped by the vjp
# test, saying so.
MIN_CASES = 3
MIN_VJP_SAMPLES = 1
NOT_DIFFERENTIABLE = ("the op does not support autograd", "no floating tensor inputs",
                      "no floating outputs")

# NOTE: [The CI op table]
# A fixed, representative list: a few ops of every family (pointwise and their backward
# activations, reductions and scans, views and shape ops, matmul, convolution, pooling and
# upsampling, indexing and scatter/gather, normalization, losses, linalg). Names are OpInfo names
# with the variant after a dot, as benchmarks/opinfo_coverage.py prints them.
POINTWISE = [
    "abs", "acos", "add", "addcdiv", "addcmul", "atan2", "ceil", "clamp", "copysign", "cos",
    "div.no_rounding_mode", "div.floor_rounding", "eq", "erf", "exp", "expm1", "float_power",
    "floor", "fmod", "frac", "gt", "heaviside", "hypot", "isclose", "lerp", "log", "log1p",
    "logaddexp", "logical_and", "logit", "maximum", "minimum", "mul", "nan_to_num", "neg",
    "polygamma.polygamma_n_1", "pow", "reciprocal", "remainder", "round", "rsqrt", "sigmoid",
    "sign", "sin", "special.i0e", "sqrt", "square", "sub", "tanh", "trunc", "where", "xlogy",
    "masked_fill",
]
ACTIVATIONS = [
    "nn.functional.relu", "nn.functional.gelu", "nn.functional.silu", "nn.functional.elu",
    "nn.functional.leaky_relu", "nn.functional.hardtanh", "nn.functional.softplus",
    "nn.functional.mish", "nn.functional.hardswish", "nn.functional.celu", "nn.functional.selu",
    "nn.functional.softshrink", "nn.functional.prelu", "nn.functional.glu",
    "nn.functional.logsigmoid", "nn.functional.threshold",
]
REDUCTIONS = [
    "sum", "mean", "prod", "amax", "amin", "max.reduction_with_dim", "min.reduction_no_dim",
    "argmax", "all", "any", "std", "var", "logsumexp", "norm", "linalg.vector_norm", "cumsum",
    "cummax", "logcumsumexp", "median", "nanmedian", "mode", "sort", "topk", "kthvalue",
    "softmax", "log_softmax", "count_nonzero", "var_mean",
]
VIEWS = [
    "view", "reshape", "permute", "transpose", "squeeze", "unsqueeze", "flatten", "unflatten",
    "expand", "select", "split", "chunk", "unbind", "movedim", "t", "diagonal", "flip",
    "roll", "rot90", "repeat", "tile", "cat", "stack", "hstack", "diag_embed", "diag", "tril",
    "unfold", "new_zeros", "view_copy", "select_scatter", "slice_scatter", "diagonal_scatter",
    "constant_pad_nd",
]
MATMUL = [
    "mm", "bmm", "mv", "matmul", "dot", "addmm", "baddbmm", "addbmm", "addmv", "addr", "outer",
    "einsum", "nn.functional.linear", "nn.functional.bilinear", "inner", "tensordot",
    "linalg.multi_dot",
]
CONV_POOL = [
    "nn.functional.conv1d", "nn.functional.conv2d", "nn.functional.conv3d",
    "nn.functional.conv_transpose1d", "nn.functional.conv_transpose2d",
    "nn.functional.max_pool1d", "nn.functional.max_pool2d", "nn.functional.avg_pool2d",
    "nn.functional.avg_pool3d", "nn.functional.adaptive_avg_pool2d",
    "nn.functional.adaptive_max_pool2d", "nn.functional.interpolate.bilinear",
    "nn.functional.interpolate.nearest", "nn.functional.pad.reflect",
    "nn.functional.pad.circular", "nn.functional.pixel_shuffle", "nn.functional.unfold",
    "nn.functional.grid_sample", "max_pool2d_with_indices_backward",
]
INDEXING = [
    "__getitem__", "index_put", "index_select", "index_add", "index_copy", "index_fill",
    "gather", "scatter", "scatter_add", "scatter_reduce.sum", "take", "take_along_dim",
    "bucketize", "searchsorted", "put",
]
NORMALIZATION = [
    "nn.functional.layer_norm", "nn.functional.group_norm", "native_layer_norm",
    "nn.functional.local_response_norm",
]
LOSSES = [
    "nn.functional.mse_loss", "nn.functional.l1_loss", "nn.functional.smooth_l1_loss",
    "nn.functional.huber_loss", "nn.functional.binary_cross_entropy",
    "nn.functional.binary_cross_entropy_with_logits", "nn.functional.kl_div",
    "nn.functional.cross_entropy", "nn.functional.nll_loss", "nn.functional.soft_margin_loss",
    "nn.functional.cosine_similarity",
]
LINALG = [
    "linalg.det", "linalg.inv", "linalg.solve", "linalg.cholesky", "cholesky_solve",
    "linalg.qr", "linalg.svd", "linalg.eigh", "linalg.slogdet", "logdet", "linalg.pinv",
    "linalg.matrix_norm", "linalg.lu_factor", "linalg.lu_solve", "linalg.solve_triangular",
    "matrix_exp", "trace", "linalg.cross", "cdist", "dist", "renorm",
    "linalg.householder_product", "fft.fft", "fft.rfft2",
    # new in torch 2.14 (skipped on 2.13: not an OpInfo there)
    "linalg.matrix_sqrth", "linalg.polar",
]
OPS = (POINTWISE + ACTIVATIONS + REDUCTIONS + VIEWS + MATMUL + CONV_POOL + INDEXING +
       NORMALIZATION + LOSSES + LINALG)

# Not in the table, with the reason (torch.func fails them too):
# - narrow: its sample passes `start` as a tensor, read with .item() (data-dependent);
# - nn.functional.embedding: max_norm renormalizes the weight in place (embedding_renorm_);
# - native_batch_norm, nn.functional.instance_norm, nn.functional.batch_norm: training mode
#   updates unbatched running statistics in place, which vmap refuses (NOTE: [Batching batch
#   norm]); test/test_vmap_rules.py checks the batch-norm rules with batched statistics.

# OpInfos whose samples need the for-loop fallback, with the reason; excluded from
# test_has_batching_rule.
NEEDS_FALLBACK = {
    "index_put": "a sample indexes with a batched boolean mask (a different count per sample)",
}

# vmap(vjp) is checked on the OpInfos with differentiable float inputs; these backward passes
# still reach the fallback or differ from the loop.
VJP_EXCLUDED = {
    "nn.functional.pad.circular": "its backward runs as_strided on a batched gradient",
    "unfold": "its backward on a 0-dim sample is covered by test_vmap_matches_loop only",
}


@functools.lru_cache(maxsize=None)
def _op_db_by_name():
    from torch.testing._internal.common_methods_invocations import op_db
    table = {}
    for op in op_db:
        full = op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")
        table.setdefault(full, op)
    return table


def _opinfo(name):
    op = _op_db_by_name().get(name)
    if op is None:
        pytest.skip(f"{name} is not an OpInfo of this torch version")
    if U.is_random_op(op):
        pytest.skip(f"{name} is random: its loop reference cannot match one batched call")
    return op


def _cases(name):
    """(case, expected) for every checkable case of the OpInfo, or pytest.skip with the reason."""
    op = _opinfo(name)
    try:
        samples = U.samples(op, MAX_SAMPLES)
    except U.Skip as e:
        pytest.skip(f"{name}: {e} (CPU float32 is what this suite runs)")
    cases, reasons = [], set()
    for sample in samples:
        try:
            sample_cases = U.batched_cases(op.op, sample)
        except U.Skip as e:
            reasons.add(str(e))
            continue
        for case in sample_cases:
            try:
                cases.append((case, U.reference_or_skip(case)))
            except U.Skip as e:
                reasons.add(str(e))
    assert len(cases) >= MIN_CASES, (
        f"{name}: {len(cases)} checkable cases, fewer than {MIN_CASES} (NOTE: [Minimum checked "
        f"cases]); samples left out because: {'; '.join(sorted(reasons)) or 'no tensors'}")
    return cases


@pytest.fixture(autouse=True)
def quiet_fallback():
    previous = _C._is_vmap_fallback_warning_enabled()
    _C._set_vmap_fallback_warning_enabled(False)
    try:
        yield
    finally:
        _C._set_vmap_fallback_warning_enabled(previous)


@pytest.mark.parametrize("name", OPS)
def test_vmap_matches_loop(name):
    for case, expected in _cases(name):
        with U.quiet():
            U.check_case(case, functorch_lite.vmap, name, expected)


@pytest.mark.parametrize("name", [n for n in OPS if n not in NEEDS_FALLBACK])
def test_has_batching_rule(name, no_fallback):
    for case, expected in _cases(name):
        with U.quiet():
            U.check_case(case, functorch_lite.vmap, name, expected)


VJP_OPS = [n for n in OPS if n not in VJP_EXCLUDED]


@pytest.mark.parametrize("name", VJP_OPS)
def test_vmap_vjp_matches_loop(name, no_fallback):
    op = _opinfo(name)
    try:
        samples = U.samples(op, MAX_SAMPLES)
    except U.Skip as e:
        pytest.skip(f"{name}: {e}")
    checked, reasons = 0, set()
    for sample in samples:
        try:
            case = U.vjp_case(op, sample)  # Skip when the loop reference errors, with the error
        except U.Skip as e:
            reasons.add(str(e))
            continue
        with U.quiet():
            expected = case.reference()
            U.check_vjp_case(case, functorch_lite.vmap, functorch_lite.vjp, name, expected)
        checked += 1
    if checked == 0 and reasons and all(r in NOT_DIFFERENTIABLE for r in reasons):
        pytest.skip(f"{name}: nothing to differentiate ({'; '.join(sorted(reasons))})")
    assert checked >= MIN_VJP_SAMPLES, (
        f"{name}: {checked} vmap(vjp) samples checked, fewer than {MIN_VJP_SAMPLES} (NOTE: "
        f"[Minimum checked cases]); samples left out because: {'; '.join(sorted(reasons))}")


def test_tolerances_name_opinfos_exactly():
    """NOTE: [OpInfo tolerances]: every loosened entry is the exact name of an OpInfo."""
    names = set(_op_db_by_name())
    for table in (U.VMAP_TOLERANCES, U.VJP_TOLERANCES):
        assert set(table) <= names, sorted(set(table) - names)
    assert U.tolerance("nn.functional.relu") == U.tolerance("lu") == (1e-5, 1.3e-6)
    assert U.tolerance("cumsum") == U.vjp_tolerance("sum") == (1e-5, 1.3e-6)


def test_fallback_switch_is_restored():
    """The fixture above restores the switch; a disabled fallback names the operator."""
    assert _C._is_vmap_fallback_enabled()
    previous = _C._is_vmap_fallback_enabled()
    _C._set_vmap_fallback_enabled(False)
    try:
        with pytest.raises(RuntimeError, match=r"vmap: the operator aten::\S+ has no batching "
                                               r"rule and the for-loop fallback is disabled"):
            functorch_lite.vmap(torch.nonzero)(torch.ones(2, 3))
    finally:
        _C._set_vmap_fallback_enabled(previous)
    assert _C._is_vmap_fallback_enabled()
