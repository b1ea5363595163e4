"""TorchScript compilers, the minifier, graph drawing and pythonkey_decompose."""

import copy
import warnings

import expecttest
import pytest
import torch
import torch.func
import torch.nn.functional as F
from test_compile import per_sample_case, per_sample_loss
from torch.fx.experimental.proxy_tensor import make_fx

import functorch_lite
from functorch_lite.compile import (
    aot_function,
    draw_graph_compile,
    minifier,
    nnc_jit,
    pythonkey_decompose,
    ts_compile,
)

aten = torch.ops.aten


@pytest.fixture(autouse=True)
def quiet_torchscript():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TorchScript.*")
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
        yield


def test_ts_compile_of_per_sample_grads_equals_torch_func():
    params, x, y = per_sample_case()
    grads = functorch_lite.vmap(functorch_lite.grad(per_sample_loss), in_dims=(None, 0, 0))
    compiled = aot_function(grads, ts_compile)
    expected = torch.func.vmap(torch.func.grad(per_sample_loss), in_dims=(None, 0, 0))(
        params, x, y
    )
    for got, want in zip(compiled(params, x, y), expected):
        torch.testing.assert_close(got, want)


def test_ts_compile_returns_a_boxed_scripted_graph_run_on_real_inputs():
    gm = make_fx(lambda x: torch.sin(x) * 2)(torch.randn(3))
    compiled = ts_compile(gm, [torch.randn(3)])
    assert compiled._boxed_call
    x = torch.randn(3)
    torch.testing.assert_close(compiled([x]), torch.sin(x) * 2)


def test_nnc_jit_forward_and_backward_equal_eager():
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    w = torch.randn(4, 5, requires_grad=True)

    def loss(x, w):
        return F.linear(x, w).relu().pow(2).mean()

    got = torch.autograd.grad(nnc_jit(loss)(x, w), w)
    want = torch.autograd.grad(loss(x, w), w)
    torch.testing.assert_close(got, want)


def test_pythonkey_decompose_decomposes_while_tracing():
    table = {aten.gelu.default: lambda x, approximate="none": x * torch.sigmoid(1.702 * x)}

    def f(x):  # used inside a trace, where make_fx's proxy mode is set
        with pythonkey_decompose(table):
            return F.gelu(x)

    gm = make_fx(f)(torch.randn(3))
    targets = {n.target for n in gm.graph.nodes}
    assert aten.gelu.default not in targets and aten.sigmoid.default in targets


def test_draw_graph_compile_draws_each_graph(monkeypatch, tmp_path):
    drawn = []
    monkeypatch.setattr(
        "functorch_lite.compile._compilers.draw_graph", lambda gm, fname: drawn.append(fname)
    )
    w = torch.randn(3, requires_grad=True)
    out = aot_function(lambda w: (w.sin() * 2).sum(), draw_graph_compile(str(tmp_path / "g")))(w)
    out.backward()
    torch.testing.assert_close(w.grad, 2 * w.detach().cos())
    assert len(drawn) == 2  # the forward and the backward graph
    assert all(f.startswith(str(tmp_path / "g_")) for f in drawn)
    assert "forward" in drawn[0] and "backward" in drawn[1]


# ---------------------------------------------------------------------------------------
# The minifier (NOTE: [How the minifier shrinks a graph]).


def long_graph():
    def f(x, y):
        a = x.sin() + y
        b = a.exp() * 2
        c = b.cos()  # the "miscompiled" operator
        d = c.tanh() + a
        return d.sum(), b.mean()

    return make_fx(f)(torch.randn(4), torch.randn(4)), [torch.randn(4), torch.randn(4)]


def uses_cos(gm, inps):
    gm(*inps)  # the graph must still run on its inputs
    return any(n.target == aten.cos.default for n in gm.graph.nodes)


def test_minifier_shrinks_to_the_failing_operator():
    gm, inps = long_graph()
    dumped = []
    small, small_inps = minifier(gm, inps, uses_cos, lambda g, i: dumped.append((g, i)))
    ops = [n.target for n in small.graph.nodes if n.op == "call_function"]
    assert ops == [aten.cos.default]
    assert len(small_inps) == 1 and isinstance(small_inps[0], torch.Tensor)
    assert dumped and dumped[0][0] is small
    # The cut input is the value that reached cos in the original graph.
    x, y = inps
    torch.testing.assert_close(small_inps[0], (x.sin() + y).exp() * 2)


def test_minifier_keeps_a_numerical_failure():
    # A "compiler" that gets mul wrong: fails when its result differs from the graph's.
    def miscompiles(gm, inps):
        bad = copy.deepcopy(gm)
        for node in bad.graph.nodes:
            if node.target == aten.mul.Tensor:
                node.target = aten.add.Tensor
        bad.recompile()
        return not all(torch.allclose(a, b) for a, b in zip(as_list(bad(*inps)), as_list(gm(*inps))))

    gm, inps = long_graph()
    small, _ = minifier(gm, inps, miscompiles, lambda g, i: None)
    assert [n.target for n in small.graph.nodes if n.op == "call_function"] == [aten.mul.Tensor]


def as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


class TestMinifierErrors(expecttest.TestCase):
    def test_graph_that_does_not_fail(self):
        gm, inps = long_graph()
        with self.assertRaises(RuntimeError) as ctx:
            minifier(gm, inps, lambda g, i: False)
        self.assertExpectedInline(
            str(ctx.exception),
            """minifier: module_fails(fail_f, inps) is False for the graph as given, so there is no failure to keep while shrinking it. Please check module_fails.""",
        )
