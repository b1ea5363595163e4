"""A catalogue of bad input to vmap, grad, vjp and jvp: the exact error text for each (expecttest).

Every case must raise (never crash, hang or return a silently wrong result), name the API the
user called and say what to do; afterwards no level is left behind and the next transform works.
Known gaps in the C++ core are xfail(strict=True) with the bug as the reason; those tests assert
the behaviour we want with plain asserts, so EXPECTTEST_ACCEPT=1 cannot rewrite them.
"""
import warnings

import expecttest
import pytest
import torch

import functorch_lite as ft
from functorch_lite import _C


def r(*shape):
    return torch.randn(*shape)


def f_add(x, y):
    return x + y


def sin_sum(x):
    return x.sin().sum()


def check_recovered():
    """No level is left behind and the next transform call works."""
    assert _C._layer_depth() == 0
    x = torch.randn(2, 3)
    torch.testing.assert_close(ft.vmap(ft.grad(sin_sum))(x), x.cos())


def message(fn, exc=RuntimeError):
    """The first line of the error `fn()` raises, after checking the transforms recovered."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's performance warning
        with pytest.raises(exc) as info:
            fn()
    check_recovered()
    return str(info.value).splitlines()[0]


def escaped_batched():
    """A batched tensor stored in a closure, whose vmap has returned."""
    saved = []
    ft.vmap(lambda x: saved.append(x * 2) or x)(torch.randn(3))
    return saved[0]


class TestVmapInDims(expecttest.TestCase):
    def test_in_dims_of_wrong_type(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(f_add, in_dims=[0, 0])(r(3), r(3)), ValueError),
            """vmap(f_add, in_dims=[0, 0], ...)(<inputs>): expected `in_dims` to be int or a (potentially nested) tuple matching the structure of inputs, got: <class 'list'>.""",
        )

    def test_in_dims_element_of_wrong_type(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(f_add, in_dims=(0, 1.0))(r(3), r(3)), ValueError),
            """vmap(f_add, in_dims=(0, 1.0), ...)(<inputs>): Got in_dim=1.0 for an input but in_dim must be either an integer dimension or None (in_dims must be an int, None or a (nested) tuple/list/dict of them).""",
        )

    def test_in_dims_of_wrong_length(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(f_add, in_dims=(0,))(r(3), r(3)), ValueError),
            """vmap(f_add, in_dims=(0,), ...)(<inputs>): in_dims is not compatible with the structure of `inputs`: in_dims is a tuple of length 1 but the function was called with 2 positional argument(s); give one in_dim per argument.""",
        )

    def test_in_dims_of_wrong_structure(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(lambda d: d, in_dims=({"b": 0},))({"a": r(3)}), ValueError),
            """vmap(<lambda>, in_dims=({'b': 0},), ...)(<inputs>): in_dims is not compatible with the structure of `inputs`: the inputs have structure ({'a': *},) (* marks a leaf); in_dims must have that structure, or a prefix of it where an int or None stands for a whole subtree.""",
        )

    def test_in_dim_out_of_range(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(f_add, in_dims=(0, 2))(r(3), r(3)), ValueError),
            """vmap(f_add, in_dims=(0, 2), ...)(<inputs>): Got in_dim=2 for some input, but that input is a Tensor of dimensionality 1 so expected in_dim to satisfy -1 <= in_dim < 1.""",
        )

    def test_negative_in_dim_out_of_range(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(f_add, in_dims=(0, -3))(r(2, 3), r(2, 3)), ValueError),
            """vmap(f_add, in_dims=(0, -3), ...)(<inputs>): Got in_dim=-3 for some input, but that input is a Tensor of dimensionality 2 so expected in_dim to satisfy -2 <= in_dim < 2.""",
        )

    def test_in_dim_for_a_non_tensor(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(lambda x, n: x * n)(torch.randn(3), 2), ValueError),
            """vmap(<lambda>, in_dims=0, ...)(<inputs>): Got in_dim=0 for an input but the input is of type <class 'int'>. We cannot vmap over non-Tensor arguments, please use None as the respective in_dim.""",
        )

    def test_no_input_mapped_over(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(f_add, in_dims=None)(r(3), r(3)), ValueError),
            """vmap(f_add, in_dims=None, ...)(<inputs>): expected `in_dims` to be int or a (potentially nested) tuple matching the structure of inputs, got: <class 'NoneType'>.""",
        )

    def test_in_dim_on_a_0_dim_tensor(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(torch.sin)(torch.tensor(1.0)), ValueError),
            """vmap(sin, in_dims=0, ...)(<inputs>): Got in_dim=0 for some input, but that input is a Tensor of dimensionality 0: a 0-dim Tensor has no dimension to map over; use in_dim=None for it.""",
        )

    def test_mismatched_batch_sizes(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(f_add, in_dims=(0, 1))(r(3), r(3, 4)), ValueError),
            """vmap(f_add, in_dims=(0, 1), ...)(<inputs>): Expected all tensors to have the same size in the mapped dimension, got sizes [3, 4] for the mapped dimension.""",
        )


class TestVmapOutDims(expecttest.TestCase):
    def test_out_dims_of_wrong_type(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(torch.sin, out_dims="0")(torch.randn(3)), ValueError),
            """vmap(sin, ..., out_dims='0'): `out_dims` must be an int, None or a python collection of ints representing where in the outputs the vmapped dimension should appear; got an element of type str: '0'.""",
        )

    def test_out_dims_of_wrong_structure(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(lambda x: (x, x), out_dims=(0, 0, 0))(r(3)), ValueError),
            """vmap(<lambda>, ..., out_dims=(0, 0, 0)): out_dims is not compatible with the structure of `outputs`: the outputs have structure (*, *) (* marks a leaf); out_dims must have that structure, or a prefix of it where an int or None stands for a whole subtree.""",
        )

    def test_out_dims_tuple_for_a_single_output(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(torch.sin, out_dims=(0, 1))(torch.randn(3)), ValueError),
            """vmap(sin, ..., out_dims=(0, 1)): out_dims is not compatible with the structure of `outputs`: the output is a single value, so out_dims must be an int or None.""",
        )

    def test_out_dim_out_of_range(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(torch.sin, out_dims=2)(torch.randn(2, 3)), IndexError),
            """vmap(sin, ..., out_dims=2): Dimension out of range (expected to be in range of [-2, 1], but got 2): out_dim=2 for an output with 1 dimension(s) per sample.""",
        )

    def test_out_dim_out_of_range_with_chunks(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(torch.sin, out_dims=-3, chunk_size=2)(r(5, 3)), IndexError),
            """vmap(sin, ..., out_dims=-3): Dimension out of range (expected to be in range of [-2, 1], but got -3): out_dim=-3 for an output with 1 dimension(s) per sample.""",
        )

    def test_out_dim_none_for_a_batched_output(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(torch.sin, out_dims=None)(torch.randn(3)), ValueError),
            """vmap(sin, ..., out_dims=None): `sin` can not return a BatchedTensor when out_dim is None: the output depends on the mapped inputs, and only outputs that are the same for every sample can have out_dim None.""",
        )

    def test_non_tensor_output(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(lambda x: 3)(torch.randn(3)), ValueError),
            """vmap(<lambda>, ..., out_dims=0): `<lambda>` must only return Tensors, got type <class 'int'>. Did you mean to set out_dims= to None for output? (the function must return Tensors, or pytrees of them, where out_dims is not None).""",
        )

    def test_none_output(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(lambda x: (x, None))(torch.randn(3)), ValueError),
            """vmap(<lambda>, ..., out_dims=0): `<lambda>` must only return Tensors, got type <class 'NoneType'>. Did you mean to set out_dims= to None for output? (the function must return Tensors, or pytrees of them, where out_dims is not None).""",
        )

    def test_non_tensor_output_with_out_dim_none_is_returned_as_is(self):
        out = ft.vmap(lambda x: (x.sin(), "tag"), out_dims=(0, None))(torch.randn(3))
        assert out[1] == "tag"
        check_recovered()


class TestVmapArguments(expecttest.TestCase):
    def test_chunk_size_zero(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(torch.sin, chunk_size=0), ValueError),
            """vmap(sin, chunk_size=0): chunk_size should be None or greater than 0. (got 0)""",
        )

    def test_chunk_size_negative(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(torch.sin, chunk_size=-2), ValueError),
            """vmap(sin, chunk_size=-2): chunk_size should be None or greater than 0. (got -2)""",
        )

    def test_chunk_size_bool(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(torch.sin, chunk_size=True), ValueError),
            """vmap(sin, chunk_size=True): chunk_size should be None or greater than 0. (got True)""",
        )

    def test_unknown_randomness(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(torch.sin, randomness="sometimes")),
            """vmap(sin, randomness='sometimes'): Only allowed values for randomness are 'error', 'different', or 'same'. Got sometimes""",
        )

    def test_random_operator_with_randomness_error(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(lambda x: x + torch.randn(()))(torch.randn(3))),
            """vmap: called random operation while in randomness error mode (the random operator aten::randn, with randomness='error', the default). Please either use the 'same' or 'different' randomness flags on vmap (randomness='different': each sample draws its own values; 'same': one draw shared by the whole batch) or perform the randomness operation out of vmap.""",
        )


ITEM_MESSAGE = (
    "vmap: .item() (or float(), int(), .tolist()) was called on a batched tensor inside the "
    "vmapped function. It looks like you're calling .item() on a Tensor: each sample has its own "
    "value, so there is no single Python number to return. Keep the computation in tensors "
    "instead."
)


class TestVmapDataDependence(expecttest.TestCase):
    def test_item(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(lambda x: x.sum().item())(torch.randn(3, 2))),
            """vmap: .item() (or float(), int(), .tolist()) was called on a batched tensor inside the vmapped function. It looks like you're calling .item() on a Tensor: each sample has its own value, so there is no single Python number to return. Keep the computation in tensors instead.""",
        )

    def test_float(self):
        assert message(lambda: ft.vmap(lambda x: float(x))(torch.randn(3))) == ITEM_MESSAGE

    def test_int(self):
        assert message(lambda: ft.vmap(lambda x: int(x))(torch.randn(3))) == ITEM_MESSAGE

    def test_item_inside_vmap_of_grad(self):
        f = ft.vmap(ft.grad(lambda x: x * float(x)))
        assert message(lambda: f(torch.randn(3))) == ITEM_MESSAGE

    def test_item_inside_nested_vmap(self):
        f = ft.vmap(ft.vmap(lambda x: x.item()))
        assert message(lambda: f(torch.randn(2, 3))) == ITEM_MESSAGE

    def test_tolist(self):
        assert message(lambda: ft.vmap(lambda x: x.tolist())(torch.randn(3))) == ITEM_MESSAGE

    def test_torch_equal(self):
        self.assertExpectedInline(
            message(lambda: ft.vmap(lambda x: torch.equal(x, x))(torch.randn(2, 3))),
            """vmap: data-dependent control flow on a batched tensor (a Python `if`, `while` or bool() on its value, or torch.equal) inside the vmapped function. Each sample may take a different branch; use torch.where or masking instead.""",
        )

    def test_if_on_a_batched_tensor(self):
        def f(x):
            if x > 0:
                return x
            return -x

        text = message(lambda: ft.vmap(f)(torch.randn(3)))
        assert text.startswith("vmap: ") and "control flow" in text and "torch.where" in text

    def test_if_on_an_unbatched_tensor_is_fine(self):
        x = torch.randn(3)
        out = ft.vmap(lambda x: x * 2 if torch.tensor(1.0) > 0 else x)(x)
        torch.testing.assert_close(out, x * 2)

    def test_nonzero_with_different_counts_per_sample(self):
        x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
        self.assertExpectedInline(
            message(lambda: ft.vmap(torch.nonzero)(x)),
            """vmap: the operator aten::nonzero returned tensors of different shapes for different samples (its output shape depends on the data, as for nonzero or unique), so they cannot be stacked into one batch.""",
        )

    def test_unique(self):
        x = torch.tensor([[1.0, 1.0], [1.0, 2.0]])
        self.assertExpectedInline(
            message(lambda: ft.vmap(torch.unique)(x)),
            """vmap: the operator aten::_unique2 returned tensors of different shapes for different samples (its output shape depends on the data, as for nonzero or unique), so they cannot be stacked into one batch.""",
        )

    def test_boolean_mask_indexing(self):
        x = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
        self.assertExpectedInline(
            message(lambda: ft.vmap(lambda r: r[r > 0])(x)),
            """vmap: the operator aten::index.Tensor returned tensors of different shapes for different samples (its output shape depends on the data, as for nonzero or unique), so they cannot be stacked into one batch.""",
        )


