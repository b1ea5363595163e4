"""aot_function: trace, partition and compile a function; the compilation cache around it."""

import dataclasses
import functools
import threading
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from functorch_lite import _C
from functorch_lite.compile._cache import CompileCache, leaf_key
from functorch_lite.compile._compilers import count_compiled_graph, track_graph_compiling
from functorch_lite.compile._effects import RecordChecks
from functorch_lite.compile._partition import default_partition
from functorch_lite.compile._runtime import CompiledGraphs
from functorch_lite.compile._trace import (
    TraceMeta,
    collect_metadata,
    placeholder_values,
    trace_inference,
    trace_joint,
)

# NOTE: [What one aot_function call does]
# 1. Flatten (args, kwargs) with pytree; tensor leaves become graph inputs (primals), other
#    leaves are baked into the trace as constants. Look the inputs up in the cache
#    (NOTE: [When aot_function recompiles]); on a hit go to 5.
# 2. Fake the tensor inputs (shapes only) and run fn once on them, functionalized, to learn
#    the mutations, the aliased outputs and the differentiable outputs
#    (NOTE: [Input mutations and aliased outputs]).
# 3. Grad enabled and some differentiable output: trace the joint graph
#    (NOTE: [Tracing the joint graph]), split it with partition_fn
#    (NOTE: [Partitioning the joint graph]), compile the halves with fw_compiler / bw_compiler.
#    Otherwise: trace the forward only and compile it with inference_compiler.
# 4. Cache the entry.
# 5. Run it (NOTE: [The compiled autograd.Function]).
# Inside a transform (a live vmap/grad/jvp level) fn runs as it is: the transform sees its
# operators, so grad or vmap of a function that calls an aot-compiled function works; the
# compiled graphs run on plain tensors only.


# One compilation at a time in the process; reentrant, for aot_function called while tracing.
_compiling = threading.RLock()


@dataclasses.dataclass
class _Config:
    api: str
    fw_compiler: Callable
    bw_compiler: Callable
    inference_compiler: Callable
    partition_fn: Callable
    decompositions: Optional[dict]
    num_params_buffers: int
    keep_inference_input_mutations: bool
    dynamic: bool
    functionalize: bool
    disable_fn_metadata_mode: bool
    input_name: Callable  # names a tensor input in error messages; see _tensor_input_names


class _AOTFunction:
    """The callable aot_function returns; see NOTE: [What one aot_function call does]."""

    def __init__(self, fn: Callable, config: _Config) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.config = config
        self.cache = CompileCache()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _C._layer_depth() > 0:
            return self.fn(*args, **kwargs)
        leaves, in_spec, tensors = _flatten(args, kwargs)
        return self._entry(leaves, in_spec, tensors)(tensors)

    def compile_for(self, *args: Any, **kwargs: Any) -> None:
        """Compiles for inputs like these without running; the inputs may be fake tensors."""
        self._entry(*_flatten(args, kwargs))

    def _entry(self, leaves: Sequence, in_spec: Any, tensors: Sequence) -> CompiledGraphs:
        config = self.config
        key = (
            torch.is_grad_enabled(),
            in_spec,
            tuple(leaf_key(config.api, x, config.dynamic) for x in leaves),
        )
        entry = self.cache.lookup(key, tensors)
        if entry is None:
            with _compiling:  # tracing uses process-global state (make_fx, fx patching)
                entry = self.cache.lookup(key, tensors)  # another thread may have compiled it
                if entry is None:
                    if in_spec is None:
                        leaves, in_spec = pytree.tree_flatten((tuple(leaves), {}))
                    entry, guard = _compile(self.fn, config, leaves, in_spec)
                    self.cache.add(key, entry, guard)
        return entry


def _flatten(args: tuple, kwargs: dict) -> tuple[Sequence, Any, Sequence]:
    """(leaves, in_spec, tensor leaves); in_spec is None when all args are tensors, no kwargs."""
    if not kwargs and all(isinstance(a, torch.Tensor) for a in args):
        return args, None, args  # the common case, without pytree's cost
    leaves, in_spec = pytree.tree_flatten((args, kwargs))
    return leaves, in_spec, [x for x in leaves if isinstance(x, torch.Tensor)]


