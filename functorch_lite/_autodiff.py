"""Reverse-mode transforms (grad, grad_and_value, vjp) and the argnums/has_aux helpers all use."""
import functools

import torch
from torch.utils import _pytree as pytree

from functorch_lite import _C, _custom_function, _dynamo, _tree
from functorch_lite._guards import plain_requires_grad_

_custom_function._install()  # autograd.Function inside transforms (NOTE in _custom_function.py)


def _name(func):
    return getattr(func, "__name__", repr(func))


def _wrap_tree(tree, level):
    return _tree.tree_map(
        lambda t: _C._wrap_for_grad(t, level) if isinstance(t, torch.Tensor) else t, tree
    )


def _unwrap_tree(tree, level):
    return _tree.tree_map(
        lambda t: _C._unwrap_for_grad(t, level) if isinstance(t, torch.Tensor) else t, tree
    )


def _make_differentiable(tree, api):
    def mark(t):
        if not isinstance(t, torch.Tensor):
            raise ValueError(
                f"{api}: Thing passed to transform API must be Tensor, got {type(t)}. Only "
                f"Tensors (or pytrees of Tensors) can be differentiated: leave it out of "
                f"argnums, or close over it in the function."
            )
        if not (t.is_floating_point() or t.is_complex()):
            raise RuntimeError(
                f"{api}: only Tensors of floating point dtype can require gradients (or complex "
                f"ones), got an input of dtype {t.dtype}. Convert it first (e.g. x.float()), or "
                f"leave it out of argnums."
            )
        return plain_requires_grad_(t)

    return _tree.tree_map(mark, tree)


# NOTE: [One argnums helper]
# Every transform is written for one (pytree) argument, as in HIPS autograd: `_select_argnums`
# validates argnums once and hands back the selected arguments (a tuple of them when argnums is
# a tuple, the argument itself when it is an int) plus `rebuild`, which puts replacements back
# into the full argument tuple. grad, vjp, jvp, jacrev and jacfwd all go through it, so argnums
# errors read the same everywhere.
def _check_argnums(argnums, num_args, api):
    nums = argnums if isinstance(argnums, tuple) else (argnums,)
    if isinstance(argnums, tuple) and len(argnums) == 0:
        raise RuntimeError(f"{api}: argnums must be non-empty.")
    if not isinstance(argnums, (int, tuple)) or isinstance(argnums, bool):
        raise RuntimeError(
            f"{api}: argnums must be int or Tuple[int, ...], got: {type(argnums)}."
        )
    for n in nums:
        if not isinstance(n, int) or isinstance(n, bool):
            raise RuntimeError(
                f"{api}: argnum must be int, got: {type(n)} (argnums must be int or "
                f"Tuple[int, ...])."
            )
        if not -num_args <= n < num_args:
            raise RuntimeError(
                f"{api}: Got argnum={n}, but only {num_args} positional inputs (argnums="
                f"{argnums!r})."
            )
    normalized = tuple(n % num_args for n in nums)
    if len(set(normalized)) != len(normalized):
        raise RuntimeError(f"{api}: argnums elements must be unique, got {argnums}.")
    return normalized


def _select_argnums(args, argnums, api):
    """(selected, rebuild): the arguments picked by argnums, and rebuild(new) -> full args.

    argnums=None selects every argument (as a tuple), which is what vjp and jvp differentiate.
    """
    if argnums is None:
        return tuple(args), tuple
    nums = _check_argnums(argnums, len(args), api)
    selected = tuple(args[n] for n in nums)

    def rebuild(new):
        new = new if isinstance(argnums, tuple) else (new,)
        full = list(args)
        for n, value in zip(nums, new):
            full[n] = value
        return tuple(full)

    return (selected if isinstance(argnums, tuple) else selected[0]), rebuild


