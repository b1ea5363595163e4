"""Graph compilers for AOT Autograd (nop, print, inductor), boxing helpers, graph-name context."""

import contextlib
import functools
import os
import warnings
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.fx as fx
from torch._decomp import get_decompositions
from torch._guards import detect_fake_mode
from torch.fx.experimental.proxy_tensor import make_fx

from functorch_lite.compile._pooling import pooling_decompositions

# NOTE: [Compilers and the boxed calling convention]
# A compiler is a function (fx.GraphModule, example_inputs) -> callable. example_inputs are
# the fake tensors the graph was traced with (the compiler must not read their data). The
# callable is called either unboxed, compiled(*args), or, when it carries `_boxed_call = True`,
# boxed, compiled(list_of_args): a boxed callee may clear the list to free the inputs early,
# which is how inductor releases activations during the backward. make_boxed_func adapts an
# unboxed callable; make_boxed_compiler wraps a compiler so it returns a boxed callable.


def make_boxed_func(f: Callable[..., Any]) -> Callable[[list], Any]:
    @functools.wraps(f)
    def g(args: list) -> Any:
        return f(*args)

    g._boxed_call = True
    return g


def make_boxed_compiler(compiler: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(compiler)
    def f(fx_g: Any, inps: Any) -> Any:
        return make_boxed_func(compiler(fx_g, inps))

    return f


def call_compiled(compiled: Callable, args: list) -> Any:
    """Calls a compiled graph either way; see NOTE: [Compilers and the boxed calling convention]."""
    if getattr(compiled, "_boxed_call", False):
        return compiled(args)
    return compiled(*args)


@make_boxed_compiler
def nop(fx_g: fx.GraphModule, _: Any) -> fx.GraphModule:
    """Returns the graph as it is: runs the aten ops eagerly. Use it to check accuracy."""
    return fx_g


@make_boxed_compiler
def print_compile(fx_g: fx.GraphModule, _: Any) -> fx.GraphModule:
    print(fx_g.code)
    return fx_g


def debug_compile(fx_g: fx.GraphModule, inps: Sequence[torch.Tensor]) -> Callable:
    """Prints the graph and its input metadata as a repro, then runs the graph uncompiled."""
    shapes = [(tuple(i.shape), i.dtype) if isinstance(i, torch.Tensor) else i for i in inps]
    print(f"# {get_aot_graph_name()}: inputs {shapes}\n{fx_g.code}")
    return make_boxed_func(fx_g)


def inductor_compile(fx_g: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
    """Compiles one forward, backward or inference graph with TorchInductor (C++/OpenMP on CPU).

    The graph is first re-traced with inductor's own decompositions (inductor lowers a fixed
    op set and refuses graphs that still hold ops it decomposes). When inductor cannot be
    imported or cannot compile the graph (for example, when no C++ compiler is installed), runs
    the graph uncompiled with a warning naming the reason, or raises when the environment
    variable FUNCTORCH_LITE_INDUCTOR_STRICT is 1 (see NOTE: [Inductor failures])."""
    graph_kind = _graph_being_compiled[0] if _graph_being_compiled else "forward"
    try:
        from torch._inductor.compile_fx import compile_fx_inner
        from torch._inductor.decomposition import select_decomp_table

        table = select_decomp_table()
        gm = _retraced(fx_g, list(example_inputs), {**table, **pooling_decompositions(table)})
        return compile_fx_inner(
            gm,
            list(example_inputs),
            is_backward=graph_kind == "backward",
            is_inference=graph_kind == "inference",
        )
    except Exception as e:  # inductor is optional: see NOTE: [Inductor failures]
        reason = f"TorchInductor could not compile the {graph_kind} graph ({type(e).__name__}: {e})"
        if _inductor_strict():
            raise RuntimeError(
                f"inductor_compile: {reason}. Unset {INDUCTOR_STRICT_ENV} to run the graph "
                "uncompiled (as nop does) with a warning instead."
            ) from e
        warnings.warn(
            f"inductor_compile: {reason}; running it uncompiled (as nop does) instead. Set "
            f"{INDUCTOR_STRICT_ENV}=1 to make this an error."
        )
        return make_boxed_func(fx_g)


# NOTE: [Inductor failures]
# TorchInductor is optional (it needs a C++ compiler on CPU), so by default a graph it cannot
# compile runs uncompiled, with a warning that names the reason. Code that must not time or ship
# uncompiled graphs under the inductor label (benchmarks, deployments) sets the environment
# variable FUNCTORCH_LITE_INDUCTOR_STRICT=1, which turns the fallback into a RuntimeError. The
# variable is read at each compilation, so setting os.environ in the process is enough.
INDUCTOR_STRICT_ENV = "FUNCTORCH_LITE_INDUCTOR_STRICT"


def _inductor_strict() -> bool:
    return os.environ.get(INDUCTOR_STRICT_ENV, "0").strip() not in ("", "0")


def _retraced(fx_g: fx.GraphModule, example_inputs: list, decompositions: dict) -> fx.GraphModule:
    fake_mode = detect_fake_mode(example_inputs)
    with fake_mode if fake_mode is not None else contextlib.nullcontext():
        gm = make_fx(fx_g, decomposition_table=decompositions)(*example_inputs)
    gm.graph._codegen = fx.graph.CodeGen()
    gm.recompile()
    return gm


def draw_graph_compile(name: str) -> Callable[[fx.GraphModule, list], fx.GraphModule]:
    """A compiler that draws each graph to `<name>_<graph name>.svg` (draw_graph; needs pydot)
    and runs it uncompiled."""

    @make_boxed_compiler
    def compiler(fx_g: fx.GraphModule, _: list) -> fx.GraphModule:
        draw_graph(fx_g, f"{name}_{get_aot_graph_name()}")
        return fx_g

    return compiler


def draw_graph(
    traced: fx.GraphModule,
    fname: str,
    figname: str = "fx_graph",
    clear_meta: bool = True,
    prog: Optional[Any] = None,
    parse_stack_trace: bool = False,
    dot_graph_shape: Optional[str] = None,
) -> None:
    """Writes the graph as an image (fname's suffix picks the format, else svg); needs pydot."""
    try:
        import pydot  # noqa: F401  (FxGraphDrawer needs it)
    except ImportError as e:
        raise RuntimeError(
            "draw_graph: needs the pydot package. Please `pip install pydot`."
        ) from e
    from torch.fx.passes.graph_drawer import FxGraphDrawer

    base, ext = os.path.splitext(fname)
    ext = ext[1:] or "svg"
    if clear_meta:
        traced = fx.GraphModule(traced, _graph_without_meta(traced.graph))
    drawer = FxGraphDrawer(
        traced, figname, parse_stack_trace=parse_stack_trace, dot_graph_shape=dot_graph_shape
    )
    dot = drawer.get_main_dot_graph()
    write = getattr(dot, "write_" + ext)
    if prog is None:
        write(f"{base}.{ext}")
    else:
        write(f"{base}.{ext}", prog=prog)


def _graph_without_meta(graph: fx.Graph) -> fx.Graph:
    new = fx.Graph()
    env: dict = {}
    for node in graph.nodes:
        env[node] = new.node_copy(node, lambda n: env[n])
        env[node].meta = {}
    return new


aten = torch.ops.aten
default_decompositions = get_decompositions(
    [
        aten.detach,
        aten.gelu_backward,
        aten.leaky_relu_backward,
        aten.sigmoid_backward,
        aten.threshold_backward,
        aten.hardtanh_backward,
        aten.hardsigmoid_backward,
        aten.hardswish_backward,
        aten.tanh_backward,
        aten.silu_backward,
        aten.elu_backward,
        aten.cudnn_batch_norm,
        aten.cudnn_batch_norm_backward,
        aten.masked_fill.Scalar,
        aten.masked_fill.Tensor,
        aten.elu,
        aten.leaky_relu,
        aten.hardtanh,
        aten.hardswish,
        aten.hardsigmoid,
        aten.conj_physical,
        aten.is_same_size,
    ]
)


# NOTE: [The graph being compiled]
# Compilers may ask which graph they are compiling (get_aot_graph_name() gives e.g.
# "model__forward_0"). aot_function sets the context around every compiler call: "forward"
# and "backward" for the two halves of a partitioned joint, "inference" for a forward-only
# graph; nth_graph counts the compilations done so far in this process.

_graph_being_compiled: list = []
_model_name = "model"
_nth_graph = 0


@contextlib.contextmanager
def track_graph_compiling(name: str) -> Iterator[None]:
    global _graph_being_compiled
    previous = _graph_being_compiled
    _graph_being_compiled = [name]
    try:
        yield
    finally:
        _graph_being_compiled = previous


def count_compiled_graph() -> None:
    global _nth_graph
    _nth_graph += 1


def get_aot_compilation_context() -> tuple[list, str, int]:
    return list(_graph_being_compiled), _model_name, _nth_graph


def get_aot_graph_name() -> str:
    """The name of the graph being compiled; see NOTE: [The graph being compiled]."""
    return f"{_model_name}__{'_'.join(_graph_being_compiled)}_{_nth_graph}"


get_graph_being_compiled = get_aot_graph_name
