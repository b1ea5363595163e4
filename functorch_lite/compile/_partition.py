"""Partitioners: split a joint forward+backward FX graph into forward and backward GraphModules."""

import operator
from typing import Any, Optional

import torch
import torch.fx as fx
from torch.fx.experimental.symbolic_shapes import optimization_hint

from functorch_lite.compile._cse import fx_graph_cse
from functorch_lite.compile._effects import CHECKS
from functorch_lite.compile._mincut import INF, FlowNetwork

# NOTE: [Partitioning the joint graph]
# A partitioner receives the joint graph of NOTE: [Tracing the joint graph] and decides which
# values the forward SAVES for the backward. Everything else follows from that choice:
#
#   forward  = the nodes needed to compute (forward outputs + saved values) from the primals;
#              it returns [*forward outputs, *saved values]
#   backward = the nodes needed to compute the gradients from (saved values + tangents);
#              its placeholders are [*saved values, *tangents] and it returns one gradient
#              (or None) per primal
#
# Any node the backward needs that is not saved is recomputed in the backward. The saved
# values keep their joint-graph names in both modules, which is how the runtime matches the
# forward's extra outputs to the backward's placeholders.
#
# default_partition saves every forward value the backward uses. The min-cut partitioner
# (NOTE: [Rematerialization as a min cut]) saves fewer bytes by recomputing cheap ops.

# NOTE: [Rematerialization as a min cut]
# Each joint node n becomes two vertices n_in -> n_out joined by an edge whose capacity is
# what saving n costs (its size in bytes); every use n -> u is an edge n_out -> u_in of
# infinite capacity. The source feeds the primals and every node that must run in the
# forward and must not be recomputed (a matmul, a convolution, a random op the forward
# needs); the sink drains every node that depends on a tangent (it can only run in the
# backward) and every gradient. A finite s-t cut then consists of n_in -> n_out edges only:
# the cut nodes are exactly a set of values that, once saved, let the backward recompute
# everything else it needs, and the minimum cut is the cheapest such set. Nodes left on the
# sink side that do not depend on tangents are recomputed in the backward; the
# "recomputable" test below only admits ops that are cheap to redo (pointwise, views,
# getitem, fills), so compute-heavy ops are never repeated.
# Ties are broken towards fewer saved tensors, then towards saving bases rather than views
# and later nodes rather than earlier ones (fewer ops to recompute): with N nodes and
# M = 2N(N + 1) + 1, node i costs (bytes * M + 1) * M + (N - i) + (N if it is a view else 0),
# which orders cuts by (bytes, count, the last term summed) exactly.


def _is_primal(node: fx.Node) -> bool:
    return node.op == "placeholder" and not node.target.startswith("tangents")


def _is_tangent(node: fx.Node) -> bool:
    return node.op == "placeholder" and node.target.startswith("tangents")


def _split_outputs(joint: fx.Graph, num_fwd_outputs: int) -> tuple[list, list]:
    outputs = list(joint.output_node().args[0])
    return outputs[:num_fwd_outputs], outputs[num_fwd_outputs:]


def _closure(node: fx.Node, available: set) -> Optional[set]:
    """`node` and the nodes it needs, down to `available`; None when a placeholder is missing."""
    found, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in found:
            continue
        found.add(n)
        if n in available:
            continue
        if n.op == "placeholder":
            return None
        stack.extend(n._input_nodes)
    return found


def _extract_graph(
    api: str, joint: fx.Graph, inputs: list, outputs: list, checks_done: set
) -> fx.Graph:
    """Copies the joint nodes computing `outputs` from `inputs`, and no others, to a new graph.

    Error checks (NOTE: [Error checks in traced graphs]) computable from `inputs` come along,
    unless an earlier graph took them (`checks_done`, updated).
    """
    available = set(inputs)
    needed, stack = set(), [o for o in outputs if isinstance(o, fx.Node)]
    for node in joint.nodes:
        if node.op == "call_function" and node.target in CHECKS and node not in checks_done:
            closure = _closure(node, available)
            if closure is not None:
                checks_done.add(node)
                stack.extend(closure)
    while stack:
        node = stack.pop()
        if node in needed:
            continue
        needed.add(node)
        if node in available:
            continue
        if node.op == "placeholder":
            raise RuntimeError(
                f"{api}: the partitioned graph needs {node.name}, which is not saved; "
                "this is a bug in the partitioner, please report it."
            )
        stack.extend(node._input_nodes)
    graph = fx.Graph()
    env: dict = {}
    for node in inputs:
        env[node] = graph.placeholder(node.name)
        env[node].meta = dict(node.meta)
    for node in joint.nodes:
        if node in needed and node not in env:
            env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output([env[o] if isinstance(o, fx.Node) else o for o in outputs])
    graph.lint()
    return graph


