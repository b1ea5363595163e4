"""Module helpers and functionalize, compared against torch.func / functorch on the same inputs."""
import copy

import functorch
import pytest
import torch
import torch.func
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from functorch_lite._batch_norm import replace_all_batch_norm_modules_
from functorch_lite._functional_call import functional_call
from functorch_lite._functionalize import functionalize
from functorch_lite._module_state import (
    FunctionalModule,
    FunctionalModuleWithBuffers,
    combine_state_for_ensemble,
    make_functional,
    make_functional_with_buffers,
    stack_module_state,
)

# functorch's make_functional & co. warn that they are deprecated; that is not under test.
pytestmark = pytest.mark.filterwarnings("ignore:We've integrated functorch into PyTorch:FutureWarning")


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, d_in=3, d_hidden=5, d_out=2):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x, scale=1.0):
        return self.fc2(torch.tanh(self.fc1(x))) * scale


class WithBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.register_buffer("offset", torch.full((4,), 0.5))

    def forward(self, x):
        return self.bn(self.fc(x)) + self.offset


class Tied(nn.Module):
    """x + foo + foo_tied, where foo_tied is foo (the functional_call docstring's example)."""

    def __init__(self):
        super().__init__()
        self.foo = nn.Parameter(torch.ones(3))
        self.foo_tied = self.foo

    def forward(self, x):
        return x + self.foo + self.foo_tied


class TiedLinears(nn.Module):
    """Two linears that share a weight (an encoder/decoder style tie) plus an untied bias."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.dec = nn.Linear(4, 4, bias=False)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.dec(torch.relu(self.enc(x)))


class SharedSubmodule(nn.Module):
    """One Linear registered under two names: "a.weight" and "b.weight" are one attribute."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = self.a

    def forward(self, x):
        return self.b(self.a(x))


class Rebinds(nn.Module):
    """Rebinds a buffer during forward: functional_call reports the new tensor back."""

    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros(()))

    def forward(self, x):
        self.count = self.count + 1
        return x * self.count


class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        raise ValueError("boom")


def _seeded(factory, seed=0):
    torch.manual_seed(seed)
    return factory()


def _state_ids(module):
    named = list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers())
    return {name: id(t) for name, t in named}


def _assert_trees_equal(actual, expected):
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    elif isinstance(expected, dict):
        assert list(actual) == list(expected)
        for k in expected:
            _assert_trees_equal(actual[k], expected[k])
    elif isinstance(expected, (tuple, list)):
        assert type(actual) is type(expected) and len(actual) == len(expected)
        for a, e in zip(actual, expected):
            _assert_trees_equal(a, e)
    else:
        assert actual == expected


# ---------------------------------------------------------------------------------------
# functional_call: one table of calls, each run through ours and torch.func's
# ---------------------------------------------------------------------------------------

X3 = torch.randn(4, 3)


def _new_params(module, seed=1):
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) for k, v in module.named_parameters()}


def _new_buffers(module, seed=2):
    torch.manual_seed(seed)
    return {
        k: torch.rand_like(v) if v.is_floating_point() else v.clone()
        for k, v in module.named_buffers()
    }


# (id, module factory, dicts builder(module), args, kwargs, options)
FUNCTIONAL_CALL_CASES = [
    ("one_dict", MLP, lambda m: _new_params(m), X3, None, {}),
    ("args_tuple", MLP, lambda m: _new_params(m), (X3,), None, {}),
    ("kwargs", MLP, lambda m: _new_params(m), (X3,), {"scale": 3.0}, {}),
    ("partial_dict", MLP, lambda m: {"fc1.weight": torch.zeros(5, 3)}, X3, None, {}),
    ("tuple_of_dicts", WithBatchNorm, lambda m: (_new_params(m), _new_buffers(m)), X3, None, {}),
    ("list_of_dicts", WithBatchNorm, lambda m: [_new_params(m), _new_buffers(m)], X3, None, {}),
    ("strict_complete", WithBatchNorm, lambda m: (_new_params(m), _new_buffers(m)), X3, None,
     {"strict": True}),
    ("tie_true", Tied, lambda m: {"foo": torch.zeros(3)}, torch.zeros(3), None, {}),
    ("tie_false", Tied, lambda m: {"foo": torch.zeros(3)}, torch.zeros(3), None, {"tie_weights": False}),
    ("tie_both_same", Tied, lambda m: dict.fromkeys(["foo", "foo_tied"], torch.full((3,), 2.0)),
     torch.zeros(3), None, {}),
    ("tie_false_both_differ", Tied, lambda m: {"foo": torch.zeros(3), "foo_tied": torch.ones(3)},
     torch.zeros(3), None, {"tie_weights": False}),
    ("tied_linears", TiedLinears, lambda m: {"enc.weight": torch.eye(4)}, torch.randn(2, 4), None, {}),
    ("tied_linears_untied", TiedLinears, lambda m: {"enc.weight": torch.eye(4)}, torch.randn(2, 4), None,
     {"tie_weights": False}),
    ("new_attribute", MLP, lambda m: {"extra": torch.ones(1)}, X3, None, {}),
]


