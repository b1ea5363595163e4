"""The core: levels, wrappers and the router, through vmap, grad and vjp, against torch.func."""
import ast
import pathlib
import re
import warnings

import expecttest
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import functorch_lite as ft
from functorch_lite import _C


def assert_close(actual, expected, atol=1e-5, rtol=1e-5):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def test_per_sample_grads_of_an_mlp_match_torch_func():
    model = mlp()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))

    def loss(call):
        def f(p, xi, yi):
            return F.cross_entropy(call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

        return f

    ours = ft.vmap(ft.grad(loss(ft.functional_call)), in_dims=(None, 0, 0))(params, x, y)
    ref = torch.func.vmap(torch.func.grad(loss(torch.func.functional_call)), in_dims=(None, 0, 0))(
        params, x, y
    )
    assert ours.keys() == ref.keys()
    for k in ref:
        assert_close(ours[k], ref[k])
    loop = [torch.func.grad(loss(torch.func.functional_call))(params, x[i], y[i]) for i in range(3)]
    for i in range(3):
        for k in ref:
            assert_close(ours[k][i], loop[i][k])


def test_per_sample_grads_run_without_the_fallback(no_fallback):
    model = mlp()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(8, 784), torch.randint(0, 10, (8,))

    def loss(p, xi, yi):
        return F.cross_entropy(ft.functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    ft.vmap(ft.grad(loss), in_dims=(None, 0, 0))(params, x, y)


def test_grad_of_sin_is_cos():
    x = torch.randn(())
    assert_close(ft.grad(torch.sin)(x), torch.cos(x))


def test_grad_grad_of_sin_is_minus_sin():
    x = torch.randn(())
    assert_close(ft.grad(ft.grad(torch.sin))(x), -torch.sin(x))
    assert_close(ft.grad(ft.grad(torch.sin))(x), torch.func.grad(torch.func.grad(torch.sin))(x))


def test_vmap_of_a_model_over_a_batch():
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x = torch.randn(4, 5)
    assert_close(ft.vmap(model)(x), model(x))
    assert_close(ft.vmap(model, in_dims=1)(x.t().contiguous()), model(x))


def test_vjp_of_sin_with_a_cotangent():
    x, v = torch.randn(5), torch.randn(5)
    out, vjp_fn = ft.vjp(torch.sin, x)
    assert_close(out, torch.sin(x))
    (g,) = vjp_fn(v)
    assert_close(g, v * torch.cos(x))
    ref_out, ref_fn = torch.func.vjp(torch.sin, x)
    assert_close(g, ref_fn(v)[0])


def f_small(x, y):
    return (torch.sin(x) * y).sum() + (x * x).mean()


@pytest.mark.parametrize(
    "name, build",
    [
        ("vmap(vmap(f))", lambda m: m.vmap(m.vmap(torch.mul))),
        ("grad(vmap(f))", lambda m: m.grad(lambda x, y: m.vmap(torch.mul)(x, y).sin().sum())),
        ("vmap(grad(f))", lambda m: m.vmap(m.grad(f_small))),
        ("grad(grad(f))", lambda m: m.grad(lambda x, y: m.grad(f_small)(x, y).sum())),
        ("vmap(grad(grad(f)))", lambda m: m.vmap(m.grad(lambda x, y: m.grad(f_small)(x, y).sum()))),
        ("grad(vmap(grad(f)))", lambda m: m.grad(lambda x, y: m.vmap(m.grad(f_small))(x, y).sum())),
    ],
)
def test_compositions_match_torch_func(name, build):
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    assert_close(build(ft)(x, y), build(torch.func)(x, y))


def test_grad_argnums_and_has_aux():
    x, y = torch.randn(3), torch.randn(3)

    def f(x, y):
        return (x * y).sum(), {"aux": x + 1}

    ours = ft.grad(f, argnums=(0, 1), has_aux=True)(x, y)
    ref = torch.func.grad(f, argnums=(0, 1), has_aux=True)(x, y)
    assert_close(ours, ref)
    g, v = ft.grad_and_value(lambda x: x.pow(2).sum())(x)
    assert_close(g, 2 * x)
    assert_close(v, x.pow(2).sum())


def test_grad_of_an_unused_input_is_zero():
    x, y = torch.randn(3), torch.randn(3)
    assert_close(ft.grad(lambda x, y: x.sum(), argnums=1)(x, y), torch.zeros(3))
    assert_close(ft.grad(lambda x: torch.tensor(1.0))(x), torch.zeros(3))


def test_vmap_pytrees_in_dims_out_dims():
    x = {"a": torch.randn(3, 2), "b": [torch.randn(2, 3)]}

    def f(d):
        return d["a"] + d["b"][0], d["a"].sum()

    ours = ft.vmap(f, in_dims=({"a": 0, "b": [1]},), out_dims=(1, 0))(x)
    ref = torch.func.vmap(f, in_dims=({"a": 0, "b": [1]},), out_dims=(1, 0))(x)
    assert_close(ours, ref)


def test_vmap_output_that_does_not_depend_on_the_input_is_expanded():
    x = torch.randn(4, 3)
    out = ft.vmap(lambda x: torch.ones(2))(x)
    assert out.shape == (4, 2)


def test_an_exception_inside_a_transform_leaves_no_level_behind():
    def boom(x):
        raise ValueError("boom")

    for transform in (ft.vmap, ft.grad, lambda f: ft.vmap(ft.grad(f))):
        with pytest.raises(ValueError, match="boom"):
            transform(boom)(torch.randn(3))
        assert _C._layer_depth() == 0
    assert_close(ft.grad(torch.sin)(torch.tensor(0.5)), torch.cos(torch.tensor(0.5)))


def test_escaped_grad_wrapper_behaves_as_its_value():
    saved = []

    def f(x):
        y = x * 2
        saved.append(y)
        return y.sum()

    x = torch.randn(3)
    ft.grad(f)(x)
    (escaped,) = saved
    assert _C._is_grad_wrapper(escaped) and not _C._is_alive(escaped)
    assert_close(escaped + 1, x * 2 + 1)
    assert_close(torch.sin(escaped), torch.sin(x * 2))


def test_views_and_inplace_on_batched_tensors():
    def f(x):
        y = x.clone()
        y.mul_(2).add_(1)
        z = y.t()
        z.unsqueeze_(0)
        return z.squeeze(0).sum(0)

    x = torch.randn(5, 3, 4)
    assert_close(ft.vmap(f)(x), torch.func.vmap(f)(x))


def test_grad_ignores_outer_no_grad_and_honours_inner_no_grad():
    x = torch.randn(3)
    with torch.no_grad():
        assert_close(ft.grad(lambda x: x.sin().sum())(x), x.cos())

    def f(x):
        with torch.no_grad():
            c = x * 3
        return (c * x).sum()

    assert_close(ft.grad(f)(x), torch.func.grad(f)(x))


def test_grad_used_inside_ordinary_autograd():
    w = torch.randn(3, requires_grad=True)
    x = torch.randn(3)
    g = ft.grad(lambda x: (w * x.sin()).sum())(x)
    g.sum().backward()
    assert_close(w.grad, x.cos())


def test_fallback_runs_ops_without_rules_and_counts_them():
    x = torch.randn(4, 6)
    _C._reset_fallback_counts()
    _C._set_fallback_counting(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = ft.vmap(lambda r: torch.histc(r, bins=4))(x)
    finally:
        _C._set_fallback_counting(False)
    assert_close(out, torch.stack([torch.histc(r, bins=4) for r in x]))
    assert _C._fallback_counts() == {"aten::histc": 1}


FORBIDDEN_MODULES = ("torch.func", "torch._functorch", "torch._C._functorch", "functorch")


def _forbidden_uses(tree):
    """Imports of, and attribute chains reaching, torch's own functorch in a Python AST."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Attribute):
            names = [ast.unparse(node)]
        else:
            continue
        for name in names:
            if any(name == m or name.startswith(m + ".") for m in FORBIDDEN_MODULES):
                yield node.lineno, name


def test_no_library_file_reaches_for_torch_func():
    root = pathlib.Path(__file__).resolve().parents[1]
    offenders = []
    for path in (root / "functorch_lite").rglob("*.py"):
        for line, name in _forbidden_uses(ast.parse(path.read_text())):
            offenders.append(f"{path.relative_to(root)}:{line}: {name}")
    for path in (root / "csrc").rglob("*.[ch]*"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"ATen/functorch|at::functorch|_functorch", line.split("//", 1)[0]):
                offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert offenders == []


class TestErrorMessages(expecttest.TestCase):
    def test_escaped_batched_tensor(self):
        saved = []
        ft.vmap(lambda x: saved.append(x * 2) or x)(torch.randn(3))
        with self.assertRaises(RuntimeError) as ctx:
            saved[0] + 1
        self.assertExpectedInline(
            str(ctx.exception).splitlines()[0],
            """vmap: a batched tensor created inside a vmapped function was used after that vmap returned. Return it from the function (vmap then gives it a batch dimension) instead of storing it in a global or a closure.""",
        )

    def test_mismatched_batch_sizes(self):
        with self.assertRaises(ValueError) as ctx:
            ft.vmap(torch.add)(torch.randn(3), torch.randn(4))
        self.assertExpectedInline(
            str(ctx.exception),
            """vmap(add, in_dims=0, ...)(<inputs>): Expected all tensors to have the same size in the mapped dimension, got sizes [3, 4] for the mapped dimension.""",
        )

    def test_grad_of_non_scalar(self):
        with self.assertRaises(RuntimeError) as ctx:
            ft.grad(torch.sin)(torch.randn(3))
        self.assertExpectedInline(
            str(ctx.exception),
            """grad(sin, argnums=0)(<inputs>): Expected f(*args) to return a scalar Tensor, got tensor with 1 dims (shape (3,)). Maybe you wanted to use the vjp or jacrev APIs instead?""",
        )

    def test_item_inside_vmap(self):
        with self.assertRaises(RuntimeError) as ctx:
            ft.vmap(lambda x: x.sum().item())(torch.randn(3, 2))
        self.assertExpectedInline(
            str(ctx.exception).splitlines()[0],
            """vmap: .item() (or float(), int(), .tolist()) was called on a batched tensor inside the vmapped function. It looks like you're calling .item() on a Tensor: each sample has its own value, so there is no single Python number to return. Keep the computation in tensors instead.""",
        )

    def test_inplace_on_captured_tensor_inside_grad(self):
        captured = torch.randn(3)

        def f(x):
            captured.add_(x)
            return x.sum()

        with self.assertRaises(RuntimeError) as ctx:
            ft.grad(f)(torch.randn(3))
        self.assertExpectedInline(
            str(ctx.exception).splitlines()[0],
            """grad: the function called the in-place operator aten::add_.Tensor that would mutate a captured Tensor (a tensor from outside the function, not one of its inputs). Mutating captured tensors inside grad is not supported: clone the tensor first, or pass it to the function as an input.""",
        )

    def test_inplace_into_unbatched_tensor_inside_vmap(self):
        captured = torch.randn(3)
        with self.assertRaises(RuntimeError) as ctx:
            ft.vmap(lambda x: captured.add_(x))(torch.randn(2, 3))
        self.assertExpectedInline(
            str(ctx.exception).splitlines()[0],
            """vmap: the in-place operator aten::add_.Tensor would write batched values into a tensor that is not batched (it was created outside the vmapped function, or does not depend on the vmapped inputs). Use the out-of-place version of the operator instead.""",
        )

    def test_fallback_disabled(self):
        _C._set_vmap_fallback_enabled(False)
        try:
            with self.assertRaises(RuntimeError) as ctx:
                ft.vmap(lambda r: torch.histc(r, bins=4))(torch.randn(2, 3))
        finally:
            _C._set_vmap_fallback_enabled(True)
        self.assertExpectedInline(
            str(ctx.exception).splitlines()[0],
            """vmap: the operator aten::histc has no batching rule and the for-loop fallback is disabled (functorch_lite._C._set_vmap_fallback_enabled(False)).""",
        )


def test_operators_defined_after_import_work_inside_grad():
    lib = torch.library.Library("ftl_after_import", "DEF")
    lib.define("triple(Tensor x) -> Tensor")
    lib.impl("triple", lambda x: x * 3, "CPU")
    torch.library.register_autograd(
        "ftl_after_import::triple", lambda ctx, g: g * 3, setup_context=lambda ctx, inputs, output: None
    )
    x = torch.randn(4)
    out = ft.grad(lambda x: torch.ops.ftl_after_import.triple(x).sum())(x)
    assert_close(out, torch.full((4,), 3.0))
    assert_close(ft.vmap(torch.ops.ftl_after_import.triple)(x.view(2, 2)), x.view(2, 2) * 3)


def test_tensors_made_inside_grad_can_receive_tracked_values():
    def f(x):
        out = torch.zeros(3)
        out[0] = x.sum()
        out.add_(x * x)
        return out.sum()

    x = torch.randn(3)
    assert_close(ft.grad(f)(x), torch.func.grad(f)(x))
    h = ft.grad(lambda x: ft.grad(f)(x).pow(2).sum())(x)
    assert_close(h, torch.func.grad(lambda x: torch.func.grad(f)(x).pow(2).sum())(x))


def test_printing_wrappers_shows_level_and_value(capsys):
    x = torch.arange(6.0).view(2, 3)
    ft.vmap(lambda r: print(r) or r)(x)
    ft.grad(lambda s: print(s) or s.sum())(torch.ones(2))
    out = capsys.readouterr().out
    assert "BatchedTensor(lvl=1, bdim=0, value=\n    tensor([[0., 1., 2.],\n" in out
    assert "GradTrackingTensor(lvl=1, value=\n    tensor([1., 1.])\n)" in out


def test_chunk_size_and_chunk_vmap_match_plain_vmap():
    from functorch_lite.experimental import chunk_vmap

    x, y = torch.randn(7, 3), torch.randn(3)
    f = lambda a, b: (a * b, a.sum())  # noqa: E731
    ref = ft.vmap(f, in_dims=(0, None))(x, y)
    assert_close(ft.vmap(f, in_dims=(0, None), chunk_size=2)(x, y), ref)
    assert_close(chunk_vmap(f, in_dims=(0, None), chunks=3)(x, y), ref)
    assert_close(ft.vmap(f, in_dims=(0, None), out_dims=(1, 0), chunk_size=3)(x, y),
                 torch.func.vmap(f, in_dims=(0, None), out_dims=(1, 0))(x, y))
    same = chunk_vmap(lambda a: a * 0 + torch.randn(()), randomness="same", chunks=3)(x)
    assert same.unique().numel() == 1


def test_debug_unwrap_and_make_fx_through_transforms():
    x = torch.randn(2, 3)
    inner = []
    ft.vmap(lambda r: inner.append(ft.debug_unwrap(r)) or r)(x)
    assert inner[0] is not None and not _C._is_batched(inner[0])
    assert_close(inner[0], x)
    graph = ft.make_fx(ft.vmap(ft.grad(lambda r: r.sin().sum())))(x)
    targets = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"}
    assert "aten.cos.default" in targets
    assert_close(graph(x), torch.cos(x))