def _split_aux(output, has_aux, api):
    if not has_aux:
        return output, None
    if not (isinstance(output, tuple) and len(output) == 2):
        raise RuntimeError(
            f"{api}: output of function f should be a tuple: (output, aux) if has_aux is True; "
            f"got {type(output).__name__}"
            + (f" of length {len(output)}" if isinstance(output, tuple) else "")
            + "."
        )
    return output


def _autograd_grad(outputs, inputs, grad_outputs, create_graph=True):
    """torch.autograd.grad that gives zeros for inputs the outputs do not depend on."""
    flat_inputs = _tree.tree_leaves(inputs)
    flat_outputs = _tree.tree_leaves(outputs)
    flat_grad_outputs = _tree.tree_leaves(grad_outputs)
    diff = [(o, g) for o, g in zip(flat_outputs, flat_grad_outputs) if o.requires_grad]
    if diff:
        grads = torch.autograd.grad(
            [o for o, _ in diff],
            flat_inputs,
            [g for _, g in diff],
            create_graph=create_graph,
            retain_graph=True,
            allow_unused=True,
        )
    else:
        grads = [None] * len(flat_inputs)
    grads = [
        torch.zeros_like(_strip(x)) if g is None else _strip(g) for g, x in zip(grads, flat_inputs)
    ]
    return _tree.tree_fill(inputs, grads)


def _strip(t):
    """The value under the wrappers of popped levels (grads of a vjp computed after it returned)."""
    while _C._is_grad_wrapper(t) and not _C._is_alive(t):
        t = _C._unwrap_grad_wrapper(t)
    return t


# NOTE: [Views returned by vjp]
# An output that is a view whose base was written in place after the view was taken gets its
# grad_fn rebuilt lazily, the first time it is read, by replaying the view on the base (our
# wrappers record view functions, as tensor subclasses do). vjp_fn reads it only after the level
# is gone, when the dead wrapper base acts as its value and the replay records nothing: torch's
# internal assert `new_fn` fired. Reading grad_fn while the level is live rebuilds it then.
def _refresh_view_history(flat_outputs):
    for o in flat_outputs:
        if o._is_view():
            o.grad_fn  # noqa: B018 - reading it rebuilds it


def _check_scalar_output(output, api):
    if not isinstance(output, torch.Tensor):
        raise RuntimeError(
            f"{api}: Expected f(*args) to return a Tensor, got {type(output)}."
        )
    if output.dim() != 0:
        raise RuntimeError(
            f"{api}: Expected f(*args) to return a scalar Tensor, got tensor with "
            f"{output.dim()} dims (shape {tuple(output.shape)}). Maybe you wanted to use the "
            f"vjp or jacrev APIs instead?"
        )
    if not (output.is_floating_point() or output.is_complex()):
        raise RuntimeError(
            f"{api}: expected the function to return a floating point Tensor, got "
            f"dtype {output.dtype}."
        )
    if output.is_complex():
        raise RuntimeError(
            f"{api}: expected the function to return a real Tensor, got dtype {output.dtype}; "
            f"the gradient of a complex-valued function is not defined. Differentiate a real "
            f"function of it instead (e.g. its .abs() or .real)."
        )


@_dynamo.transform
def grad_and_value(func, argnums=0, has_aux=False):
    """Returns a function computing (gradient, value) of scalar `func` (as in functorch)."""
    return _grad_and_value(func, argnums, has_aux, "grad_and_value")


def _grad_and_value(func, argnums, has_aux, api_name):
    """grad_and_value whose errors name `api_name`, the API the user called."""

    @functools.wraps(func)
    def wrapped(*args, **kwargs):
        api = f"{api_name}({_name(func)}, argnums={argnums!r})(<inputs>)"
        with _C._grad_level("grad") as level:
            diff, rebuild = _select_argnums(_wrap_tree(args, level), argnums, api)
            diff = _make_differentiable(diff, api)
            output, aux = _split_aux(func(*rebuild(diff), **kwargs), has_aux, api)
            _check_scalar_output(output, api)
            grads = _autograd_grad(output, diff, torch.ones_like(output))
            grads = _unwrap_tree(grads, level)
            value = _unwrap_tree(output, level)
            aux = _unwrap_tree(aux, level)
        return grads, ((value, aux) if has_aux else value)

    return wrapped


