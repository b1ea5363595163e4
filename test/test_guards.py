"""Autograd calls torch.func refuses inside a transform: we refuse them too, with its words.

Each case runs under torch.func (the reference) and under our transforms: both raise with the
same key phrase, or both run. Afterwards no level is left behind, and outside a transform the
same calls work as in plain PyTorch.
"""
import warnings

import pytest
import torch
import torch.autograd.functional as AF

import functorch_lite as ft
from functorch_lite import _C

REQUIRES_GRAD = "You are attempting to call Tensor.requires_grad_() (or perhaps using " \
    "torch.autograd.functional.* APIs) inside of a function being transformed"
RETAIN_GRAD = "You are attempting to call Tensor.retain_grad() inside of a function being " \
    "transformed"
BACKWARD = "backward() called inside a functorch transform"


def x3():
    return torch.randn(3)


def xb():
    return torch.randn(2, 3)


def sin_sum(y):
    return y.sin().sum()


# (id, build(api) -> zero-argument call, key phrase of torch.func's error or None: both run)
CASES = [
    ("grad-af.vjp", lambda F: lambda: F.grad(
        lambda x: AF.vjp(torch.sin, x, torch.ones(3))[1].sum())(x3()), REQUIRES_GRAD),
    ("grad-af.jvp", lambda F: lambda: F.grad(
        lambda x: AF.jvp(torch.sin, x, torch.ones(3))[1].sum())(x3()), REQUIRES_GRAD),
    ("grad-af.jacobian", lambda F: lambda: F.grad(
        lambda x: AF.jacobian(torch.sin, x).sum())(x3()), REQUIRES_GRAD),
    ("grad-af.hessian", lambda F: lambda: F.grad(
        lambda x: AF.hessian(sin_sum, x).sum())(x3()), REQUIRES_GRAD),
    ("grad-af.vhp", lambda F: lambda: F.grad(
        lambda x: AF.vhp(sin_sum, x, torch.ones(3))[1].sum())(x3()), REQUIRES_GRAD),
    ("grad-af.hvp", lambda F: lambda: F.grad(
        lambda x: AF.hvp(sin_sum, x, torch.ones(3))[1].sum())(x3()), REQUIRES_GRAD),
    ("vmap-af.vjp", lambda F: lambda: F.vmap(
        lambda x: AF.vjp(torch.sin, x, torch.ones(3))[1])(xb()), REQUIRES_GRAD),
    ("vmap-af.jacobian", lambda F: lambda: F.vmap(lambda x: AF.jacobian(torch.sin, x))(xb()),
     REQUIRES_GRAD),
    ("jvp-af.jacobian", lambda F: lambda: F.jvp(
        lambda x: AF.jacobian(torch.sin, x), (x3(),), (x3(),)), REQUIRES_GRAD),
    ("jacrev-af.jvp", lambda F: lambda: F.jacrev(
        lambda x: AF.jvp(torch.sin, x, torch.ones(3))[1])(x3()), REQUIRES_GRAD),
    ("grad-requires_grad_", lambda F: lambda: F.grad(lambda x: x.requires_grad_().sum())(x3()),
     REQUIRES_GRAD),
    ("grad-requires_grad_-false", lambda F: lambda: F.grad(
        lambda x: x.requires_grad_(False).sum())(x3()), REQUIRES_GRAD),
    ("grad-requires_grad_-of-a-new-tensor", lambda F: lambda: F.grad(
        lambda x: (x * torch.ones(3).requires_grad_()).sum())(x3()), REQUIRES_GRAD),
    ("vmap-requires_grad_", lambda F: lambda: F.vmap(lambda x: x.requires_grad_())(xb()),
     REQUIRES_GRAD),
    ("jvp-requires_grad_", lambda F: lambda: F.jvp(lambda x: x.requires_grad_(), (x3(),),
                                                   (x3(),)), REQUIRES_GRAD),
    ("grad-retain_grad", lambda F: lambda: F.grad(
        lambda x: (x.sin().retain_grad(), x.sum())[1])(x3()), RETAIN_GRAD),
    ("vjp-retain_grad", lambda F: lambda: F.vjp(lambda x: (x.retain_grad(), x.sin())[1], x3()),
     RETAIN_GRAD),
    ("vmap-retain_grad", lambda F: lambda: F.vmap(lambda x: (x.retain_grad(), x)[1])(xb()),
     "can't retain_grad on Tensor that has requires_grad=False"),
    ("grad-backward", lambda F: lambda: F.grad(
        lambda x: (x.sin().sum().backward(), x.sum())[1])(x3()), BACKWARD),
    ("grad-autograd.backward", lambda F: lambda: F.grad(
        lambda x: (torch.autograd.backward(x.sin().sum()), x.sum())[1])(x3()), BACKWARD),
    # allowed by both
    ("grad-autograd.grad", lambda F: lambda: F.grad(
        lambda x: torch.autograd.grad(x.sin().sum(), x, create_graph=True)[0].sum())(x3()), None),
    ("grad-.grad", lambda F: lambda: F.grad(lambda x: (x.grad, x.sum())[1])(x3()), None),
    ("grad-register_hook", lambda F: lambda: F.grad(
        lambda x: (x.register_hook(lambda g: g), x.sum())[1])(x3()), None),
    ("grad-detach_", lambda F: lambda: F.grad(lambda x: x.sin().detach_().sum() + x.sum())(x3()),
     None),
    ("vmap-register_hook", lambda F: lambda: F.vmap(
        lambda x: (x.register_hook(lambda g: g), x)[1])(xb()),
     "cannot register a hook on a tensor that doesn't require gradient"),
]


def outcome(call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            call()
        except Exception as e:  # noqa: BLE001 - the exception is the outcome
            return e
    return None


@pytest.mark.parametrize("build,phrase", [(b, p) for _, b, p in CASES],
                         ids=[i for i, _, _ in CASES])
def test_guard_matches_torch_func(build, phrase):
    ref = outcome(build(torch.func))
    if phrase is None:
        assert ref is None, f"torch.func now raises {ref!r}: update the case"
    else:
        assert ref is not None and phrase in str(ref), f"torch.func changed: {ref!r}"
    ours = outcome(build(ft))
    assert _C._layer_depth() == 0, "a level was left behind"
    if phrase is None:
        assert ours is None, f"we raise {ours!r} where torch.func runs"
    else:
        assert isinstance(ours, type(ref)) and phrase in str(ours), f"\nref:  {ref}\nours: {ours}"
    # and the next transform works
    x = torch.randn(2, 3)
    torch.testing.assert_close(ft.vmap(ft.grad(sin_sum))(x), x.cos())


def test_outside_transforms_the_calls_work_as_in_pytorch():
    x = torch.randn(3).requires_grad_()
    y = x.sin()
    y.retain_grad()
    y.sum().backward()
    torch.testing.assert_close(x.grad, x.detach().cos())
    torch.testing.assert_close(y.grad, torch.ones(3))
    torch.testing.assert_close(AF.jacobian(torch.sin, x.detach()), torch.diag(x.detach().cos()))
    assert not torch.ones(2).requires_grad_(False).requires_grad


def test_the_transforms_still_differentiate_their_inputs():
    x = torch.randn(3)
    torch.testing.assert_close(ft.grad(sin_sum)(x), x.cos())
    torch.testing.assert_close(ft.jacrev(torch.sin)(x), torch.diag(x.cos()))
    torch.testing.assert_close(ft.hessian(sin_sum)(x), torch.diag(-x.sin()))
