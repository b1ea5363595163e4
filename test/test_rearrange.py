"""rearrange against torch.func.rearrange: patterns, transforms, errors."""

import expecttest
import pytest
import torch
import torch.func

import functorch_lite as ft

# (pattern, axes_lengths) on a (2, 6, 4, 3) tensor
PATTERNS = [
    ("b h w c -> b h w c", {}),
    ("b h w c -> b c h w", {}),
    ("b h w c -> (b h) w c", {}),
    ("b h w c -> h (b w) c", {}),
    ("b h w c -> b (c h w)", {}),
    ("b (h1 h) (w1 w) c -> (b h1 w1) h w c", {"h1": 2, "w1": 2}),
    ("b (h h1) (w w1) c -> b h w (c h1 w1)", {"h1": 3, "w1": 2}),
    ("b (h1 h) w c -> h1 b h w c", {"h": 2}),
    ("b h w c -> b h w c 1", {}),
    ("b h w c -> b () h w c", {}),
    ("b h w c -> (b 1) h (w c 1)", {}),
    ("... c -> c ...", {}),
    ("b ... c -> (...) b c", {}),
    ("b h ... -> (b h) ...", {}),
    ("b h w c ... -> b ... (h w c)", {}),
    ("... -> ...", {}),
]


def sample():
    torch.manual_seed(0)
    return torch.randn(2, 6, 4, 3)


@pytest.mark.parametrize("pattern,lengths", PATTERNS, ids=[p for p, _ in PATTERNS])
def test_equals_torch_func(pattern, lengths):
    x = sample()
    assert torch.equal(ft.rearrange(x, pattern, **lengths), torch.func.rearrange(x, pattern, **lengths))


def test_list_of_tensors_is_stacked_first():
    xs = [sample(), sample() + 1]
    pattern = "n b h w c -> b (n h) w c"
    assert torch.equal(ft.rearrange(xs, pattern), torch.func.rearrange(xs, pattern))
    assert torch.equal(ft.rearrange(tuple(xs), pattern), torch.func.rearrange(tuple(xs), pattern))


def test_composes_with_vmap_and_grad():
    x = sample()

    def f(rearrange):
        return lambda t: (rearrange(t, "(h1 h) w c -> h (c w h1)", h1=2) ** 2).sum(0)

    ours = ft.vmap(ft.jacrev(f(ft.rearrange)))(x)
    theirs = torch.func.vmap(torch.func.jacrev(f(torch.func.rearrange)))(x)
    torch.testing.assert_close(ours, theirs)


def test_is_a_view_when_the_layout_allows_it():
    x = sample()
    assert ft.rearrange(x, "b h w c -> (b h) w c")._base is x


class TestRearrangeErrors(expecttest.TestCase):
    def error(self, x, pattern, **lengths):
        with self.assertRaises(ValueError) as ctx:
            ft.rearrange(x, pattern, **lengths)
        with self.assertRaises(Exception):  # torch.func refuses the same patterns
            torch.func.rearrange(x, pattern, **lengths)
        return str(ctx.exception)

    def test_name_on_one_side(self):
        self.assertExpectedInline(
            self.error(sample(), "b h w c -> b h"),
            """rearrange: c, w must appear on both sides of the pattern 'b h w c -> b h'""",
        )

    def test_wrong_rank(self):
        self.assertExpectedInline(
            self.error(sample(), "b h w -> b h w"),
            """rearrange: the pattern 'b h w -> b h w' describes 3 dimensions, but the tensor has 4""",
        )

    def test_unknown_length(self):
        self.assertExpectedInline(
            self.error(sample(), "b h w c -> b h w c", q=2),
            """rearrange: q in axes_lengths are not in the pattern""",
        )

    def test_split_needs_lengths(self):
        self.assertExpectedInline(
            self.error(sample(), "b (h1 h) w c -> b h1 h w c"),
            """rearrange: cannot split dimension 1 (size 6) into h1, h: please give all but one of their lengths as keyword arguments""",
        )

    def test_split_that_does_not_divide(self):
        self.assertExpectedInline(
            self.error(sample(), "b (h1 h) w c -> b h1 h w c", h1=4),
            """rearrange: dimension 1 has size 6, which does not match (h1 h) with h1=4""",
        )

    def test_repeated_name(self):
        self.assertExpectedInline(
            self.error(sample(), "b b w c -> b w c"),
            """rearrange: the left side of the pattern names b more than once""",
        )

    def test_axis_of_size_two(self):
        self.assertExpectedInline(
            self.error(sample(), "b h w c -> b h w c 2"),
            """rearrange: only unnamed axes of size 1 are supported, got '2' in the right side of the pattern""",
        )
