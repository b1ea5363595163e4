"""vmap of custom operators through the rules registered with torch.library.register_vmap."""

import functools

import torch.utils._pytree as pytree
from torch._library import custom_ops

from functorch_lite import _C
from functorch_lite._custom_function import VmapInfo, _add_dim, _unwrap_batched, _wrap_outputs

# NOTE: [Vmap rules registered from Python] (csrc/batching/vmap.h) says when the router asks.
# The rule of a torch.library.custom_op operator lives on its definition (its `_vmap_fn`). It
# gets what register_vmap documents: VmapInfo(batch_size, randomness), the batch dim of each
# positional argument (None when unbatched) and the physical arguments; it returns
# (outputs, out_dims), and each output gets its batch dim back at this level.


def _rule(name: str):
    definition = custom_ops.OPDEFS.get(name)
    return getattr(definition, "_vmap_fn", None)


def _run_rule(name: str, level: int, num_returns: int, args: tuple, kwargs: dict):
    rule = _rule(name)
    if rule is None:
        return None  # the router falls back to the for-loop
    batch_size, randomness = _C._vmap_info(level)
    unwrapped, in_dims = _unwrap_batched(args, level)
    result = rule(VmapInfo(batch_size, randomness), in_dims, *unwrapped, **kwargs)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise RuntimeError(
            f"vmap: the vmap rule registered for {name} must return a tuple (outputs, out_dims) "
            f"with out_dims matching the structure of the outputs, got {type(result).__name__}."
        )
    outputs, out_dims = result
    if pytree._broadcast_to_and_flatten(out_dims, pytree.tree_structure(outputs)) is None:
        raise RuntimeError(
            f"vmap: the vmap rule registered for {name} returned out_dims {out_dims} that do not "
            "match the structure of its outputs."
        )
    outputs = _wrap_outputs(outputs, (), (), functools.partial(_add_dim, level), out_dims)
    return [outputs] if num_returns == 1 else list(outputs)


def install() -> None:
    _C._set_python_vmap_rule_handler(_run_rule)
