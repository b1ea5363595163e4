"""Jacobians and Hessians: jacrev (vmap of vjp_fn), jacfwd (vmap of jvp) and hessian."""
import functools

import torch
from torch.utils import _pytree as pytree

from functorch_lite import _C, _dynamo
from functorch_lite._autodiff import _name, _select_argnums, _vjp_with_argnums
from functorch_lite._forward import _jvp_with_argnums
from functorch_lite._vmap import vmap


def _error_if_complex(api, tree, what):
    for i, t in enumerate(pytree.tree_leaves(tree)):
        if isinstance(t, torch.Tensor) and t.is_complex():
            raise RuntimeError(
                f"{api}: expected all {what} to be real, got a complex tensor at flattened "
                f"{what[:-1]} index {i}. Split complex tensors into real and imaginary parts."
            )


# NOTE: [Basis vectors of a pytree]
# A Jacobian is computed one block of basis vectors at a time: rows [start, start + length) of
# the identity over all flattened leaves concatenated, cut into one (length, *leaf.shape) tensor
# per leaf. Row r of the identity has its 1 at column r; a leaf whose columns start at `offset`
# holds the part of row r at its column r - offset, which is diagonal (start - offset) of its
# (length, numel) block. The basis is built with plain factories (not new_zeros on a leaf that
# may be a wrapper): it is a constant, and vmap batches it at its own level.
#
# NOTE: [Basis vectors batched like the output]
# Under an outer vmap, though, jacrev's cotangent blocks may need to be batched (expanded, not
# copied) at the vmap levels their output leaf is batched at, as torch.func's basis (made with
# new_zeros on the output) always is. An in-place write into a view of an intermediate
# (`y[1:].sin_()`) is undone in the backward pass by autograd's CopySlices, which copies the
# view's gradient, batched at the outer level, into `grad.new_empty_strided(...)`, a buffer
# batched like the cotangent; vmap refuses to write batched values into a tensor not batched at
# that level. The blocks are expanded only when the graph has a CopySlices node: otherwise the
# backward pass of a plain basis computes once what it would compute once per sample.
# (jacfwd's tangent blocks stay plain: forward AD copies a tangent into one laid out like its
# primal when they differ, NOTE: [Tangents batched like their primal], and then writes into it
# in place.)
def _basis(flat_leaves, numels, start, length):
    blocks = []
    offset = 0
    for leaf, numel in zip(flat_leaves, numels):
        block = torch.zeros(length, numel, dtype=leaf.dtype, device=leaf.device)
        block.diagonal(start - offset).fill_(1)
        blocks.append(block.view(length, *leaf.shape))
        offset += numel
    return blocks


def _vmap_levels(leaf):
    """The live vmap levels `leaf` is batched at, outermost first."""
    levels = []
    while _C._level_of(leaf) is not None and _C._is_alive(leaf):
        if _C._is_batched(leaf):
            levels.append(_C._level_of(leaf))
            leaf = _C._unwrap_batched(leaf)[0]
        else:
            leaf = _C._unwrap_grad_wrapper(leaf)
    return levels


def _expanded_at(block, levels):
    """`block` batched at each of `levels` (outermost first), expanded (NOTE above)."""
    for level in reversed(levels):  # innermost (lowest) level first
        batch_size = _C._vmap_info(level)[0]
        block = _C._add_batch_dim(block.expand(batch_size, *block.shape), 0, level)
    return block


def _row_blocks(total, chunk_size):
    step = total if chunk_size is None else min(chunk_size, total)
    return [(start, min(step, total - start)) for start in range(0, total, max(step, 1))]


