"""Printing wrapper tensors: `print(x)` inside vmap or grad shows the level and the value."""
import textwrap

import torch
import torch._tensor_str

from functorch_lite import _C

_plain_str = torch._tensor_str._str


# NOTE: [Printing wrappers]
# A wrapper has no storage, so torch's formatter cannot read its elements (and under vmap the
# formatter's data-dependent steps would be errors). Tensor.__repr__ looks up
# torch._tensor_str._str at call time; functorch_lite puts a formatter there that shows a
# wrapper as its level and its value, and leaves every other tensor to torch's.
def _str(self, *, tensor_contents=None):
    level = _C._level_of(self)
    if level is None:
        return _plain_str(self, tensor_contents=tensor_contents)
    if _C._is_batched(self):
        value, bdim = _C._unwrap_batched(self)
        head = f"BatchedTensor(lvl={level}, bdim={bdim}, value="
    else:
        value = _C._unwrap_grad_wrapper(self)
        head = f"GradTrackingTensor(lvl={level}, value="
    return f"{head}\n{textwrap.indent(repr(value), '    ')}\n)"


def install():
    torch._tensor_str._str = _str


def debug_unwrap(tensor, *, recurse=True):
    """The tensor under a vmap/grad wrapper (all wrappers when `recurse`), for debugging."""
    while _C._level_of(tensor) is not None:
        if _C._is_batched(tensor):
            tensor = _C._unwrap_batched(tensor)[0]
        else:
            tensor = _C._unwrap_grad_wrapper(tensor)
        if not recurse:
            break
    return tensor