@_dynamo.transform
def grad(func, argnums=0, has_aux=False):
    """Returns a function computing the gradient of scalar `func` w.r.t. `argnums`."""
    inner = _grad_and_value(func, argnums, has_aux, "grad")

    @functools.wraps(func)
    def wrapped(*args, **kwargs):
        grads, value = inner(*args, **kwargs)
        return (grads, value[1]) if has_aux else grads

    return wrapped


@_dynamo.direct(returns_function=True)
def vjp(func, *primals, has_aux=False):
    """Returns (output, vjp_fn[, aux]) for `func` at `primals` (the vjp of functorch)."""
    return _vjp_with_argnums(func, primals, None, has_aux, f"vjp({_name(func)}, ...)", "vjp")


def _vjp_with_argnums(func, args, argnums, has_aux, api, level_api):
    """vjp of `func` w.r.t. the arguments picked by argnums (None: all of them).

    All arguments are wrapped at the new level (so the function may mutate any of them), only the
    selected ones require grad, and vjp_fn returns gradients for the selected ones.
    """
    with _C._grad_level(level_api) as level:
        diff, rebuild = _select_argnums(_wrap_tree(args, level), argnums, api)
        diff = _make_differentiable(diff, api)
        output, aux = _split_aux(func(*rebuild(diff)), has_aux, api)
        flat_out, out_spec = pytree.tree_flatten(output)
        for o in flat_out:
            if not isinstance(o, torch.Tensor):
                raise RuntimeError(
                    f"{api}: expected f(*primals) to return only tensors, got unsupported type "
                    f"{type(o)}."
                )
        if not flat_out:
            raise RuntimeError(
                f"{api}: Expected f to be a function that has non-empty output (got output = "
                f"{output!r})."
            )
        _refresh_view_history(flat_out)
        primal_out = _unwrap_tree(output, level)
        aux = _unwrap_tree(aux, level)

    # NOTE: [vjp_fn after the level is gone]
    # The graph recorded at the vjp level stays reachable from the (now dead) wrappers; gradients
    # are computed with create_graph when grad mode is on, so a level live at the call (an outer
    # grad, or a vmap over the cotangents) records or batches the backward pass. Wrappers of the
    # dead level in the result are stripped (see _strip).
    def vjp_fn(cotangents, retain_graph=True, create_graph=None):
        flat_ct, ct_spec = pytree.tree_flatten(cotangents)
        if ct_spec != out_spec:
            raise RuntimeError(
                f"{api}: Expected pytree structure of cotangents to be the same as pytree "
                f"structure of outputs to the function. cotangents: {ct_spec}, primal output: "
                f"{out_spec}."
            )
        for o, c in zip(flat_out, flat_ct):
            if o.shape != c.shape:
                raise RuntimeError(
                    f"{api}: Mismatch in shape: the cotangent has a shape of {c.shape} and the "
                    f"output has a shape of {o.shape}."
                )
        if create_graph is None:
            create_graph = torch.is_grad_enabled()
        return _autograd_grad(flat_out, diff, flat_ct, create_graph=create_graph)

    # for jacrev (NOTE: [Basis vectors batched like the output])
    vjp_fn.copies_slices = lambda: _copies_slices(flat_out)
    return (primal_out, vjp_fn, aux) if has_aux else (primal_out, vjp_fn)


def _copies_slices(flat_outputs):
    """Whether the backward pass from these outputs runs autograd's CopySlices (the backward of
    an in-place write into a view)."""
    seen = set()
    todo = [o.grad_fn for o in flat_outputs]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        if type(node).__name__ == "CopySlices":
            return True
        seen.add(node)
        todo.extend(fn for fn, _ in node.next_functions)
    return False
