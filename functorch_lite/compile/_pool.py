"""Compiled graphs run inside the memory pool; its statistics, limit and switches."""

from typing import Any, Callable

from functorch_lite import _C
from functorch_lite._memory_pool import (  # noqa: F401  (functorch_lite.compile exports them)
    empty_memory_pool,
    is_memory_pool_enabled,
    memory_pool_stats,
    set_memory_pool_enabled,
    set_memory_pool_limit,
)
from functorch_lite.compile._compilers import call_compiled

# NOTE: [The memory pool of compiled graphs] (csrc/compile/pool.h) explains why: large outputs
# freshly mapped on every call cost more than computing them. Every compiled graph runs inside
# run_in_pool; the pool only changes where large CPU allocations come from, never what a
# compiled function returns.


def run_in_pool(compiled: Callable, args: list) -> Any:
    """Calls a compiled graph with its large CPU allocations served by the memory pool."""
    with _C._MemoryPool():
        return call_compiled(compiled, args)
