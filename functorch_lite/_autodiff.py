"""Reverse-mode transforms: grad, grad_and_value and vjp."""
import functools

import torch
from torch.utils import _pytree as pytree

from functorch_lite import _C


def _name(func):
    return getattr(func, "__name__", repr(func))


def _wrap_tree(tree, level):
    return pytree.tree_map(
        lambda t: _C._wrap_for_grad(t, level) if isinstance(t, torch.Tensor) else t, tree
    )


def _unwrap_tree(tree, level):
    return pytree.tree_map(
        lambda t: _C._unwrap_for_grad(t, level) if isinstance(t, torch.Tensor) else t, tree
    )


def _make_differentiable(tree, api):
    def mark(t):
        if not isinstance(t, torch.Tensor):
            raise ValueError(
                f"{api}: expected the arguments selected by argnums to be Tensors (or pytrees of "
                f"Tensors), got {type(t).__name__}."
            )
        if not (t.is_floating_point() or t.is_complex()):
            raise ValueError(
                f"{api}: only floating point or complex inputs can be differentiated, got an "
                f"input of dtype {t.dtype} selected by argnums."
            )
        return t.requires_grad_()

    return pytree.tree_map(mark, tree)


def _check_argnums(argnums, num_args, api):
    nums = argnums if isinstance(argnums, tuple) else (argnums,)
    if isinstance(argnums, tuple) and len(argnums) == 0:
        raise RuntimeError(f"{api}: argnums must be non-empty.")
    for n in nums:
        if not isinstance(n, int):
            raise RuntimeError(
                f"{api}: argnums must be an int or a tuple of ints, got {type(n).__name__}."
            )
        if not -num_args <= n < num_args:
            raise RuntimeError(
                f"{api}: got argnums={argnums} but the function was called with {num_args} "
                f"positional argument(s)."
            )
    normalized = tuple(n % num_args for n in nums)
    if len(set(normalized)) != len(normalized):
        raise RuntimeError(f"{api}: argnums must be unique, got {argnums}.")
    return normalized


def _split_aux(output, has_aux, api):
    if not has_aux:
        return output, None
    if not (isinstance(output, tuple) and len(output) == 2):
        raise RuntimeError(
            f"{api}: with has_aux=True the function must return a tuple (output, aux), got "
            f"{type(output).__name__}"
            + (f" of length {len(output)}" if isinstance(output, tuple) else "")
            + "."
        )
    return output


def _autograd_grad(outputs, inputs, grad_outputs):
    """torch.autograd.grad that gives zeros for inputs the outputs do not depend on."""
    flat_inputs, spec = pytree.tree_flatten(inputs)
    flat_outputs = [o for o in pytree.tree_leaves(outputs)]
    flat_grad_outputs = pytree.tree_leaves(grad_outputs)
    diff = [(o, g) for o, g in zip(flat_outputs, flat_grad_outputs) if o.requires_grad]
    if diff:
        grads = torch.autograd.grad(
            [o for o, _ in diff],
            flat_inputs,
            [g for _, g in diff],
            create_graph=True,
            allow_unused=True,
        )
    else:
        grads = [None] * len(flat_inputs)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, flat_inputs)]
    return pytree.tree_unflatten(grads, spec)


def grad_and_value(func, argnums=0, has_aux=False):
    """Returns a function computing (gradient, value) of scalar `func` (see torch.func)."""

    @functools.wraps(func)
    def wrapped(*args, **kwargs):
        api = f"grad_and_value({_name(func)}, argnums={argnums!r})(<inputs>)"
        nums = _check_argnums(argnums, len(args), api)
        with _C._grad_level("grad") as level:
            args = _wrap_tree(args, level)
            diff_args = tuple(_make_differentiable(args[n], api) for n in nums)
            output, aux = _split_aux(func(*args, **kwargs), has_aux, api)
            if not isinstance(output, torch.Tensor):
                raise RuntimeError(
                    f"{api}: expected the function to return a Tensor, got "
                    f"{type(output).__name__}."
                )
            if output.dim() != 0:
                raise RuntimeError(
                    f"{api}: expected the function to return a scalar (0-dim) Tensor, got a "
                    f"Tensor of shape {tuple(output.shape)}. Use vjp or jacrev for non-scalar "
                    f"outputs."
                )
            if not (output.is_floating_point() or output.is_complex()):
                raise RuntimeError(
                    f"{api}: expected the function to return a floating point Tensor, got "
                    f"dtype {output.dtype}."
                )
            grads = _autograd_grad(output, diff_args, torch.ones_like(output))
            grads = _unwrap_tree(grads, level)
            value = _unwrap_tree(output, level)
            aux = _unwrap_tree(aux, level)
        if not isinstance(argnums, tuple):
            grads = grads[0]
        return grads, ((value, aux) if has_aux else value)

    return wrapped


