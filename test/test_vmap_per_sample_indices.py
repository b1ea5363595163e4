"""Indexing, gather/scatter, masks and sorted searches under vmap with independent per-sample
indices (hypothesis): every sample draws its own indices, masks (with their own number of true
entries) and sorted sequences, and the batching rules, with the for-loop fallback disabled, must
equal a loop over the samples.

The OpInfo tests (test_vmap_opinfo.py) permute one sample's indices per batch entry; these draw
them independently, which also varies the number of true mask entries and the duplicates of an
index, at every combination of batched and unbatched arguments.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import functorch_lite as ft


def examples(n):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# Each entry: name -> (make, f). make(gen, n, m) returns the arguments of one sample (a tuple
# of tensors, indices within range); f is applied to one sample. n, m >= 1 are sizes.
def _gather_like(gen, n, m):
    return torch.randn(n, m, generator=gen), torch.randint(0, n, (n + 1, m), generator=gen)


def _rows(gen, n, m):
    return torch.randn(n, m, generator=gen), torch.randint(0, n, (n + 2,), generator=gen)


def _perm(gen, n, m):
    return torch.randn(n, m, generator=gen), torch.randperm(n, generator=gen)


def _mask(gen, n, m):
    return torch.randn(n, m, generator=gen), torch.rand(n, m, generator=gen) > 0.5


def _sorted(gen, n, m):
    seq = torch.randn(n + 1, generator=gen).sort().values
    return seq, torch.randn(m, generator=gen)


def _targets(gen, n, m):
    return torch.randn(m, n + 1, generator=gen), torch.randint(0, n + 1, (m,), generator=gen)


CASES = {
    "gather": (_gather_like, lambda x, i: torch.gather(x, 0, i)),
    "take_along_dim": (_gather_like, lambda x, i: torch.take_along_dim(x, i, 0)),
    "scatter_add": (_gather_like, lambda x, i: x.scatter_add(0, i, torch.ones(i.shape))),
    "scatter_reduce.amax": (_gather_like, lambda x, i: x.scatter_reduce(
        0, i, torch.arange(float(i.numel())).view(i.shape), "amax")),
    "scatter_reduce.mean": (_gather_like, lambda x, i: x.scatter_reduce(
        0, i, torch.arange(float(i.numel())).view(i.shape), "mean", include_self=False)),
    "index_select": (_rows, lambda x, i: x.index_select(0, i)),
    "index_add": (_rows, lambda x, i: x.index_add(0, i, torch.ones(i.numel(), x.shape[1]))),
    "index_fill": (_rows, lambda x, i: x.index_fill(0, i, -1.0)),
    "__getitem__": (_rows, lambda x, i: x[i]),
    "__getitem__.dim1": (_rows, lambda x, i: x.t()[:, i]),
    "index_put.accumulate": (_rows, lambda x, i: x.index_put(
        (i,), torch.ones(i.numel(), x.shape[1]), accumulate=True)),
    "take": (_rows, lambda x, i: x.take(i * x.shape[1])),
    "put.accumulate": (_rows, lambda x, i: x.put(
        i * x.shape[1], torch.ones(i.numel()), accumulate=True)),
    "index_copy": (_perm, lambda x, i: x.index_copy(
        0, i, torch.arange(float(x.numel())).view(x.shape))),
    "scatter": (_perm, lambda x, i: x.scatter(
        0, i.unsqueeze(1).expand(x.shape), torch.arange(float(x.numel())).view(x.shape))),
    "masked_fill": (_mask, lambda x, m: x.masked_fill(m, 0.0)),
    "masked_scatter": (_mask, lambda x, m: x.masked_scatter(
        m, torch.arange(float(x.numel())).view(x.shape))),
    "where": (_mask, lambda x, m: torch.where(m, x, -x)),
    "searchsorted": (_sorted, lambda s, v: torch.searchsorted(s, v)),
    "searchsorted.right": (_sorted, lambda s, v: torch.searchsorted(s, v, right=True)),
    "bucketize": (_sorted, lambda s, v: torch.bucketize(v, s)),
    "embedding": (_rows, lambda w, i: F.embedding(i, w)),
    "cross_entropy": (_targets, lambda x, t: F.cross_entropy(x, t)),
    "nll_loss": (_targets, lambda x, t: F.nll_loss(x, t, reduction="none")),
}


def _batch(samples, k, bdim):
    """Argument k of every sample stacked at bdim (the samples' own data), or sample 0's."""
    if bdim is None:
        return samples[0][k]
    return torch.stack([s[k] for s in samples], dim=bdim)


@examples(150)
@given(name=st.sampled_from(sorted(CASES)), batch=st.integers(1, 4), n=st.integers(1, 5),
       m=st.integers(1, 4), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_per_sample_indices_match_the_loop(no_fallback, name, batch, n, m, seed, data):
    make, f = CASES[name]
    gen = torch.Generator().manual_seed(seed)
    samples = [make(gen, n, m) for _ in range(batch)]
    arity = len(samples[0])
    dims = data.draw(st.tuples(*[st.sampled_from([0, 1, -1, None])] * arity)
                     .filter(lambda d: any(x is not None for x in d)), label="in_dims")
    # a batch dim may sit anywhere up to the argument's number of dims
    dims = tuple(None if d is None else min(d, samples[0][k].dim()) if d >= 0 else -1
                 for k, d in enumerate(dims))
    args = [_batch(samples, k, d if d is None or d >= 0 else samples[0][k].dim())
            for k, d in enumerate(dims)]
    expected = torch.stack([
        f(*[args[k] if d is None else args[k].select(d, b) for k, d in enumerate(dims)])
        for b in range(batch)])
    actual = ft.vmap(f, in_dims=dims)(*args)
    torch.testing.assert_close(actual, expected, msg=lambda msg: f"{name} {dims}: {msg}")


def test_every_case_draws_distinct_samples():
    """The generator gives each sample its own indices (else the test above checks little)."""
    gen = torch.Generator().manual_seed(0)
    for name, (make, _) in CASES.items():
        a, b = make(gen, 5, 4), make(gen, 5, 4)
        assert any(not torch.equal(x, y) for x, y in zip(a, b)), name
