"""functorch_lite.compile (AOT Autograd): graphs, partitioners, cache, errors, against eager."""

import copy
import inspect
import operator
import pathlib
import re

import functorch.compile
import pytest
import torch
import torch.func
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import functorch_lite
from functorch_lite.compile import (
    aot_function,
    aot_module,
    aot_module_simplified,
    default_partition,
    get_aot_graph_name,
    inductor_compile,
    make_boxed_compiler,
    memory_efficient_fusion,
    min_cut_rematerialization_partition,
    nop,
)
from functorch_lite.compile._mincut import FlowNetwork

aten = torch.ops.aten
PARTITIONERS = [default_partition, min_cut_rematerialization_partition]


class Capture:
    """A compiler that records the graphs it is given and runs them uncompiled."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        assert isinstance(gm, fx.GraphModule)
        self.graphs.append(gm)
        return gm

    @property
    def calls(self):
        return len(self.graphs)


def call_targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def num_saved(fw_graph, num_fwd_outputs):
    """How many values the forward graph returns for the backward."""
    return len(fw_graph.graph.output_node().args[0]) - num_fwd_outputs


def check_matches_eager(compiled, eager, args, *, atol=1e-5, rtol=1e-4):
    """Outputs, and gradients of inputs that require grad, equal eager's on the same inputs."""
    args_c = [
        a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
        for a in args
    ]
    out_c, out_e = compiled(*args_c), eager(*args)
    flat_c, flat_e = torch.utils._pytree.tree_leaves(out_c), torch.utils._pytree.tree_leaves(out_e)
    assert len(flat_c) == len(flat_e)
    for c, e in zip(flat_c, flat_e):
        torch.testing.assert_close(c, e, atol=atol, rtol=rtol)
    diff = [
        (c, e) for c, e in zip(flat_c, flat_e) if isinstance(e, torch.Tensor) and e.requires_grad
    ]
    inputs_c = [a for a in args_c if isinstance(a, torch.Tensor) and a.requires_grad]
    inputs_e = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    if not diff or not inputs_e:
        return
    cotangents = [torch.randn_like(e) for _, e in diff]
    grads_c = torch.autograd.grad([c for c, _ in diff], inputs_c, cotangents, allow_unused=True)
    grads_e = torch.autograd.grad([e for _, e in diff], inputs_e, cotangents, allow_unused=True)
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge, atol=atol, rtol=rtol)


# ---------------------------------------------------------------------------------------
# Models: outputs and gradients equal eager with both partitioners.


def mlp_loss(x, w1, b1, w2, b2):
    return F.linear(torch.relu(F.linear(x, w1, b1)), w2, b2).pow(2).mean()


def mlp_args():
    torch.manual_seed(0)
    return [
        torch.randn(8, 16),
        torch.randn(32, 16, requires_grad=True),
        torch.randn(32, requires_grad=True),
        torch.randn(4, 32, requires_grad=True),
        torch.randn(4, requires_grad=True),
    ]


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(F.max_pool2d(F.relu(self.conv(x)), 2).flatten(1))


class EmbedNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens):
        return self.head(self.norm(self.embed(tokens))).sum(1)


@pytest.mark.parametrize("partition_fn", PARTITIONERS, ids=lambda p: p.__name__)
def test_mlp_matches_eager(partition_fn):
    check_matches_eager(
        aot_function(mlp_loss, nop, partition_fn=partition_fn), mlp_loss, mlp_args()
    )