@pytest.mark.parametrize("case", FUNCTIONAL_CALL_CASES, ids=[c[0] for c in FUNCTIONAL_CALL_CASES])
def test_functional_call_matches_torch_func(case):
    _, factory, make_dicts, args, kwargs, options = case
    module = _seeded(factory)
    before = copy.deepcopy(module.state_dict())
    ids_before = _state_ids(module)
    dicts = make_dicts(module)

    expected = torch.func.functional_call(module, dicts, args, kwargs, **options)
    actual = functional_call(module, dicts, args, kwargs, **options)

    _assert_trees_equal(actual, expected)
    assert _state_ids(module) == ids_before
    _assert_trees_equal(module.state_dict(), before)
    assert not hasattr(module, "extra")


def test_functional_call_writes_rebound_tensors_back_like_torch_func():
    ours, theirs = {"count": torch.zeros(())}, {"count": torch.zeros(())}
    module = Rebinds()
    out_ours = functional_call(module, ours, torch.ones(2))
    out_theirs = torch.func.functional_call(module, theirs, torch.ones(2))
    _assert_trees_equal(out_ours, out_theirs)
    assert ours["count"].item() == theirs["count"].item() == 1.0
    assert module.count.item() == 0.0


def test_functional_call_restores_a_submodule_registered_twice():
    # torch.func restores in swap order and leaves eye(2) in the module here; we restore in
    # reverse order (NOTE: [Swapping module state]).
    module = _seeded(SharedSubmodule)
    weight = module.a.weight
    reference = _seeded(SharedSubmodule)
    expected = torch.func.functional_call(reference, {"a.weight": torch.eye(2)}, torch.ones(2))
    _assert_trees_equal(functional_call(module, {"a.weight": torch.eye(2)}, torch.ones(2)), expected)
    assert module.a.weight is weight and module.b.weight is weight


def test_functional_call_restores_module_when_forward_raises():
    module = Raises()
    ids_before = _state_ids(module)
    with pytest.raises(ValueError, match="boom"):
        functional_call(module, {"fc.weight": torch.zeros(2, 2), "extra": torch.ones(1)}, torch.ones(2))
    assert _state_ids(module) == ids_before
    assert not hasattr(module, "extra")


def test_functional_call_restores_module_when_swapping_in_fails():
    module = MLP()
    ids_before = _state_ids(module)
    message = r"^functional_call: the value for `fc1.bias` is a str, not a Tensor$"
    with pytest.raises(TypeError, match=message):
        functional_call(module, {"fc1.weight": torch.zeros(5, 3), "fc1.bias": "oops"}, X3)
    assert _state_ids(module) == ids_before


def test_functional_call_gradients_match_torch_func():
    module = _seeded(MLP)
    params = {k: v.detach().clone().requires_grad_() for k, v in module.named_parameters()}
    target = torch.randn(4, 2)

    def loss(call):
        return nn.functional.mse_loss(call(module, params, (X3,)), target)

    expected = torch.autograd.grad(loss(torch.func.functional_call), tuple(params.values()))
    actual = torch.autograd.grad(loss(functional_call), tuple(params.values()))
    _assert_trees_equal(actual, expected)


