"""minifier: shrink an FX graph that makes a compiler fail to a small graph that still does."""

from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx

# NOTE: [How the minifier shrinks a graph]
# The state is (graph, inputs) with module_fails(graph, inputs) true. Two moves keep it true
# while making the graph smaller, and they repeat until neither applies:
#   truncate  the graph returns one earlier node instead of its outputs (dead code removed);
#             the first node, in graph order, for which the failure remains is taken.
#   cut       a run of consecutive operator nodes is computed once, eagerly, and becomes new
#             graph inputs holding those values, so everything feeding only those nodes
#             disappears. Runs start at max_granularity nodes (default: half the graph) and
#             halve down to one node, delta-debugging style.
# After each move, inputs the graph no longer reads are dropped. Values are computed with
# fx.Interpreter on the current inputs, so they are real tensors: module_fails sees a graph
# it can run.


def dump_state(fx_g: fx.GraphModule, inps: Sequence[Any]) -> None:
    """Prints a graph and its inputs' metadata as a repro (the default dump_state)."""
    shapes = [
        f"torch.empty({tuple(t.shape)}, dtype={t.dtype})" if isinstance(t, torch.Tensor) else repr(t)
        for t in inps
    ]
    print(f"# {len(fx_g.graph.nodes)} nodes, inputs:\n#   " + "\n#   ".join(shapes))
    print(fx_g.code)


def _values(gm: fx.GraphModule, inps: Sequence[Any]) -> dict:
    env: dict = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            env[node] = super().run_node(node)
            return env[node]

    with torch.no_grad():
        Recorder(gm).run(*inps)
    return env


def _rebuild(
    gm: fx.GraphModule,
    inps: Sequence[Any],
    cut: Sequence[fx.Node],
    outputs: Optional[list],
    values: dict,
) -> tuple[fx.GraphModule, list]:
    """A graph in which the nodes in `cut` become inputs holding their `values` (from
    _values(gm, inps)) and, if `outputs` is given, which returns those nodes instead; unused
    inputs are dropped."""
    graph = fx.Graph()
    env: dict = {}
    new_inputs: list = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, inps):
        env[node] = graph.placeholder(node.name)
        new_inputs.append(value)
    for node in cut:
        env[node] = graph.placeholder(f"{node.name}_input")
        new_inputs.append(values[node])
    for node in gm.graph.nodes:
        if node in env or node.op == "placeholder":
            continue
        if node.op == "output" and outputs is not None:
            graph.output([env[n] for n in outputs])
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.eliminate_dead_code()
    kept = []
    for node, value in zip([n for n in graph.nodes if n.op == "placeholder"], new_inputs):
        if node.users:
            kept.append(value)
        else:
            graph.erase_node(node)
    return fx.GraphModule(gm, graph), kept


def _operators(gm: fx.GraphModule) -> list:
    return [n for n in gm.graph.nodes if n.op == "call_function"]


def minifier(
    fail_f: fx.GraphModule,
    inps: Sequence[torch.Tensor],
    module_fails: Callable[[fx.GraphModule, Sequence[torch.Tensor]], bool],
    dump_state: Callable[[fx.GraphModule, Sequence[torch.Tensor]], None] = dump_state,
    *,
    save_dir: Optional[str] = None,
    offload_to_disk: bool = False,
    skip_offload: bool = False,
    skip_sanity: bool = False,
    max_granularity: Optional[int] = None,
) -> tuple[fx.GraphModule, Sequence[torch.Tensor]]:
    """Shrinks fail_f to a smaller graph for which module_fails(graph, inputs) still returns
    True (NOTE: [How the minifier shrinks a graph]); calls dump_state on the result and
    returns (graph, inputs). save_dir, offload_to_disk and skip_offload are accepted for
    compatibility: every value stays in memory."""
    gm, current = fx.GraphModule(fail_f, fail_f.graph), list(inps)
    if not skip_sanity and not module_fails(gm, current):
        raise RuntimeError(
            "minifier: module_fails(fail_f, inps) is False for the graph as given, so there is "
            "no failure to keep while shrinking it. Please check module_fails."
        )

    def attempt(cut: Sequence[fx.Node], outputs: Optional[list], values: dict) -> bool:
        nonlocal gm, current
        candidate, candidate_inps = _rebuild(gm, current, cut, outputs, values)
        if len(candidate.graph.nodes) >= len(gm.graph.nodes) or not module_fails(
            candidate, candidate_inps
        ):
            return False
        gm, current = candidate, candidate_inps
        return True

    def truncate() -> bool:
        return any(attempt([], [node], {}) for node in _operators(gm))

    def cut() -> bool:
        try:  # the values every cut of this graph reads: computed once per graph
            values = _values(gm, current)
        except Exception:  # the graph does not run on its inputs: nothing can be cut
            return False
        operators = _operators(gm)
        size = max_granularity or max(1, len(operators) // 2)
        while size >= 1:
            for start in range(0, len(operators), size):
                run = [n for n in operators[start : start + size] if _is_tensor(n)]
                if run and attempt(run, None, values):
                    return True
            size //= 2
        return False

    while truncate() or cut():
        pass
    dump_state(gm, current)
    return gm, current


def _is_tensor(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return val is None or isinstance(val, torch.Tensor)
