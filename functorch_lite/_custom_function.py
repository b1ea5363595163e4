"""torch.autograd.Function inside functorch_lite transforms, the functorch way (setup_context)."""
import collections
import functools
import inspect

import torch
import torch.autograd.forward_ad as fwAD
from torch.utils import _pytree as pytree

from functorch_lite import _C

# NOTE: [autograd.Function inside transforms]
# An autograd.Function is not an operator: its forward runs with grad mode off, so without help
# only the level of the tensors passed to apply records it, and vmap never sees it as a unit.
# torch.func routes Function.apply through its own functorch machinery, which functorch_lite
# must not use. Instead functorch_lite installs a thin Function.apply that, while a
# functorch_lite level is live, processes the highest live level among the tensor arguments,
# like the router does for operators, and otherwise is torch's own apply:
# - grad / jvp level: a one-level Function (_single_level_function) whose forward unwraps that
#   level and applies the user's Function again one level down (grad modes on, so the lower
#   levels record it too), and whose setup_context / backward / jvp are the user's, run on this
#   level's wrappers. Autograd records it at this level.
# - vmap level: the user's vmap staticmethod on the unwrapped values, or with
#   generate_vmap_rule=True a Function whose forward, setup_context, backward and jvp are the
#   user's under a fresh vmap (_vmapped_function), applied one level down.
# As in torch.func the Function must define setup_context (forward without ctx). A Function applied
# by an operator's autograd kernel while the router processes a grad level (custom operators
# with torch.library.register_autograd) is part of that operator: torch's apply records it.
# torch's own apply: a Python classmethod in torch 2.13, a C classmethod descriptor in 2.14.
# Binding it through the descriptor protocol works for both.
_torch_apply_descriptor = torch.autograd.Function.__dict__["apply"]


def _torch_apply(cls, *args, **kwargs):
    return _torch_apply_descriptor.__get__(None, cls)(*args, **kwargs)


_DOCS = "See https://pytorch.org/docs/main/notes/extending.func.html"

VmapInfo = collections.namedtuple("VmapInfo", ["batch_size", "randomness"])


def _has_setup_context(cls):
    return cls.setup_context is not torch.autograd.function._SingleLevelFunction.setup_context


def _apply(cls, *args, **kwargs):
    # Inside an operator's autograd kernel at a grad level (torch.library.register_autograd
    # applies a Function there) the level is already being processed: plain apply records it.
    if _C._layer_depth() == 0 or _C._in_grad_level_processing():
        return _torch_apply(cls, *args, **kwargs)
    if not _has_setup_context(cls):
        raise RuntimeError(
            f"{cls.__name__}.apply: to use an autograd.Function inside functorch_lite transforms "
            f"(vmap, grad, jvp, jacrev, ...), it must override the setup_context staticmethod "
            f"(and its forward must not take ctx). {_DOCS}"
        )
    bound = inspect.signature(cls.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    return _custom_function_call(cls, *bound.args, **bound.kwargs)


def _install():
    if getattr(torch.autograd.Function.apply, "_functorch_lite", False):
        return
    apply = classmethod(_apply)
    _apply._functorch_lite = True
    torch.autograd.Function.apply = apply


def _top_level(tree):
    """(level, is_vmap) of the highest live level among the tensors in `tree`, or None."""
    top = None
    for t in pytree.tree_leaves(tree):
        if not isinstance(t, torch.Tensor) or not _C._is_alive(t):
            continue
        level = _C._level_of(t)
        if top is None or level > top[0]:
            top = (level, _C._is_batched(t))
    return top


def _custom_function_call(cls, *args, **kwargs):
    top = _top_level((args, kwargs))
    if top is None:
        return super(torch.autograd.Function, cls).apply(*args, **kwargs)
    level, is_vmap = top
    if is_vmap:
        return _vmap_call(cls, level, args, kwargs)
    return _single_level_function(cls, level).apply(*args, **kwargs)


def _wrap_outputs(outputs, unwrapped, originals, wrap, out_dims=None):
    """Wraps outputs at the level, returning the original argument for an output that is an
    unwrapped argument (so autograd sees the identity)."""
    by_id = {id(u): o for u, o in zip(pytree.tree_leaves(unwrapped), pytree.tree_leaves(originals))}
    flat, spec = pytree.tree_flatten(outputs)
    dims = [None] * len(flat)
    if out_dims is not None:
        dims = pytree._broadcast_to_and_flatten(out_dims, spec)
        if dims is None:
            raise RuntimeError(
                f"the vmap staticmethod returned out_dims {out_dims} that do not match the "
                f"structure of its outputs ({spec}). {_DOCS}"
            )
    result = []
    for out, dim in zip(flat, dims):
        if not isinstance(out, torch.Tensor):
            result.append(out)
        elif id(out) in by_id:
            result.append(by_id[id(out)])
        else:
            result.append(wrap(out, dim))
    return pytree.tree_unflatten(result, spec)


def _single_level_function(cls, level):
    def forward(*operands, **kwargs):
        unwrapped = pytree.tree_map_only(
            torch.Tensor, lambda t: _C._unwrap_for_grad(t, level), operands
        )
        with torch.enable_grad(), fwAD._set_fwd_grad_enabled(True):
            output = _custom_function_call(cls, *unwrapped, **kwargs)
        return _wrap_outputs(output, unwrapped, operands, lambda t, _: _C._wrap_for_grad(t, level))

    def setup_context(ctx, inputs, output):
        return cls.setup_context(ctx, inputs, output)

    def backward(ctx, *grads):
        return cls.backward(ctx, *grads)

    def jvp(ctx, *tangents):
        return cls.jvp(ctx, *tangents)

    return type(
        f"{cls.__name__}AtLevel{level}",
        (torch.autograd.function._SingleLevelFunction,),
        {
            "forward": staticmethod(forward),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward),
            "jvp": staticmethod(jvp),
        },
    )