def _error_of(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001  (the point is to capture whatever is raised)
        return e
    raise AssertionError("expected an exception")


# (id, module factory, dicts builder, options, expected message); the exception type is torch.func's
FUNCTIONAL_CALL_ERRORS = [
    ("strict_unexpected_and_missing", MLP,
     lambda m: {"fc1.weight": torch.zeros(5, 3), "nope": torch.zeros(1)}, {"strict": True},
     "functional_call: Error(s) in reparametrizing for MLP:\n"
     "\tUnexpected key(s): 'nope'.\n"
     "\tMissing key(s): 'fc1.bias', 'fc2.bias', 'fc2.weight'."),
    ("strict_missing_only", WithBatchNorm, lambda m: _new_params(m), {"strict": True},
     "functional_call: Error(s) in reparametrizing for WithBatchNorm:\n"
     "\tMissing key(s): 'bn.num_batches_tracked', 'bn.running_mean', 'bn.running_var', 'offset'."),
    ("strict_unexpected_only", Tied, lambda m: {"foo": torch.zeros(3), "bar": torch.zeros(3)},
     {"strict": True},
     "functional_call: Error(s) in reparametrizing for Tied:\n\tUnexpected key(s): 'bar'."),
    ("strict_tie_false_needs_both", Tied, lambda m: {"foo": torch.zeros(3)},
     {"strict": True, "tie_weights": False},
     "functional_call: Error(s) in reparametrizing for Tied:\n\tMissing key(s): 'foo_tied'."),
    ("tied_different_values", Tied, lambda m: {"foo": torch.zeros(3), "foo_tied": torch.ones(3)}, {},
     "functional_call: got multiple values for keys ['foo', 'foo_tied'], which are tied. "
     "Consider using tie_weights=False"),
    ("duplicate_keys", MLP,
     lambda m: ({"fc1.weight": torch.zeros(5, 3)}, {"fc1.weight": torch.ones(5, 3)}), {},
     "functional_call: ['fc1.weight'] appeared in multiple dictionaries; behavior of functional call is "
     "ambiguous. Please pass each name in only one dictionary."),
    ("not_dicts", MLP, lambda m: ({"fc1.weight": torch.zeros(5, 3)}, 3), {},
     "functional_call: Expected all elements of parameter_and_buffer_dicts to be dictionaries"),
    ("not_a_dict", MLP, lambda m: 3, {},
     "functional_call: expected parameter_and_buffer_dicts to be a dict, or a list/tuple of dicts, "
     "but got <class 'int'>"),
]


@pytest.mark.parametrize("case", FUNCTIONAL_CALL_ERRORS, ids=[c[0] for c in FUNCTIONAL_CALL_ERRORS])
def test_functional_call_errors(case):
    _, factory, make_dicts, options, message = case
    module = factory()
    x = X3 if factory is not Tied else torch.zeros(3)
    theirs = _error_of(lambda: torch.func.functional_call(module, make_dicts(module), x, **options))
    ours = _error_of(lambda: functional_call(module, make_dicts(module), x, **options))
    assert type(ours) is type(theirs)
    assert str(ours) == message
    if options.get("strict"):
        assert str(ours) == "functional_call: " + str(theirs)


# ---------------------------------------------------------------------------------------
# stack_module_state
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [MLP, WithBatchNorm], ids=["mlp", "batch_norm"])
def test_stack_module_state_matches_torch_func(factory):
    models = [_seeded(factory, seed) for seed in range(10)]
    expected = torch.func.stack_module_state(models)
    actual = stack_module_state(models)
    for ours, theirs in zip(actual, expected):
        _assert_trees_equal(ours, theirs)
        for k in theirs:
            assert ours[k].shape[0] == 10
            assert ours[k].requires_grad == theirs[k].requires_grad
            assert ours[k].is_leaf and ours[k].grad_fn is None
    assert all(p.requires_grad for p in actual[0].values())


def test_stack_module_state_runs_each_model():
    models = [_seeded(MLP, seed) for seed in range(10)]
    params, buffers = stack_module_state(models)
    for i, model in enumerate(models):
        one = {k: v[i] for k, v in params.items()}
        _assert_trees_equal(functional_call(models[0], (one, buffers), X3), model(X3))


def _mixed_requires_grad():
    a, b = MLP(), MLP()
    b.fc1.weight.requires_grad_(False)
    return [a, b]


# (id, models builder); the message must be torch.func's (already prefixed with the API name)
STACK_ERRORS = [
    ("empty", lambda: []),
    ("mixed_modes", lambda: [MLP(), MLP().eval()]),
    ("mixed_classes", lambda: [MLP(), WithBatchNorm()]),
    ("mixed_requires_grad", _mixed_requires_grad),
]


