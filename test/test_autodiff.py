"""grad, vjp, jvp, linearize, jacrev, jacfwd, hessian and autograd.Function, against torch.func."""
import itertools
import types

import expecttest
import pytest
import torch
import torch.autograd.functional as AF
from torch.utils import _pytree as pytree

import functorch_lite as ft
from functorch_lite._forward import jvp
from functorch_lite._linearize import linearize
from functorch_lite._jacobians import hessian, jacfwd, jacrev

# The transforms under test, side by side with torch.func's: a case is written once as
# `build(m)` and run with m = OURS and m = torch.func on the same inputs.
OURS = types.SimpleNamespace(
    vmap=ft.vmap, grad=ft.grad, grad_and_value=ft.grad_and_value, vjp=ft.vjp, jvp=jvp,
    linearize=linearize, jacrev=jacrev, jacfwd=jacfwd, hessian=hessian,
)
REF = torch.func
D = torch.float64


def assert_close(actual, expected, atol=1e-7, rtol=1e-7):
    a, sa = pytree.tree_flatten(actual)
    e, se = pytree.tree_flatten(expected)
    assert sa == se, f"structure {sa} != {se}"
    for x, y in zip(a, e):
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol)


def check(build, *args):
    """build(m)(*args) for functorch_lite and torch.func agree."""
    assert_close(build(OURS)(*args), build(REF)(*args))


def randn(*shape):
    return torch.randn(*shape, dtype=D)


W = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def f2(x, y):
    return torch.tanh(W @ x) * y.sum() + y.exp()


def f_tree(d):
    return {"a": d["u"].sin() * d["v"][0], "b": d["u"].exp().sum()}


def tree_input():
    return {"u": randn(3), "v": (randn(3),)}


def scalar(x):
    return (x.sin() * x).sum() + x.pow(3).prod()


def with_aux(x):
    return x.sin(), {"c": x.cos()}


# ----------------------------------------------------------------------------------------------
# jvp, linearize, jacrev, jacfwd, hessian on small cases

CASES = {
    "jvp": lambda m: lambda x, y: m.jvp(f2, (x, y), (torch.ones_like(x), 2 * y)),
    "jvp_pytree": lambda m: lambda d: m.jvp(f_tree, (d,), (pytree.tree_map(torch.cos, d),)),
    "jvp_has_aux": lambda m: lambda x: m.jvp(with_aux, (x,), (x.cos(),), has_aux=True),
    "jvp_output_independent_of_input": lambda m: lambda x: m.jvp(lambda x: W, (x,), (x,)),
    "linearize": lambda m: lambda x, y: m.linearize(f2, x, y)[1](x.cos(), y),
    "linearize_output": lambda m: lambda x, y: m.linearize(f2, x, y)[0],
    "jacrev": lambda m: m.jacrev(f2),
    "jacrev_argnums_tuple": lambda m: m.jacrev(f2, argnums=(1, 0)),
    "jacrev_argnums_negative": lambda m: m.jacrev(f2, argnums=-1),
    "jacrev_chunk_size_1": lambda m: m.jacrev(f2, argnums=(0, 1), chunk_size=1),
    "jacrev_chunk_size_2": lambda m: m.jacrev(f2, argnums=(0, 1), chunk_size=2),
    "jacrev_preallocate": lambda m: m.jacrev(f2, argnums=(0, 1), chunk_size=2,
                                             _preallocate_and_copy=True),
    "jacrev_has_aux": lambda m: m.jacrev(lambda x, y: with_aux(x * y.sum()), has_aux=True),
    "jacfwd": lambda m: m.jacfwd(f2),
    "jacfwd_argnums_tuple": lambda m: m.jacfwd(f2, argnums=(1, 0)),
    "jacfwd_has_aux": lambda m: m.jacfwd(lambda x, y: with_aux(x * y.sum()), has_aux=True),
    "jacfwd_randomness_same": lambda m: m.jacfwd(
        lambda x, y: f2(x, y) * torch.rand(()), randomness="same"),
    "hessian": lambda m: lambda x, y: m.hessian(scalar)(x),
    "hessian_argnums": lambda m: m.hessian(lambda x, y: (x[:3].sin() * y).sum() * y.sum(),
                                           argnums=(0, 1)),
    "jacrev_of_jacrev": lambda m: m.jacrev(m.jacrev(f2)),
    "jacfwd_of_jacfwd": lambda m: m.jacfwd(m.jacfwd(f2)),
    "jacrev_of_jacfwd": lambda m: m.jacrev(m.jacfwd(f2), argnums=1),
    "jacfwd_of_jacrev": lambda m: m.jacfwd(m.jacrev(f2), argnums=(0, 1)),
}


