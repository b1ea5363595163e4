"""vmap randomness draws the very values torch.func draws: same seed (or generator), same numbers.

Under randomness='different' a random operator consumes the generator as one unbatched call over
the batched shape (batch dim in front); under 'same' as one unbatched call. Each case runs under
torch.func.vmap (the reference) and ours after the same torch.manual_seed, for every batch-dim
position in and out, and the results must be equal bit for bit.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import functorch_lite as ft

B = 4

# name -> f(x) with x of per-sample shape (3, 5)
OPS = {
    "rand": lambda x: x * 0 + torch.rand(3, 5),
    "randn": lambda x: x * 0 + torch.randn(3, 5),
    "randint": lambda x: x * 0 + torch.randint(0, 100, (3, 5)),
    "randint_low": lambda x: x * 0 + torch.randint(3, 100, (3, 5)),
    "normal_float_float": lambda x: x * 0 + torch.normal(0.5, 2.0, (3, 5)),
    "randperm": lambda x: x * 0 + torch.randperm(5),
    "rand_like": lambda x: torch.rand_like(x),
    "randn_like": lambda x: torch.randn_like(x),
    "randint_like": lambda x: torch.randint_like(x, 10),
    "randint_like_low": lambda x: torch.randint_like(x, 3, 10),
    "normal_tensor_float": lambda x: torch.normal(x, 1.0),
    "normal_float_tensor": lambda x: torch.normal(0.0, x.abs() + 0.1),
    "normal_tensor_tensor": lambda x: torch.normal(x, x.abs() + 0.1),
    "bernoulli": lambda x: torch.bernoulli(x.sigmoid()),
    "bernoulli_p": lambda x: torch.bernoulli(x, 0.3),
    "bernoulli_inplace_float": lambda x: x.clone().bernoulli_(0.3),
    "bernoulli_inplace_tensor": lambda x: x.clone().bernoulli_(x.sigmoid()),
    "multinomial": lambda x: torch.multinomial(x.abs() + 0.1, 2),
    "multinomial_replacement": lambda x: torch.multinomial(x.abs() + 0.1, 7, True),
    "uniform_": lambda x: x.clone().uniform_(),
    "normal_": lambda x: x.clone().normal_(),
    "random_": lambda x: x.clone().random_(10),
    "random_from_to": lambda x: x.clone().random_(2, 10),
    "exponential_": lambda x: x.clone().exponential_(),
    "poisson": lambda x: torch.poisson(x.abs()),
    "dropout": lambda x: F.dropout(x, 0.4),
    "dropout_eval": lambda x: F.dropout(x, 0.4, training=False),
    "feature_dropout": lambda x: torch.feature_dropout(x, 0.4, True),
    "alpha_dropout": lambda x: F.alpha_dropout(x, 0.4, training=True),
    "feature_alpha_dropout": lambda x: F.feature_alpha_dropout(x, 0.4, training=True),
}

# torch.func refuses randomness='same' for these with a batched input (checked below)
SAME_UNSUPPORTED = {
    "normal_tensor_float", "normal_float_tensor", "normal_tensor_tensor", "bernoulli",
    "bernoulli_p", "bernoulli_inplace_tensor", "multinomial", "multinomial_replacement",
    "poisson",
}


def run(vmap, f, x, in_dims, out_dims, randomness, seed):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return vmap(f, in_dims=in_dims, out_dims=out_dims, randomness=randomness)(x)
        except RuntimeError as e:
            return e


def assert_same_draw(f, x, in_dims=0, out_dims=0, randomness="different", seed=0):
    ref = run(torch.func.vmap, f, x, in_dims, out_dims, randomness, seed)
    ours = run(ft.vmap, f, x, in_dims, out_dims, randomness, seed)
    if isinstance(ref, Exception):
        assert isinstance(ours, Exception), f"torch.func raised {ref!r}, we returned a value"
        return
    assert not isinstance(ours, Exception), f"we raised {ours!r}, torch.func did not"
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    assert torch.equal(ours, ref), "different values from torch.func for the same seed"
    # and the generator is left where torch.func leaves it
    torch.manual_seed(seed)
    run(ft.vmap, f, x, in_dims, out_dims, randomness, seed)
    after_ours = torch.rand(4)
    run(torch.func.vmap, f, x, in_dims, out_dims, randomness, seed)
    assert torch.equal(after_ours, torch.rand(4))


def batched(in_dim, contiguous=True):
    x = torch.randn(B, 3, 5).movedim(0, in_dim)
    return x.contiguous() if contiguous else x


@pytest.mark.parametrize("name", sorted(OPS))
@settings(max_examples=8, deadline=None)
@given(in_dim=st.integers(0, 2), out_dim=st.integers(0, 2), contiguous=st.booleans(),
       seed=st.integers(0, 2**16))
def test_different_matches_torch_func(name, in_dim, out_dim, contiguous, seed):
    assert_same_draw(OPS[name], batched(in_dim, contiguous), in_dim, out_dim, "different", seed)


@pytest.mark.parametrize("name", sorted(OPS))
@settings(max_examples=4, deadline=None)
@given(in_dim=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_same_matches_torch_func(name, in_dim, seed):
    assert_same_draw(OPS[name], batched(in_dim), in_dim, 0, "same", seed)


@pytest.mark.parametrize("name", sorted(SAME_UNSUPPORTED))
def test_same_with_a_batched_input_is_refused_as_in_torch_func(name):
    x = batched(0)
    with pytest.raises(RuntimeError, match="does not currently support same randomness with a "
                       "batched tensor input"):
        ft.vmap(OPS[name], randomness="same")(x)
    with pytest.raises(RuntimeError, match="does not currently support same randomness"):
        torch.func.vmap(OPS[name], randomness="same")(x)


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("randomness", ["different", "same"])
def test_unbatched_input_matches_torch_func(name, randomness):
    """The random operator sees only an unbatched tensor (the mapped input is unused)."""
    y = torch.randn(3, 5)
    f = OPS[name]
    assert_same_draw(lambda x: f(y) + 0 * x.sum(), batched(0), 0, 0, randomness, seed=7)


@pytest.mark.parametrize("name", ["dropout", "feature_dropout", "alpha_dropout",
                                  "feature_alpha_dropout"])
def test_dropout_of_an_unbatched_input_gives_every_sample_its_own_mask(name):
    y = torch.ones(3, 5)
    torch.manual_seed(0)
    out = ft.vmap(lambda x: OPS[name](y) + 0 * x.sum(), randomness="different")(batched(0))
    assert not all(torch.equal(out[0], out[i]) for i in range(1, B))


def test_generator_argument():
    def f(x):
        g = torch.Generator().manual_seed(11)
        return (torch.rand(3, 5, generator=g) + torch.randn_like(x).mul(0)
                + x.clone().uniform_(generator=g) + torch.normal(x, 1.0, generator=g))

    for in_dim in range(3):
        assert_same_draw(f, batched(in_dim, contiguous=False), in_dim, 0, "different")


def test_randomness_under_grad_matches_torch_func():
    def loss(w, x):
        return (F.dropout(x * w, 0.5) + torch.randn_like(x)).pow(2).sum()

    w, x = torch.randn(3, 5), batched(1)
    torch.manual_seed(3)
    ref = torch.func.vmap(torch.func.grad(loss), (None, 1), randomness="different")(w, x)
    torch.manual_seed(3)
    ours = ft.vmap(ft.grad(loss), (None, 1), randomness="different")(w, x)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("outer,inner", [
    ("different", "different"), ("different", "same"), ("same", "same"), ("same", "different"),
])
def test_nested_vmap_matches_torch_func(outer, inner):
    def f(x):
        return torch.rand_like(x) + torch.randn(5)

    x = torch.randn(2, B, 5)
    torch.manual_seed(0)
    ref = torch.func.vmap(torch.func.vmap(f, randomness=inner), 1, randomness=outer)(x)
    torch.manual_seed(0)
    ours = ft.vmap(ft.vmap(f, randomness=inner), 1, randomness=outer)(x)
    assert torch.equal(ours, ref)