@pytest.mark.parametrize("case", STACK_ERRORS, ids=[c[0] for c in STACK_ERRORS])
def test_stack_module_state_errors(case):
    _, make_models = case
    theirs = _error_of(lambda: torch.func.stack_module_state(make_models()))
    ours = _error_of(lambda: stack_module_state(make_models()))
    assert type(ours) is type(theirs)
    prefix = "stack_module_state: "
    assert str(ours) == (str(theirs) if str(theirs).startswith(prefix) else prefix + str(theirs))


# ---------------------------------------------------------------------------------------
# make_functional / make_functional_with_buffers
# ---------------------------------------------------------------------------------------


def _grads(fmodel, params, *rest):
    target = torch.randn(4, 2) if isinstance(fmodel.stateless_model, MLP) else torch.randn(4, 4)
    return torch.autograd.grad(nn.functional.mse_loss(fmodel(params, *rest, X3), target), params)


@pytest.mark.parametrize("disable_autograd_tracking", [False, True])
def test_make_functional_matches_functorch(disable_autograd_tracking):
    model = _seeded(MLP)
    ids_before = _state_ids(model)
    fmodel, params = make_functional(model, disable_autograd_tracking)
    ref_fmodel, ref_params = functorch.make_functional(model, disable_autograd_tracking)

    assert isinstance(fmodel, FunctionalModule) and isinstance(fmodel, nn.Module)
    assert fmodel.param_names == ref_fmodel.param_names
    assert fmodel.names_map == ref_fmodel.names_map
    _assert_trees_equal(params, ref_params)
    assert [p.requires_grad for p in params] == [p.requires_grad for p in ref_params]
    assert all(isinstance(p, nn.Parameter) and p.is_leaf for p in params)
    assert all(p.device.type == "meta" for p in fmodel.parameters())
    assert _state_ids(model) == ids_before  # the model itself is untouched
    assert all(p is not q for p, q in zip(params, model.parameters()))

    _assert_trees_equal(fmodel(params, X3), ref_fmodel(ref_params, X3))
    _assert_trees_equal(fmodel(params, X3, scale=2.0), model(X3, scale=2.0))
    if not disable_autograd_tracking:
        torch.manual_seed(5)
        ours = _grads(fmodel, params)
        torch.manual_seed(5)
        _assert_trees_equal(ours, _grads(ref_fmodel, ref_params))


def test_make_functional_with_new_params_and_restore():
    fmodel, params = make_functional(_seeded(MLP))
    new_params = tuple(torch.randn_like(p) for p in params)
    expected = torch.func.functional_call(_seeded(MLP), dict(zip(fmodel.param_names, new_params)), X3)
    _assert_trees_equal(fmodel(new_params, X3), expected)
    assert all(p.device.type == "meta" for p in fmodel.parameters())


def test_make_functional_tied_weights_match_functorch():
    model = _seeded(TiedLinears)
    fmodel, params = make_functional(model)
    ref_fmodel, ref_params = functorch.make_functional(model)
    assert fmodel.param_names == ref_fmodel.param_names == ("enc.weight", "enc.bias")
    expected_names_map = {"enc.weight": ["enc.weight", "dec.weight"], "enc.bias": ["enc.bias"]}
    assert fmodel.names_map == ref_fmodel.names_map == expected_names_map
    x = torch.randn(2, 4)
    new_params = (torch.eye(4), torch.zeros(4))
    _assert_trees_equal(fmodel(new_params, x), ref_fmodel(new_params, x))
    _assert_trees_equal(fmodel(params, x), model(x))
    ours = torch.autograd.grad(fmodel(params, x).sum(), params)
    _assert_trees_equal(ours, torch.autograd.grad(ref_fmodel(ref_params, x).sum(), ref_params))


