"""The memory pool compiled graphs allocate from: statistics, limit, switch, emptying."""

from typing import Any, Callable

from functorch_lite import _C
from functorch_lite.compile._compilers import call_compiled

# NOTE: [The memory pool of compiled graphs] (csrc/compile/pool.h) explains why: large outputs
# freshly mapped on every call cost more than computing them. Every compiled graph runs inside
# run_in_pool; the pool only changes where large CPU allocations come from, never what a
# compiled function returns.


def run_in_pool(compiled: Callable, args: list) -> Any:
    """Calls a compiled graph with its large CPU allocations served by the memory pool."""
    with _C._MemoryPool():
        return call_compiled(compiled, args)


def memory_pool_stats() -> dict:
    """free_bytes (cached for reuse), used_bytes (held by tensors), reused / allocated (blocks
    served from the pool / newly allocated), limit_bytes, and installed (False when another
    CPU allocator took precedence, in which case the pool is not used)."""
    return _C._memory_pool_stats()


def empty_memory_pool() -> None:
    """Frees every cached block; blocks that tensors hold return to the pool when they die."""
    _C._empty_memory_pool()


def set_memory_pool_limit(limit_bytes: int) -> None:
    """The most bytes the pool keeps in free blocks (1 GiB by default); the rest is freed."""
    if limit_bytes < 0:
        raise ValueError(f"set_memory_pool_limit: limit_bytes must be >= 0, got {limit_bytes}")
    _C._set_memory_pool_limit(limit_bytes)


def set_memory_pool_enabled(enabled: bool) -> None:
    """Turns the pool on or off for compiled graphs in every thread (on by default)."""
    _C._set_memory_pool_enabled(bool(enabled))


def is_memory_pool_enabled() -> bool:
    return _C._is_memory_pool_enabled()