def grad(func, argnums=0, has_aux=False):
    """Returns a function computing the gradient of scalar `func` w.r.t. `argnums`."""
    inner = grad_and_value(func, argnums, has_aux)

    @functools.wraps(func)
    def wrapped(*args, **kwargs):
        grads, value = inner(*args, **kwargs)
        return (grads, value[1]) if has_aux else grads

    return wrapped


def vjp(func, *primals, has_aux=False):
    """Returns (output, vjp_fn[, aux]) for `func` at `primals` (see torch.func.vjp)."""
    api = f"vjp({_name(func)}, ...)"
    level_guard = _C._grad_level("vjp")
    level = level_guard.__enter__()
    try:
        wrapped = _wrap_tree(primals, level)
        diff = _make_differentiable(wrapped, api)
        output, aux = _split_aux(func(*diff), has_aux, api)
        flat_out, out_spec = pytree.tree_flatten(output)
        for o in flat_out:
            if not isinstance(o, torch.Tensor):
                raise RuntimeError(
                    f"{api}: expected the function to return Tensors (or pytrees of them), got "
                    f"{type(o).__name__}."
                )
        primal_out = _unwrap_tree(output, level)
        aux = _unwrap_tree(aux, level)
    except BaseException:
        level_guard.__exit__(None, None, None)
        raise
    level_guard.__exit__(None, None, None)
    # NOTE: [vjp_fn after the level is gone]
    # The graph recorded at the vjp level stays reachable from the (now dead) wrappers; the
    # cotangents are wrapped at a fresh grad level so higher-order uses record again.
    def vjp_fn(cotangents, retain_graph=True, create_graph=None):
        flat_ct, ct_spec = pytree.tree_flatten(cotangents)
        if ct_spec != out_spec:
            raise RuntimeError(
                f"{api}: expected the cotangents passed to vjp_fn to have the same structure as "
                f"the outputs ({out_spec}), got {ct_spec}."
            )
        for o, c in zip(flat_out, flat_ct):
            if o.shape != c.shape:
                raise RuntimeError(
                    f"{api}: mismatch in shape: the output has shape {tuple(o.shape)} but the "
                    f"cotangent has shape {tuple(c.shape)}."
                )
        return _run_vjp(flat_out, flat_ct, diff)

    return (primal_out, vjp_fn, aux) if has_aux else (primal_out, vjp_fn)


def _run_vjp(outputs, cotangents, inputs):
    flat_inputs, spec = pytree.tree_flatten(inputs)
    diff = [(o, c) for o, c in zip(outputs, cotangents) if o.requires_grad]
    if diff:
        grads = torch.autograd.grad(
            [o for o, _ in diff],
            flat_inputs,
            [c for _, c in diff],
            create_graph=torch.is_grad_enabled(),
            allow_unused=True,
            retain_graph=True,
        )
    else:
        grads = [None] * len(flat_inputs)
    grads = [
        torch.zeros_like(_C._unwrap_grad_wrapper(x)) if g is None else _strip(g)
        for g, x in zip(grads, flat_inputs)
    ]
    return pytree.tree_unflatten(grads, spec)


def _strip(t):
    """The value of a wrapper of a popped level (grads of a vjp computed after it returned)."""
    while _C._is_grad_wrapper(t) and not _C._is_alive(t):
        t = _C._unwrap_grad_wrapper(t)
    return t
