"""vmap of torch.library custom operators through their registered vmap rules."""

import expecttest
import pytest
import torch
import torch.func

import functorch_lite as ft

rule_calls = []


@torch.library.custom_op("ftl_test::scaled_add", mutates_args=())
def scaled_add(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    return x + alpha * y


@scaled_add.register_fake
def _(x, y, alpha):
    return torch.empty_like(x + y)


@scaled_add.register_vmap
def _(info, in_dims, x, y, alpha):
    rule_calls.append((info.batch_size, info.randomness, in_dims))
    x = x.movedim(in_dims[0], 0) if in_dims[0] is not None else x.expand(info.batch_size, *x.shape)
    y = y.movedim(in_dims[1], 0) if in_dims[1] is not None else y.expand(info.batch_size, *y.shape)
    return scaled_add(x, y, alpha), 0


@torch.library.custom_op("ftl_test::min_max", mutates_args=())
def min_max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.amin(-1), x.amax(-1)


@min_max.register_vmap
def _(info, in_dims, x):
    x = x.movedim(in_dims[0], -2)  # keep the reduced dim last
    return min_max(x), (-1, -1)


@torch.library.custom_op("ftl_test::no_rule", mutates_args=())
def no_rule(x: torch.Tensor) -> torch.Tensor:
    return x * 3


@torch.library.custom_op("ftl_test::bad_rule", mutates_args=())
def bad_rule(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@bad_rule.register_vmap
def _(info, in_dims, x):
    return bad_rule(x)  # forgets out_dims


@pytest.fixture
def counting():
    ft._C._set_fallback_counting(True)
    ft._C._reset_fallback_counts()
    yield
    ft._C._set_fallback_counting(False)


def batched_like(in_dim):
    """A batch of 4 samples of shape (3,) with the batch at in_dim, or one sample (None)."""
    return torch.randn(3) if in_dim is None else torch.randn(4, 3).movedim(0, in_dim)


@pytest.mark.parametrize("in_dims", [(0, 0), (None, 1), (1, None)])
def test_registered_rule_runs_instead_of_the_fallback(in_dims, counting):
    rule_calls.clear()
    x, y = batched_like(in_dims[0]), batched_like(in_dims[1])
    f = lambda x, y: scaled_add(x, y, 0.5)  # noqa: E731
    got = ft.vmap(f, in_dims=in_dims)(x, y)
    torch.testing.assert_close(got, torch.func.vmap(f, in_dims=in_dims)(x, y))
    assert rule_calls and rule_calls[0][0] == 4 and rule_calls[0][2] == (*in_dims, None)
    assert ft._C._fallback_counts() == {}


def test_several_outputs_nested_vmap_and_randomness_info():
    x = torch.randn(2, 3, 5)
    got = ft.vmap(ft.vmap(min_max))(x)
    torch.testing.assert_close(got, (x.amin(-1), x.amax(-1)))
    rule_calls.clear()
    ft.vmap(lambda a: scaled_add(a, a, 1.0), randomness="same")(x)
    assert rule_calls[0][:2] == (2, "same")


def test_operator_without_a_rule_uses_the_fallback(counting):
    x = torch.randn(4, 3)
    torch.testing.assert_close(ft.vmap(no_rule)(x), x * 3)
    assert "ftl_test::no_rule" in ft._C._fallback_counts()


def test_rule_with_vmap_of_grad_of_a_plain_function():
    x = torch.randn(4, 3)
    got = ft.vmap(ft.grad(lambda a: (scaled_add(a, a, 2.0).detach() * a).sum()))(x)
    torch.testing.assert_close(got, 3 * x)


class TestCustomRuleErrors(expecttest.TestCase):
    def test_rule_without_out_dims(self):
        with self.assertRaises(RuntimeError) as ctx:
            ft.vmap(bad_rule)(torch.randn(2, 3))
        self.assertExpectedInline(
            str(ctx.exception).splitlines()[0],
            """vmap: the vmap rule registered for ftl_test::bad_rule must return a tuple (outputs, out_dims) with out_dims matching the structure of the outputs, got Tensor.""",
        )