@pytest.mark.parametrize("partition_fn", PARTITIONERS, ids=lambda p: p.__name__)
@pytest.mark.parametrize(
    "model, make_input",
    [
        (SmallCNN, lambda: torch.randn(2, 3, 8, 8, requires_grad=True)),
        (EmbedNorm, lambda: torch.randint(0, 20, (2, 5))),
    ],
    ids=["cnn", "embedding_layernorm"],
)
def test_module_matches_eager(model, make_input, partition_fn):
    torch.manual_seed(0)
    mod = model()
    ref = copy.deepcopy(mod)
    compiled = aot_module(mod, nop, partition_fn=partition_fn)
    x = make_input()
    check_matches_eager(compiled, ref, [x])
    out, out_ref = compiled(x), ref(x)
    out.sum().backward()
    out_ref.sum().backward()
    for (name, p), p_ref in zip(mod.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_batch_norm_buffers_are_updated_like_eager():
    torch.manual_seed(0)
    mod = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
    ref = copy.deepcopy(mod)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(aot_module(mod, nop)(x), ref(x))
    torch.testing.assert_close(mod[1].running_mean, ref[1].running_mean)
    torch.testing.assert_close(mod[1].running_var, ref[1].running_var)
    assert mod[1].num_batches_tracked.item() == ref[1].num_batches_tracked.item() == 1


# ---------------------------------------------------------------------------------------
# The graphs: real FX GraphModules of functional aten ops.


def test_graphs_are_functional_aten_graph_modules():
    fw, bw = Capture(), Capture()

    def fn(x, w):
        y = x @ w
        y.relu_()  # in-place on an intermediate: functionalized away
        return y.sum()

    aot_function(fn, fw, bw)(torch.randn(4, 3), torch.randn(3, 5, requires_grad=True))
    assert fw.calls == bw.calls == 1
    fw_gm, bw_gm = fw.graphs[0], bw.graphs[0]
    for gm in (fw_gm, bw_gm):
        assert all(isinstance(t, torch._ops.OpOverload) for t in call_targets(gm))
        assert not any(t._schema.is_mutable for t in call_targets(gm))
    assert call_targets(fw_gm) == [aten.mm.default, aten.relu.default, aten.sum.default]
    assert aten.threshold_backward.default in call_targets(bw_gm)
    assert [n.name for n in fw_gm.graph.nodes if n.op == "placeholder"] == [
        "primals_1",
        "primals_2",
    ]
    # bw inputs: what the forward saved (x and relu's output), then the tangent.
    assert [n.name for n in bw_gm.graph.nodes if n.op == "placeholder"] == [
        "primals_1",
        "relu",
        "tangents_1",
    ]
    assert [n.name if n else None for n in bw_gm.graph.output_node().args[0]][
        0
    ] is None  # x needs no grad


def test_decompositions_are_applied_while_tracing():
    fw = Capture()
    aot_function(
        lambda x: F.silu(x).sum(),
        fw,
        nop,
        decompositions=torch._decomp.get_decompositions([aten.silu]),
    )(torch.randn(3, requires_grad=True))
    assert aten.silu.default not in call_targets(fw.graphs[0])
    assert aten.sigmoid.default in call_targets(fw.graphs[0])


def test_compilers_are_told_which_graph_they_compile():
    names = []

    def naming(gm, _):
        names.append(get_aot_graph_name())
        return gm

    f = aot_function(lambda x: x.sin(), naming)
    f(torch.randn(2, requires_grad=True))
    f(torch.randn(2))
    assert [re.sub(r"_\d+$", "", n) for n in names] == [
        "model__forward",
        "model__backward",
        "model__inference",
    ]


# ---------------------------------------------------------------------------------------
# Partitioners.


def pointwise_chain(x):
    return x.sin().cos().exp().sum()


@pytest.mark.parametrize(
    "fn, make_args",
    [
        (mlp_loss, mlp_args),
        (
            lambda x, w: F.max_pool2d(F.relu(F.conv2d(x, w)), 2).sum(),
            lambda: [torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3, requires_grad=True)],
        ),
        (pointwise_chain, lambda: [torch.randn(64, requires_grad=True)]),
    ],
    ids=["mlp", "cnn", "pointwise_chain"],
)
def test_min_cut_saves_no_more_than_default(fn, make_args):
    saved = {}
    for partition_fn in PARTITIONERS:
        fw = Capture()
        check_matches_eager(aot_function(fn, fw, nop, partition_fn=partition_fn), fn, make_args())
        saved[partition_fn] = num_saved(fw.graphs[0], num_fwd_outputs=1)
    assert saved[min_cut_rematerialization_partition] <= saved[default_partition]
    if fn is pointwise_chain:  # default saves x, sin(x), exp(...); min-cut saves x and recomputes
        assert (saved[default_partition], saved[min_cut_rematerialization_partition]) == (3, 1)


def test_min_cut_recomputes_pointwise_ops_in_the_backward():
    bw = Capture()
    aot_function(pointwise_chain, nop, bw, partition_fn=min_cut_rematerialization_partition)(
        torch.randn(5, requires_grad=True)
    )
    targets = call_targets(bw.graphs[0])
    assert aten.sin.default in targets and aten.cos.default in targets


