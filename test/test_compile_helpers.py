"""functorch.compile helpers: fx_graph_cse, getitem outputs of the partitioners, grad through an
aot-compiled function, num_of_recompilations / clear_compile_cache.

torch's own fx_graph_cse (torch._functorch.compile_utils) and eager PyTorch are the references.
"""
import operator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch._functorch.compile_utils import fx_graph_cse as reference_cse
from torch.fx.experimental.proxy_tensor import make_fx

import functorch_lite as ft
from functorch_lite.compile import (
    aot_function,
    clear_compile_cache,
    default_partition,
    fx_graph_cse,
    memory_efficient_fusion,
    min_cut_rematerialization_partition,
    nop,
    num_of_recompilations,
)

UNARY = [torch.sin, torch.cos, torch.exp, torch.tanh, lambda t: t.t(), lambda t: t * 2,
         lambda t: t.sum(0, keepdim=True)]


def random_program(choices):
    """A function that often computes the same expression twice, with random ops mixed in."""
    def f(x):
        values = [x]
        for op_index, arg_index, random in choices:
            v = UNARY[op_index](values[arg_index % len(values)])
            if random:
                v = v + torch.rand_like(v)
            values.append(v)
        return sum(v.sum() for v in values)
    return f


def call_counts(graph):
    counts = {}
    for n in graph.nodes:
        if n.op == "call_function":
            counts[str(n.target)] = counts.get(str(n.target), 0) + 1
    return counts


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(UNARY) - 1), st.integers(0, 3), st.booleans()),
                min_size=1, max_size=8))
def test_fx_graph_cse_merges_what_torch_merges(choices):
    x = torch.randn(3, 3)
    gm = make_fx(random_program(choices))(x)
    ours = fx_graph_cse(gm.graph)
    ref = reference_cse(gm.graph)
    assert call_counts(ours) == call_counts(ref)
    torch.manual_seed(0)
    out = torch.fx.GraphModule(gm, ours)(x)
    torch.manual_seed(0)
    expected = torch.fx.GraphModule(gm, ref)(x)
    torch.testing.assert_close(out, expected)


def test_fx_graph_cse_leaves_random_ops_alone():
    def f(x):
        return (x.sin() + x.sin() + F.dropout(x, 0.5) + F.dropout(x, 0.5) + torch.rand_like(x)
                + torch.rand_like(x))

    graph = fx_graph_cse(make_fx(f)(torch.randn(4)).graph)
    counts = call_counts(graph)
    assert counts["aten.sin.default"] == 1
    assert counts["aten.rand_like.default"] == 2
    assert sum(v for k, v in counts.items() if "bernoulli" in k or "native_dropout" in k) == 2


def test_fx_graph_cse_merges_getitems_of_one_tuple():
    def f(x):
        a = torch.max(x, 0)
        return a[0] + torch.max(x, 0)[0] + a[1]

    counts = call_counts(fx_graph_cse(make_fx(f)(torch.randn(3, 3)).graph))
    assert counts["aten.max.dim"] == 1 and counts[str(operator.getitem)] == 2


