"""functionalize: run a function with its mutations (and optionally views) removed."""
import contextlib
import functools
from typing import Any, Callable, Iterator

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from functorch_lite import _C, _dynamo

# NOTE: [functionalize on torch's functionalization]
# torch already knows how to remove mutations: a FunctionalTensorWrapper
# (torch._to_functional_tensor) routes every op on it through the Functionalize dispatch
# key, which replaces `x.add_(1)` by `x_new = x.add(1)`, tracks which tensors alias which
# and replays pending updates on views when they are read (torch._sync). With the key in
# the thread-local include set (torch._enable_functionalization) tensors created inside
# the function (factories) are wrapped too. reapply_views=True keeps views as views
# (remove='mutations'); reapply_views=False turns each view op into its *_copy
# (remove='mutations_and_views').
# functionalize(func) therefore: wraps the tensor leaves of the inputs, runs func with the
# key enabled, syncs and unwraps the outputs, then writes input mutations back (see NOTE:
# [Input mutations in functionalize]). Under make_fx the tracer sees only what the
# Functionalize kernels emit, so the graph is free of in-place ops except the write-back
# into mutated inputs at the end, exactly like torch.func.functionalize.
#
# NOTE: [Input mutations in functionalize]
# A wrapper whose value was mutated holds a new inner tensor after torch._sync; one that
# was not still holds the input itself. For a mutated input we do what torch.func does:
# resize it if its number of bytes changed, as_strided_ it if its sizes changed, then
# copy_ the new value in. These (mostly just copy_) are the only in-place ops a traced
# graph keeps.
#
# NOTE: [functionalize and autograd]
# Inside our transforms, functionalize(f) composes like any transform: the
# FunctionalTensorWrappers around a transform's wrappers inherit the router key, and the router
# hands their operators to the Functionalize kernels first, which call them again on the
# wrappers, where grad levels record and vmap rules run (NOTE: [functionalize inside our
# transforms] in csrc/core/router.cpp). So grad(functionalize(f)), vmap(functionalize(f)),
# jvp(...), jacrev(...) give what they give without functionalize. Factory functions called in
# func are wrapped in the same order (NOTE: [Factory functions inside functionalize]), which is
# why functionalize tells the router the level it was entered at. Plain torch.autograd on a
# requires_grad input, with no transform around, is different: the Functionalize key sits below
# Autograd and the outputs carry no history of the inputs; differentiate inside instead
# (functionalize(grad(f))) or use functorch_lite.grad around it.
#
# NOTE: [Nested functionalize]
# torch's functionalization has no levels: the Functionalize key can't be enabled twice.
# A functionalize called while one is running runs its func inside the outer one, which
# already removes its mutations; it only turns views into *_copy for its own body when it
# asks for remove='mutations_and_views'. Inputs functionalized by another transform
# (torch.func.functionalize) are rejected with an error rather than wrapped twice.

_REAPPLY_VIEWS = {"mutations": True, "mutations_and_views": False}


def _functionalization_is_enabled() -> bool:
    return torch._C._dispatch_tls_is_dispatch_key_included(torch._C.DispatchKey.Functionalize)


@contextlib.contextmanager
def _functionalization(reapply_views: bool) -> Iterator[None]:
    """Enables the Functionalize key for the body and disables it again, even on errors.

    Levels are numbered from 1 up the stack, so the depth is the level functionalize sits on
    (NOTE: [functionalize and autograd])."""
    previous_level = _C._set_functionalize_level(_C._layer_depth())
    torch._enable_functionalization(reapply_views=reapply_views)
    try:
        yield
    finally:
        torch._disable_functionalization()
        _C._set_functionalize_level(previous_level)


@contextlib.contextmanager
def _reapply_views(reapply_views: bool) -> Iterator[None]:
    previous = torch._functionalize_enable_reapply_views(reapply_views)
    try:
        yield
    finally:
        torch._functionalize_enable_reapply_views(previous)


def _to_functional(x: Any) -> Any:
    return torch._to_functional_tensor(x) if isinstance(x, Tensor) else x


def _from_functional(x: Any) -> Any:
    if not isinstance(x, Tensor) or not torch._is_functional_tensor(x):
        return x  # e.g. a global tensor that func returned untouched
    torch._sync(x)
    return torch._from_functional_tensor(x)


def _write_back_input_mutation(original: Tensor, wrapper: Tensor) -> None:
    """See NOTE: [Input mutations in functionalize]."""
    torch._sync(wrapper)
    new_value = torch._from_functional_tensor(wrapper)
    if new_value is original:
        return
    if original.nbytes != new_value.nbytes:
        original.resize_(new_value.shape)
    if original.shape != new_value.shape:
        original.as_strided_(new_value.size(), new_value.stride())
    original.copy_(new_value)


@_dynamo.transform
def functionalize(func: Callable[..., Any], *, remove: str = "mutations") -> Callable[..., Any]:
    """Returns a function that computes what ``func`` computes with its mutations removed.

    ``remove='mutations'`` replaces in-place and out= ops by their out-of-place versions;
    ``remove='mutations_and_views'`` also replaces every view op by its ``*_copy`` version.
    Mutations of the inputs are applied back to them after the call, as
    functorch's ``functionalize`` does. See NOTE: [functionalize on torch's functionalization]
    and NOTE: [functionalize and autograd].
    """
    if remove not in _REAPPLY_VIEWS:
        raise RuntimeError(
            f"functionalize: got remove={remove!r}, expected one of: 'mutations' (in-place and "
            "out= ops are replaced by their out-of-place versions) or 'mutations_and_views' "
            "(additionally every view op {view} is replaced by {view}_copy)."
        )
    reapply_views = _REAPPLY_VIEWS[remove]

    @functools.wraps(func)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FUNCTIONAL) is not None:
            # AOTAutograd (torch.compile) is tracing: its graph is functionalized already.
            return func(*args, **kwargs)
        if _functionalization_is_enabled():
            # See NOTE: [Nested functionalize].
            keep_views = reapply_views and torch._C._functionalization_reapply_views_tls()
            with _reapply_views(keep_views):
                return func(*args, **kwargs)
        inputs, spec = tree_flatten((args, kwargs))
        if any(isinstance(x, Tensor) and torch._is_functional_tensor(x) for x in inputs):
            raise RuntimeError(
                "functionalize: got an input that is already functionalized by another "
                "transform (e.g. torch's own functionalize), which can't be nested with this one. "
                "Please use functorch_lite.functionalize for every level."
            )
        functional_inputs = [_to_functional(x) for x in inputs]
        functional_args, functional_kwargs = tree_unflatten(functional_inputs, spec)
        with _functionalization(reapply_views):
            outputs = func(*functional_args, **functional_kwargs)
            # synced while functionalization is on: replaying views of an output runs view
            # operators that must be functionalized too
            outputs = tree_map(_from_functional, outputs)
        for original, wrapper in zip(inputs, functional_inputs):
            if isinstance(original, Tensor):
                _write_back_input_mutation(original, wrapper)
        return outputs

    return wrapped
