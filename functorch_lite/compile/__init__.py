"""functorch_lite.compile: AOT Autograd (forward/backward FX graphs, partitioners, compilers)."""

# pythonkey_decompose is torch.fx's decomposition context manager, re-exported as functorch does.
from torch.fx.experimental.proxy_tensor import decompose as pythonkey_decompose

from functorch_lite.compile._aot import aot_function, compiled_function
from functorch_lite.compile._cache import clear_compile_cache, num_of_recompilations
from functorch_lite.compile._compilers import (
    debug_compile,
    default_decompositions,
    draw_graph,
    draw_graph_compile,
    get_aot_compilation_context,
    get_aot_graph_name,
    get_graph_being_compiled,
    inductor_compile,
    make_boxed_compiler,
    make_boxed_func,
    nop,
    print_compile,
)
from functorch_lite.compile._module import (
    aot_module,
    aot_module_simplified,
    compiled_module,
    memory_efficient_fusion,
)
from functorch_lite.compile._cse import fx_graph_cse
from functorch_lite.compile._minifier import minifier
from functorch_lite.compile._partition import default_partition, min_cut_rematerialization_partition
from functorch_lite.compile._pool import (
    empty_memory_pool,
    is_memory_pool_enabled,
    memory_pool_stats,
    set_memory_pool_enabled,
    set_memory_pool_limit,
)
from functorch_lite.compile._script import nnc_jit, ts_compile

__all__ = [
    "aot_function",
    "aot_module",
    "aot_module_simplified",
    "clear_compile_cache",
    "compiled_function",
    "compiled_module",
    "debug_compile",
    "default_decompositions",
    "default_partition",
    "draw_graph",
    "draw_graph_compile",
    "fx_graph_cse",
    "empty_memory_pool",
    "get_aot_compilation_context",
    "get_aot_graph_name",
    "get_graph_being_compiled",
    "inductor_compile",
    "is_memory_pool_enabled",
    "make_boxed_compiler",
    "make_boxed_func",
    "memory_efficient_fusion",
    "memory_pool_stats",
    "min_cut_rematerialization_partition",
    "minifier",
    "nnc_jit",
    "nop",
    "num_of_recompilations",
    "print_compile",
    "pythonkey_decompose",
    "set_memory_pool_enabled",
    "set_memory_pool_limit",
    "ts_compile",
]
