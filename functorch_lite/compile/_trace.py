"""Tracing for AOT Autograd: input/output metadata, the joint graph, the inference graph."""

import contextlib
import dataclasses
from typing import Any, Callable, Optional

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor, FunctionalTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

# NOTE: [Tracing the joint graph]
# AOT Autograd turns a Python function into two FX graphs of aten ops, a forward and a
# backward, by tracing ONE program that does both (the "joint"):
#
#   def joint(primals, tangents):
#       outs = fn(*primals)                                    # forward
#       grads = torch.autograd.grad(outs, primals, tangents)   # backward
#       return outs, grads
#
# make_fx records every aten op that reaches the Python dispatch layer. Autograd sits above
# that layer, so the forward ops are recorded as fn runs and the backward ops as the autograd
# engine runs them inside torch.autograd.grad. The inputs are fake tensors (FakeTensorMode):
# tracing computes shapes, never values.
#
# Functionalization (FunctionalTensorMode) runs between autograd and the tracer: in-place
# ops and views on intermediates become out-of-place ops, so the graph is a pure function
# that a partitioner can cut and a compiler can reorder. Mutations of the *inputs* are what
# functionalization cannot hide; see NOTE: [Input mutations and aliased outputs].
#
# The traced graph follows torch's naming so partitioners can tell the halves apart:
# placeholders primals_1.. and tangents_1.., and one flat output list holding the forward
# outputs first (num_fwd_outputs of them) and then one gradient (or None) per primal.

# NOTE: [Input mutations and aliased outputs]
# Before tracing, fn runs once on functionalized fake tensors (collect_metadata) to learn:
# - which inputs fn mutates in place. A data mutation of an input that does not require
#   grad (a BatchNorm running stat, a counter) is handled: the traced graph returns the new
#   value as an extra forward output and the runtime copies it into the input afterwards
#   (or, with keep_inference_input_mutations, the inference graph ends with aten.copy_).
#   A mutation of an input that requires grad, one that makes an input require grad, and a
#   metadata mutation (t_, resize_, ...) are refused with an error naming the API.
# - which outputs alias an input (fn returned the input itself or a view of it). Those are
#   not graph outputs: the runtime returns the input itself, or regenerates the view with
#   as_strided on the real input, so eager aliasing and autograd through the view both hold.
# - which outputs are differentiable (floating point and requiring grad). Only those get a
#   tangent; the others (integer tensors, detached values) leave the autograd.Function
#   marked non-differentiable. Outputs that are not tensors are returned as traced constants.
# - whether an output depends on a real tensor that requires grad but is not an input (a
#   parameter fn closes over). The trace would bake it in as a constant and its gradient
#   would be lost silently, so this is refused; aot_module lifts parameters to inputs.

_CONST, _TRACED, _INPUT, _VIEW = "const", "traced", "input", "view"


@dataclasses.dataclass
class OutputInfo:
    """How the runtime produces one output leaf of fn."""

    kind: str  # _CONST, _TRACED, _INPUT or _VIEW
    value: Any = None  # _CONST: the value; _TRACED: index among traced outputs
    base: int = -1  # _INPUT / _VIEW: index of the aliased tensor input
    size: tuple = ()
    stride: tuple = ()
    offset_delta: int = 0  # _VIEW: storage offset of the output minus that of the input
    detached: bool = False  # _VIEW: the view does not require grad though its base does


@dataclasses.dataclass
class TraceMeta:
    """What collect_metadata learned about fn on one set of input metadata."""

    outputs: list  # OutputInfo per output leaf
    out_spec: Any
    traced_outputs: list  # index into the output leaves, per traced output
    diff_outputs: list  # index into traced outputs, per differentiable traced output
    mutated_inputs: list  # tensor inputs whose data fn mutates (none of them requires grad)
    grad_inputs: list  # tensor inputs that require grad
    tangent_specs: list  # (size, dtype, device) per differentiable traced output


def to_fun(t: Any) -> Any:
    if isinstance(t, torch.Tensor) and not is_traceable_wrapper_subclass(t):
        return FunctionalTensor.to_functional(t)
    return t


def from_fun(t: Any) -> Any:
    if isinstance(t, FunctionalTensor):
        torch._sync(t)
        return torch._from_functional_tensor(t.elem)
    return t


def _functionalized(enabled: bool):
    return FunctionalTensorMode() if enabled else contextlib.nullcontext()


