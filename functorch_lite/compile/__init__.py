"""functorch_lite.compile: AOT Autograd (forward/backward FX graphs, partitioners, compilers)."""

from functorch_lite.compile._aot import aot_function, compiled_function
from functorch_lite.compile._compilers import (
    debug_compile,
    default_decompositions,
    draw_graph,
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
from functorch_lite.compile._partition import default_partition, min_cut_rematerialization_partition
from functorch_lite.compile._pool import (
    empty_memory_pool,
    is_memory_pool_enabled,
    memory_pool_stats,
    set_memory_pool_enabled,
    set_memory_pool_limit,
)

__all__ = [
    "aot_function",
    "aot_module",
    "aot_module_simplified",
    "compiled_function",
    "compiled_module",
    "debug_compile",
    "default_decompositions",
    "default_partition",
    "draw_graph",
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
    "nop",
    "print_compile",
    "set_memory_pool_enabled",
    "set_memory_pool_limit",
]