class TestVmapInPlaceAndEscapes(expecttest.TestCase):
    def test_inplace_into_an_unbatched_tensor(self):
        captured = torch.randn(3)
        self.assertExpectedInline(
            message(lambda: ft.vmap(lambda x: captured.mul_(x))(torch.randn(2, 3))),
            """vmap: the in-place operator aten::mul_.Tensor would write batched values into a tensor that is not batched (it was created outside the vmapped function, or does not depend on the vmapped inputs). Use the out-of-place version of the operator instead.""",
        )
        assert captured.shape == (3,)

    def test_setitem_into_an_unbatched_tensor(self):
        captured = torch.zeros(3)

        def f(x):
            captured[0] = x[0]
            return x

        self.assertExpectedInline(
            message(lambda: ft.vmap(f)(torch.randn(2, 3))),
            """vmap: the in-place operator aten::copy_ would write batched values into a tensor that is not batched (it was created outside the vmapped function, or does not depend on the vmapped inputs). Use the out-of-place version of the operator instead.""",
        )

    def test_inplace_into_an_unmapped_input(self):
        f = ft.vmap(lambda x, y: x.add_(y), in_dims=(None, 0))
        self.assertExpectedInline(
            message(lambda: f(torch.ones(3), torch.randn(2, 3))),
            """vmap: the in-place operator aten::add_.Tensor would write batched values into a tensor that is not batched (it was created outside the vmapped function, or does not depend on the vmapped inputs). Use the out-of-place version of the operator instead.""",
        )

    def test_batched_tensor_used_after_its_vmap_returned(self):
        self.assertExpectedInline(
            message(lambda: torch.sin(escaped_batched())),
            """vmap: a batched tensor created inside a vmapped function was used after that vmap returned. Return it from the function (vmap then gives it a batch dimension) instead of storing it in a global or a closure.""",
        )