@pytest.mark.parametrize("name", CASES)
def test_matches_torch_func(name):
    x, y = randn(4), randn(3)
    build = CASES[name]
    if "pytree" in name:
        check(build, tree_input())
    elif name.startswith("jvp_has_aux") or name.startswith("jvp_output"):
        check(build, x)
    else:
        torch.manual_seed(0)
        ours = build(OURS)(x, y)
        torch.manual_seed(0)
        assert_close(ours, build(REF)(x, y))


def test_jacobians_of_pytrees():
    check(lambda m: m.jacrev(f_tree), tree_input())
    check(lambda m: m.jacfwd(f_tree), tree_input())


def test_jacobians_match_autograd_functional():
    x, y = randn(4), randn(3)
    ours = jacrev(f2, argnums=(0, 1))(x, y)
    ref = AF.jacobian(f2, (x, y))
    assert_close(ours, ref)
    assert_close(jacfwd(f2, argnums=(0, 1))(x, y), ref)
    assert_close(hessian(scalar)(x), AF.hessian(scalar, x))
    assert_close(hessian(lambda a, b: (a.sin() * b).sum(), argnums=(0, 1))(x, x.cos()),
                 AF.hessian(lambda a, b: (a.sin() * b).sum(), (x, x.cos())))


IDX = torch.tensor([0, 2, 2])

# Ops whose derivative formulas write into fresh tensors in place unless the inputs are
# tensor-subclass-like (NOTE: [Wrappers are tensor-subclass-like] in csrc/core/wrappers.cpp).
OP_JACOBIANS = {
    "slice": lambda x: x[1:],
    "index": lambda x: x[IDX],
    "index_select": lambda x: x.index_select(0, IDX),
    "gather": lambda x: x.gather(0, IDX),
    "max_dim": lambda x: x.view(5, 1).max(0).values,
    "sort": lambda x: x.sort().values,
    "topk": lambda x: x.topk(2).values,
    "cumprod": lambda x: x.cumprod(0),
    "trace": lambda x: torch.outer(x, x).trace(),
    "softmax": lambda x: x.softmax(0),
    "log_softmax": lambda x: x.log_softmax(0),
    "logsumexp": lambda x: x.view(5, 1).logsumexp(0),
    "masked_fill": lambda x: x.masked_fill(x > 0, 0.0),
    "reshape": lambda x: x.reshape(5, 1).sin().reshape(5),
    "mse_loss": lambda x: torch.nn.functional.mse_loss(x, x.flip(0) * 2),
    "layer_norm": lambda x: torch.nn.functional.layer_norm(x, (5,)),
}
# (name, jacrev/jacfwd) -> why it does not pass yet (strict xfail: remove when it passes).
OP_JACOBIAN_XFAIL = {}


def _op_jacobian_cases():
    for jac in ("jacrev", "jacfwd"):
        for name, op in OP_JACOBIANS.items():
            reason = OP_JACOBIAN_XFAIL.get((name, jac))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(op, jac, id=f"{jac}-{name}", marks=marks)


@pytest.mark.parametrize("op, jac", list(_op_jacobian_cases()))
def test_jacobians_of_ops_with_in_place_derivatives(op, jac):
    check(lambda m: getattr(m, jac)(op), randn(5))


def test_jacobian_of_scalar_input_and_output():
    x = torch.tensor(0.3, dtype=D)
    check(lambda m: m.jacrev(torch.sin), x)
    check(lambda m: m.jacfwd(torch.sin), x)
    check(lambda m: m.hessian(lambda s: s.sin() * s), x)


