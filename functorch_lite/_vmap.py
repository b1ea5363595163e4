"""vmap: vectorizing map over a batch dimension, with pytrees of inputs and outputs."""
import functools

import torch
from torch.utils import _pytree as pytree

from functorch_lite import _C, _dynamo

_RANDOMNESS = ("error", "different", "same")


class _Api:
    """The API prefix of an error message, formatted only when an error is raised."""

    __slots__ = ("_text",)

    def __init__(self, text):
        self._text = text

    def __str__(self):
        return self._text()


def _name(func):
    """The function's name for messages; repr only when it has none (dynamo traces this)."""
    return getattr(func, "__name__", None) or repr(func)


def _api(func, in_dims):
    return f"vmap({_name(func)}, in_dims={in_dims!r}, ...)(<inputs>)"


# NOTE: [Caching in_dims and out_dims]
# in_dims and out_dims are fixed when vmap is called; what they broadcast to depends only on the
# structure of the inputs (outputs), which is usually the same on every call. So each in_dims /
# out_dims value keeps, per structure, the dims broadcast to the leaves, and its types are
# checked once: pytree's broadcast took longer than a small function's whole batched body. A
# tuple of plain tensors (the common case) skips pytree altogether: its structure is its length.
# Errors are formatted only when raised (_Api). The caches live in a module table keyed by the
# dims' repr (which tells True from 1), not in vmap's closure: dynamo rebuilds a vmap made inside
# a compiled region from its closure, which may hold only constants (NOTE: [torch.compile over
# our transforms]).
_CACHE_ENTRIES = 64
_DIMS_CACHES = {}


def _dims_cache(dims):
    """The shared _DimsCache of an in_dims or out_dims value."""
    key = repr(dims)
    cache = _DIMS_CACHES.get(key)
    if cache is None:
        if len(_DIMS_CACHES) >= 16 * _CACHE_ENTRIES:
            _DIMS_CACHES.clear()
        cache = _DIMS_CACHES[key] = _DimsCache(dims)
    return cache


class _DimsCache:
    """An in_dims or out_dims value, broadcast per structure."""

    __slots__ = ("dims", "checked", "flat")

    def __init__(self, dims):
        self.dims = dims
        self.checked = False
        self.flat = {}

    def broadcast(self, key, spec, tree):
        flat = self.flat.get(key)
        if flat is None:
            flat = _broadcast_dims(self.dims, tree, spec)
            if flat is not None:
                if len(self.flat) >= _CACHE_ENTRIES:
                    self.flat.clear()
                self.flat[key] = flat
        return flat


def _flatten(tree):
    """(leaves, structure, cache key); a tuple of plain tensors skips pytree."""
    if type(tree) is tuple and all(type(t) is torch.Tensor for t in tree):
        return tree, None, len(tree)
    leaves, spec = pytree.tree_flatten(tree)
    return leaves, spec, spec


def _unflatten(leaves, spec):
    return tuple(leaves) if spec is None else pytree.tree_unflatten(leaves, spec)


class _Leaf:
    def __repr__(self):
        return "*"


def _mismatch(dims, noun, spec):
    """Says what `dims` (in_dims/out_dims) must look like for `noun` (plural) of structure spec."""
    if spec.is_leaf():
        return f"the {noun[:-1]} is a single value, so {dims} must be an int or None."
    structure = repr(pytree.tree_unflatten([_Leaf()] * spec.num_leaves, spec))
    return (
        f"the {noun} have structure {structure} (* marks a leaf); {dims} must have that "
        f"structure, or a prefix of it where an int or None stands for a whole subtree."
    )


def _broadcast_dims(dims, tree, spec=None):
    """Broadcasts in_dims / out_dims (an int, None or a pytree prefix of `tree`) to its leaves."""
    try:
        return pytree._broadcast_to_and_flatten(
            dims, pytree.tree_structure(tree) if spec is None else spec
        )
    except Exception:  # noqa: BLE001 - pytree raises several kinds here
        return None


def _check_dims_type(dims, what, api):
    for d in pytree.tree_leaves(dims, is_leaf=lambda x: x is None):
        if d is not None and not isinstance(d, int):
            if what == "out_dims":
                raise ValueError(
                    f"{api}: `out_dims` must be an int, None or a python collection of ints "
                    f"representing where in the outputs the vmapped dimension should appear; got "
                    f"an element of type {type(d).__name__}: {d!r}."
                )
            raise ValueError(
                f"{api}: Got in_dim={d!r} for an input but in_dim must be either an integer "
                f"dimension or None (in_dims must be an int, None or a (nested) tuple/list/dict "
                f"of them)."
            )