def _extract_fwd_bwd_modules(
    api: str, joint_module: fx.GraphModule, saved: list, num_fwd_outputs: int
) -> tuple[fx.GraphModule, fx.GraphModule]:
    joint = joint_module.graph
    primals = [n for n in joint.nodes if _is_primal(n)]
    tangents = [n for n in joint.nodes if _is_tangent(n)]
    fwd_outputs, bwd_outputs = _split_outputs(joint, num_fwd_outputs)
    checks_done: set = set()
    fw_graph = _extract_graph(api, joint, primals, fwd_outputs + saved, checks_done)
    bw_graph = _extract_graph(api, joint, saved + tangents, bwd_outputs, checks_done)
    return fx.GraphModule(joint_module, fw_graph), fx.GraphModule(joint_module, bw_graph)


def _value(node: fx.Node) -> Any:
    return node.meta.get("val")


def _saveable(nodes: list) -> list:
    """Replaces a multi-output node (a tuple) by its getitem users: only those can be saved."""
    out = []
    for node in nodes:
        if isinstance(_value(node), (tuple, list)):
            out.extend(u for u in node.users if u.target is operator.getitem)
        else:
            out.append(node)
    return out


def _in_order(joint: fx.Graph, nodes: set) -> list:
    return [n for n in joint.nodes if n in nodes]


def _view_base(node: fx.Node) -> fx.Node:
    """Saving a view keeps its base alive anyway: save the base, redo the free view in backward."""
    while (
        node.op == "call_function" and _is_view(node.target) and isinstance(node.args[0], fx.Node)
    ):
        node = node.args[0]
    return node


