"""vmap randomness: 'error', 'different' and 'same' for random operators, as torch.func."""

import expecttest
import pytest
import torch
import torch.nn.functional as F

import functorch_lite as ft

B = 6

CASES = {
    "randn": lambda x: x * 0 + torch.randn(3),
    "rand": lambda x: x * 0 + torch.rand(3),
    "randint": lambda x: x * 0 + torch.randint(0, 1000, (3,)).float(),
    "normal": lambda x: x * 0 + torch.normal(0.0, 1.0, (3,)),
    "rand_like": lambda x: torch.rand_like(x),
    "randn_like": lambda x: torch.randn_like(x),
    "uniform_": lambda x: x.clone().uniform_(),
    "normal_": lambda x: x.clone().normal_(),
    "dropout": lambda x: F.dropout(torch.ones_like(x), 0.5),
    "randperm": lambda x: x * 0 + torch.randperm(3).float(),
}


def rows_equal(out):
    return all(torch.equal(out[0], out[i]) for i in range(1, out.shape[0]))


@pytest.mark.parametrize("name", sorted(CASES))
def test_different_draws_per_sample(name):
    x = torch.randn(B, 3)
    torch.manual_seed(1)
    out = ft.vmap(CASES[name], randomness="different")(x)
    ref = torch.func.vmap(CASES[name], randomness="different")(x)
    assert out.shape == ref.shape == (B, 3)
    assert not rows_equal(out)


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_draws_once_for_the_batch(name):
    x = torch.randn(B, 3)
    out = ft.vmap(CASES[name], randomness="same")(x)
    ref = torch.func.vmap(CASES[name], randomness="same")(x)
    assert out.shape == ref.shape == (B, 3)
    assert rows_equal(out)


def test_different_runs_without_the_fallback(no_fallback):
    x = torch.randn(B, 3)
    for name in ("randn", "rand_like", "uniform_", "dropout"):
        ft.vmap(CASES[name], randomness="different")(x)


def test_nested_vmap_draws_per_element_of_both_levels():
    x = torch.randn(4, 5)
    out = ft.vmap(ft.vmap(lambda x: x * 0 + torch.randn(()), randomness="different"),
                  randomness="different")(x)
    assert out.shape == (4, 5)
    assert out.unique().numel() == 20
    inner_same = ft.vmap(ft.vmap(lambda x: x * 0 + torch.randn(()), randomness="same"),
                         randomness="different")(x)
    assert all(inner_same[i].unique().numel() == 1 for i in range(4))
    assert inner_same[:, 0].unique().numel() == 4


def test_randomness_under_grad_inside_vmap():
    x = torch.randn(B, 3)
    out = ft.vmap(ft.grad(lambda x: (x * torch.randn(3)).sum()), randomness="different")(x)
    assert out.shape == (B, 3) and not rows_equal(out)
    out = ft.vmap(ft.grad(lambda x: (x * torch.randn(3)).sum()), randomness="same")(x)
    assert rows_equal(out)


def test_random_ops_outside_vmap_are_untouched():
    torch.manual_seed(3)
    a = torch.randn(3)
    torch.manual_seed(3)
    b = ft.grad(lambda x: (x * 0).sum() + 0 * torch.randn(3).sum())(torch.randn(3))
    torch.manual_seed(3)
    assert torch.equal(torch.randn(3), a)
    assert b.shape == (3,)


class TestRandomnessErrors(expecttest.TestCase):
    def test_error_mode(self):
        with self.assertRaises(RuntimeError) as ctx:
            ft.vmap(lambda x: x + torch.randn(3))(torch.randn(B, 3))
        self.assertExpectedInline(
            str(ctx.exception).splitlines()[0],
            """vmap: called random operation while in randomness error mode (the random operator aten::randn, with randomness='error', the default). Please either use the 'same' or 'different' randomness flags on vmap (randomness='different': each sample draws its own values; 'same': one draw shared by the whole batch) or perform the randomness operation out of vmap.""",
        )

    def test_unknown_randomness(self):
        with self.assertRaises(RuntimeError) as ctx:
            ft.vmap(torch.sin, randomness="sometimes")
        self.assertExpectedInline(
            str(ctx.exception),
            """vmap(sin, randomness='sometimes'): Only allowed values for randomness are 'error', 'different', or 'same'. Got sometimes""",
        )

    def test_different_inplace_into_unbatched(self):
        with self.assertRaises(RuntimeError) as ctx:
            ft.vmap(lambda x: x * torch.ones(3).uniform_(), randomness="different")(torch.randn(B, 3))
        self.assertExpectedInline(
            str(ctx.exception).splitlines()[0],
            """vmap: Cannot ask for different inplace randomness on an unbatched tensor. This will appear like same randomness. The in-place random operator aten::uniform_ writes into a tensor that is not batched: make it batched first (e.g. expand it over the batch and clone it), or use randomness='same'.""",
        )
