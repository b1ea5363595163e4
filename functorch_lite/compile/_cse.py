"""fx_graph_cse: common-subexpression elimination on an FX graph, leaving random ops alone."""

import operator
from typing import Any, Optional

import torch
import torch.fx as fx

# NOTE: [Common subexpressions in a joint graph]
# Tracing the forward and the backward together often records the same computation twice
# (the backward of sin recomputes cos(x) that a user also computed, two getitems of one
# tuple index, a transpose taken in both passes). fx_graph_cse copies the graph in order and
# replaces a call_function node by an earlier one with the same target and the same
# (already merged) arguments. A node is merged only when running it twice is the same as
# running it once: ATen operators that are not random (tagged nondeterministic_seeded) and
# do not mutate, and operator.getitem. Anything else (random ops, in-place ops, Python
# callables of unknown effect, placeholders, get_attr, output) is copied as it is, so the two
# dropout masks of two dropout calls stay two masks. min_cut_rematerialization_partition (and
# memory_efficient_fusion through it) runs it on the joint graph before partitioning.

_PURE_PYTHON = {operator.getitem}


def _mergeable(target: Any) -> bool:
    if target in _PURE_PYTHON:
        return True
    if isinstance(target, torch._ops.OpOverloadPacket):
        target = getattr(target, "default", None)
    if not isinstance(target, torch._ops.OpOverload):
        return False
    if torch.Tag.nondeterministic_seeded in target.tags or target._schema.is_mutable:
        return False
    return not target.name().startswith("aten::empty")  # uninitialized memory, not a value


def _key(value: Any) -> Optional[Any]:
    """A hashable stand-in for an argument (None when it has none)."""
    if isinstance(value, (list, tuple)):
        parts = [_key(v) for v in value]
        return None if any(p is None for p in parts) else (type(value).__name__, tuple(parts))
    if isinstance(value, dict):
        parts = [(k, _key(v)) for k, v in value.items()]
        if any(p is None for _, p in parts):
            return None
        return ("dict", tuple(sorted(parts, key=repr)))
    if isinstance(value, slice):
        return ("slice", _key(value.start), _key(value.stop), _key(value.step))
    if isinstance(value, torch.Tensor):
        return None
    try:
        hash(value)
    except TypeError:
        return None
    return (type(value), value)


def fx_graph_cse(fx_g: fx.Graph) -> fx.Graph:
    """A copy of `fx_g` with common subexpressions merged (see NOTE above)."""
    new_graph = fx.Graph()
    env: dict = {}
    seen: dict = {}
    for node in fx_g.nodes:
        if node.op == "call_function" and _mergeable(node.target):
            args = fx.node.map_arg(node.args, lambda n: env[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
            key = _key((node.target, args, kwargs)) if _key(node.target) else None
            if key is not None and key in seen:
                env[node] = seen[key]
                continue
            env[node] = new_graph.node_copy(node, lambda n: env[n])
            if key is not None:
                seen[key] = env[node]
        else:
            env[node] = new_graph.node_copy(node, lambda n: env[n])
    return new_graph
