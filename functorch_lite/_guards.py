"""Tensor methods that cannot work inside a transform: refused with an error naming the API."""
import threading

import torch

from functorch_lite import _C

# NOTE: [Autograd calls inside a transform]
# Inside a transform, autograd belongs to the transforms: a wrapper's requires_grad says what its
# grad level tracks. Tensor.requires_grad_() would change that behind the level's back (and
# torch.autograd.functional.{vjp,jvp,jacobian,hessian,vhp,hvp} call it on their inputs), and
# Tensor.retain_grad() and backward() (torch.autograd.backward, which Tensor.backward calls)
# ask for .grad fields the transform never fills. All are refused while any level is live, with
# the words functorch users match on; the transforms themselves go through plain_requires_grad_, which
# also lets a __torch_function__ mode (make_fx) re-enter the public method. Outside transforms
# the cost is one extra Python call and a depth check.
_plain_requires_grad_ = torch.Tensor.requires_grad_
_plain_retain_grad = torch.Tensor.retain_grad
_plain_backward = torch.autograd.backward


_unguarded = threading.local()


def plain_requires_grad_(tensor, requires_grad=True):
    """Tensor.requires_grad_ without the guard, for the transforms' own use."""
    depth = getattr(_unguarded, "depth", 0)
    _unguarded.depth = depth + 1
    try:
        return _plain_requires_grad_(tensor, requires_grad)
    finally:
        _unguarded.depth = depth


def _requires_grad_(self, requires_grad=True):
    if _C._layer_depth() > 0 and not getattr(_unguarded, "depth", 0):
        raise RuntimeError(
            "You are attempting to call Tensor.requires_grad_() (or perhaps using "
            "torch.autograd.functional.* APIs) inside of a function being transformed by a "
            "functorch transform. This is unsupported, please attempt to use the functorch "
            "transforms (e.g. grad, vjp, jacrev, jacfwd, hessian) or call requires_grad_() "
            "outside of a function being transformed instead."
        )
    return _plain_requires_grad_(self, requires_grad)


def _retain_grad(self):
    if _C._layer_depth() > 0 and self.requires_grad:
        raise RuntimeError(
            "You are attempting to call Tensor.retain_grad() inside of a function being "
            "transformed by a functorch transform. This is unsupported, please attempt to use "
            "the functorch transforms (e.g. grad, vjp, jacrev, jacfwd, hessian) or call "
            "retain_grad() outside of a function being transformed instead."
        )
    return _plain_retain_grad(self)


def _backward(*args, **kwargs):
    if _C._layer_depth() > 0:
        raise RuntimeError(
            "backward() called inside a functorch transform. This is not supported, please use "
            "functorch.grad or functorch.vjp instead or call backward() outside of functorch "
            "transforms."
        )
    return _plain_backward(*args, **kwargs)


_requires_grad_.__doc__ = _plain_requires_grad_.__doc__
_retain_grad.__doc__ = _plain_retain_grad.__doc__
_backward.__doc__ = _plain_backward.__doc__


def install():
    torch.Tensor.requires_grad_ = _requires_grad_
    torch.Tensor.retain_grad = _retain_grad
    torch.autograd.backward = _backward