def _unwrap_batched(tree, level):
    """(values, in_dims): the tree with this level's batch dims taken off, and where they were."""
    def value(t):
        if isinstance(t, torch.Tensor) and _C._is_batched(t) and _C._level_of(t) == level:
            return _C._unwrap_batched(t)[0]
        return t

    def dim(t):
        if isinstance(t, torch.Tensor) and _C._is_batched(t) and _C._level_of(t) == level:
            return _C._unwrap_batched(t)[1]
        return None

    return pytree.tree_map(value, tree), pytree.tree_map(dim, tree)


def _vmap_call(cls, level, args, kwargs):
    name = cls.__name__
    if any(isinstance(t, torch.Tensor) for t in pytree.tree_leaves(kwargs)):
        raise NotImplementedError(
            f"vmap: {name}.apply got keyword-only Tensor arguments, which vmap over an "
            f"autograd.Function does not support; pass them positionally."
        )
    has_vmap = cls.vmap is not torch.autograd.Function.vmap
    if cls.generate_vmap_rule and has_vmap:
        raise RuntimeError(
            f"vmap: {name} has both generate_vmap_rule=True and a vmap staticmethod; set "
            f"generate_vmap_rule=False or delete the vmap staticmethod. {_DOCS}"
        )
    if not cls.generate_vmap_rule and not has_vmap:
        raise RuntimeError(
            f"vmap: {name} has no vmap support: set generate_vmap_rule=True (if its forward, "
            f"setup_context, backward and jvp are written with PyTorch operations) or implement "
            f"the vmap staticmethod. {_DOCS}"
        )
    batch_size, randomness = _C._vmap_info(level)
    unwrapped, in_dims = _unwrap_batched(args, level)
    if all(d is None for d in pytree.tree_leaves(in_dims, is_leaf=lambda x: x is None)):
        return _custom_function_call(cls, *args, **kwargs)
    if cls.generate_vmap_rule:
        vmapped = _vmapped_function(cls, in_dims, batch_size, randomness)
        outputs = _custom_function_call(vmapped, *unwrapped)
        outputs, out_dims = _split_out_dims(outputs)
        return _wrap_outputs(outputs, (), (), functools.partial(_add_dim, level), out_dims)
    result = cls.vmap(VmapInfo(batch_size, randomness), in_dims, *unwrapped, **kwargs)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise RuntimeError(
            f"vmap: {name}.vmap must return a tuple (outputs, out_dims) with out_dims matching "
            f"the structure of the outputs. {_DOCS}"
        )
    outputs, out_dims = result
    return _wrap_outputs(outputs, unwrapped, args, functools.partial(_add_dim, level), out_dims)


def _add_dim(level, t, dim):
    return t if dim is None else _C._add_batch_dim(t, dim % t.dim(), level)


def _split_out_dims(outputs):
    """The vmapped Function returns (*outputs, out_dims); a single output comes back bare."""
    out_dims = outputs[-1]
    if isinstance(out_dims, tuple):
        return outputs[:-1], out_dims
    return outputs[0], out_dims


# NOTE: [generate_vmap_rule]
# The vmapped Function runs each staticmethod of the user's Function under a fresh vmap level
# (_restore_vmap): forward sees the inputs batched at in_dims and reports where its outputs'
# batch dims ended up (out_dims, returned as an extra non-tensor output); setup_context saves the
# physical tensors and remembers their batch dims; backward and jvp batch the saved tensors and
# the incoming grads / tangents the same way, and backward's grads are summed or expanded to
# the batch layout of the inputs (_reductify).
def _restore_vmap(func, in_dims, batch_size, randomness, pass_level=False):
    def wrapped(*args):
        flat_args, spec = pytree.tree_flatten(args)
        flat_dims = pytree._broadcast_to_and_flatten(in_dims, spec)
        with _C._vmap_level(batch_size, randomness, "vmap") as level:
            batched = [
                a if d is None else _C._add_batch_dim(a, d, level)
                for a, d in zip(flat_args, flat_dims)
            ]
            batched = pytree.tree_unflatten(batched, spec)
            output = func(level, *batched) if pass_level else func(*batched)
            return _unwrap_batched(output, level)

    return wrapped


