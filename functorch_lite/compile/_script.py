"""TorchScript compilers: ts_compile (a graph to a frozen ScriptModule) and nnc_jit."""

import copy
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensor

from functorch_lite.compile._compilers import make_boxed_func

# NOTE: [Scripting an aten graph]
# TorchScript compiles an FX graph of aten ops once three things are undone: operator
# overloads (aten.add.Tensor) become their packets (aten.add), which TorchScript resolves by
# schema; the graph's pytree codegen becomes the plain one; and constants TorchScript cannot
# spell (torch.device in kwargs) become strings. The module is then frozen (its constants
# folded) and, when the example inputs are real tensors, run once so that the profiling
# executor specializes it. Fake example inputs (what aot_function passes) are not run.


def _scriptable(fx_g: fx.GraphModule) -> fx.GraphModule:
    gm = copy.deepcopy(fx_g)
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if isinstance(node.target, torch._ops.OpOverload):
            node.target = node.target.overloadpacket
        node.kwargs = {
            k: str(v) if isinstance(v, torch.device) else v for k, v in node.kwargs.items()
        }
    gm.graph.set_codegen(fx.graph.CodeGen())
    gm.recompile()
    return gm


def ts_compile(fx_g: fx.GraphModule, inps: Sequence[Any]) -> Callable:
    """Compiles an aten graph with TorchScript (see NOTE: [Scripting an aten graph]); returns
    a boxed function running the frozen ScriptModule."""
    scripted = torch.jit.script(_scriptable(fx_g))
    scripted = torch.jit.freeze(scripted.eval())
    if inps and not any(isinstance(t, FakeTensor) for t in inps):
        scripted(*inps)
    return make_boxed_func(scripted)


def nnc_jit(f: Callable[..., Any]) -> Callable[..., Any]:
    """aot_function(f, ts_compile): forward and backward graphs compiled with TorchScript."""
    from functorch_lite.compile._aot import aot_function

    return aot_function(f, ts_compile)