def _flat_in_dims(func, in_dims, args, cache=None):
    """(leaves of args, their in_dims, structure, api); see NOTE: [Caching in_dims and out_dims]."""
    api = _Api(lambda: _api(func, in_dims))
    if not isinstance(in_dims, (int, tuple)):
        raise ValueError(
            f"{api}: expected `in_dims` to be int or a (potentially nested) tuple matching the "
            f"structure of inputs, got: {type(in_dims)}."
        )
    if not args:
        raise ValueError(
            f"{api}: got no inputs. Maybe you forgot to add inputs, or you are trying to vmap "
            f"over a function with no inputs. The latter is unsupported."
        )
    if isinstance(in_dims, tuple) and len(in_dims) != len(args):
        raise ValueError(
            f"{api}: in_dims is not compatible with the structure of `inputs`: in_dims is a "
            f"tuple of length {len(in_dims)} but the function was called with {len(args)} "
            f"positional argument(s); give one in_dim per argument."
        )
    cache = _DimsCache(in_dims) if cache is None else cache
    if not cache.checked:
        _check_dims_type(in_dims, "in_dims", api)
        cache.checked = True
    flat_args, spec, key = _flatten(args)
    flat_dims = cache.broadcast(key, spec, args)
    if flat_dims is None:
        spec = pytree.tree_structure(args)
        raise ValueError(
            f"{api}: in_dims is not compatible with the structure of `inputs`: "
            f"{_mismatch('in_dims', 'inputs', spec)}"
        )
    return flat_args, flat_dims, spec, api


def _batch_size(flat_args, flat_dims, api):
    size = None
    for arg, dim in zip(flat_args, flat_dims):
        if dim is None:
            continue
        if not isinstance(arg, torch.Tensor):
            raise ValueError(
                f"{api}: Got in_dim={dim} for an input but the input is of type {type(arg)}. "
                f"We cannot vmap over non-Tensor arguments, please use None as the respective "
                f"in_dim."
            )
        if arg.dim() == 0:
            raise ValueError(
                f"{api}: Got in_dim={dim} for some input, but that input is a Tensor of "
                f"dimensionality 0: a 0-dim Tensor has no dimension to map over; use in_dim=None "
                f"for it."
            )
        if not -arg.dim() <= dim < arg.dim():
            raise ValueError(
                f"{api}: Got in_dim={dim} for some input, but that input is a Tensor of "
                f"dimensionality {arg.dim()} so expected in_dim to satisfy "
                f"{-arg.dim()} <= in_dim < {arg.dim()}."
            )
        this = arg.shape[dim]
        if size is None:
            size = this
        elif this != size:
            sizes = [a.shape[d] for a, d in zip(flat_args, flat_dims) if d is not None]
            raise ValueError(
                f"{api}: Expected all tensors to have the same size in the mapped dimension, "
                f"got sizes {sizes} for the mapped dimension."
            )
    if size is None:
        raise ValueError(
            f"{api}: at least one input must be a Tensor mapped over (in_dim not None); got "
            f"in_dims that map over nothing. vmap must be called with at least one Tensor to "
            f"vmap over."
        )
    return size


def _unbatch_outputs(output, out_dims, level, batch_size, func, cache=None):
    api = _Api(lambda: f"vmap({_name(func)}, ..., out_dims={out_dims!r})")
    cache = _DimsCache(out_dims) if cache is None else cache
    if not cache.checked:
        _check_dims_type(out_dims, "out_dims", api)
        cache.checked = True
    if type(output) is torch.Tensor:
        flat_out, spec, key = (output,), None, None  # a lone tensor: no pytree at all
    else:
        flat_out, spec, key = _flatten(output)
    flat_dims = cache.broadcast(key, spec, output)
    if flat_dims is None:
        spec = pytree.tree_structure(output)
        raise ValueError(
            f"{api}: out_dims is not compatible with the structure of `outputs`: "
            f"{_mismatch('out_dims', 'outputs', spec)}"
        )
    result = []
    for out, dim in zip(flat_out, flat_dims):
        if not isinstance(out, torch.Tensor):
            if dim is None:
                result.append(out)
                continue
            raise ValueError(
                f"{api}: `{_name(func)}` must only return Tensors, got type {type(out)}. Did you mean "
                f"to set out_dims= to None for output? (the function must return Tensors, or "
                f"pytrees of them, where out_dims is not None)."
            )
        if dim is None:
            if _C._is_batched(out) and _C._level_of(out) == level:
                raise ValueError(
                    f"{api}: `{_name(func)}` can not return a BatchedTensor when out_dim is None: the "
                    f"output depends on the mapped inputs, and only outputs that are the same "
                    f"for every sample can have out_dim None."
                )
            result.append(out)
            continue
        rank = out.dim() + 1
        if not -rank <= dim < rank:
            raise IndexError(
                f"{api}: Dimension out of range (expected to be in range of [{-rank}, "
                f"{rank - 1}], but got {dim}): out_dim={dim} for an output with {out.dim()} "
                f"dimension(s) per sample."
            )
        result.append(_C._remove_batch_dim(out, level, batch_size, dim % rank))
    if key is None:
        return result[0]
    return _unflatten(result, spec)