def test_make_functional_with_buffers_matches_functorch():
    model = _seeded(WithBatchNorm)
    fmodel, params, buffers = make_functional_with_buffers(model)
    ref_fmodel, ref_params, ref_buffers = functorch.make_functional_with_buffers(model)

    assert isinstance(fmodel, FunctionalModuleWithBuffers)
    assert (fmodel.param_names, fmodel.buffer_names) == (ref_fmodel.param_names, ref_fmodel.buffer_names)
    assert fmodel.all_names_map == ref_fmodel.all_names_map
    _assert_trees_equal((params, buffers), (ref_params, ref_buffers))
    assert all(b.device.type == "meta" for b in fmodel.buffers())

    # Train mode: batch norm updates running stats in place, on the buffers that were passed.
    _assert_trees_equal(fmodel(params, buffers, X3), ref_fmodel(ref_params, ref_buffers, X3))
    _assert_trees_equal(buffers, ref_buffers)
    torch.manual_seed(5)
    ours = _grads(fmodel, params, buffers)
    torch.manual_seed(5)
    _assert_trees_equal(ours, _grads(ref_fmodel, ref_params, ref_buffers))


def test_make_functional_errors():
    message = (
        "make_functional(model): `model` has buffers. "
        "Please use make_functional_with_buffers(model) instead."
    )
    with pytest.raises(RuntimeError) as theirs:
        functorch.make_functional(WithBatchNorm())
    with pytest.raises(RuntimeError) as ours:
        make_functional(WithBatchNorm())
    assert str(ours.value) == str(theirs.value) == message

    fmodel, params = make_functional(MLP())
    with pytest.raises(RuntimeError) as wrong_count:
        fmodel(params[:3], X3)
    assert str(wrong_count.value) == (
        "FunctionalModule(params, *args): expected 4 tensors, one per parameter/buffer of the model "
        "(['fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias']), but got 3."
    )
    assert all(p.device.type == "meta" for p in fmodel.parameters())


def test_functional_module_restores_state_when_forward_raises():
    fmodel, params = make_functional(Raises())
    placeholders = [id(p) for p in fmodel.parameters()]
    with pytest.raises(ValueError, match="boom"):
        fmodel(params, torch.ones(2))
    assert [id(p) for p in fmodel.parameters()] == placeholders


# ---------------------------------------------------------------------------------------
# combine_state_for_ensemble
# ---------------------------------------------------------------------------------------


def test_combine_state_for_ensemble_matches_functorch():
    models = [_seeded(WithBatchNorm, seed).eval() for seed in range(4)]
    fmodel, params, buffers = combine_state_for_ensemble(models)
    ref_fmodel, ref_params, ref_buffers = functorch.combine_state_for_ensemble(models)

    assert isinstance(fmodel, FunctionalModuleWithBuffers)
    assert (fmodel.param_names, fmodel.buffer_names) == (ref_fmodel.param_names, ref_fmodel.buffer_names)
    _assert_trees_equal((params, buffers), (ref_params, ref_buffers))
    assert not any(p.requires_grad for p in params + ref_params)
    assert all(p.is_leaf and p.shape[0] == 4 for p in params + buffers)
    for i, model in enumerate(models):
        row = tuple(p[i] for p in params), tuple(b[i] for b in buffers)
        _assert_trees_equal(fmodel(*row, X3), ref_fmodel(*row, X3))
        torch.testing.assert_close(fmodel(*row, X3), model(X3))


@pytest.mark.parametrize("case", STACK_ERRORS[:3], ids=[c[0] for c in STACK_ERRORS[:3]])
def test_combine_state_for_ensemble_errors(case):
    _, make_models = case
    theirs = _error_of(lambda: functorch.combine_state_for_ensemble(make_models()))
    ours = _error_of(lambda: combine_state_for_ensemble(make_models()))
    assert type(ours) is type(theirs) and str(ours) == str(theirs)
    assert str(ours).startswith("combine_state_for_ensemble: ")


# ---------------------------------------------------------------------------------------
# replace_all_batch_norm_modules_
# ---------------------------------------------------------------------------------------


def _batch_norm_zoo():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.ReLU())
    return nn.ModuleDict({"inner": inner, "bn_untracked": nn.BatchNorm2d(3, track_running_stats=False),
                          "bn3": nn.BatchNorm3d(2), "ln": nn.LayerNorm(3)})