@pytest.mark.parametrize("partition_fn", PARTITIONERS, ids=lambda p: p.__name__)
def test_random_ops_run_once_and_backward_uses_the_same_mask(partition_fn):
    x = torch.randn(1000, requires_grad=True)
    out = aot_function(lambda x: F.dropout(x, 0.5).sum(), nop, partition_fn=partition_fn)(x)
    out.backward()
    assert set(x.grad.unique().tolist()) == {0.0, 2.0}  # the dropout mask, scaled
    torch.testing.assert_close(out, (x * x.grad).sum())  # the forward used that same mask


def test_flow_network_min_cut():
    net = FlowNetwork()
    for u, v, c in [("s", "a", 3), ("s", "b", 2), ("a", "b", 1), ("a", "t", 2), ("b", "t", 3)]:
        net.add_edge(u, v, c)
    value, source_side = net.min_cut("s", "t")
    assert value == 5 and source_side == {"s"}


# ---------------------------------------------------------------------------------------
# Inputs and outputs: pytrees, kwargs, non-differentiable outputs, aliasing, mutation.


def test_pytree_inputs_and_outputs_with_kwargs():
    def fn(params, x, *, scale, name):
        out = {"y": (x @ params["w"] + params["b"]) * scale, "name": name, "n": x.shape[0]}
        return out, [out["y"].argmax(-1), out["y"].sum()]

    params = {"w": torch.randn(3, 4, requires_grad=True), "b": torch.randn(4, requires_grad=True)}
    x = torch.randn(5, 3)
    compiled = aot_function(fn, nop)
    (out, (argmax, total)) = compiled(params, x, scale=2.0, name="hi")
    (ref, (argmax_ref, total_ref)) = fn(params, x, scale=2.0, name="hi")
    assert out["name"] == "hi" and out["n"] == 5
    assert (
        argmax.dtype == torch.int64 and not argmax.requires_grad and torch.equal(argmax, argmax_ref)
    )
    torch.testing.assert_close(out["y"], ref["y"])
    grads = torch.autograd.grad(total, list(params.values()))
    grads_ref = torch.autograd.grad(total_ref, list(params.values()))
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)


def test_several_outputs_some_unused_in_backward():
    def fn(x, y):
        return x * y, (x + y).detach(), x.exp()

    x, y = torch.randn(3, requires_grad=True), torch.randn(3)
    a, b, c = aot_function(fn, nop)(x, y)
    assert a.requires_grad and not b.requires_grad and c.requires_grad
    a.sum().backward()  # c's gradient is never requested
    torch.testing.assert_close(x.grad, y)


def test_outputs_aliasing_inputs_alias_like_eager():
    def fn(x, y):
        return x, x.view(-1), y[1:], x * 2, x.detach()

    x, y = torch.randn(2, 3, requires_grad=True), torch.randn(4, 3)
    same, flat, tail, doubled, detached = aot_function(fn, nop)(x, y)
    assert same is x
    assert flat._base is x and flat.shape == (6,) and flat.requires_grad
    assert tail._base is y and tail.storage_offset() == 3
    assert detached.data_ptr() == x.data_ptr() and not detached.requires_grad
    (flat.sum() * 3 + doubled.sum()).backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 5.0))


def test_mutation_of_input_without_grad_is_replayed():
    def fn(x, counter):
        counter.add_(1)
        return x * counter

    x, counter = torch.randn(3, requires_grad=True), torch.zeros(3)
    compiled = aot_function(fn, nop)
    out = compiled(x, counter)
    torch.testing.assert_close(counter, torch.ones(3))
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(3))
    with torch.no_grad():
        compiled(x, counter)
    torch.testing.assert_close(counter, torch.full((3,), 2.0))


def test_keep_inference_input_mutations_puts_copy_in_the_graph():
    graph = Capture()

    def fn(x, counter):
        counter.add_(1)
        return x * counter

    counter = torch.zeros(3)
    with torch.no_grad():
        aot_function(fn, graph, keep_inference_input_mutations=True)(torch.ones(3), counter)
    assert call_targets(graph.graphs[0])[-1] == aten.copy_.default
    torch.testing.assert_close(counter, torch.ones(3))


def test_mutating_an_input_that_requires_grad_is_refused():
    def fn(x):
        x.mul_(2)
        return x.sum()

    x = torch.randn(3, requires_grad=True).clone()
    with pytest.raises(RuntimeError) as e:
        aot_function(fn, nop)(x)
    assert str(e.value) == (
        "aot_function: fn mutates its input args[0] in place, and that input requires grad; this "
        "is not supported. Please clone the input inside fn before mutating it."
    )


