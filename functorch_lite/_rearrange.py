"""rearrange: einops-style reordering, splitting and merging of dimensions with plain views."""

from typing import Union

import torch

# NOTE: [rearrange as reshape, permute, reshape]
# A pattern "b (h1 h) w -> (b h1) h w" names each dimension of the input (left) and of the
# output (right); a parenthesized group is several named axes stored as one dimension, "..."
# stands for the dimensions no name covers, and "1" or "()" is a dimension of size 1. Every
# name occurs once on each side, so the whole operation is:
#   1. reshape the input to its elementary axes (groups split, unit dims dropped); the size of
#      a split axis comes from axes_lengths, or is what is left of its group's size;
#   2. permute the elementary axes into the right side's order;
#   3. reshape to the right side's dims (groups merged, unit dims inserted).
# The three are ordinary tensor operations, so rearrange composes with every transform (under
# vmap the batch dim is not part of the pattern, as with any function of one sample).

_ELLIPSIS = "..."


class _Side:
    """One side of a pattern: `dims` holds, per dimension, a list of axis names ([] is a unit
    dimension; the name _ELLIPSIS stands for the dimensions "..." covers), and `grouped` says
    which dimensions were written in parentheses."""

    def __init__(self, text: str, what: str) -> None:
        self.dims: list = []
        self.grouped: list = []
        group = None
        for token in text.replace("(", " ( ").replace(")", " ) ").split():
            if token == "(":
                if group is not None:
                    raise ValueError(f"rearrange: nested parentheses in the {what} of the pattern")
                group = []
            elif token == ")":
                if group is None:
                    raise ValueError(f"rearrange: unbalanced ')' in the {what} of the pattern")
                self.dims.append(group)
                self.grouped.append(True)
                group = None
            else:
                names = [] if token == "1" else [self._name(token, what)]
                if group is None:
                    self.dims.append(names)
                    self.grouped.append(False)
                else:
                    group.extend(names)
        if group is not None:
            raise ValueError(f"rearrange: unbalanced '(' in the {what} of the pattern")
        self.names = [n for dim in self.dims for n in dim]
        repeated = sorted({n for n in self.names if self.names.count(n) > 1})
        if repeated:
            raise ValueError(
                f"rearrange: the {what} of the pattern names {', '.join(repeated)} more than once"
            )

    @staticmethod
    def _name(token: str, what: str) -> str:
        if token == _ELLIPSIS or token.isidentifier():
            return token
        if token.isdigit():
            raise ValueError(
                f"rearrange: only unnamed axes of size 1 are supported, got '{token}' in the "
                f"{what} of the pattern"
            )
        raise ValueError(f"rearrange: '{token}' in the {what} of the pattern is not an axis name")


def rearrange(
    tensor: Union[torch.Tensor, list, tuple], pattern: str, **axes_lengths: int
) -> torch.Tensor:
    """Reorders, splits and merges dimensions following an einops pattern such as
    "b (h1 h) w c -> (b h1) c h w"; see NOTE: [rearrange as reshape, permute, reshape]. A list
    or tuple of tensors is stacked along a new first dimension first."""
    if isinstance(tensor, (list, tuple)):
        tensor = torch.stack(list(tensor))
    if pattern.count("->") != 1:
        raise ValueError(f"rearrange: the pattern must have the form 'left -> right', got '{pattern}'")
    left_text, right_text = pattern.split("->")
    left, right = _Side(left_text, "left side"), _Side(right_text, "right side")
    only_one_side = set(left.names) ^ set(right.names)
    if only_one_side:
        raise ValueError(
            f"rearrange: {', '.join(sorted(only_one_side))} must appear on both sides of the "
            f"pattern '{pattern}'"
        )
    unknown = sorted(set(axes_lengths) - set(left.names))
    if unknown:
        raise ValueError(f"rearrange: {', '.join(unknown)} in axes_lengths are not in the pattern")
    sizes = _bind(tensor.shape, left, axes_lengths, pattern)
    elementary = [n for n in left.names if n != _ELLIPSIS]
    ellipsis = [f"{_ELLIPSIS}{i}" for i in range(len(sizes) - len(elementary))]

    def expand(names: list) -> list:
        return [e for n in names for e in (ellipsis if n == _ELLIPSIS else [n])]

    source, target = expand(left.names), expand(right.names)
    split = tensor.reshape([sizes[n] for n in source])
    moved = split.permute([source.index(n) for n in target])
    shape = []
    for dim, grouped in zip(right.dims, right.grouped):
        if dim == [_ELLIPSIS] and not grouped:
            shape.extend(sizes[n] for n in ellipsis)
        else:
            size = 1
            for n in expand(dim):
                size *= sizes[n]
            shape.append(size)
    return moved.reshape(shape)


def _bind(shape: torch.Size, left: _Side, axes_lengths: dict, pattern: str) -> dict:
    """The size of every elementary axis ("...0", "...1", ... for the ellipsis dims)."""
    has_ellipsis = _ELLIPSIS in left.names
    if any(_ELLIPSIS in dim for dim, grouped in zip(left.dims, left.grouped) if grouped):
        raise ValueError(
            f"rearrange: '...' cannot be inside parentheses on the left side of '{pattern}'"
        )
    fixed = len(left.dims) - (1 if has_ellipsis else 0)
    if (has_ellipsis and len(shape) < fixed) or (not has_ellipsis and len(shape) != fixed):
        raise ValueError(
            f"rearrange: the pattern '{pattern}' describes {fixed}{' or more' if has_ellipsis else ''} "
            f"dimensions, but the tensor has {len(shape)}"
        )
    sizes: dict = {}
    index = 0
    for dim in left.dims:
        if dim == [_ELLIPSIS]:  # never grouped on the left (checked above)
            for i in range(len(shape) - fixed):
                sizes[f"{_ELLIPSIS}{i}"] = shape[index]
                index += 1
            continue
        size = shape[index]
        index += 1
        known = 1
        free = [n for n in dim if n not in axes_lengths]
        for n in dim:
            if n in axes_lengths:
                sizes[n] = axes_lengths[n]
                known *= axes_lengths[n]
        if len(free) > 1:
            raise ValueError(
                f"rearrange: cannot split dimension {index - 1} (size {size}) into "
                f"{', '.join(free)}: please give all but one of their lengths as keyword arguments"
            )
        if free and known > 0 and size % known == 0:
            sizes[free[0]] = size // known
        elif free or known != size:
            group = "(" + " ".join(dim) + ")" if len(dim) != 1 else (dim[0] if dim else "1")
            lengths = ", ".join(f"{n}={axes_lengths[n]}" for n in dim if n in axes_lengths)
            raise ValueError(
                f"rearrange: dimension {index - 1} has size {size}, which does not match "
                f"{group}" + (f" with {lengths}" if lengths else "")
            )
    return sizes