@pytest.mark.parametrize(
    "root_factory", [_batch_norm_zoo, lambda: nn.BatchNorm1d(4)], ids=["nested", "root_is_bn"]
)
def test_replace_all_batch_norm_modules_matches_torch_func(root_factory):
    ours, theirs = root_factory(), root_factory()
    assert replace_all_batch_norm_modules_(ours) is ours
    assert torch.func.replace_all_batch_norm_modules_(theirs) is theirs
    for (name, a), (_, b) in zip(ours.named_modules(), theirs.named_modules()):
        if isinstance(b, nn.modules.batchnorm._BatchNorm):
            assert not a.track_running_stats, name
            assert (a.running_mean, a.running_var, a.num_batches_tracked) == (None, None, None), name
    _assert_trees_equal(ours.state_dict(), theirs.state_dict())
    if isinstance(ours, nn.ModuleDict):
        x = torch.randn(2, 2, 4, 4)
        # Batch statistics are used even in eval mode.
        _assert_trees_equal(ours["inner"].eval()(x), theirs["inner"].eval()(x))


# ---------------------------------------------------------------------------------------
# functionalize
# ---------------------------------------------------------------------------------------


def intermediate_mutation_of_view(a):
    b = a + 1
    b.view(-1).add_(1)
    return b


def input_mutation_through_view(a):
    a.view(-1)[1:].mul_(2)
    return a.sin()


def input_metadata_mutation(a):
    a.transpose_(0, 1)
    return a * 2


def out_variant_and_factory(a):
    out = torch.empty_like(a)
    torch.add(a, 1, out=out)
    buffer = torch.zeros(a.shape)
    buffer[0] = out[0]
    return buffer, out


def mixed_args(a, n, *, bias):
    a.add_(bias)
    return {"y": a.unsqueeze(0) * n, "n": n}


def no_mutation(a):
    return a.t().matmul(a).relu()


# (id, func, args builder, kwargs builder)
FUNCTIONALIZE_CASES = [
    ("intermediate_mutation_of_view", intermediate_mutation_of_view, lambda: (torch.randn(2, 3),), dict),
    ("input_mutation_through_view", input_mutation_through_view, lambda: (torch.randn(2, 3),), dict),
    ("input_metadata_mutation", input_metadata_mutation, lambda: (torch.randn(2, 3),), dict),
    ("out_variant_and_factory", out_variant_and_factory, lambda: (torch.randn(2, 3),), dict),
    ("mixed_args", mixed_args, lambda: (torch.randn(3), 3), lambda: {"bias": torch.ones(3)}),
    ("no_mutation", no_mutation, lambda: (torch.randn(3, 3),), dict),
]
REMOVE = ["mutations", "mutations_and_views"]


def _fresh_inputs(make_args, make_kwargs):
    torch.manual_seed(0)
    return make_args(), make_kwargs()


@pytest.mark.parametrize("remove", REMOVE)
@pytest.mark.parametrize("case", FUNCTIONALIZE_CASES, ids=[c[0] for c in FUNCTIONALIZE_CASES])
def test_functionalize_matches_torch_func(case, remove):
    _, func, make_args, make_kwargs = case
    results = {}
    transforms = {"eager": lambda f, remove: f, "torch.func": torch.func.functionalize, "ours": functionalize}
    for name, transform in transforms.items():
        args, kwargs = _fresh_inputs(make_args, make_kwargs)
        out = transform(func, remove=remove)(*args, **kwargs)
        results[name] = (out, args, kwargs)  # args/kwargs after the call: mutations written back
    for name in ("eager", "torch.func"):
        _assert_trees_equal(results["ours"][0], results[name][0])
        _assert_trees_equal(results["ours"][1], results[name][1])
        _assert_trees_equal(results["ours"][2], results[name][2])
    # Metadata mutations leave the input with torch.func's strides (eager's differ for *_copy views).
    for ours, theirs in zip(results["ours"][1], results["torch.func"][1]):
        if isinstance(theirs, torch.Tensor):
            assert ours.stride() == theirs.stride()


WRITE_BACK_OPS = (
    torch.ops.aten.resize_.default,
    torch.ops.aten.as_strided_.default,
    torch.ops.aten.copy_.default,
)


def _op_effects(graph_module):
    """(op, mutates an input of the op, returns an alias) for each aten call in the graph."""
    effects = []
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            schema = node.target._schema
            mutates = any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)
            aliases = any(r.alias_info is not None for r in schema.returns)
            effects.append((node, mutates, aliases and not mutates))
    return effects


# make_fx traces positional arguments only.
GRAPH_CASES = [c for c in FUNCTIONALIZE_CASES if c[3] is dict]