def test_memory_efficient_fusion_runs_cse_on_the_joint_graph():
    graphs = []

    def capture(gm, _):
        graphs.append(gm)
        return gm

    def f(x):
        return x.sin().cos() * x.sin().cos()

    g = memory_efficient_fusion(f, fw_compiler=capture, bw_compiler=capture)
    x = torch.randn(5, requires_grad=True)
    g(x).sum().backward()
    x2 = x.detach().requires_grad_()
    f(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    assert call_counts(graphs[0].graph).get("aten.sin.default", 0) == 1


MULTI_OUTPUT = {
    "var_mean": lambda x: torch.var_mean(x, 0)[0] * torch.var_mean(x, 0)[1],
    "max_dim": lambda x: torch.max(x, 1)[0].exp() * torch.max(x, 1)[0],
    "layer_norm": lambda x: F.layer_norm(x, (4,)).sin(),
    "topk": lambda x: torch.topk(x, 2)[0].pow(2),
}


@pytest.mark.parametrize("partition", [default_partition, min_cut_rematerialization_partition],
                         ids=["default", "min_cut"])
@pytest.mark.parametrize("name", sorted(MULTI_OUTPUT))
def test_partitioners_save_getitem_outputs_once(name, partition):
    saved = []

    def fw(gm, _):
        saved.append(list(gm.graph.output_node().args[0]))
        return gm

    f = MULTI_OUTPUT[name]
    g = aot_function(f, fw, nop, partition_fn=partition)
    x = torch.randn(3, 4, requires_grad=True)
    g(x).sum().backward()
    x2 = x.detach().requires_grad_()
    f(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    outputs = saved[0][1:]  # after the forward output
    assert len(outputs) == len(set(outputs)), f"a value is saved twice: {outputs}"
    for node in outputs:
        assert not isinstance(node.meta.get("val"), (tuple, list)), f"saved a tuple: {node}"
    sources = [(n.args[0], n.args[1]) for n in outputs if n.target is operator.getitem]
    assert len(sources) == len(set(sources)), "one tuple element saved twice"


def test_grad_through_an_aot_compiled_function():
    compiled = aot_function(lambda x: x.sin().exp(), nop, nop)

    def loss(x):
        return compiled(x).sum()

    def plain(x):
        return x.sin().exp().sum()

    x = torch.randn(3)
    torch.testing.assert_close(ft.grad(loss)(x), torch.func.grad(plain)(x))
    xs = torch.randn(4, 3)
    torch.testing.assert_close(ft.vmap(ft.grad(loss))(xs),
                               torch.func.vmap(torch.func.grad(plain))(xs))
    torch.testing.assert_close(ft.jacrev(compiled)(x),
                               torch.func.jacrev(lambda x: x.sin().exp())(x))
    # and outside transforms, torch.autograd differentiates the compiled function
    x_ = x.clone().requires_grad_()
    compiled(x_).sum().backward()
    torch.testing.assert_close(x_.grad, torch.func.grad(plain)(x))


def test_num_of_recompilations_and_clear_compile_cache():
    clear_compile_cache()
    assert num_of_recompilations() == 0
    g = aot_function(lambda x: x * 2, nop, nop)
    g(torch.randn(3))
    g(torch.randn(3))
    assert num_of_recompilations() == 1
    g(torch.randn(4))
    assert num_of_recompilations() == 2
    clear_compile_cache()
    assert num_of_recompilations() == 0
    g(torch.randn(3))
    assert num_of_recompilations() == 1


LINALG_CHECKED = {
    "inv": torch.linalg.inv,
    "solve": lambda a: torch.linalg.solve(a, a.sum(0)),
    "cholesky": lambda a: torch.linalg.cholesky(a @ a.mT),
    "inv_then_more": lambda a: torch.linalg.inv(a).sin() @ a,
}


@pytest.mark.parametrize("partition", [default_partition, min_cut_rematerialization_partition],
                         ids=["default", "min_cut"])
@pytest.mark.parametrize("name", sorted(LINALG_CHECKED))
def test_aot_function_of_ops_with_effectful_error_checks(name, partition):
    f = LINALG_CHECKED[name]
    g = aot_function(f, nop, nop, partition_fn=partition)
    base = torch.randn(4, 4) + 4 * torch.eye(4)
    a = base.clone().requires_grad_()
    out = g(a)
    out.sum().backward()
    a_ref = base.clone().requires_grad_()
    f(a_ref).sum().backward()
    torch.testing.assert_close(out, f(base))
    torch.testing.assert_close(a.grad, a_ref.grad)
    # the error check runs in the compiled forward, with and without grad
    singular = torch.zeros(4, 4)
    with pytest.raises(RuntimeError) as eager:
        f(singular)
    for x in (singular.clone().requires_grad_(), singular):
        with pytest.raises(RuntimeError) as compiled:
            g(x)
        assert str(compiled.value) == str(eager.value)