def _is_differentiable(t: torch.Tensor) -> bool:
    return t.requires_grad and (t.is_floating_point() or t.is_complex())


def collect_metadata(
    api: str,
    flat_fn: Callable,
    fake_args: list,
    input_names: list,
    *,
    functionalize: bool,
    out_spec_box: list,
) -> TraceMeta:
    """Runs flat_fn on functionalized fakes; see NOTE: [Input mutations and aliased outputs].

    input_names[i] names tensor input i in error messages (e.g. "args[0]")."""
    with _functionalized(functionalize):
        f_args = [to_fun(a) for a in fake_args]
        f_outs = flat_fn(f_args)
        for a in f_args:
            if isinstance(a, FunctionalTensor):
                torch._sync(a)
    mutated_inputs = _mutated_inputs(api, fake_args, f_args, input_names)
    _check_no_closed_over_grad_tensors(api, f_outs, f_args)
    outputs, traced_outputs, diff_outputs, tangent_specs = [], [], [], []
    for j, out in enumerate(f_outs):
        info = _alias_info(api, j, out, f_args, input_names, functionalize)
        if info is None:
            info = OutputInfo(_TRACED, len(traced_outputs))
            if _is_differentiable(out):
                diff_outputs.append(len(traced_outputs))
                tangent_specs.append((tuple(out.size()), out.dtype, out.device))
            traced_outputs.append(j)
        outputs.append(info)
    grad_inputs = [
        i for i, a in enumerate(fake_args) if isinstance(a, torch.Tensor) and a.requires_grad
    ]
    return TraceMeta(
        outputs,
        out_spec_box[0],
        traced_outputs,
        diff_outputs,
        mutated_inputs,
        grad_inputs,
        tangent_specs,
    )


def _mutated_inputs(api: str, fake_args: list, f_args: list, input_names: list) -> list:
    """The inputs whose data fn mutates; refuses the mutations the runtime cannot replay."""
    mutated = []
    for i, (arg, f_arg) in enumerate(zip(fake_args, f_args)):
        if not isinstance(f_arg, FunctionalTensor):
            continue
        name = input_names[i]
        if torch._functionalize_has_metadata_mutation(f_arg.elem):
            raise RuntimeError(
                f"{api}: fn changes the metadata (shape, strides or storage) of its input {name} "
                "in place, for example with t_, transpose_, resize_ or set_; this is not "
                "supported. Please use the out-of-place version of the op instead."
            )
        if not torch._functionalize_has_data_mutation(f_arg.elem):
            continue
        if arg.requires_grad:
            raise RuntimeError(
                f"{api}: fn mutates its input {name} in place, and that input requires grad; this "
                "is not supported. Please clone the input inside fn before mutating it."
            )
        if f_arg.requires_grad:
            raise RuntimeError(
                f"{api}: fn copies a value that requires grad into its input {name} in place; this "
                "is not supported. Please return the value from fn instead of writing it into an "
                "input."
            )
        mutated.append(i)
    return mutated


def _check_no_closed_over_grad_tensors(api: str, f_outs: list, f_args: list) -> None:
    """Refuses outputs that depend on a non-input tensor requiring grad: its grad would be lost."""
    inputs = {id(a) for a in f_args}
    seen, stack = (
        set(),
        [o.grad_fn for o in f_outs if isinstance(o, torch.Tensor) and o.grad_fn is not None],
    )
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf that requires grad
        made_by_fn = isinstance(variable, (FakeTensor, FunctionalTensor))
        if variable is not None and id(variable) not in inputs and not made_by_fn:
            raise RuntimeError(
                f"{api}: fn uses a tensor of shape {list(variable.shape)} that requires grad but "
                "is not an input of fn (a parameter it closes over?); its gradient would be lost. "
                "Please pass it to fn as an input, or compile the module with aot_module."
            )
        stack.extend(next_node for next_node, _ in node.next_functions)