def test_metadata_mutation_of_an_input_is_refused():
    def fn(x, y):
        return y.t_() + x

    with pytest.raises(RuntimeError) as e:
        aot_function(fn, nop)(torch.randn(3, 2), y=torch.randn(2, 3))
    assert str(e.value) == (
        "aot_function: fn changes the metadata (shape, strides or storage) of its input "
        "kwargs['y'] in place, for example with t_, transpose_, resize_ or set_; this is not "
        "supported. Please use the out-of-place version of the op instead."
    )


def test_error_names_the_api_the_user_called():
    class Mutates(nn.Module):
        def forward(self, x):
            return x.add_(1)

    with pytest.raises(RuntimeError, match=r"^aot_module: fn mutates its input args\[0\] in place"):
        aot_module(Mutates(), nop)(torch.randn(2, requires_grad=True).clone())


def test_closed_over_tensor_that_requires_grad_is_refused():
    w = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError) as e:
        aot_function(lambda x: x * w, nop)(torch.randn(3))
    assert str(e.value) == (
        "aot_function: fn uses a tensor of shape [3] that requires grad but is not an input of fn "
        "(a parameter it closes over?); its gradient would be lost. Please pass it to fn as an "
        "input, or compile the module with aot_module."
    )


# ---------------------------------------------------------------------------------------
# The cache: recompiles exactly when input metadata or grad mode changes.


def test_recompiles_on_metadata_change_only():
    fw = Capture()
    compiled = aot_function(lambda x, w: (x @ w).tanh().sum(), fw, nop)
    w = torch.randn(3, 2, requires_grad=True)
    calls = []
    for x in [
        torch.randn(4, 3),
        torch.randn(4, 3),
        torch.randn(5, 3),
        torch.randn(4, 3),
        torch.randn(4, 3, dtype=torch.float64),
        torch.randn(3, 4).t(),
        torch.randn(4, 3, requires_grad=True),
    ]:
        compiled(x, w.to(x.dtype) if x.dtype != w.dtype else w)
        calls.append(fw.calls)
    # same | same again | new shape | cached shape | new dtype | new strides | new requires_grad
    assert calls == [1, 1, 2, 2, 3, 4, 5]
    with torch.no_grad():
        compiled(torch.randn(4, 3), w)
    assert fw.calls == 6 and compiled.cache.num_compiles == 6


def test_dynamic_shapes_compile_once_for_many_sizes():
    def fn(x, w):
        return (x @ w).tanh().sum(0)

    for partition_fn in PARTITIONERS:
        fw = Capture()
        compiled = aot_function(fn, fw, nop, partition_fn=partition_fn, dynamic=True)
        w = torch.randn(3, 4, requires_grad=True)
        for batch in (5, 7, 9):
            check_matches_eager(compiled, fn, [torch.randn(batch, 3), w])
        assert fw.calls == 1
        check_matches_eager(
            compiled, fn, [torch.randn(1, 3), w]
        )  # size 1 is specialized: a new graph
        assert fw.calls == 2


# ---------------------------------------------------------------------------------------
# Other entry points.


def test_aot_module_simplified_on_a_traced_module():
    torch.manual_seed(0)
    mod = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2))
    gm = fx.symbolic_trace(mod)
    forward = aot_module_simplified(gm, [torch.randn(5, 3)], nop)
    x = torch.randn(5, 3)
    out = forward(x)
    torch.testing.assert_close(out, mod(x))
    out.sum().backward()
    assert all(p.grad is not None for p in mod.parameters())


def test_memory_efficient_fusion_uses_min_cut():
    bw = Capture()
    compiled = memory_efficient_fusion(pointwise_chain, fw_compiler=nop, bw_compiler=bw)
    check_matches_eager(compiled, pointwise_chain, [torch.randn(6, requires_grad=True)])
    assert aten.sin.default in call_targets(bw.graphs[0])  # recomputed, as min-cut does


def test_boxed_compilers_receive_a_list():
    seen = []

    @make_boxed_compiler
    def boxed(gm, example_inputs):
        seen.append(len(example_inputs))
        return gm

    check_matches_eager(aot_function(mlp_loss, boxed), mlp_loss, mlp_args())
    assert seen[0] == 5


def test_inductor_compile_matches_eager(recwarn):
    # The one inductor test (compiling is slow): forward and backward compiled, no fallback to nop.
    check_matches_eager(aot_function(mlp_loss, inductor_compile), mlp_loss, mlp_args())
    assert not [w for w in recwarn if "inductor_compile:" in str(w.message)]


