"""Running compiled graphs: the autograd.Function, input mutations, outputs aliasing inputs."""

from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from functorch_lite.compile._pool import run_in_pool
from functorch_lite.compile._trace import _CONST, _INPUT, _TRACED, TraceMeta

# NOTE: [The compiled autograd.Function]
# A call with grad enabled runs _CompiledFunction.apply(graphs, *tensor_inputs):
#   forward:  compiled forward graph -> [*new values of mutated inputs, *traced outputs,
#             *saved values]; tensors among the saved values go to save_for_backward (which
#             checks versions), other saved values (sizes) to the ctx; mutated-input values,
#             integer and non-requiring outputs are marked non-differentiable.
#   backward: the incoming grads of the differentiable outputs become the tangents
#             (contiguous, the layout they were traced with); the compiled backward graph
#             takes its placeholders in its own order, matched to the forward's saved outputs by
#             name (NOTE: [Partitioning the joint graph]); it returns one grad per tensor input.
# The backward is not itself differentiable: grad-of-grad needs the joint of the joint, which
# aot_function does not build. Under create_graph=True its grads come out of a DelayedError
# node, so differentiating them raises an error naming the API instead of silently treating
# them as constants.
# After the Function, the runtime writes the mutated inputs (copy_ under no_grad) and
# assembles fn's outputs: traced outputs, constants, inputs returned as is, and views of
# inputs regenerated with as_strided so they alias like in eager
# (NOTE: [Input mutations and aliased outputs]).
# Every graph runs with its large allocations served by the memory pool
# (NOTE: [The memory pool of compiled graphs]).


class CompiledGraphs:
    """The compiled graphs for one cache entry, and what the runtime needs to call them."""

    def __init__(
        self,
        api: str,
        meta: TraceMeta,
        *,
        inference: Optional[Callable] = None,
        forward: Optional[Callable] = None,
        backward: Optional[Callable] = None,
        fw_module: Optional[fx.GraphModule] = None,
        bw_module: Optional[fx.GraphModule] = None,
        tangent_names: tuple = (),
        keep_input_mutations: bool = False,
    ) -> None:
        self.api = api
        self.meta = meta
        self.inference, self.forward, self.backward = inference, forward, backward
        self.num_mutations = (
            0 if (inference is not None and keep_input_mutations) else len(meta.mutated_inputs)
        )
        self.num_fw_outputs = self.num_mutations + len(meta.traced_outputs)
        diff = {self.num_mutations + k for k in meta.diff_outputs}
        self.diff_positions = sorted(diff)
        self.nondiff_positions = [i for i in range(self.num_fw_outputs) if i not in diff]
        self.single_traced_output = meta.out_spec.is_leaf() and meta.outputs[0].kind == _TRACED
        if forward is not None:
            self._match_saved_values(api, fw_module, bw_module, tangent_names)

    def _match_saved_values(
        self, api: str, fw_module: fx.GraphModule, bw_module: fx.GraphModule, tangent_names: tuple
    ) -> None:
        saved = list(fw_module.graph.output_node().args[0])[self.num_fw_outputs :]
        saved_names = [n.name if isinstance(n, fx.Node) else None for n in saved]
        self.saved_is_tensor = [
            isinstance(n, fx.Node) and isinstance(n.meta.get("val"), torch.Tensor) for n in saved
        ]
        self.bw_sources = []  # per backward placeholder: (is_tangent, index)
        for node in bw_module.graph.nodes:
            if node.op != "placeholder":
                continue
            if node.name in tangent_names:
                self.bw_sources.append((True, tangent_names.index(node.name)))
            elif node.name in saved_names:
                self.bw_sources.append((False, saved_names.index(node.name)))
            else:
                raise RuntimeError(
                    f"{api}: the backward graph made by partition_fn takes {node.name}, which the "
                    "forward graph neither saves nor receives as a tangent. Please check the "
                    "partition_fn."
                )

    def __call__(self, tensors: Sequence) -> Any:
        if self.forward is not None:
            outs = _CompiledFunction.apply(self, *tensors)
        else:
            with torch.no_grad():
                outs = run_in_pool(self.inference, list(tensors))
        m = self.num_mutations
        if m:
            with torch.no_grad():
                for i, new in zip(self.meta.mutated_inputs, outs[:m]):
                    tensors[i].copy_(new)
        return self._user_outputs(tensors, outs[m:])

    def _user_outputs(self, tensors: Sequence, traced: Any) -> Any:
        if self.single_traced_output:
            return traced[0]
        leaves = []
        for info in self.meta.outputs:
            if info.kind == _TRACED:
                leaves.append(traced[info.value])
            elif info.kind == _CONST:
                leaves.append(info.value)
            elif info.kind == _INPUT:
                leaves.append(tensors[info.base])
            else:
                base = tensors[info.base].detach() if info.detached else tensors[info.base]
                offset = base.storage_offset() + info.offset_delta
                leaves.append(base.as_strided(info.size, info.stride, offset))
        return pytree.tree_unflatten(leaves, self.meta.out_spec)


class _CompiledFunction(torch.autograd.Function):
    """See NOTE: [The compiled autograd.Function]."""

    @staticmethod
    def forward(ctx: Any, graphs: CompiledGraphs, *tensors: torch.Tensor) -> tuple:
        outs = run_in_pool(graphs.forward, list(tensors))
        n = graphs.num_fw_outputs
        saved = outs[n:]
        ctx.graphs = graphs
        ctx.save_for_backward(
            *[v for v, is_tensor in zip(saved, graphs.saved_is_tensor) if is_tensor]
        )
        ctx.saved_others = [
            v for v, is_tensor in zip(saved, graphs.saved_is_tensor) if not is_tensor
        ]
        fw_outs = tuple(outs[:n])
        if graphs.nondiff_positions:
            ctx.mark_non_differentiable(*[fw_outs[i] for i in graphs.nondiff_positions])
        return fw_outs

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor) -> tuple:
        graphs = ctx.graphs
        tensors, others = iter(ctx.saved_tensors), iter(ctx.saved_others)
        saved = [
            next(tensors) if is_tensor else next(others) for is_tensor in graphs.saved_is_tensor
        ]
        tangents = [grad_outputs[i].contiguous() for i in graphs.diff_positions]
        args = [tangents[i] if is_tangent else saved[i] for is_tangent, i in graphs.bw_sources]
        del saved, tangents
        with torch.no_grad():
            grads = run_in_pool(graphs.backward, args)
        if torch.is_grad_enabled():  # create_graph=True
            sources = [*ctx.saved_tensors, *grad_outputs]
            grads = _not_differentiable(graphs.api, grads, sources)
        return (None, *grads)


def _not_differentiable(api: str, grads: Sequence, sources: Sequence) -> list:
    """grads, made to raise an error naming `api` when a double backward reaches them.

    The error node takes the grads and `sources` (the saved tensors and incoming grads the
    backward read) as inputs, so any path from the grads back to what they depend on runs
    through it."""
    positions = [i for i, g in enumerate(grads) if isinstance(g, torch.Tensor)]
    linked = [t for t in sources if isinstance(t, torch.Tensor) and t.requires_grad]
    if not positions or not linked:
        return list(grads)
    error = torch._C._functions.DelayedError(
        f"{api}: the backward of a compiled function cannot be differentiated again (double "
        "backward needs the joint graph of the joint graph, which is not built). Please take "
        "higher-order gradients of the function uncompiled.",
        len(positions) + len(linked),
    )
    wrapped = error(*[grads[i] for i in positions], *linked)
    out = list(grads)
    for i, g in zip(positions, wrapped):
        out[i] = g
    return out