def _alias_info(
    api: str, j: int, out: Any, f_args: list, input_names: list, functionalize: bool
) -> Optional[OutputInfo]:
    """How to produce output j without the graph (constant, input, view of an input), or None."""
    if not isinstance(out, torch.Tensor):
        if isinstance(out, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            raise RuntimeError(
                f"{api}: output {j} of fn is a symbolic size ({out}); returning sizes is not "
                "supported with dynamic=True. Please return a tensor instead."
            )
        return OutputInfo(_CONST, out)
    if functionalize and not isinstance(out, FunctionalTensor):
        return OutputInfo(_CONST, out)  # a tensor fn closed over, returned as is
    for i, a in enumerate(f_args):
        if out is a:
            return OutputInfo(_INPUT, base=i)
    if not functionalize:
        return None
    storage = StorageWeakRef(out.untyped_storage())
    for i, a in enumerate(f_args):
        if not isinstance(a, torch.Tensor) or StorageWeakRef(a.untyped_storage()) != storage:
            continue
        if out.dtype != a.dtype:
            raise RuntimeError(
                f"{api}: output {j} of fn is a view of its input {input_names[i]} with another "
                "dtype; this is not supported. Please return a copy (.clone()) of the view "
                "instead."
            )
        info = OutputInfo(
            _VIEW,
            base=i,
            size=tuple(out.size()),
            stride=tuple(out.stride()),
            offset_delta=out.storage_offset() - a.storage_offset(),
            detached=a.requires_grad and not out.requires_grad,
        )
        if any(isinstance(v, torch.SymInt) for v in (*info.size, *info.stride, info.offset_delta)):
            raise RuntimeError(
                f"{api}: output {j} of fn is a view of its input {input_names[i]}; with "
                "dynamic=True this is not supported. Please return a copy (.clone()) of the view, "
                "or use dynamic=False."
            )
        return info
    return None


def _detach_nodes_removed(gm: fx.GraphModule) -> fx.GraphModule:
    """Flat calling convention, no aten.detach (autograd bookkeeping), no dead code."""
    gm.graph._codegen = fx.graph.CodeGen()
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.detach.default:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm


def _make_fx(
    fn: Callable, decompositions: Optional[dict], disable_fn_metadata_mode: bool
) -> Callable:
    return make_fx(
        fn,
        decomposition_table=decompositions,
        record_module_stack=True,
        _disable_torch_fn_metadata_mode=disable_fn_metadata_mode,
    )


def trace_joint(
    flat_fn: Callable,
    meta: TraceMeta,
    fake_args: list,
    fake_tangents: list,
    *,
    functionalize: bool,
    decompositions: Optional[dict] = None,
    disable_fn_metadata_mode: bool = False,
) -> fx.GraphModule:
    """NOTE: [Tracing the joint graph]'s graph: (primals, tangents) -> [*fw_outs, *grads]."""

    def joint(primals, tangents):
        with _functionalized(functionalize):
            f_primals = [to_fun(p) for p in primals]
            f_outs = flat_fn(f_primals)
            traced = [f_outs[j] for j in meta.traced_outputs]
            mutated = [from_fun(f_primals[i]) for i in meta.mutated_inputs]
            grads = torch.autograd.grad(
                [traced[k] for k in meta.diff_outputs],
                [f_primals[i] for i in meta.grad_inputs],
                [to_fun(t) for t in tangents],
                allow_unused=True,
            )
            all_grads = [None] * len(primals)
            for i, g in zip(meta.grad_inputs, grads):
                all_grads[i] = from_fun(g)
            fw_outs = mutated + [from_fun(t) for t in traced]
        return fw_outs, all_grads

    gm = _make_fx(joint, decompositions, disable_fn_metadata_mode)(fake_args, fake_tangents)
    return _detach_nodes_removed(gm)


def trace_inference(
    flat_fn: Callable,
    meta: TraceMeta,
    fake_args: list,
    *,
    functionalize: bool,
    keep_input_mutations: bool,
    decompositions: Optional[dict] = None,
    disable_fn_metadata_mode: bool = False,
) -> fx.GraphModule:
    """The forward-only graph: primals -> [*new values of mutated inputs, *traced outputs]."""

    def inference(primals):
        with _functionalized(functionalize):
            f_primals = [to_fun(p) for p in primals]
            f_outs = flat_fn(f_primals)
            mutated = [from_fun(f_primals[i]) for i in meta.mutated_inputs]
            outs = [from_fun(f_outs[j]) for j in meta.traced_outputs]
        if keep_input_mutations:
            for i, new in zip(meta.mutated_inputs, mutated):
                primals[i].copy_(new)
            return outs
        return mutated + outs

    with torch.no_grad():
        gm = _make_fx(inference, decompositions, disable_fn_metadata_mode)(fake_args)
    return _detach_nodes_removed(gm)


def placeholder_values(gm: fx.GraphModule) -> list:
    """The example (fake) values of gm's inputs, as compilers receive them."""
    return [n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"]
