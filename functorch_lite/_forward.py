"""Forward-mode transforms: jvp and linearize, with forward AD at the jvp level's wrappers."""
import contextlib
import threading

import torch
import torch.autograd.forward_ad as fwAD
from torch.utils import _pytree as pytree

from functorch_lite import _C, _dynamo
from functorch_lite._autodiff import _name, _select_argnums, _split_aux, _unwrap_tree, _wrap_tree

# NOTE: [One dual level for all jvp levels]
# PyTorch's forward AD supports a single dual level at a time. Like functorch, only the outermost
# jvp enters one; nested jvp levels are told apart by their wrappers, not by dual levels: each
# jvp wraps its primals at its own level, attaches the tangents to those wrappers with make_dual,
# and reads tangents back only from outputs that are wrappers at its level. A tensor of a lower
# level (a captured dual of an outer jvp) has a tangent at the same dual level, but it belongs to
# the outer jvp: to this one it is a constant. Forward-AD formulas run ops on the level's wrappers
# while the router key is excluded, so they record at that level and the unwrap kernel carries
# them one level down, like every other op.
_nesting = threading.local()


@contextlib.contextmanager
def _outermost_dual_level():
    depth = getattr(_nesting, "depth", 0)
    _nesting.depth = depth + 1
    try:
        if depth == 0:
            with fwAD.dual_level():
                yield
        else:
            yield
    finally:
        _nesting.depth = depth


def _check_tensors(flat, api, what):
    if len(flat) == 0:
        raise RuntimeError(f"{api}: Expected {what} to contain at least one Tensor.")
    for t in flat:
        if not isinstance(t, torch.Tensor):
            raise RuntimeError(f"{api}: Expected {what} to only contain Tensors, got {type(t)}.")


def _check_outputs(flat, api):
    for t in flat:
        if not isinstance(t, torch.Tensor):
            raise RuntimeError(
                f"{api}: expected f(*primals) to return only tensors, got unsupported type "
                f"{type(t)}."
            )


def _check_tangents(flat_primals, flat_tangents, api):
    for i, (p, t) in enumerate(zip(flat_primals, flat_tangents)):
        if not (p.is_floating_point() or p.is_complex()):
            raise RuntimeError(
                f"{api}: only floating point or complex primals can be differentiated, got "
                f"primal {i} of dtype {p.dtype}."
            )
        if p.shape != t.shape:
            raise RuntimeError(
                f"{api}: Trying to set a forward gradient that has a different size than that "
                f"of the original Tensor, this is not supported: tangent {i} has shape "
                f"{tuple(t.shape)} but its primal has shape {tuple(p.shape)}; each tangent must "
                f"have the shape of its primal."
            )
        if not (t.is_floating_point() or t.is_complex()):
            raise RuntimeError(
                f"{api}: tangent {i} has dtype {t.dtype}; tangents must be floating point or "
                f"complex."
            )
        if t.dtype != p.dtype:
            raise RuntimeError(
                f"{api}: tangent {i} has dtype {t.dtype} but its primal has dtype {p.dtype}; "
                f"each tangent must have the dtype of its primal (convert it with .to({p.dtype}))."
            )


def _unpack(output, level, strict, api):
    """(primal, tangent) of one output, both still at `level`."""
    if _C._level_of(output) == level and _C._is_alive(output):
        primal, tangent = fwAD.unpack_dual(output)
    else:
        primal, tangent = output, None  # a constant to this level (see NOTE above)
    if tangent is None:
        if strict:
            raise RuntimeError(
                f"{api}: the output of the function does not depend on the primals, which "
                f"strict=True does not allow."
            )
        tangent = torch.zeros_like(primal)
    return primal, tangent


def _jvp_with_argnums(func, args, tangents, argnums, strict, has_aux, api, level_api):
    """jvp of `func` w.r.t. the arguments picked by argnums (None: all of them)."""
    if not isinstance(args, tuple):
        raise RuntimeError(
            f"{api}: Expected primals to be a tuple. E.g. it should be valid to call "
            f"f(*primals); got {type(args).__name__}."
        )
    selected, _ = _select_argnums(args, argnums, api)
    flat_primals, primals_spec = pytree.tree_flatten(selected)
    flat_tangents, tangents_spec = pytree.tree_flatten(tangents)
    if primals_spec != tangents_spec:
        raise RuntimeError(
            f"{api}: Expected primals and tangents to have the same python structure. For "
            f"example, if primals is a tuple of 3 tensors, tangents also must be. Got primals "
            f"with structure {primals_spec} and tangents with structure {tangents_spec}."
        )
    _check_tensors(flat_primals, api, "primals")
    _check_tensors(flat_tangents, api, "tangents")
    _check_tangents(flat_primals, flat_tangents, api)

    with _outermost_dual_level(), _C._jvp_level(level_api) as level:
        diff, rebuild = _select_argnums(_wrap_tree(args, level), argnums, api)
        flat_diff, diff_spec = pytree.tree_flatten(diff)
        duals = [fwAD.make_dual(p, t) for p, t in zip(flat_diff, flat_tangents)]
        result = func(*rebuild(pytree.tree_unflatten(duals, diff_spec)))
        output, aux = _split_aux(result, has_aux, api)
        flat_out, out_spec = pytree.tree_flatten(output)
        _check_outputs(flat_out, api)
        pairs = [_unpack(o, level, strict, api) for o in flat_out]
        primals_out = pytree.tree_unflatten([_C._unwrap_for_grad(p, level) for p, _ in pairs],
                                            out_spec)
        tangents_out = pytree.tree_unflatten([_C._unwrap_for_grad(t, level) for _, t in pairs],
                                             out_spec)
        if has_aux:
            return primals_out, tangents_out, _unwrap_tree(aux, level)
        return primals_out, tangents_out


@_dynamo.direct
def jvp(func, primals, tangents, *, strict=False, has_aux=False):
    """Returns (func(*primals), J @ tangents[, aux]): forward-mode AD (the jvp of functorch)."""
    api = f"jvp({_name(func)}, primals, tangents)"
    return _jvp_with_argnums(func, primals, tangents, None, strict, has_aux, api, "jvp")