def _inductor_that_fails(monkeypatch):
    """inductor_compile with TorchInductor failing as it does without a C++ compiler."""
    from functorch_lite.compile import _compilers

    def fail(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(_compilers, "_retraced", fail)


def test_inductor_failure_warns_with_the_reason_and_runs_uncompiled(monkeypatch):
    _inductor_that_fails(monkeypatch)
    monkeypatch.delenv("FUNCTORCH_LITE_INDUCTOR_STRICT", raising=False)
    with pytest.warns(UserWarning) as record:
        check_matches_eager(aot_function(mlp_loss, inductor_compile), mlp_loss, mlp_args())
    messages = [str(w.message) for w in record if "inductor_compile:" in str(w.message)]
    assert messages, "the fallback to the uncompiled graph must warn"
    assert "TorchInductor could not compile the forward graph" in messages[0]
    assert "RuntimeError: no C++ compiler found" in messages[0]
    assert "FUNCTORCH_LITE_INDUCTOR_STRICT=1" in messages[0]


def test_inductor_failure_is_an_error_when_strict(monkeypatch):
    _inductor_that_fails(monkeypatch)
    monkeypatch.setenv("FUNCTORCH_LITE_INDUCTOR_STRICT", "1")
    with pytest.raises(RuntimeError, match=r"^inductor_compile: TorchInductor could not compile "
                                           r"the forward graph \(RuntimeError: no C\+\+ compiler "
                                           r"found\)\. Unset FUNCTORCH_LITE_INDUCTOR_STRICT"):
        aot_function(mlp_loss, inductor_compile)(*mlp_args())


# ---------------------------------------------------------------------------------------
# Composition with functorch_lite's transforms, and API surface.


def per_sample_loss(params, x, y):
    w1, b1, w2, b2 = params
    h = torch.tanh(F.linear(x, w1, b1))
    return F.cross_entropy(F.linear(h, w2, b2).unsqueeze(0), y.unsqueeze(0))


def per_sample_case():
    """(params, x, y) for per_sample_loss: 6 examples of 5 features, 3 classes."""
    torch.manual_seed(0)
    params = [torch.randn(8, 5), torch.randn(8), torch.randn(3, 8), torch.randn(3)]
    return params, torch.randn(6, 5), torch.randint(0, 3, (6,))


def test_aot_of_vmap_of_grad_is_one_aten_graph():
    params, x, y = per_sample_case()
    graph = Capture()
    compiled = aot_function(
        functorch_lite.vmap(functorch_lite.grad(per_sample_loss), in_dims=(None, 0, 0)), graph
    )
    expected = torch.func.vmap(torch.func.grad(per_sample_loss), in_dims=(None, 0, 0))(params, x, y)
    for got, want in zip(compiled(params, x, y), expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert graph.calls == 1  # nothing requires grad: one (inference) forward graph
    for target in call_targets(graph.graphs[0]):  # plain aten ops (and getitem of their tuples)
        assert target is operator.getitem or target.namespace == "aten", target


SIGNATURE_NAMES = [
    "aot_function",
    "aot_module",
    "aot_module_simplified",
    "compiled_function",
    "compiled_module",
    "make_boxed_compiler",
    "make_boxed_func",
    "memory_efficient_fusion",
    "nop",
    "print_compile",
    "debug_compile",
    "default_partition",
    "min_cut_rematerialization_partition",
    "draw_graph",
    "get_aot_compilation_context",
    "get_aot_graph_name",
    "get_graph_being_compiled",
]


@pytest.mark.parametrize("name", SIGNATURE_NAMES)
def test_signature_matches_functorch_compile(name):
    def params(f):
        return [
            (p.name, p.kind, p.default if not callable(p.default) else p.default.__name__)
            for p in inspect.signature(f).parameters.values()
        ]

    assert params(getattr(functorch_lite.compile, name)) == params(getattr(functorch.compile, name))


def test_compile_package_does_not_use_torch_transforms():
    forbidden = re.compile(
        r"torch\.func\b|torch\._functorch|_C\._functorch|\bimport functorch\b|\bfrom functorch\b"
    )
    package = pathlib.Path(functorch_lite.compile.__file__).parent
    for path in package.glob("*.py"):
        assert not forbidden.search(path.read_text()), path.name