def default_partition(
    joint_module: fx.GraphModule,
    _joint_inputs: Any,
    *,
    num_fwd_outputs: int,
    static_lifetime_input_indices: Optional[list] = None,
    static_lifetime_input_nodes: Optional[Any] = None,
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Saves every forward value the backward uses; see NOTE: [Partitioning the joint graph]."""
    api = "default_partition"
    joint = joint_module.graph
    primals = [n for n in joint.nodes if _is_primal(n)]
    fwd_outputs, bwd_outputs = _split_outputs(joint, num_fwd_outputs)
    forward_only = _extract_graph(api, joint, primals, fwd_outputs, set())
    forward_names = {n.name for n in forward_only.nodes if n.op != "output"}
    in_forward = {n for n in joint.nodes if n.name in forward_names}
    needed = set()
    in_forward.update(n for n in joint.nodes if n.target in CHECKS and _closure(n, set(primals)))
    for node in in_forward:
        if any(u not in in_forward and u.op != "output" for u in node.users):
            needed.add(node)
    needed.update(n for n in bwd_outputs if isinstance(n, fx.Node) and n in in_forward)
    saved = _in_order(joint, {_view_base(n) for n in _saveable(_in_order(joint, needed))})
    return _extract_fwd_bwd_modules(api, joint_module, saved, num_fwd_outputs)


_CHEAP_OPS = {
    torch.ops.aten.full.default,
    torch.ops.aten.zeros.default,
    torch.ops.aten.ones.default,
    torch.ops.aten.scalar_tensor.default,
    torch.ops.aten.full_like.default,
    torch.ops.aten.zeros_like.default,
    torch.ops.aten.ones_like.default,
    torch.ops.aten.arange.default,
    torch.ops.aten.arange.start,
    torch.ops.aten._to_copy.default,
    torch.ops.aten.expand.default,
}


def _is_view(target: Any) -> bool:
    schema = getattr(target, "_schema", None)
    if schema is None or not schema.returns:
        return False
    alias = schema.returns[0].alias_info
    return alias is not None and not alias.is_write


def _recomputable(node: fx.Node) -> bool:
    """Whether the min-cut partitioner may run `node` again in the backward."""
    if node.op == "get_attr":
        return True
    if node.op != "call_function":
        return False
    target = node.target
    if target is operator.getitem:
        return True
    if not isinstance(target, torch._ops.OpOverload):
        return False
    if torch.Tag.nondeterministic_seeded in target.tags:
        return False
    return torch.Tag.pointwise in target.tags or target in _CHEAP_OPS or _is_view(target)


def _size_in_bytes(node: fx.Node) -> Optional[int]:
    val = _value(node)
    if isinstance(val, torch.Tensor):
        return (
            optimization_hint(val.numel(), fallback=4096) * val.element_size()
        )  # sizes may be symbolic
    if isinstance(val, (int, float, bool, torch.SymInt, torch.SymFloat, torch.SymBool)):
        return 1
    return None  # tuples, lists, None: cannot be saved as one value


def _descendants(roots: list) -> set:
    seen, stack = set(roots), list(roots)
    while stack:
        for user in stack.pop().users:
            if user.op != "output" and user not in seen:
                seen.add(user)
                stack.append(user)
    return seen


def _ancestors(roots: list) -> set:
    seen = {r for r in roots if isinstance(r, fx.Node)}
    stack = list(seen)
    while stack:
        for arg in stack.pop()._input_nodes:
            if arg not in seen:
                seen.add(arg)
                stack.append(arg)
    return seen


def min_cut_rematerialization_partition(
    joint_module: fx.GraphModule,
    _joint_inputs: Any,
    compiler: str = "inductor",
    *,
    num_fwd_outputs: int,
    static_lifetime_input_indices: Optional[list] = None,
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Saves the cheapest set of values; see NOTE: [Rematerialization as a min cut]."""
    api = "min_cut_rematerialization_partition"
    # see NOTE: [Common subexpressions in a joint graph]
    joint_module = fx.GraphModule(joint_module, fx_graph_cse(joint_module.graph))
    joint = joint_module.graph
    nodes = [n for n in joint.nodes if n.op != "output"]
    fwd_outputs, bwd_outputs = _split_outputs(joint, num_fwd_outputs)
    required_fw = _ancestors(fwd_outputs)
    tangent_dependent = _descendants([n for n in nodes if _is_tangent(n)])
    bwd_nodes = [n for n in bwd_outputs if isinstance(n, fx.Node)]
    scale = 2 * len(nodes) * (len(nodes) + 1) + 1

    network = FlowNetwork()
    for position, node in enumerate(nodes):
        if node in tangent_dependent:
            network.add_edge((node, "in"), "sink", INF)
            continue
        if _is_primal(node) or (node in required_fw and not _recomputable(node)):
            network.add_edge("source", (node, "in"), INF)
        size = _size_in_bytes(node)
        is_view = node.op == "call_function" and _is_view(node.target)
        tie_break = len(nodes) - position + (len(nodes) if is_view else 0)
        cost = INF if size is None else (size * scale + 1) * scale + tie_break
        network.add_edge((node, "in"), (node, "out"), cost)
        for user in node.users:
            if user.op != "output":
                network.add_edge((node, "out"), (user, "in"), INF)
    for node in bwd_nodes:
        if node not in tangent_dependent:
            network.add_edge((node, "out"), "sink", INF)
    network.add_edge("source", "sink", 0)  # both exist even for a graph with no backward work

    cost, source_side = network.min_cut("source", "sink")
    if cost >= INF:
        raise RuntimeError(
            f"{api}: found no finite cut of the joint graph; this is a bug, please report it."
        )
    saved = {n for n in nodes if (n, "in") in source_side and (n, "out") not in source_side}
    return _extract_fwd_bwd_modules(api, joint_module, _in_order(joint, saved), num_fwd_outputs)
