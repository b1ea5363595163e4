"""The memory pool: statistics, limit, switches, emptying (torch.cuda's caching-allocator
functions, for the CPU allocations of transforms and compiled graphs)."""

from functorch_lite import _C

# NOTE: [The memory pool of compiled graphs], [Eager transforms allocate from the pool] and
# [What the pool keeps] (csrc/compile/pool.h) explain why and how much: large outputs freshly
# mapped on every call cost more than computing them. The pool only changes where large CPU
# allocations come from, never what a function returns: a block is reused only after the last
# tensor using it has died.

_SCOPES = ("all", "transforms", "compiled")


def _scopes(api: str, scope: str) -> tuple:
    if scope not in _SCOPES:
        raise ValueError(
            f"{api}: scope must be 'all', 'transforms' or 'compiled', got {scope!r}"
        )
    return ("transforms", "compiled") if scope == "all" else (scope,)


def memory_pool_stats() -> dict:
    """free_bytes (cached for reuse), used_bytes (held by tensors), peak_used_bytes (the most
    used_bytes at once in the current and the previous outermost scope), reused / allocated
    (blocks served from the pool / newly allocated), limit_bytes, and installed (False when
    another CPU allocator took precedence, in which case the pool is not used)."""
    return _C._memory_pool_stats()


def empty_memory_pool() -> None:
    """Frees every cached block; blocks that tensors hold return to the pool when they die."""
    _C._empty_memory_pool()


def set_memory_pool_limit(limit_bytes: int) -> None:
    """The most bytes the pool keeps in free blocks (a quarter of physical memory by default);
    the rest is freed."""
    if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int):
        raise TypeError(
            f"set_memory_pool_limit: limit_bytes must be an int, got "
            f"{type(limit_bytes).__name__}"
        )
    if limit_bytes < 0:
        raise ValueError(f"set_memory_pool_limit: limit_bytes must be >= 0, got {limit_bytes}")
    _C._set_memory_pool_limit(limit_bytes)


def set_memory_pool_enabled(enabled: bool, scope: str = "all") -> None:
    """Turns the pool on or off in every thread (on by default) for live transforms
    (scope='transforms'), compiled graphs (scope='compiled') or both (scope='all'). A scope
    already running keeps the setting it started with."""
    for s in _scopes("set_memory_pool_enabled", scope):
        _C._set_memory_pool_enabled(s, bool(enabled))


def is_memory_pool_enabled(scope: str = "all") -> bool:
    """Whether the pool serves `scope` ('all': both transforms and compiled graphs)."""
    return all(_C._is_memory_pool_enabled(s) for s in _scopes("is_memory_pool_enabled", scope))