@pytest.mark.parametrize(
    "use",
    [
        lambda e: e.sum().item(),
        lambda e: ft.vmap(lambda y: y + e)(torch.randn(2, 3)),
        lambda e: ft.grad(lambda y: (y * e).sum())(torch.randn(3)),
        lambda e: ft.grad(lambda y: e.sum())(torch.randn(3)),
    ],
    ids=["item", "inside-vmap", "inside-grad", "grad-output"],
)
def test_escaped_batched_tensor_in_every_use(use):
    escaped = escaped_batched()
    assert not _C._is_alive(escaped)
    assert message(lambda: use(escaped)).startswith(
        "vmap: a batched tensor created inside a vmapped function was used after"
    )


class TestGradErrors(expecttest.TestCase):
    def test_non_tensor_output(self):
        self.assertExpectedInline(
            message(lambda: ft.grad(lambda x: 3.0)(torch.randn(3))),
            """grad(<lambda>, argnums=0)(<inputs>): Expected f(*args) to return a Tensor, got <class 'float'>.""",
        )

    def test_non_scalar_output(self):
        self.assertExpectedInline(
            message(lambda: ft.grad(torch.sin)(torch.randn(3))),
            """grad(sin, argnums=0)(<inputs>): Expected f(*args) to return a scalar Tensor, got tensor with 1 dims (shape (3,)). Maybe you wanted to use the vjp or jacrev APIs instead?""",
        )

    def test_non_floating_output(self):
        self.assertExpectedInline(
            message(lambda: ft.grad(lambda x: (x > 0).sum())(torch.randn(3))),
            """grad(<lambda>, argnums=0)(<inputs>): expected the function to return a floating point Tensor, got dtype torch.int64.""",
        )

    def test_complex_output(self):
        x = torch.randn(3, dtype=torch.complex64)
        self.assertExpectedInline(
            message(lambda: ft.grad(lambda x: x.sum())(x)),
            """grad(<lambda>, argnums=0)(<inputs>): expected the function to return a real Tensor, got dtype torch.complex64; the gradient of a complex-valued function is not defined. Differentiate a real function of it instead (e.g. its .abs() or .real).""",
        )

    def test_grad_and_value_names_itself(self):
        self.assertExpectedInline(
            message(lambda: ft.grad_and_value(torch.sin)(torch.randn(3))),
            """grad_and_value(sin, argnums=0)(<inputs>): Expected f(*args) to return a scalar Tensor, got tensor with 1 dims (shape (3,)). Maybe you wanted to use the vjp or jacrev APIs instead?""",
        )

    def test_integer_input(self):
        self.assertExpectedInline(
            message(lambda: ft.grad(lambda x: x.float().sum())(torch.arange(3))),
            """grad(<lambda>, argnums=0)(<inputs>): only Tensors of floating point dtype can require gradients (or complex ones), got an input of dtype torch.int64. Convert it first (e.g. x.float()), or leave it out of argnums.""",
        )

    def test_non_tensor_input(self):
        self.assertExpectedInline(
            message(lambda: ft.grad(lambda x, n: x.sum() * n, argnums=1)(r(3), 2.0), ValueError),
            """grad(<lambda>, argnums=1)(<inputs>): Thing passed to transform API must be Tensor, got <class 'float'>. Only Tensors (or pytrees of Tensors) can be differentiated: leave it out of argnums, or close over it in the function.""",
        )

    def test_argnums_out_of_range(self):
        self.assertExpectedInline(
            message(lambda: ft.grad(f_add, argnums=2)(torch.randn(()), torch.randn(()))),
            """grad(f_add, argnums=2)(<inputs>): Got argnum=2, but only 2 positional inputs (argnums=2).""",
        )

    def test_argnums_duplicated(self):
        self.assertExpectedInline(
            message(lambda: ft.grad(f_add, argnums=(1, -1))(torch.randn(()), torch.randn(()))),
            """grad(f_add, argnums=(1, -1))(<inputs>): argnums elements must be unique, got (1, -1).""",
        )

    def test_argnums_of_wrong_type(self):
        self.assertExpectedInline(
            message(lambda: ft.grad(f_add, argnums=[0, 1])(torch.randn(()), torch.randn(()))),
            """grad(f_add, argnums=[0, 1])(<inputs>): argnums must be int or Tuple[int, ...], got: <class 'list'>.""",
        )

    def test_argnums_empty(self):
        self.assertExpectedInline(
            message(lambda: ft.grad(f_add, argnums=())(torch.randn(()), torch.randn(()))),
            """grad(f_add, argnums=())(<inputs>): argnums must be non-empty.""",
        )

    def test_has_aux_without_a_tuple(self):
        self.assertExpectedInline(
            message(lambda: ft.grad(lambda x: x.sum(), has_aux=True)(torch.randn(3))),
            """grad(<lambda>, argnums=0)(<inputs>): output of function f should be a tuple: (output, aux) if has_aux is True; got Tensor.""",
        )

    def test_has_aux_with_a_tuple_of_three(self):
        self.assertExpectedInline(
            message(lambda: ft.grad(lambda x: (x.sum(), x, x), has_aux=True)(torch.randn(3))),
            """grad(<lambda>, argnums=0)(<inputs>): output of function f should be a tuple: (output, aux) if has_aux is True; got tuple of length 3.""",
        )

    def test_has_aux_with_a_list(self):
        self.assertExpectedInline(
            message(lambda: ft.grad(lambda x: [x.sum(), x], has_aux=True)(torch.randn(3))),
            """grad(<lambda>, argnums=0)(<inputs>): output of function f should be a tuple: (output, aux) if has_aux is True; got list.""",
        )

    def test_grad_inside_vmap_names_grad(self):
        f = ft.vmap(ft.grad(torch.sin))
        self.assertExpectedInline(
            message(lambda: f(torch.randn(2, 3))),
            """grad(sin, argnums=0)(<inputs>): Expected f(*args) to return a scalar Tensor, got tensor with 1 dims (shape (3,)). Maybe you wanted to use the vjp or jacrev APIs instead?""",
        )

    def test_inplace_on_a_captured_tensor(self):
        captured = torch.randn(3)
        before = captured.clone()

        def f(x):
            captured.add_(x)
            return x.sum()

        self.assertExpectedInline(
            message(lambda: ft.grad(f)(torch.randn(3))),
            """grad: the function called the in-place operator aten::add_.Tensor that would mutate a captured Tensor (a tensor from outside the function, not one of its inputs). Mutating captured tensors inside grad is not supported: clone the tensor first, or pass it to the function as an input.""",
        )
        torch.testing.assert_close(captured, before)

    def test_inplace_on_a_captured_tensor_inside_vmap_of_grad(self):
        captured = torch.zeros(3)

        def f(x):
            captured[0] = x[0]
            return x.sum()

        self.assertExpectedInline(
            message(lambda: ft.vmap(ft.grad(f))(torch.randn(2, 3))),
            """grad: the function called the in-place operator aten::copy_ that would mutate a captured Tensor (a tensor from outside the function, not one of its inputs). Mutating captured tensors inside grad is not supported: clone the tensor first, or pass it to the function as an input.""",
        )

    def test_tolist_inside_grad_works_like_item(self):
        x = torch.tensor(2.0)
        torch.testing.assert_close(ft.grad(lambda x: x * sum([x.tolist()]))(x), x)

    def test_printing_inside_transforms_works(self):
        def f(x):
            assert repr(x) and str(x)
            return x.sum()

        torch.testing.assert_close(ft.vmap(ft.grad(f))(torch.randn(2, 3)), torch.ones(2, 3))