class _CtxWithSavedTensors:
    """ctx whose saved_tensors are the batched ones; everything else goes to the real ctx."""

    def __init__(self, ctx, saved):
        object.__setattr__(self, "_inner", ctx)
        object.__setattr__(self, "_saved", saved)

    @property
    def saved_tensors(self):
        return self._saved

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        setattr(self._inner, name, value)


class _CtxSavingPhysical:
    """ctx for setup_context under vmap: saves physical tensors and records their batch dims."""

    def __init__(self, ctx, level):
        object.__setattr__(self, "_inner", ctx)
        object.__setattr__(self, "_level", level)
        object.__setattr__(self, "saved_bdims", ())

    def save_for_backward(self, *tensors):
        values, dims = _unwrap_batched(tensors, self._level)
        self._inner.save_for_backward(*values)
        object.__setattr__(self, "saved_bdims", dims)

    def save_for_forward(self, *tensors):
        values, dims = _unwrap_batched(tensors, self._level)
        self._inner.save_for_forward(*values)
        object.__setattr__(self, "saved_bdims", dims)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        setattr(self._inner, name, value)


def _vmapped_function(cls, in_dims, batch_size, randomness):
    state = {}  # per apply: one vmapped Function class is made per call

    def forward(*operands):
        outputs, out_dims = _restore_vmap(cls.forward, in_dims, batch_size, randomness)(*operands)
        if isinstance(outputs, torch.Tensor):
            return outputs, out_dims
        return (*outputs, out_dims)

    def setup_context(ctx, inputs, outputs):
        outputs, out_dims = _split_out_dims(outputs)

        def inner(level, inputs, outputs):
            wrapped = _CtxSavingPhysical(ctx, level)
            cls.setup_context(wrapped, inputs, outputs)
            state["saved_bdims"] = wrapped.saved_bdims
            state["input_shapes"] = tuple(  # per-sample shapes, for _reductify
                i.shape if isinstance(i, torch.Tensor) else None for i in inputs
            )

        _restore_vmap(inner, (in_dims, out_dims), batch_size, randomness, pass_level=True)(
            inputs, outputs
        )
        state["out_dims"] = out_dims

    def backward(ctx, *grads):
        grads = grads[:-1]  # the last output is out_dims
        grad_dims = state["out_dims"]
        grad_dims = grad_dims if isinstance(grad_dims, tuple) else (grad_dims,)
        grad_dims = tuple(None if g is None else d for g, d in zip(grads, grad_dims))

        def run(saved, grads):
            return cls.backward(_CtxWithSavedTensors(ctx, saved), *grads)

        grad_ins, grad_in_dims = _restore_vmap(
            run, (state["saved_bdims"], grad_dims), batch_size, randomness
        )(ctx.saved_tensors, grads)
        return _reductify(grad_ins, grad_in_dims, in_dims, batch_size, state["input_shapes"])

    def jvp(ctx, *tangents):
        tangent_dims = tuple(
            None if t is None else d for t, d in zip(tangents, in_dims)
        )

        def run(saved, tangents):
            return cls.jvp(_CtxWithSavedTensors(ctx, saved), *tangents)

        out_tangents, out_tangent_dims = _restore_vmap(
            run, (state["saved_bdims"], tangent_dims), batch_size, randomness
        )(ctx.saved_tensors, tangents)
        result = _reductify(out_tangents, out_tangent_dims, state["out_dims"], batch_size)
        return (*result, None)

    return type(
        f"Vmapped{cls.__name__}",
        (torch.autograd.Function,),
        {
            "forward": staticmethod(forward),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward),
            "jvp": staticmethod(jvp),
            "generate_vmap_rule": True,
        },
    )


def _reductify(values, value_dims, target_dims, batch_size, shapes=None):
    """Moves or sums batch dims so each value has its target's batch layout (None: unbatched)."""
    values = values if isinstance(values, tuple) else (values,)
    value_dims = value_dims if isinstance(value_dims, tuple) else (value_dims,)
    target_dims = target_dims if isinstance(target_dims, tuple) else (target_dims,)
    shapes = shapes if shapes is not None else (None,) * len(values)
    return tuple(
        _reductify_one(v, vd, td, batch_size, s)
        for v, vd, td, s in zip(values, value_dims, target_dims, shapes)
    )


def _reductify_one(value, value_dim, target_dim, batch_size, shape):
    if value is None or (value_dim is None and target_dim is None):
        return value
    if target_dim is None:
        return value.sum(value_dim)
    if value_dim is None:
        value = value.unsqueeze(target_dim)
        sizes = list(value.shape)
        sizes[target_dim] = batch_size
        value, value_dim = value.expand(sizes), target_dim
    value = value.movedim(value_dim, target_dim)
    if shape is not None and value.shape[:target_dim] + value.shape[target_dim + 1:] != shape:
        # Broadcast inputs: sum each sample's grad down to the input's shape.
        front = value.movedim(target_dim, 0)
        if len(shape):
            front = front.sum_to_size(batch_size, *shape)
        else:
            front = front.reshape(batch_size, -1).sum(1)
        value = front.movedim(0, target_dim)
    return value
