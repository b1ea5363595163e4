"""The same bad input to torch.func and to us: our error keeps torch.func's key phrase.

Code ported from functorch matches error text with assertRaisesRegex; each row builds one bad call
against a namespace of transforms (torch.func as the reference, functorch_lite as the subject)
and names the key phrase of torch.func's message. The test checks that torch.func raises with that
phrase (so the table tracks torch.func), that we raise an exception of the same type, that our
message contains the phrase, and that no level is left behind.
"""
import warnings

import pytest
import torch
import torch.nn as nn

import functorch_lite as ft
from functorch_lite import _C


def r(*shape):
    return torch.randn(*shape)


def add(x, y):
    return x + y


def ssum(x):
    return x.sin().sum()


class Lin(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(x)


# (id, build(api) -> zero-argument bad call, key phrase of torch.func's message)
ROWS = [
    # vmap: in_dims
    ("vmap-in_dims-list", lambda F: lambda: F.vmap(add, in_dims=[0, 0])(r(3), r(3)),
     "expected `in_dims` to be int or a (potentially nested) tuple matching the structure of "
     "inputs"),
    ("vmap-in_dims-float", lambda F: lambda: F.vmap(add, in_dims=(0, 1.0))(r(3), r(3)),
     "in_dim must be either an integer dimension or None"),
    ("vmap-in_dims-short", lambda F: lambda: F.vmap(add, in_dims=(0,))(r(3), r(3)),
     "in_dims is not compatible with the structure of `inputs`"),
    ("vmap-in_dims-long", lambda F: lambda: F.vmap(add, in_dims=(0, 0, 0))(r(3), r(3)),
     "in_dims is not compatible with the structure of `inputs`"),
    ("vmap-in_dims-dict-keys", lambda F: lambda: F.vmap(lambda d: d["a"], in_dims=({"b": 0},))(
        {"a": r(3)}), "in_dims is not compatible with the structure of `inputs`"),
    ("vmap-in_dims-nested", lambda F: lambda: F.vmap(lambda t: t[0], in_dims=((0, 0, 0),))(
        (r(3), r(3))), "in_dims is not compatible with the structure of `inputs`"),
    ("vmap-in_dim-out-of-range", lambda F: lambda: F.vmap(add, in_dims=(0, 2))(r(3), r(3)),
     "Got in_dim=2 for some input, but that input is a Tensor of dimensionality 1"),
    ("vmap-in_dim-negative-out-of-range", lambda F: lambda: F.vmap(add, in_dims=(0, -3))(
        r(2, 3), r(2, 3)), "Got in_dim=-3 for some input, but that input is a Tensor of "
     "dimensionality 2"),
    ("vmap-in_dim-non-tensor", lambda F: lambda: F.vmap(lambda x, n: x * n)(r(3), 2),
     "Got in_dim=0 for an input but the input is of type"),
    ("vmap-in_dim-0-dim", lambda F: lambda: F.vmap(torch.sin)(torch.tensor(1.0)),
     "Got in_dim=0 for some input, but that input is a Tensor of dimensionality 0"),
    ("vmap-in_dims-none", lambda F: lambda: F.vmap(add, in_dims=None)(r(3), r(3)),
     "expected `in_dims` to be int or a (potentially nested) tuple matching the structure of "
     "inputs"),
    ("vmap-no-mapped-input", lambda F: lambda: F.vmap(add, in_dims=(None, None))(r(3), r(3)),
     "at least one Tensor to vmap over"),
    ("vmap-no-inputs", lambda F: lambda: F.vmap(lambda: r(3))(),
     "got no inputs"),
    ("vmap-sizes", lambda F: lambda: F.vmap(add)(r(2), r(3)),
     "Expected all tensors to have the same size in the mapped dimension"),
    ("vmap-sizes-in-dims", lambda F: lambda: F.vmap(add, in_dims=(0, 1))(r(3), r(3, 4)),
     "Expected all tensors to have the same size in the mapped dimension"),
    ("vmap-sizes-pytree", lambda F: lambda: F.vmap(lambda d: d["x"] + d["y"])(
        {"x": r(2), "y": r(3)}),
     "Expected all tensors to have the same size in the mapped dimension"),
    # vmap: outputs
    ("vmap-output-float", lambda F: lambda: F.vmap(lambda x: 3.14)(r(3)),
     "must only return Tensors, got type <class 'float'>"),
    ("vmap-output-int-in-tuple", lambda F: lambda: F.vmap(lambda x: (x, 3))(r(3)),
     "must only return Tensors, got type <class 'int'>"),
    ("vmap-output-none", lambda F: lambda: F.vmap(lambda x: (x, None))(r(3)),
     "must only return Tensors, got type <class 'NoneType'>"),
    ("vmap-out_dims-type", lambda F: lambda: F.vmap(torch.sin, out_dims="0")(r(3)),
     "`out_dims` must be an int, None or a python collection of ints"),
    ("vmap-out_dims-structure", lambda F: lambda: F.vmap(lambda x: (x, x), out_dims=(0, 0, 0))(
        r(3)), "out_dims is not compatible with the structure of `outputs`"),
    ("vmap-out_dims-tuple-single", lambda F: lambda: F.vmap(torch.sin, out_dims=(0, 1))(r(3)),
     "out_dims is not compatible with the structure of `outputs`"),
    ("vmap-out_dim-range", lambda F: lambda: F.vmap(torch.sin, out_dims=2)(r(2, 3)),
     "Dimension out of range"),
    ("vmap-out_dim-none-batched", lambda F: lambda: F.vmap(torch.sin, out_dims=None)(r(3)),
     "can not return a BatchedTensor when out_dim is None"),
    # vmap: options and in-body errors
    ("vmap-randomness", lambda F: lambda: F.vmap(torch.sin, randomness="sometimes")(r(3)),
     "Only allowed values for randomness are 'error', 'different', or 'same'"),
    ("vmap-chunk-size-zero", lambda F: lambda: F.vmap(torch.sin, chunk_size=0)(r(3)),
     "chunk_size should be None or greater than 0"),
    ("vmap-chunk-size-negative", lambda F: lambda: F.vmap(torch.sin, chunk_size=-2)(r(3)),
     "chunk_size should be None or greater than 0"),
    ("vmap-random-error", lambda F: lambda: F.vmap(lambda x: x + torch.randn(3))(r(2, 3)),
     "called random operation while in randomness error mode"),
    ("vmap-random-rand-like-error", lambda F: lambda: F.vmap(torch.rand_like)(r(2, 3)),
     "called random operation while in randomness error mode"),
    ("vmap-random-inplace-unbatched", lambda F: lambda: F.vmap(
        lambda x: x * torch.ones(3).uniform_(), randomness="different")(r(2, 3)),
     "Cannot ask for different inplace randomness on an unbatched tensor"),
    ("vmap-random-same-batched", lambda F: lambda: F.vmap(
        lambda x: torch.bernoulli(x.sigmoid()), randomness="same")(r(2, 3)),
     "does not currently support same randomness with a batched tensor input"),
    ("vmap-item", lambda F: lambda: F.vmap(lambda x: x.sum().item())(r(2, 3)),
     "It looks like you're calling .item() on a Tensor"),
    ("vmap-data-dependent-if", lambda F: lambda: F.vmap(lambda x: x if x.sum() > 0 else -x)(
        r(2, 3)), "data-dependent control flow"),
    ("vmap-float", lambda F: lambda: F.vmap(lambda x: x * float(x.sum()))(r(2, 3)),
     "It looks like you're calling .item() on a Tensor"),
    # grad / grad_and_value
    ("grad-non-tensor-output", lambda F: lambda: F.grad(lambda x: 1.0)(r(3)),
     "Expected f(*args) to return a Tensor, got <class 'float'>"),
    ("grad-non-scalar-output", lambda F: lambda: F.grad(lambda x: x)(r(3)),
     "Expected f(*args) to return a scalar Tensor, got tensor with 1 dims"),
    ("grad-tuple-output", lambda F: lambda: F.grad(lambda x: (x.sum(), x.sum()))(r(3)),
     "Expected f(*args) to return a Tensor, got"),
    ("grad-integer-input", lambda F: lambda: F.grad(lambda x: x.float().sum())(
        torch.arange(3)), "only Tensors of floating point dtype can require gradients"),
    ("grad-non-tensor-input", lambda F: lambda: F.grad(lambda x, n: x.sum() * n, argnums=1)(
        r(3), 2.0), "Thing passed to transform API must be Tensor, got <class 'float'>"),
    ("grad-argnums-range", lambda F: lambda: F.grad(ssum, argnums=2)(r(3)),
     "Got argnum=2, but only 1 positional inputs"),
    ("grad-argnums-negative-range", lambda F: lambda: F.grad(ssum, argnums=-2)(r(3)),
     "Got argnum=-2, but only 1 positional inputs"),
    ("grad-argnums-duplicated", lambda F: lambda: F.grad(add, argnums=(0, 0))(r(3), r(3)),
     "argnums elements must be unique, got (0, 0)"),
    ("grad-argnums-type", lambda F: lambda: F.grad(ssum, argnums=0.0)(r(3)),
     "argnums must be int or Tuple[int, ...], got: <class 'float'>"),
    ("grad-argnums-element-type", lambda F: lambda: F.grad(add, argnums=(0, 1.0))(r(3), r(3)),
     "argnum must be int, got: <class 'float'>"),
    ("grad-argnums-empty", lambda F: lambda: F.grad(ssum, argnums=())(r(3)),
     "argnums must be non-empty"),
    ("grad-has-aux-not-tuple", lambda F: lambda: F.grad(ssum, has_aux=True)(r(3)),
     "output of function f should be a tuple: (output, aux) if has_aux is True"),
    ("grad-has-aux-three", lambda F: lambda: F.grad(lambda x: (x.sum(), 1, 2), has_aux=True)(
        r(3)), "output of function f should be a tuple: (output, aux) if has_aux is True"),
    ("grad-no-positional", lambda F: lambda: F.grad(lambda: torch.ones(()))(),
     "Got argnum=0, but only 0 positional inputs"),
    ("grad_and_value-non-scalar", lambda F: lambda: F.grad_and_value(lambda x: x)(r(3)),
     "Expected f(*args) to return a scalar Tensor, got tensor with 1 dims"),
    ("grad_and_value-has-aux", lambda F: lambda: F.grad_and_value(ssum, has_aux=True)(r(3)),
     "output of function f should be a tuple: (output, aux) if has_aux is True"),
    ("grad-captured-mutation", lambda F: (lambda y: lambda: F.grad(
        lambda x: y.copy_(x).sum())(r(3)))(r(3)), "mutate a captured Tensor"),
    # vjp
    ("vjp-non-tensor-output", lambda F: lambda: F.vjp(lambda x: 1.0, r(3)),
     "expected f(*primals) to return only tensors, got unsupported type <class 'float'>"),
    ("vjp-empty-output", lambda F: lambda: F.vjp(lambda x: (), r(3)),
     "Expected f to be a function that has non-empty output"),
    ("vjp-has-aux-not-tuple", lambda F: lambda: F.vjp(torch.sin, r(3), has_aux=True),
     "output of function f should be a tuple: (output, aux) if has_aux is True"),
    ("vjp-non-tensor-primal", lambda F: lambda: F.vjp(lambda x: x, 3.0),
     "Thing passed to transform API must be Tensor, got <class 'float'>"),
    ("vjp-cotangent-structure", lambda F: lambda: F.vjp(lambda x: (x, x), r(3))[1](r(3)),
     "Expected pytree structure of cotangents to be the same as pytree structure of outputs "
     "to the function"),
    ("vjp-cotangent-shape", lambda F: lambda: F.vjp(torch.sin, r(3))[1](r(4)),
     "Mismatch in shape"),
    ("vjp-captured-mutation", lambda F: (lambda y: lambda: F.vjp(lambda x: y.copy_(x), r(3)))(
        r(3)), "mutate a captured Tensor"),
    # jvp
    ("jvp-primals-not-tuple", lambda F: lambda: F.jvp(torch.sin, r(3), r(3)),
     "Expected primals to be a tuple. E.g. it should be valid to call f(*primals)"),
    ("jvp-tangents-not-tuple", lambda F: lambda: F.jvp(torch.sin, (r(3),), r(3)),
     "Expected primals and tangents to have the same python structure"),
    ("jvp-length", lambda F: lambda: F.jvp(add, (r(3), r(3)), (r(3),)),
     "Expected primals and tangents to have the same python structure"),
    ("jvp-shape", lambda F: lambda: F.jvp(torch.sin, (r(3),), (r(4),)),
     "Trying to set a forward gradient that has a different size than that of the original "
     "Tensor"),
    ("jvp-empty-primals", lambda F: lambda: F.jvp(lambda: r(3), (), ()),
     "Expected primals to contain at least one Tensor"),
    ("jvp-non-tensor-output", lambda F: lambda: F.jvp(lambda x: 1.0, (r(3),), (r(3),)),
     "expected f(*primals) to return only tensors, got unsupported type <class 'float'>"),
    ("jvp-has-aux-not-tuple", lambda F: lambda: F.jvp(torch.sin, (r(3),), (r(3),), has_aux=True),
     "output of function f should be a tuple: (output, aux) if has_aux is True"),
    ("jvp-non-tensor-primal", lambda F: lambda: F.jvp(lambda x: x, (3.0,), (1.0,)),
     "Expected primals to only contain Tensors, got <class 'float'>"),
    # jacrev / jacfwd / hessian
    ("jacrev-non-tensor-output", lambda F: lambda: F.jacrev(lambda x: 1.0)(r(3)),
     "expected f(*primals) to return only tensors, got unsupported type <class 'float'>"),
    ("jacrev-empty-output", lambda F: lambda: F.jacrev(lambda x: ())(r(3)),
     "Expected f to be a function that has non-empty output"),
    ("jacrev-has-aux-not-tuple", lambda F: lambda: F.jacrev(torch.sin, has_aux=True)(r(3)),
     "output of function f should be a tuple: (output, aux) if has_aux is True"),
    ("jacrev-argnums-range", lambda F: lambda: F.jacrev(torch.sin, argnums=1)(r(3)),
     "Got argnum=1, but only 1 positional inputs"),
    ("jacrev-argnums-empty", lambda F: lambda: F.jacrev(add, argnums=())(r(3), r(3)),
     "argnums must be non-empty"),
    ("jacrev-chunk-size", lambda F: lambda: F.jacrev(torch.sin, chunk_size=0)(r(3)),
     "`chunk_size` should be greater than 0"),
    ("jacrev-integer-input", lambda F: lambda: F.jacrev(lambda x: x.float())(torch.arange(3)),
     "only Tensors of floating point dtype can require gradients"),
    ("jacfwd-non-tensor-output", lambda F: lambda: F.jacfwd(lambda x: 1.0)(r(3)),
     "expected f(*primals) to return only tensors, got unsupported type <class 'float'>"),
    ("jacfwd-has-aux-not-tuple", lambda F: lambda: F.jacfwd(torch.sin, has_aux=True)(r(3)),
     "output of function f should be a tuple: (output, aux) if has_aux is True"),
    ("jacfwd-argnums-range", lambda F: lambda: F.jacfwd(torch.sin, argnums=1)(r(3)),
     "Got argnum=1, but only 1 positional inputs"),
    ("jacfwd-argnums-duplicated", lambda F: lambda: F.jacfwd(add, argnums=(1, 1))(r(3), r(3)),
     "argnums elements must be unique, got (1, 1)"),
    ("jacfwd-random-error", lambda F: lambda: F.jacfwd(lambda x: x + torch.randn(3))(r(3)),
     "called random operation while in randomness error mode"),
    ("hessian-argnums-range", lambda F: lambda: F.hessian(ssum, argnums=1)(r(3)),
     "Got argnum=1, but only 1 positional inputs"),
    ("hessian-non-tensor-output", lambda F: lambda: F.hessian(lambda x: 1.0)(r(3)),
     "expected f(*primals) to return only tensors, got unsupported type <class 'float'>"),
    ("hessian-argnums-duplicated", lambda F: lambda: F.hessian(add, argnums=(0, 0))(r(3), r(3)),
     "argnums elements must be unique, got (0, 0)"),
    # functional_call
    ("functional_call-unexpected-key", lambda F: lambda: F.functional_call(
        Lin(), {"fc.weight": r(3, 3), "nope": r(3)}, (r(3),), strict=True),
     "Unexpected key(s): 'nope'"),
    ("functional_call-missing-key", lambda F: lambda: F.functional_call(
        Lin(), {"fc.weight": r(3, 3)}, (r(3),), strict=True), "Missing key(s): 'fc.bias'"),
    ("functional_call-tie-weights", lambda F: lambda: F.functional_call(
        Lin(), ({"fc.weight": r(3, 3)}, {"fc.weight": r(3, 3)}), (r(3),)),
     "['fc.weight'] appeared in multiple dictionaries"),
    ("functional_call-dict-type", lambda F: lambda: F.functional_call(Lin(), [r(3)], (r(3),)),
     "Expected all elements of parameter_and_buffer_dicts to be dictionaries"),
    ("functional_call-shape", lambda F: lambda: F.functional_call(
        Lin(), {"fc.weight": r(4, 4)}, (r(3),)), "mat1 and mat2 shapes cannot be multiplied"),
]


def raised(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - any exception is the result here
            return e
    return None


@pytest.mark.parametrize("build,phrase", [(b, p) for _, b, p in ROWS], ids=[i for i, _, _ in ROWS])
def test_error_keeps_torch_func_phrase(build, phrase):
    ref = raised(build(torch.func))
    assert ref is not None, "torch.func no longer raises here: update the row"
    assert phrase in str(ref), f"torch.func's message changed: {ref}"
    ours = raised(build(ft))
    assert _C._layer_depth() == 0, "a level was left behind"
    assert ours is not None, f"we raise nothing where torch.func raises {ref!r}"
    assert isinstance(ours, type(ref)), (
        f"we raise {type(ours).__name__}, torch.func {type(ref).__name__}")
    assert phrase in str(ours), f"\ntorch.func: {ref}\nours:       {ours}"


def test_the_table_is_broad():
    apis = {i.split("-")[0].split("_and_")[0] for i, _, _ in ROWS}
    assert len(ROWS) >= 60
    assert {"vmap", "grad", "vjp", "jvp", "jacrev", "jacfwd", "hessian", "functional_call"} <= apis


L = torch.linalg
# linalg calls on per-sample shapes they refuse: under vmap, the unbatched call's error
LINALG = {
    "linalg.cholesky": L.cholesky, "cholesky": torch.cholesky, "linalg.det": L.det,
    "det": torch.det, "linalg.inv": L.inv, "linalg.inv_ex": L.inv_ex, "linalg.slogdet": L.slogdet,
    "logdet": torch.logdet, "linalg.eigh": L.eigh, "linalg.eigvalsh": L.eigvalsh,
    "linalg.eig": L.eig, "linalg.eigvals": L.eigvals, "linalg.qr": L.qr, "linalg.svd": L.svd,
    "linalg.svdvals": L.svdvals, "linalg.lu_factor": L.lu_factor, "linalg.lu": L.lu,
    "linalg.pinv": L.pinv, "linalg.matrix_exp": L.matrix_exp,
    "linalg.matrix_power": lambda x: L.matrix_power(x, 2), "linalg.matrix_rank": L.matrix_rank,
    "linalg.cholesky_ex": L.cholesky_ex, "linalg.solve": lambda x: L.solve(x, x),
    "linalg.solve_ex": lambda x: L.solve_ex(x, x), "linalg.ldl_factor": L.ldl_factor,
    "linalg.householder_product": lambda x: L.householder_product(x, x[..., :1]),
    "linalg.solve_triangular": lambda x: L.solve_triangular(x, x, upper=True),
    "cholesky_inverse": torch.cholesky_inverse, "linalg.lstsq": lambda x: L.lstsq(x, x),
    "trace": torch.trace, "linalg.cond": L.cond,
}


@pytest.mark.parametrize("shape", [(3,), (2, 3), (2, 3, 4)], ids=["1-D", "2x3", "2x3x4"])
@pytest.mark.parametrize("name", sorted(LINALG))
def test_linalg_invalid_shape_raises_the_unbatched_error(name, shape):
    """Batched linalg on a per-sample shape the operator refuses: the unbatched call's error."""
    op = LINALG[name]
    unbatched = raised(lambda: op(torch.randn(*shape)))
    batched = raised(lambda: ft.vmap(op)(torch.randn(4, *shape)))
    assert _C._layer_depth() == 0
    if unbatched is None:
        assert batched is None, f"vmap raises {batched!r} where the unbatched call works"
        return
    assert batched is not None, f"vmap returns where the unbatched call raises {unbatched!r}"
    assert type(batched) is type(unbatched)
    first = str(batched).splitlines()[0]
    if first != str(unbatched).splitlines()[0]:
        # linalg.eigvals of a tensor that may need gradients is computed by linalg.eig, which
        # then names itself; torch.func's error is the same
        reference = raised(lambda: torch.func.vmap(op)(torch.randn(4, *shape)))
        assert first == str(reference).splitlines()[0], f"\nunbatched: {unbatched}\nours: {batched}"
