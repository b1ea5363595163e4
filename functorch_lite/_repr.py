"""Looking at wrapper tensors: printing, debug_unwrap, and .tolist() / .numpy() inside transforms."""
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
    torch.Tensor.tolist = _tolist
    torch.Tensor.numpy = _numpy


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


# NOTE: [Reading data out of wrappers]
# .tolist() and .numpy() are not operators: they read a tensor's storage, which a wrapper does
# not have. Under vmap there is no single answer, so they raise the same error as .item() (by
# calling it); under grad alone they read the plain tensor underneath, as .item() does.
_plain_tolist = torch.Tensor.tolist
_plain_numpy = torch.Tensor.numpy


def _readable(tensor):
    if _C._level_of(tensor) is None:
        return tensor
    plain = debug_unwrap(tensor)
    if any(_C._is_batched(t) for t in _wrapper_chain(tensor)):
        tensor.item()  # raises: "vmap: .item() (or float(), int(), .tolist()) was called ..."
    return plain.detach()


def _wrapper_chain(tensor):
    while _C._level_of(tensor) is not None:
        yield tensor
        tensor = debug_unwrap(tensor, recurse=False)


def _tolist(self):
    return _plain_tolist(_readable(self))


def _numpy(self, *, force=False):
    return _plain_numpy(_readable(self), force=force)