@_dynamo.transform
def jacrev(func, argnums=0, *, has_aux=False, chunk_size=None, _preallocate_and_copy=False):
    """Jacobian of `func` w.r.t. `argnums` by reverse mode: vmap of vjp_fn over basis vectors."""
    if not (chunk_size is None or (isinstance(chunk_size, int) and chunk_size > 0)):
        raise ValueError(
            f"jacrev({_name(func)}, chunk_size={chunk_size!r}): `chunk_size` should be greater "
            f"than 0 (or None)."
        )

    @functools.wraps(func)
    def wrapper(*args):
        api = f"jacrev({_name(func)}, argnums={argnums!r})(<inputs>)"
        _error_if_complex(api, args, "inputs")
        result = _vjp_with_argnums(func, args, argnums, has_aux, api, "jacrev")
        output, vjp_fn, aux = result if has_aux else (*result, None)
        flat_output, output_spec = pytree.tree_flatten(output)
        _error_if_complex(api, flat_output, "outputs")
        numels = [o.numel() for o in flat_output]
        total = sum(numels)
        selected, _ = _select_argnums(args, argnums, api)
        flat_primals, primals_spec = pytree.tree_flatten(selected)

        # Rows of the Jacobian per primal: (total, *primal.shape), one vjp per basis vector.
        blocks = _row_blocks(total, chunk_size)
        levels = [_vmap_levels(o) for o in flat_output]
        if not (any(levels) and vjp_fn.copies_slices()):
            levels = [[] for _ in flat_output]
        preallocated = None
        if _preallocate_and_copy and len(blocks) > 1:
            preallocated = [p.new_zeros(total, *p.shape) for p in flat_primals]
        pieces = []
        for start, length in blocks:
            basis = [_expanded_at(b, lv)
                     for b, lv in zip(_basis(flat_output, numels, start, length), levels)]
            if chunk_size == 1:
                rows = vjp_fn(pytree.tree_unflatten([b[0] for b in basis], output_spec))
                rows = [r.unsqueeze(0) for r in pytree.tree_leaves(rows)]
            else:
                rows = pytree.tree_leaves(vmap(vjp_fn)(pytree.tree_unflatten(basis, output_spec)))
            if preallocated is not None:
                for dst, r in zip(preallocated, rows):
                    dst[start:start + length].copy_(r)
            else:
                pieces.append(rows)
        if preallocated is not None:
            per_primal = preallocated
        elif len(pieces) == 1:
            per_primal = pieces[0]
        elif pieces:
            per_primal = [torch.cat(rows, 0) for rows in zip(*pieces)]
        else:  # the function has no output elements
            per_primal = [p.new_zeros(0, *p.shape) for p in flat_primals]

        # NOTE: [Reshaping Jacobians with views]
        # Rows and columns are split and unflattened with split/view/unflatten, never reshape:
        # splitting one dimension is always a view, and reshape's _reshape_alias would cost a
        # vmap fallback (which copies) when a Jacobian is taken of a Jacobian.
        per_primal_splits = [torch.split(rows, numels, dim=0) for rows in per_primal]
        jac = []
        for j, out in enumerate(flat_output):
            leaves = [
                splits[j].view(tuple(out.shape) + tuple(p.shape))
                for splits, p in zip(per_primal_splits, flat_primals)
            ]
            jac.append(pytree.tree_unflatten(leaves, primals_spec))
        jac = pytree.tree_unflatten(jac, output_spec)
        return (jac, aux) if has_aux else jac

    return wrapper


@_dynamo.transform
def jacfwd(func, argnums=0, has_aux=False, *, randomness="error"):
    """Jacobian of `func` w.r.t. `argnums` by forward mode: vmap of jvp over basis vectors."""

    @functools.wraps(func)
    def wrapper(*args):
        api = f"jacfwd({_name(func)}, argnums={argnums!r})(<inputs>)"
        _error_if_complex(api, args, "inputs")
        selected, _ = _select_argnums(args, argnums, api)
        flat_primals, primals_spec = pytree.tree_flatten(selected)
        for p in flat_primals:
            if not isinstance(p, torch.Tensor):
                raise RuntimeError(
                    f"{api}: expected the arguments selected by argnums to be Tensors (or "
                    f"pytrees of Tensors), got {type(p).__name__}."
                )
        numels = [p.numel() for p in flat_primals]
        total = sum(numels)
        basis = pytree.tree_unflatten(_basis(flat_primals, numels, 0, total), primals_spec)

        def push_jvp(tangents):
            result = _jvp_with_argnums(func, args, tangents, argnums, False, has_aux, api,
                                       "jacfwd")
            _error_if_complex(api, result[0], "outputs")
            return (result[1], result[2]) if has_aux else result[1]

        results = vmap(push_jvp, randomness=randomness)(basis)
        aux = None
        if has_aux:
            results, aux = results
            aux = pytree.tree_map(lambda a: a[0], aux)

        # Each output's columns: (total, *out.shape) -> (*out.shape, *primal.shape) per primal
        # (see NOTE: [Reshaping Jacobians with views]).
        flat_results, results_spec = pytree.tree_flatten(results)
        jac = []
        for cols in flat_results:
            parts = torch.split(cols.movedim(0, -1), numels, dim=-1)
            leaves = [
                part.squeeze(-1) if p.dim() == 0 else part.unflatten(-1, p.shape)
                for part, p in zip(parts, flat_primals)
            ]
            jac.append(pytree.tree_unflatten(leaves, primals_spec))
        jac = pytree.tree_unflatten(jac, results_spec)
        return (jac, aux) if has_aux else jac

    return wrapper


@_dynamo.transform
def hessian(func, argnums=0):
    """Hessian of `func` w.r.t. `argnums`: forward-over-reverse, jacfwd(jacrev(func))."""
    return jacfwd(jacrev(func, argnums), argnums)