def test_jvp_returns_outputs_structure_and_zero_tangents():
    x = randn(3)
    out, tangent = jvp(lambda x: (x.sin(), {"k": x * 2}), (x,), (torch.ones(3, dtype=D),))
    assert_close(out, (x.sin(), {"k": x * 2}))
    assert_close(tangent, (x.cos(), {"k": torch.full((3,), 2.0, dtype=D)}))
    _, zero = jvp(lambda x: W.sum(0), (x,), (x,))
    assert_close(zero, torch.zeros(4, dtype=D))


def test_linearize_jvp_fn_under_vmap():
    x = randn(4)
    _, jvp_fn = linearize(lambda x: x.sin() * x.sum(), x)
    ours = ft.vmap(jvp_fn)(torch.eye(4, dtype=D))
    assert_close(ours, torch.func.jacfwd(lambda x: x.sin() * x.sum())(x).T)


def linear_map_case():
    W = randn(5, 5)

    def f(x, y):
        return torch.tanh(x @ W) * y.exp(), (x * y).sum()

    return f, (randn(3, 5), randn(3, 5)), (randn(3, 5), randn(3, 5))


def test_linearize_traces_on_the_second_call_and_matches_torch_func():
    f, primals, tangents = linear_map_case()
    out, jvp_fn = linearize(f, *primals)
    out_ref, jvp_ref = torch.func.linearize(f, *primals)
    assert_close(out, out_ref)
    for calls in (1, 2, 3):  # jvp, then the traced graph
        assert_close(jvp_fn(*tangents), jvp_ref(*tangents))
        assert (jvp_fn.graph is not None) == (calls >= 2)
    targets = [n.target for n in jvp_fn.graph.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.tanh.default not in targets  # the primal computation was folded
    basis = torch.eye(15, dtype=D).view(15, 3, 5)
    assert_close(ft.vmap(jvp_fn)(basis, basis), torch.func.vmap(jvp_ref)(basis, basis))
    t = tangents[0].clone().requires_grad_()
    (g,) = torch.autograd.grad(jvp_fn(t, tangents[1])[0].sum(), t)
    (g_ref,) = torch.autograd.grad(jvp_ref(t, tangents[1])[0].sum(), t)
    assert_close(g, g_ref)


def test_linearize_keeps_running_jvp_when_primals_require_grad():
    f, primals, tangents = linear_map_case()
    x = primals[0].clone().requires_grad_()
    _, jvp_fn = linearize(f, x, primals[1])
    for _ in range(3):
        out = jvp_fn(*tangents)
    assert jvp_fn.graph is None
    (g,) = torch.autograd.grad(out[0].sum(), x)  # the tangent output depends on the primal
    x_ref = primals[0].clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(torch.func.jvp(f, (x_ref, primals[1]), tangents)[1][0].sum(), x_ref)
    assert_close(g, g_ref)


def test_linearize_falls_back_to_jvp_when_tracing_fails(monkeypatch):
    def broken_make_fx(*args, **kwargs):
        raise RuntimeError("cannot trace")

    monkeypatch.setattr("functorch_lite._linearize.make_fx", broken_make_fx)
    f, primals, tangents = linear_map_case()
    _, jvp_fn = linearize(f, *primals)
    _, jvp_ref = torch.func.linearize(f, *primals)
    for _ in range(3):
        assert_close(jvp_fn(*tangents), jvp_ref(*tangents))
    assert jvp_fn.graph is None


# ----------------------------------------------------------------------------------------------
# The composition matrix: every ordered pair and triple of vmap, grad, vjp, jvp

def base(x):
    return torch.tanh(x) * (x * x).sum() + x.sin()


# Each transform maps a function of x to a function of x with an output of x's shape (vmap
# strips the leading dim of x), so any sequence of them composes.
TRANSFORMS = {
    "vmap": lambda m, f: m.vmap(f),
    "grad": lambda m, f: m.grad(lambda z: f(z).sum()),
    "vjp": lambda m, f: lambda z: (lambda out, fn: fn(out.cos())[0])(*m.vjp(f, z)),
    "jvp": lambda m, f: lambda z: m.jvp(f, (z,), (z.cos(),))[1],
}


def compose(m, names):
    f = base
    for name in reversed(names):
        f = TRANSFORMS[name](m, f)
    return f


COMPOSITIONS = [c for n in (2, 3) for c in itertools.product(TRANSFORMS, repeat=n)]


@pytest.mark.parametrize("names", COMPOSITIONS, ids=lambda c: "(".join(c) + ")" * len(c))
def test_composition_matrix(names):
    x = randn(2, 2, 3, 4)
    assert_close(compose(OURS, names)(x), compose(REF, names)(x))


DEPTH_CASES = {
    "grad(grad(grad))": lambda m: m.grad(m.grad(m.grad(lambda s: s.sin() * s.exp()))),
    "vmap(jacrev)": lambda m: m.vmap(m.jacrev(base)),
    "vmap(jacfwd)": lambda m: m.vmap(m.jacfwd(base)),
    "vmap(hessian)": lambda m: m.vmap(m.hessian(lambda z: base(z).sum())),
    "jacfwd(jacrev)": lambda m: m.jacfwd(m.jacrev(base)),
    "vmap(jvp)": lambda m: m.vmap(lambda z: m.jvp(base, (z,), (z.sin(),))),
    "jvp(grad)": lambda m: lambda z: m.jvp(m.grad(lambda u: base(u).sum()), (z,), (z.cos(),)),
    "vjp(vmap)": lambda m: lambda z: m.vjp(m.vmap(base), z)[1](z.sin()),
    "vmap(vjp(jvp))": lambda m: m.vmap(lambda z: m.vjp(
        lambda u: m.jvp(base, (u,), (u.cos(),))[1], z)[1](z)),
    "jacrev(vmap(jvp))": lambda m: m.jacrev(m.vmap(lambda z: m.jvp(base, (z,), (z.cos(),))[1])),
}


@pytest.mark.parametrize("name", DEPTH_CASES)
def test_deeper_compositions(name):
    x = torch.tensor(0.4, dtype=D) if name == "grad(grad(grad))" else randn(3, 4)
    check(DEPTH_CASES[name], x)


def test_maml_style_grad_of_an_inner_grad_step():
    def loss(w, x, y):
        return ((torch.tanh(x @ w) - y) ** 2).mean()

    def meta_loss(m):
        def adapted_loss(w, xs, ys, xq, yq):
            w2 = w - 0.1 * m.grad(loss)(w, xs, ys)
            w3 = w2 - 0.1 * m.grad(loss)(w2, xs, ys)
            return loss(w3, xq, yq)

        return adapted_loss

    w = randn(5, 2)
    tasks = [randn(4, 6, 5), randn(4, 6, 2), randn(4, 6, 5), randn(4, 6, 2)]
    check(lambda m: m.grad(meta_loss(m)), w, *[t[0] for t in tasks])
    check(lambda m: m.vmap(m.grad(meta_loss(m)), in_dims=(None, 0, 0, 0, 0)), w, *tasks)


def test_backward_through_transforms_inside_ordinary_autograd():
    x, t = randn(3), randn(3)
    grads = []
    for m in (OURS, REF):
        w = torch.linspace(0.5, 1.5, 3, dtype=D).requires_grad_()
        g = m.grad(lambda x: (w * x.sin()).sum() * w.sum())(x)
        _, tangent = m.jvp(lambda x: w * x.exp(), (x,), (t,))
        jac = m.jacrev(lambda x: w * x.cos())(x)
        loss = (g ** 2).sum() + tangent.sum() + jac.sum()
        loss.backward()
        grads.append(w.grad)
    assert_close(grads[0], grads[1])


def test_grad_ignores_outer_no_grad_and_honours_inner_no_grad():
    x = randn(3)
    with torch.no_grad():
        assert_close(ft.grad(lambda x: x.sin().sum())(x), x.cos())
        assert_close(jacrev(torch.sin)(x), torch.diag(x.cos()))

    def f(x):
        with torch.no_grad():
            c = x * 3
        return (c * x).sum()

    check(lambda m: m.grad(f), x)
    check(lambda m: m.jacrev(lambda x: f(x) * x), x)


def test_outputs_that_do_not_depend_on_an_input_give_zeros():
    x, y = randn(3), randn(2)
    check(lambda m: m.grad(lambda x, y: x.sum(), argnums=(0, 1)), x, y)
    check(lambda m: m.jacrev(lambda x, y: x.sin(), argnums=1), x, y)
    check(lambda m: m.jacfwd(lambda x, y: x.sin(), argnums=1), x, y)
    check(lambda m: lambda x: m.vjp(lambda x: W, x)[1](W), x)


def test_jacobians_compose_with_module_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    model = model.double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = randn(4)

    def f(m):
        return m.jacrev(lambda p, x: torch.func.functional_call(model, p, (x,)))

    check(f, params, x)
    check(lambda m: m.jacfwd(lambda p, x: torch.func.functional_call(model, p, (x,))), params, x)


# ----------------------------------------------------------------------------------------------
# torch.autograd.Function inside transforms (setup_context style)


class ScaledSin(torch.autograd.Function):
    """sin with custom backward (x 2) and jvp (x 3), so tests see that the Function's rules ran."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * g * x.cos()

    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return 3 * t * x.cos()


class MulWithVmapRule(torch.autograd.Function):
    """x * y with a hand-written vmap staticmethod."""

    @staticmethod
    def forward(x, y):
        return x * y

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return g * y, g * x

    @staticmethod
    def vmap(info, in_dims, x, y):
        x = x if in_dims[0] is None else x.movedim(in_dims[0], 0)
        y = y if in_dims[1] is None else y.movedim(in_dims[1], 0)
        return MulWithVmapRule.apply(x, y), 0


FUNCTION_CASES = {
    "grad": lambda m: m.grad(lambda x: ScaledSin.apply(x).sum()),
    "grad(grad)": lambda m: m.grad(lambda x: m.grad(lambda y: ScaledSin.apply(y).sum())(x).sum()),
    "grad_sees_inner_forward": lambda m: m.grad(
        lambda x: m.grad(lambda y: (ScaledSin.apply(x) * y).sum())(x).sum()),
    "vmap": lambda m: m.vmap(ScaledSin.apply),
    "vmap(grad)": lambda m: m.vmap(m.grad(lambda x: ScaledSin.apply(x))),
    "grad(vmap)": lambda m: m.grad(lambda x: m.vmap(ScaledSin.apply)(x).sum()),
    "jvp": lambda m: lambda x: m.jvp(ScaledSin.apply, (x,), (x.cos(),)),
    "jacrev": lambda m: m.jacrev(ScaledSin.apply),
    "jacfwd": lambda m: m.jacfwd(ScaledSin.apply),
    "vmap(jacrev)": lambda m: m.vmap(m.jacrev(lambda x: ScaledSin.apply(x) * x.sum())),
    "vmap_rule": lambda m: lambda x: m.vmap(MulWithVmapRule.apply, in_dims=(0, None))(x, x[0]),
    "grad(vmap_rule)": lambda m: m.grad(
        lambda x: m.vmap(MulWithVmapRule.apply, in_dims=(0, None))(x, x[0]).sum()),
    "vmap(vmap_rule)": lambda m: m.vmap(m.vmap(MulWithVmapRule.apply), in_dims=(1, None)),
}


@pytest.mark.parametrize("name", FUNCTION_CASES)
def test_autograd_function_matches_torch_func(name):
    x = randn(3, 3) if name == "vmap(vmap_rule)" else randn(3)
    if name == "vmap(vmap_rule)":
        check(lambda m: lambda x: FUNCTION_CASES[name](m)(x, x[:, 0].contiguous()), x)
        return
    check(FUNCTION_CASES[name], x)


# ----------------------------------------------------------------------------------------------
# Error messages


class TestErrorMessages(expecttest.TestCase):
    def message(self, fn, *args, exc=RuntimeError):
        with self.assertRaises(exc) as ctx:
            fn(*args)
        return str(ctx.exception).splitlines()[0]

    def test_jvp_shape_mismatch(self):
        self.assertExpectedInline(
            self.message(lambda: jvp(torch.sin, (randn(3),), (randn(2),))),
            """jvp(sin, primals, tangents): Trying to set a forward gradient that has a different size than that of the original Tensor, this is not supported: tangent 0 has shape (2,) but its primal has shape (3,); each tangent must have the shape of its primal.""",
        )

    def test_jvp_primals_not_a_tuple(self):
        self.assertExpectedInline(
            self.message(lambda: jvp(torch.sin, randn(3), randn(3))),
            """jvp(sin, primals, tangents): Expected primals to be a tuple. E.g. it should be valid to call f(*primals); got Tensor.""",
        )

    def test_jvp_strict(self):
        self.assertExpectedInline(
            self.message(lambda: jvp(lambda x: W, (randn(3),), (randn(3),), strict=True)),
            """jvp(<lambda>, primals, tangents): the output of the function does not depend on the primals, which strict=True does not allow.""",
        )

    def test_jacrev_argnums_out_of_range(self):
        self.assertExpectedInline(
            self.message(lambda: jacrev(f2, argnums=2)(randn(4), randn(3))),
            """jacrev(f2, argnums=2)(<inputs>): Got argnum=2, but only 2 positional inputs (argnums=2).""",
        )

    def test_jacfwd_complex_input(self):
        self.assertExpectedInline(
            self.message(lambda: jacfwd(torch.sin)(torch.randn(3, dtype=torch.cfloat))),
            """jacfwd(sin, argnums=0)(<inputs>): expected all inputs to be real, got a complex tensor at flattened input index 0. Split complex tensors into real and imaginary parts.""",
        )

    def test_jacrev_chunk_size(self):
        self.assertExpectedInline(
            self.message(lambda: jacrev(torch.sin, chunk_size=0), exc=ValueError),
            """jacrev(sin, chunk_size=0): `chunk_size` should be greater than 0 (or None).""",
        )

    def test_inplace_on_captured_tensor_inside_jacrev(self):
        captured = randn(3)

        def f(x):
            captured.add_(x)
            return x

        self.assertExpectedInline(
            self.message(lambda: jacrev(f)(randn(3))),
            """jacrev: the function called the in-place operator aten::add_.Tensor that would mutate a captured Tensor (a tensor from outside the function, not one of its inputs). Mutating captured tensors inside jacrev is not supported: clone the tensor first, or pass it to the function as an input.""",
        )

    def test_grad_of_integer_output(self):
        self.assertExpectedInline(
            self.message(lambda: ft.grad(lambda x: x.sum().long())(randn(3))),
            """grad(<lambda>, argnums=0)(<inputs>): expected the function to return a floating point Tensor, got dtype torch.int64.""",
        )

    def test_grad_of_non_tensor_output(self):
        self.assertExpectedInline(
            self.message(lambda: ft.grad(lambda x: 1.0)(randn(3))),
            """grad(<lambda>, argnums=0)(<inputs>): Expected f(*args) to return a Tensor, got <class 'float'>.""",
        )

    def test_function_without_setup_context(self):
        class OldStyle(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x * 2

            @staticmethod
            def backward(ctx, g):
                return g * 2

        self.assertExpectedInline(
            self.message(lambda: ft.grad(lambda x: OldStyle.apply(x).sum())(randn(3))),
            """OldStyle.apply: to use an autograd.Function inside functorch_lite transforms (vmap, grad, jvp, jacrev, ...), it must override the setup_context staticmethod (and its forward must not take ctx). See https://pytorch.org/docs/main/notes/extending.func.html""",
        )

    def test_function_without_vmap_support(self):
        class NoVmap(torch.autograd.Function):
            @staticmethod
            def forward(x):
                return x * 2

            @staticmethod
            def setup_context(ctx, inputs, output):
                pass

            @staticmethod
            def backward(ctx, g):
                return g * 2

        self.assertExpectedInline(
            self.message(lambda: ft.vmap(NoVmap.apply)(randn(2, 3))),
            """vmap: NoVmap has no vmap support: set generate_vmap_rule=True (if its forward, setup_context, backward and jvp are written with PyTorch operations) or implement the vmap staticmethod. See https://pytorch.org/docs/main/notes/extending.func.html""",
        )
