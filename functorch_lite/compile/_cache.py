"""An aot_function's compilation cache: keys from input metadata, entries with shape guards."""

import weakref
from typing import Any, Callable, Optional

import torch

# NOTE: [When aot_function recompiles]
# A compiled entry is valid for the metadata it was traced with, so the cache key holds,
# for every input leaf:
#   tensor:     shape, strides, dtype, device, requires_grad (dynamic=True: rank instead of
#               shape and strides; the entry's shape guards decide the rest)
#   non-tensor: its value (ints, floats, strings, None are baked into the graph as constants)
# plus the pytree structure of (args, kwargs) and whether grad mode is on (it decides between
# a joint and an inference graph). Any change of these compiles a new entry; the old ones
# stay cached. Strides are part of the key because compiled kernels (inductor) assume the
# traced layout. With dynamic=True one key may hold several entries, each with a guard made
# from the shape environment; the first whose guard accepts the inputs runs.


def leaf_key(api: str, leaf: Any, dynamic: bool) -> Any:
    if isinstance(leaf, torch.Tensor):
        if dynamic:
            return (leaf.dim(), leaf.dtype, leaf.device, leaf.requires_grad)
        return (tuple(leaf.shape), leaf.stride(), leaf.dtype, leaf.device, leaf.requires_grad)
    try:
        hash(leaf)
    except TypeError:
        raise TypeError(
            f"{api}: an input of type {type(leaf).__name__} is neither a tensor nor hashable, so "
            "it cannot key the compilation cache. Please pass tensors, or hashable Python values."
        ) from None
    return (type(leaf), leaf)


# NOTE: [Counting and clearing compilations]
# Every aot_function owns its CompileCache; the live ones are tracked weakly here, so
# num_of_recompilations() can count what they compiled (since the last clear_compile_cache())
# and clear_compile_cache() can drop their entries: the next call of each compiled function
# traces and compiles again. A compiled function that was garbage collected no longer counts.
_live_caches: "weakref.WeakSet[CompileCache]" = weakref.WeakSet()


def num_of_recompilations() -> int:
    """How many compilations the live aot_function / aot_module caches did since the last clear."""
    return sum(cache.num_compiles for cache in list(_live_caches))


def clear_compile_cache() -> None:
    """Drops every compiled entry of every live aot_function / aot_module, and resets the count."""
    for cache in list(_live_caches):
        cache.clear()


class CompileCache:
    """Maps an input key to compiled entries; see NOTE: [When aot_function recompiles]."""

    def __init__(self) -> None:
        self._entries: dict = {}
        self.num_compiles = 0
        _live_caches.add(self)

    def clear(self) -> None:
        self._entries.clear()
        self.num_compiles = 0

    def lookup(self, key: Any, tensors: list) -> Optional[Any]:
        for entry, guard in self._entries.get(key, ()):
            if guard is None or guard(tensors):
                return entry
        return None

    def add(self, key: Any, entry: Any, guard: Optional[Callable[[list], bool]] = None) -> None:
        self._entries.setdefault(key, []).append((entry, guard))
        self.num_compiles += 1