class TestVjpErrors(expecttest.TestCase):
    def test_has_aux_without_a_tuple(self):
        self.assertExpectedInline(
            message(lambda: ft.vjp(torch.sin, torch.randn(3), has_aux=True)),
            """vjp(sin, ...): output of function f should be a tuple: (output, aux) if has_aux is True; got Tensor.""",
        )

    def test_non_tensor_output(self):
        self.assertExpectedInline(
            message(lambda: ft.vjp(lambda x: 3, torch.randn(3))),
            """vjp(<lambda>, ...): expected f(*primals) to return only tensors, got unsupported type <class 'int'>.""",
        )

    def test_integer_primal(self):
        self.assertExpectedInline(
            message(lambda: ft.vjp(torch.sin, torch.arange(3))),
            """vjp(sin, ...): only Tensors of floating point dtype can require gradients (or complex ones), got an input of dtype torch.int64. Convert it first (e.g. x.float()), or leave it out of argnums.""",
        )

    def test_cotangent_of_wrong_shape(self):
        _, vjp_fn = ft.vjp(torch.sin, torch.randn(3))
        self.assertExpectedInline(
            message(lambda: vjp_fn(torch.randn(4))),
            """vjp(sin, ...): Mismatch in shape: the cotangent has a shape of torch.Size([4]) and the output has a shape of torch.Size([3]).""",
        )

    def test_cotangents_of_wrong_structure(self):
        _, vjp_fn = ft.vjp(torch.sin, torch.randn(3))
        self.assertExpectedInline(
            message(lambda: vjp_fn((torch.randn(3),))),
            """vjp(sin, ...): Expected pytree structure of cotangents to be the same as pytree structure of outputs to the function. cotangents: TreeSpec(tuple, None, [*]), primal output: *.""",
        )


JVP_MISSING = not hasattr(ft, "jvp")


class TestJvpErrors(expecttest.TestCase):
    @pytest.mark.xfail(JVP_MISSING, strict=True, reason="jvp not implemented yet")
    def test_tangent_of_wrong_shape(self):
        f = lambda: ft.jvp(torch.sin, (torch.randn(3),), (torch.randn(4),))  # noqa: E731
        text = message(f)
        assert text.startswith("jvp(sin, primals, tangents): "), text
        assert "(4,)" in text and "(3,)" in text, text

    def test_tangent_of_wrong_dtype(self):
        x, t = torch.randn(3), torch.randn(3, dtype=torch.float64)
        text = message(lambda: ft.jvp(torch.sin, (x,), (t,)))
        assert text.startswith("jvp(sin, primals, tangents): "), text
        assert "float64" in text, text