@pytest.mark.parametrize("remove", REMOVE)
@pytest.mark.parametrize("case", GRAPH_CASES, ids=[c[0] for c in GRAPH_CASES])
def test_functionalize_graph_has_no_mutations(case, remove):
    _, func, make_args, make_kwargs = case
    args, _ = _fresh_inputs(make_args, make_kwargs)
    ours = make_fx(functionalize(func, remove=remove))(*args)
    args, _ = _fresh_inputs(make_args, make_kwargs)
    theirs = make_fx(torch.func.functionalize(func, remove=remove))(*args)

    inputs = {n for n in ours.graph.nodes if n.op == "placeholder"}
    effects = _op_effects(ours)
    assert effects, ours.code
    for node, mutates, aliases in effects:
        # The only mutations left write a mutated input back (NOTE: [Input mutations in functionalize]):
        # resize_/as_strided_ of an input for a metadata mutation, then copy_ into it.
        if mutates:
            assert node.target in WRITE_BACK_OPS and node.args[0] in inputs, ours.code
            inputs.add(node)
        if remove == "mutations_and_views":
            assert not aliases, ours.code
    assert [str(n.target) for n, _, _ in effects] == [str(n.target) for n, _, _ in _op_effects(theirs)]
    assert ours.code == theirs.code


def test_functionalize_mutations_and_views_uses_copy_ops():
    no_views = functionalize(intermediate_mutation_of_view, remove="mutations_and_views")
    graph = make_fx(no_views)(torch.randn(2, 3))
    targets = [n.target for n in graph.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.view_copy.default in targets
    assert torch.ops.aten.view.default not in targets
    graph = make_fx(functionalize(intermediate_mutation_of_view))(torch.randn(2, 3))
    assert torch.ops.aten.view.default in [n.target for n in graph.graph.nodes]


def test_functionalize_outputs_alias_like_torch_func():
    for remove in REMOVE:
        x = torch.randn(2, 3)
        ours = functionalize(lambda a: a.view(-1), remove=remove)(x)
        theirs = torch.func.functionalize(lambda a: a.view(-1), remove=remove)(x)
        aliases = remove == "mutations"
        assert (ours.data_ptr() == x.data_ptr()) == (theirs.data_ptr() == x.data_ptr()) == aliases
        assert functionalize(lambda a: a, remove=remove)(x) is x


def test_functionalize_nested_and_state_restored():
    def inner(a):
        return a.view(-1).add_(1)

    def outer(a):
        return functionalize(inner)(a) * 2

    x = torch.randn(2, 2)
    expected = outer(x.clone())
    graph = make_fx(functionalize(outer, remove="mutations_and_views"))(x.clone())
    effects = [(m, v) for n, m, v in _op_effects(graph) if n.target not in WRITE_BACK_OPS]
    assert not any(m or v for m, v in effects), graph.code
    y = x.clone()
    _assert_trees_equal(functionalize(outer)(y), expected)
    _assert_trees_equal(y, x + 1)
    assert not torch._C._dispatch_tls_is_dispatch_key_included(torch._C.DispatchKey.Functionalize)

    def raises(a):
        a.add_(1)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        functionalize(raises)(torch.randn(2))
    assert not torch._C._dispatch_tls_is_dispatch_key_included(torch._C.DispatchKey.Functionalize)


def test_functionalize_rejects_inputs_functionalized_by_torch_func():
    def outer(a):
        return functionalize(torch.sin)(a)

    with pytest.raises(RuntimeError) as error:
        torch.func.functionalize(outer)(torch.randn(2))
    assert str(error.value) == (
        "functionalize: got an input that is already functionalized by another transform (e.g. "
        "torch's own functionalize), which can't be nested with this one. Please use "
        "functorch_lite.functionalize for every level."
    )
    assert not torch._C._dispatch_tls_is_dispatch_key_included(torch._C.DispatchKey.Functionalize)


def test_functionalize_keeps_signature_and_rejects_unknown_remove():
    assert functionalize(mixed_args).__wrapped__ is mixed_args
    assert functionalize(mixed_args).__name__ == "mixed_args"
    with pytest.raises(RuntimeError) as error:
        functionalize(no_mutation, remove="views")
    assert str(error.value) == (
        "functionalize: got remove='views', expected one of: 'mutations' (in-place and out= ops are "
        "replaced by their out-of-place versions) or 'mutations_and_views' (additionally every view op "
        "{view} is replaced by {view}_copy)."
    )