def _flat_fn(fn: Callable, leaves: list, in_spec: Any, out_spec_box: list) -> Callable:
    """fn as a function of its tensor leaves only; the other leaves are baked in."""
    positions = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
    constants = [None if isinstance(x, torch.Tensor) else x for x in leaves]

    def flat_fn(tensors: list) -> list:
        full = list(constants)
        for i, t in zip(positions, tensors):
            full[i] = t
        args, kwargs = pytree.tree_unflatten(full, in_spec)
        out_leaves, out_spec = pytree.tree_flatten(fn(*args, **kwargs))
        out_spec_box[:] = [out_spec]
        return out_leaves

    return flat_fn


def _tensor_input_names(leaves: list, in_spec: Any, input_name: Callable) -> list:
    """Each tensor leaf's name in error messages; input_name maps a path into (args, kwargs)."""
    paths, _ = pytree.tree_flatten_with_path(pytree.tree_unflatten(leaves, in_spec))
    return [input_name(path) for path, leaf in paths if isinstance(leaf, torch.Tensor)]


def _input_name(path: tuple, num_lifted: int = 0, lifted_name: Optional[Callable] = None) -> str:
    """args[0], kwargs['x'], ...; lifted_name(path) names the first num_lifted positional args."""
    if path[0].idx == 1:
        return "kwargs" + pytree.keystr(path[1:])
    if path[1].idx < num_lifted:
        return lifted_name(path[1:])
    return f"args[{path[1].idx - num_lifted}]" + pytree.keystr(path[2:])


def _fake_inputs(tensors: list, dynamic: bool) -> tuple[FakeTensorMode, list]:
    fake_mode = detect_fake_mode(tensors)
    if fake_mode is None:
        shape_env = ShapeEnv() if dynamic else None
        fake_mode = FakeTensorMode(
            allow_non_fake_inputs=True, shape_env=shape_env, static_shapes=not dynamic
        )
    if not dynamic:
        return fake_mode, [_fake(fake_mode, t, static_shapes=True) for t in tensors]
    # Imported here, not at the top: torch._dynamo is slow to import.
    from torch._dynamo.source import ConstantSource

    return fake_mode, [
        _fake(fake_mode, t, static_shapes=False, source=ConstantSource(f"primals_{i}"))
        for i, t in enumerate(tensors)
    ]