def _vmap_call(func, in_dims, out_dims, randomness, args, kwargs, caches=(None, None)):
    flat_args, flat_dims, spec, api = _flat_in_dims(func, in_dims, args, caches[0])
    batch_size = _batch_size(flat_args, flat_dims, api)
    with _C._vmap_level(batch_size, randomness, "vmap") as level:
        batched = [
            arg if dim is None else _C._add_batch_dim(arg, dim % arg.dim(), level)
            for arg, dim in zip(flat_args, flat_dims)
        ]
        output = func(*_unflatten(batched, spec), **kwargs)
        return _unbatch_outputs(output, out_dims, level, batch_size, func, caches[1])


def _chunked_call(func, in_dims, out_dims, randomness, chunk_size, args, kwargs):
    flat_args, flat_dims, spec, api = _flat_in_dims(func, in_dims, args)
    batch_size = _batch_size(flat_args, flat_dims, api)
    chunks = []
    # randomness='same' means one draw for the whole batch, so every chunk replays the same RNG
    rng_state = torch.get_rng_state() if randomness == "same" else None
    for start in range(0, batch_size, chunk_size):
        if rng_state is not None:
            torch.set_rng_state(rng_state)
        length = min(chunk_size, batch_size - start)
        sliced = [
            arg if dim is None else arg.narrow(dim, start, length)
            for arg, dim in zip(flat_args, flat_dims)
        ]
        chunk_args = _unflatten(sliced, spec)
        chunks.append(_vmap_call(func, in_dims, out_dims, randomness, chunk_args, kwargs))
    if len(chunks) == 1:
        return chunks[0]
    flat_chunks = [pytree.tree_flatten(c)[0] for c in chunks]
    out_spec = pytree.tree_structure(chunks[0])
    flat_out_dims = pytree._broadcast_to_and_flatten(out_dims, out_spec)
    joined = []
    for i, dim in enumerate(flat_out_dims):
        pieces = [c[i] for c in flat_chunks]
        joined.append(pieces[0] if dim is None else torch.cat(pieces, dim))
    return pytree.tree_unflatten(joined, out_spec)


@_dynamo.transform
def vmap(func, in_dims=0, out_dims=0, randomness="error", *, chunk_size=None):
    """Vectorizes `func` over dimension `in_dims` of its inputs (the vmap of functorch)."""
    name = _name(func)
    if randomness not in _RANDOMNESS:
        raise RuntimeError(
            f"vmap({name}, randomness={randomness!r}): Only allowed values for randomness are "
            f"'error', 'different', or 'same'. Got {randomness}"
        )
    if chunk_size is not None and (
        not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0
    ):
        raise ValueError(
            f"vmap({name}, chunk_size={chunk_size!r}): chunk_size should be None or greater "
            f"than 0. (got {chunk_size!r})"
        )

    @functools.wraps(func)
    def wrapped(*args, **kwargs):
        if chunk_size is not None:
            return _chunked_call(func, in_dims, out_dims, randomness, chunk_size, args, kwargs)
        caches = (_dims_cache(in_dims), _dims_cache(out_dims))
        return _vmap_call(func, in_dims, out_dims, randomness, args, kwargs, caches)

    return wrapped


def chunk_vmap(func, in_dims=0, out_dims=0, randomness="error", chunks=2):
    """vmap that runs the batch in `chunks` pieces, to bound memory (functorch.experimental)."""
    name = getattr(func, "__name__", repr(func))
    if not isinstance(chunks, int) or chunks <= 0:
        raise ValueError(f"chunk_vmap({name}, chunks={chunks!r}): chunks must be a positive int.")
    if chunks == 1:
        return vmap(func, in_dims, out_dims, randomness)

    @functools.wraps(func)
    def wrapped(*args, **kwargs):
        flat_args, flat_dims, _, api = _flat_in_dims(func, in_dims, args)
        batch_size = _batch_size(flat_args, flat_dims, api)
        chunk_size = max(1, -(-batch_size // chunks))
        return _chunked_call(func, in_dims, out_dims, randomness, chunk_size, args, kwargs)

    return wrapped