def _fake(fake_mode: FakeTensorMode, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    if isinstance(t, FakeTensor) and t.fake_mode is fake_mode:
        return t
    return fake_mode.from_tensor(t, **kwargs)


def _shape_guard(fake_mode: FakeTensorMode, fake_args: list) -> Optional[Callable[[list], bool]]:
    shape_env = fake_mode.shape_env
    if shape_env is None:
        return None
    return lambda tensors: shape_env.evaluate_guards_for_args(fake_args, tensors)


def _compile(
    fn: Callable, config: _Config, leaves: list, in_spec: Any
) -> tuple[CompiledGraphs, Optional[Callable]]:
    out_spec_box: list = []
    flat_fn = _flat_fn(fn, leaves, in_spec, out_spec_box)
    fake_mode, fake_args = _fake_inputs(
        [x for x in leaves if isinstance(x, torch.Tensor)], config.dynamic
    )
    trace_kwargs = dict(
        functionalize=config.functionalize,
        decompositions=config.decompositions,
        disable_fn_metadata_mode=config.disable_fn_metadata_mode,
    )
    input_names = _tensor_input_names(leaves, in_spec, config.input_name)
    with fake_mode, RecordChecks():  # NOTE: [Error checks in traced graphs]
        meta = collect_metadata(
            config.api,
            flat_fn,
            fake_args,
            input_names,
            functionalize=config.functionalize,
            out_spec_box=out_spec_box,
        )
        needs_autograd = torch.is_grad_enabled() and meta.grad_inputs and meta.diff_outputs
        if needs_autograd:
            fake_tangents = [
                torch.empty(size, dtype=dtype, device=device)
                for size, dtype, device in meta.tangent_specs
            ]
            joint = trace_joint(flat_fn, meta, fake_args, fake_tangents, **trace_kwargs)
        else:
            graph = trace_inference(
                flat_fn,
                meta,
                fake_args,
                keep_input_mutations=config.keep_inference_input_mutations,
                **trace_kwargs,
            )
    guard = _shape_guard(fake_mode, fake_args)
    if needs_autograd:
        return _compile_joint(config, meta, joint, (fake_args, fake_tangents)), guard
    return _compile_inference(config, meta, graph), guard


def _compile_inference(config: _Config, meta: TraceMeta, graph: fx.GraphModule) -> CompiledGraphs:
    with track_graph_compiling("inference"):
        inference = config.inference_compiler(graph, placeholder_values(graph))
    count_compiled_graph()
    return CompiledGraphs(
        config.api,
        meta,
        inference=inference,
        keep_input_mutations=config.keep_inference_input_mutations,
    )


def _compile_joint(
    config: _Config, meta: TraceMeta, joint: fx.GraphModule, joint_inputs: tuple
) -> CompiledGraphs:
    fw_module, bw_module = config.partition_fn(
        joint,
        joint_inputs,
        num_fwd_outputs=len(meta.mutated_inputs) + len(meta.traced_outputs),
        static_lifetime_input_indices=list(range(config.num_params_buffers)),
    )
    with track_graph_compiling("forward"):
        forward = config.fw_compiler(fw_module, placeholder_values(fw_module))
    with track_graph_compiling("backward"):
        backward = config.bw_compiler(bw_module, placeholder_values(bw_module))
    count_compiled_graph()
    tangent_names = tuple(
        n.name for n in joint.graph.nodes if n.op == "placeholder" and n.name.startswith("tangents")
    )
    return CompiledGraphs(
        config.api,
        meta,
        forward=forward,
        backward=backward,
        fw_module=fw_module,
        bw_module=bw_module,
        tangent_names=tangent_names,
    )


def _aot_function(
    fn: Callable,
    api: str,
    fw_compiler: Callable,
    bw_compiler: Optional[Callable] = None,
    partition_fn: Callable = default_partition,
    decompositions: Optional[dict] = None,
    num_params_buffers: int = 0,
    keep_inference_input_mutations: bool = False,
    inference_compiler: Optional[Callable] = None,
    *,
    dynamic: bool = False,
    enable_log: bool = True,
    disable_functionalization: bool = False,
    _disable_torch_fn_metadata_mode: bool = False,
    input_name: Optional[Callable] = None,
) -> _AOTFunction:
    config = _Config(
        api=api,
        fw_compiler=fw_compiler,
        bw_compiler=bw_compiler if bw_compiler is not None else fw_compiler,
        inference_compiler=inference_compiler if inference_compiler is not None else fw_compiler,
        partition_fn=partition_fn,
        decompositions=decompositions,
        num_params_buffers=num_params_buffers,
        keep_inference_input_mutations=keep_inference_input_mutations,
        dynamic=dynamic,
        functionalize=not disable_functionalization,
        disable_fn_metadata_mode=_disable_torch_fn_metadata_mode,
        input_name=input_name if input_name is not None else _input_name,
    )
    return _AOTFunction(fn, config)


def aot_function(
    fn: Callable,
    fw_compiler: Callable,
    bw_compiler: Optional[Callable] = None,
    partition_fn: Callable = default_partition,
    decompositions: Optional[dict] = None,
    num_params_buffers: int = 0,
    keep_inference_input_mutations: bool = False,
    inference_compiler: Optional[Callable] = None,
    *,
    dynamic: bool = False,
    enable_log: bool = True,
    disable_functionalization: bool = False,
    _disable_torch_fn_metadata_mode: bool = False,
) -> Callable:
    """Traces fn's forward and backward into FX graphs of aten ops and compiles each.

    Returns a function with fn's signature whose outputs and gradients equal fn's. The graphs
    are traced on the first call and again when the inputs' metadata changes; see
    NOTE: [What one aot_function call does]. fw_compiler / bw_compiler / inference_compiler
    receive (fx.GraphModule, example fake inputs) and return a callable (bw_compiler and
    inference_compiler default to fw_compiler); partition_fn splits the joint graph
    (default_partition or min_cut_rematerialization_partition); decompositions maps aten ops
    to Python decompositions applied while tracing. dynamic=True traces with symbolic shapes
    and reuses the graphs for other sizes. enable_log is accepted for compatibility.
    """
    return _aot_function(
        fn,
        "aot_function",
        fw_compiler,
        bw_compiler,
        partition_fn,
        decompositions,
        num_params_buffers,
        keep_inference_input_mutations,
        inference_compiler,
        dynamic=dynamic,
        enable_log=enable_log,
        disable_functionalization=disable_functionalization,
        _disable_torch_fn_metadata_mode=_disable_torch_fn_metadata_mode,
    )


compiled_function = aot_function
