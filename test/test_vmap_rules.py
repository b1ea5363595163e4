"""Batching rules in the cases OpInfos do not reach: batched weights (model ensembling), running
statistics, per-sample gradients of a small network, in-place indexing, error messages."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import functorch_lite as ft

B = 3


# Every case here must run on batching rules alone (the fixture is in conftest.py).
pytestmark = pytest.mark.usefixtures("no_fallback")


def loop(fn, *args, in_dims=0):
    dims = in_dims if isinstance(in_dims, tuple) else (in_dims,) * len(args)
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    outs = [fn(*[a if d is None else a.select(d, b) for a, d in zip(args, dims)])
            for b in range(size)]
    if isinstance(outs[0], tuple):
        return tuple(torch.stack(o) for o in zip(*outs))
    return torch.stack(outs)


def check(fn, *args, in_dims=0, atol=1e-5, rtol=1e-4):
    expected = loop(fn, *args, in_dims=in_dims)
    actual = ft.vmap(fn, in_dims=in_dims)(*args)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def vjp_of(fn):
    """(primals..., cotangent) -> gradients of fn at primals, through functorch_lite.vjp."""
    def per_sample(*args):
        _, vjp_fn = ft.vjp(fn, *args[:-1])
        return vjp_fn(args[-1])
    return per_sample


def vjp_reference(fn):
    def per_sample(*args):
        prims = [a.detach().requires_grad_(True) for a in args[:-1]]
        with torch.enable_grad():
            return torch.autograd.grad(fn(*prims), prims, args[-1])
    return per_sample


def check_vjp(fn, *primals, atol=1e-4, rtol=1e-4):
    with torch.no_grad():
        out = fn(*[p[0] for p in primals])
    ct = torch.randn(B, *out.shape)
    expected = loop(vjp_reference(fn), *primals, ct)
    actual = ft.vmap(vjp_of(fn))(*primals, ct)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


# ---- convolution: batched input, weight, bias (ensembles), groups, transposed ---------------

CONV_CASES = [
    ("conv1d", F.conv1d, (2, 4, 9), (6, 4, 3), {}),
    ("conv2d", F.conv2d, (2, 4, 7, 7), (6, 2, 3, 3), {"groups": 2, "padding": 1}),
    ("conv3d", F.conv3d, (1, 2, 5, 5, 5), (4, 2, 2, 2, 2), {"stride": 2}),
    ("conv_transpose2d", F.conv_transpose2d, (2, 4, 5, 5), (4, 3, 3, 3), {"groups": 2}),
    ("conv_transpose1d", F.conv_transpose1d, (2, 4, 6), (4, 2, 3), {"stride": 2}),
]


@pytest.mark.parametrize("name,conv,x_shape,w_shape,kwargs", CONV_CASES,
                         ids=[c[0] for c in CONV_CASES])
@pytest.mark.parametrize("batched", ["input", "weight", "both", "bias"])
def test_convolution(name, conv, x_shape, w_shape, kwargs, batched):
    out_channels = w_shape[1] * kwargs.get("groups", 1) if "transpose" in name else w_shape[0]
    x, w, b = torch.randn(B, *x_shape), torch.randn(B, *w_shape), torch.randn(B, out_channels)
    dims = {"input": (0, None, None), "weight": (None, 0, None), "both": (0, 0, 0),
            "bias": (None, None, 0)}[batched]
    args = [t if d is not None else t[0] for t, d in zip((x, w, b), dims)]

    def f(x, w, b):
        return conv(x, w, b, **kwargs)
    check(f, *args, in_dims=dims, atol=1e-4)


@pytest.mark.parametrize("name,conv,x_shape,w_shape,kwargs", CONV_CASES,
                         ids=[c[0] for c in CONV_CASES])
def test_convolution_backward(name, conv, x_shape, w_shape, kwargs):
    out_channels = w_shape[1] * kwargs.get("groups", 1) if "transpose" in name else w_shape[0]
    x, w, b = torch.randn(B, *x_shape), torch.randn(B, *w_shape), torch.randn(B, out_channels)
    check_vjp(lambda x, w, b: conv(x, w, b, **kwargs), x, w, b)


def test_convolution_backward_unbatched_weight():
    """Per-sample gradients: input and gradient batched, the weight shared."""
    x, w = torch.randn(B, 2, 3, 6, 6), torch.randn(4, 3, 3, 3)

    def grads(x):
        return ft.grad(lambda w, x: F.conv2d(x, w, padding=1).pow(2).sum(), argnums=(0, 1))(w, x)
    expected = loop(grads, x)
    torch.testing.assert_close(ft.vmap(grads)(x), expected, atol=1e-4, rtol=1e-4)


# ---- normalization ------------------------------------------------------------------------

def test_batch_norm_training_batched_running_stats():
    x = torch.randn(B, 4, 3, 5)
    mean, var = torch.randn(B, 3), torch.rand(B, 3) + 0.5
    mean_ref, var_ref = mean.clone(), var.clone()

    def f(x, m, v):
        return F.batch_norm(x, m, v, training=True, momentum=0.3)
    expected = torch.stack([f(x[b], mean_ref[b], var_ref[b]) for b in range(B)])
    actual = ft.vmap(f)(x, mean, var)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mean, mean_ref)
    torch.testing.assert_close(var, var_ref)


def test_batch_norm_training_unbatched_running_stats_errors():
    x = torch.randn(B, 4, 3)
    with pytest.raises(RuntimeError, match=r"^vmap: batch_norm in training mode updates its "
                                           r"running_mean and running_var in place"):
        ft.vmap(lambda x: F.batch_norm(x, torch.zeros(3), torch.ones(3), training=True))(x)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_affine_and_backward(training):
    x, w, b = torch.randn(B, 4, 3, 5), torch.randn(B, 3), torch.randn(B, 3)
    mean, var = torch.randn(3), torch.rand(3) + 0.5

    def f(x, w, b):
        if training:
            return F.batch_norm(x, None, None, w, b, training=True)
        return F.batch_norm(x, mean, var, w, b, training=False)
    check(f, x, w, b, atol=1e-4)
    check_vjp(f, x, w, b)


@pytest.mark.parametrize("batched", ["input", "all"])
def test_layer_norm_and_group_norm(batched):
    x, w, b = torch.randn(B, 2, 6, 5), torch.randn(B, 6, 5), torch.randn(B, 6, 5)
    wg, bg = torch.randn(B, 6), torch.randn(B, 6)
    dims = (0, None, None) if batched == "input" else (0, 0, 0)
    args = [t if d is not None else t[0] for t, d in zip((x, w, b), dims)]
    gargs = [t if d is not None else t[0] for t, d in zip((x, wg, bg), dims)]
    check(lambda x, w, b: F.layer_norm(x, (6, 5), w, b), *args, in_dims=dims)
    check(lambda x, w, b: F.group_norm(x, 3, w, b), *gargs, in_dims=dims, atol=1e-4)
    check_vjp(lambda x, w, b: F.layer_norm(x, (6, 5), w, b), x, w, b)
    check_vjp(lambda x, w, b: F.group_norm(x, 3, w, b), x, wg, bg)


# ---- embedding ----------------------------------------------------------------------------

@pytest.mark.parametrize("batched", ["weight", "indices", "both"])
def test_embedding_and_backward(batched):
    weight = torch.randn(B, 10, 4)
    indices = torch.randint(0, 10, (B, 2, 5))
    indices[:, 0, 0] = 1  # the padding row appears
    dims = {"weight": (0, None), "indices": (None, 0), "both": (0, 0)}[batched]
    args = [t if d is not None else t[0] for t, d in zip((weight, indices), dims)]
    check(lambda w, i: F.embedding(i, w, padding_idx=1), *args, in_dims=dims)

    def grads(w, i, ct):
        _, vjp_fn = ft.vjp(lambda w: F.embedding(i, w, padding_idx=1), w)
        return vjp_fn(ct)[0]

    def grads_ref(w, i, ct):
        w = w.detach().requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad(F.embedding(i, w, padding_idx=1), w, ct)[0]
    ct = torch.randn(B, 2, 5, 4)
    all_dims = dims + (0,)
    expected = loop(grads_ref, *args, ct, in_dims=all_dims)
    torch.testing.assert_close(ft.vmap(grads, in_dims=all_dims)(*args, ct), expected)


# ---- indexing -----------------------------------------------------------------------------

@pytest.mark.parametrize("index", ["adjacent_first", "adjacent_later", "separated"])
def test_index_put_inplace(index):
    x = torch.randn(B, 4, 5, 6)
    i = torch.tensor([0, 2, 3])
    j = torch.tensor([1, 1, 4])

    def f(x, v):
        x = x.clone()
        if index == "adjacent_first":
            x[i, j] = v
        elif index == "adjacent_later":
            x[:, i, j] = v
        else:
            x[i, :, j] = v
        return x
    values = {"adjacent_first": torch.randn(B, 3, 6), "adjacent_later": torch.randn(B, 4, 3),
              "separated": torch.randn(B, 3, 5)}[index]
    check(f, x, values)
    check(f, x, values[0], in_dims=(0, None))


def test_index_with_batched_indices():
    x, i = torch.randn(B, 4, 5), torch.randint(0, 5, (B, 2, 3))
    check(lambda x, i: x[:, i], x, i)
    check(lambda x, i: x[1:, i] * 2, x, i)
    check(lambda x, i: x[i % 4, i], x, i)


def test_masked_fill_batched_value():
    x, mask, v = torch.randn(B, 4, 5), torch.rand(B, 4, 5) > 0.5, torch.randn(B)
    check(lambda x, m, v: x.masked_fill(m, v), x, mask, v)
    check(lambda x, m, v: x.clone().masked_fill_(m, v), x, mask, v)


def test_inplace_into_unbatched_errors():
    x = torch.randn(B, 4)
    with pytest.raises(RuntimeError, match=r"^vmap: the in-place operator aten::index_put_"):
        ft.vmap(lambda x: torch.zeros(4).index_put_((torch.tensor([0]),), x[:1]))(x)


# ---- linalg -------------------------------------------------------------------------------

def test_linalg_errors_name_the_failing_sample():
    a = torch.eye(3).repeat(B, 1, 1)
    a[1] = 0
    with pytest.raises(RuntimeError, match=r"linalg.inv: \(Batch element 1\)"):
        ft.vmap(torch.linalg.inv)(a)


def test_solve_with_per_sample_batch_dims():
    a, b = torch.randn(B, 2, 4, 4) + 4 * torch.eye(4), torch.randn(4, 3)
    check(torch.linalg.solve, a, b, in_dims=(0, None), atol=1e-4)
    check(torch.linalg.solve, a, torch.randn(B, 4), in_dims=(0, 0), atol=1e-4)


# ---- a small network: per-sample gradients ------------------------------------------------

def test_per_sample_gradients_of_a_cnn():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.GroupNorm(2, 4), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(4, 4, 3), torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16, 5), torch.nn.LayerNorm(5),
    )
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(4, 1, 1, 8, 8), torch.randint(0, 5, (4, 1))

    def loss(params, x, y):
        out = ft.functional_call(model, params, (x,))
        return F.cross_entropy(out, y) + F.mse_loss(out.softmax(-1), F.one_hot(y, 5).float())

    per_sample = ft.vmap(ft.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for b in range(4):
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        expected = torch.autograd.grad(loss(leaves, x[b], y[b]), list(leaves.values()))
        for k, g in zip(leaves, expected):
            torch.testing.assert_close(per_sample[k][b], g, atol=1e-5, rtol=1e-4)


# ---- as_strided: offsets relative to each sample (NOTE: [as_strided under vmap]) -----------

def shifted_window(t):
    return t.as_strided((2, 3), (1, 2), t.storage_offset() + 1)


@pytest.mark.parametrize("in_dim", [0, 1])
def test_as_strided_offsets_are_relative_to_each_sample(in_dim):
    base = torch.randn(9, 10)[1:, 1:]  # samples do not start at offset 0
    x = base if in_dim == 0 else base.t()
    check(shifted_window, x, in_dims=in_dim)
    check(lambda t: t.as_strided((4,), (2,)), x, in_dims=in_dim)  # no offset: each sample's own


def test_storage_offset_is_the_first_samples():
    x = torch.randn(B, 8)[:, 2:]
    assert ft.vmap(lambda t: torch.tensor(t.storage_offset()))(x).tolist() == [2] * B
    assert ft.grad(lambda t: (t * t.storage_offset()).sum())(x).eq(2).all()


def test_as_strided_inplace_and_copy():
    x = torch.randn(B, 8)

    def inplace(t):
        t = t.clone()
        t.as_strided_((3,), (2,))
        return t * 1

    check(inplace, x)
    check(lambda t: torch.as_strided_copy(t, (2, 2), (3, 1), t.storage_offset() + 1), x)


def test_vjp_of_stft_uses_as_strided_like_a_loop():
    window = torch.hann_window(8)

    def spectrum(x):
        return torch.stft(x, 8, hop_length=4, window=window, return_complex=True).abs()

    check_vjp(spectrum, torch.randn(B, 40))


# ---- memory formats: each sample laid out channels-last (NOTE: [Memory formats under vmap]) --

LAYOUT_CASES = {
    "clone": lambda t: t.clone(memory_format=torch.channels_last),
    "to": lambda t: t.to(torch.float64, memory_format=torch.channels_last),
    "contiguous": lambda t: t.contiguous(memory_format=torch.channels_last),
    "empty_like": lambda t: torch.empty_like(t, memory_format=torch.channels_last).fill_(2),
}


@pytest.mark.parametrize("name", LAYOUT_CASES)
@pytest.mark.parametrize("in_dim", [0, 4])
def test_channels_last_per_sample(name, in_dim):
    fn = LAYOUT_CASES[name]
    x = torch.randn(B, 2, 4, 5, 6).movedim(0, in_dim)
    check(fn, x, in_dims=in_dim)
    laid_out = ft.vmap(
        lambda t: torch.tensor(fn(t).is_contiguous(memory_format=torch.channels_last)),
        in_dims=in_dim,
    )(x)
    assert laid_out.all()


def test_channels_last_3d_per_sample():
    x = torch.randn(B, 2, 3, 4, 5, 6)
    out = ft.vmap(lambda t: t.contiguous(memory_format=torch.channels_last_3d))(x)
    torch.testing.assert_close(out, x)
    assert out[1].is_contiguous(memory_format=torch.channels_last_3d)


def test_channels_last_needs_rank_4_samples():
    with pytest.raises(RuntimeError, match=r"^vmap: required rank 4 tensor to use channels_last format"):
        ft.vmap(lambda t: t.clone(memory_format=torch.channels_last))(torch.randn(B, 4, 5, 6))


# ---- max pooling over tiling windows (NOTE: [Tiled max pooling under vmap]) ----------------

def ops_run(fn, *args):
    with torch.profiler.profile() as prof:
        out = fn(*args)
    return out, {e.key for e in prof.key_averages()}


def relu_pool(t):
    return F.max_pool2d_with_indices(t.relu(), 2)


def test_tiled_max_pool_under_vmap_equals_the_loop():
    x = torch.randn(B, 2, 3, 9, 8)
    x.view(-1)[::13] = float("nan")
    out, ops = ops_run(ft.vmap(relu_pool), x)
    assert "functorch_lite::max_pool2d_tiled" in ops
    expected = loop(relu_pool, x)
    torch.testing.assert_close(out[0], expected[0], equal_nan=True)
    assert torch.equal(out[1], expected[1])


@pytest.mark.parametrize("order", ["vmap(grad)", "grad(vmap)", "autograd"])
def test_max_pool_gradients_in_every_order(order):
    x = torch.randn(B, 2, 6, 6)

    def loss(t):
        return F.max_pool2d(t.relu(), 2).pow(2).sum()

    if order == "vmap(grad)":
        got, want = ft.vmap(ft.grad(loss))(x), torch.func.vmap(torch.func.grad(loss))(x)
    elif order == "grad(vmap)":
        got = ft.grad(lambda t: ft.vmap(loss)(t).sum())(x)
        want = torch.func.grad(lambda t: torch.func.vmap(loss)(t).sum())(x)
    else:  # plain autograd through a vmap: the tiled kernel, having no derivative, is not used
        xr = x.clone().requires_grad_()
        ft.vmap(loss)(xr).sum().backward()
        got, want = xr.grad, torch.func.grad(lambda t: torch.func.vmap(loss)(t).sum())(x)
    torch.testing.assert_close(got, want)


def test_traced_vmap_keeps_the_aten_max_pool():
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(ft.vmap(relu_pool))(torch.randn(B, 2, 6, 6))
    targets = {n.target for n in gm.graph.nodes}
    assert torch.ops.aten.max_pool2d_with_indices.default in targets
    assert torch.ops.functorch_lite.max_pool2d_tiled.default not in targets


# ---- linspace / logspace with batched ends (NOTE: [Ranges with batched ends]) ---------------

RANGE_CASES = {
    "linspace": lambda a, b, steps: torch.linspace(a, b, steps),
    "linspace_scalar_end": lambda a, b, steps: torch.linspace(a, 2.5, steps),
    "linspace_scalar_start": lambda a, b, steps: torch.linspace(-1.5, b, steps, dtype=torch.float64),
    "logspace": lambda a, b, steps: torch.logspace(a, b, steps, base=2.0),
}


@pytest.mark.parametrize("steps", [0, 1, 2, 7, 8])
@pytest.mark.parametrize("name", RANGE_CASES)
def test_ranges_with_batched_ends(name, steps):
    fn = RANGE_CASES[name]
    start, end = torch.randn(B), torch.randn(B) + 3
    check(lambda a, b: fn(a, b, steps), start, end)
    end[0] = float("inf")  # one step is the start, whatever the end
    if steps == 1:
        check(lambda a, b: fn(a, b, steps), start, end)


# ---- masked_select with an unbatched mask: one output shape for every sample ----------------

@pytest.mark.parametrize("mask_shape", [(4, 5), (5,)])
@pytest.mark.parametrize("in_dim", [0, 2])
def test_masked_select_with_unbatched_mask(mask_shape, in_dim):
    torch.manual_seed(0)
    x = torch.randn(B, 4, 5).movedim(0, in_dim)
    mask = torch.rand(mask_shape) > 0.4
    check(lambda a, m: a.masked_select(m), x, mask, in_dims=(in_dim, None))


def test_masked_select_broadcasts_a_smaller_sample_against_the_mask():
    check(lambda a, m: a.masked_select(m), torch.randn(B, 5), torch.rand(4, 5) > 0.4,
          in_dims=(0, None))


def test_combinations():
    check(torch.combinations, torch.randn(B, 5))


# ---- isin with per-sample sets (NOTE: [Batching isin]) --------------------------------------

def isin_inputs():
    torch.manual_seed(0)
    elements = torch.randint(0, 6, (B, 4, 5)).float()
    test = torch.randint(0, 6, (B, 7)).float()
    elements[0, 0, 0] = test[0, 0] = float("nan")  # NaN is in no set
    return elements, test


ISIN_CASES = {  # name: (fn, in_dims); an unbatched argument is sample 0
    "both_batched": (torch.isin, (0, 0)),
    "invert": (lambda e, t: torch.isin(e, t, invert=True), (0, 0)),
    "set_batched": (torch.isin, (None, 0)),
    "elements_batched": (torch.isin, (0, None)),
    "int_elements": (lambda e, t: torch.isin(e.long(), t), (0, 0)),
    "scalar_element": (lambda e, t: torch.isin(2.0, t), (None, 0)),
    "scalar_test": (lambda e, t: torch.isin(e, 3), (0, None)),
    "empty_set": (lambda e, t: torch.isin(e, t[:0]), (0, 0)),
}


@pytest.mark.parametrize("name", ISIN_CASES)
def test_isin(name):
    fn, in_dims = ISIN_CASES[name]
    args = [a if d is not None else a[0] for a, d in zip(isin_inputs(), in_dims)]
    check(fn, *args, in_dims=in_dims)


def test_isin_with_batch_dims_elsewhere():
    elements, test = isin_inputs()
    check(torch.isin, elements.movedim(0, 2), test.t(), in_dims=(2, 1))


# ---- masked_scatter: each sample fills its own mask from its own source ----------------------

def masked_scatter_inputs():
    torch.manual_seed(0)
    return torch.randn(B, 4, 5), torch.rand(B, 4, 5) > 0.5, torch.randn(B, 25)


@pytest.mark.parametrize("in_dims", [(0, 0, 0), (0, None, 0), (None, 0, None), (1, 0, 1)])
def test_masked_scatter(in_dims):
    x, mask, source = masked_scatter_inputs()
    args = [a if d is not None else a[0] for a, d in zip((x, mask, source), in_dims)]
    args = [a.movedim(0, d) if d else a for a, d in zip(args, in_dims)]
    check(lambda a, m, s: a.masked_scatter(m, s), *args, in_dims=in_dims)


def test_masked_scatter_broadcasts_the_mask():
    x, mask, source = masked_scatter_inputs()
    check(lambda a, m, s: a.masked_scatter(m, s), x, mask[:, 0], source)


def test_masked_scatter_with_too_short_a_source_errors():
    x, mask, source = masked_scatter_inputs()
    with pytest.raises(RuntimeError, match=r"^vmap: masked_scatter: expected source to have at "
                       r"least as many elements as ones in mask, in every sample"):
        ft.vmap(lambda a, m, s: a.masked_scatter(m, s))(x, mask, source[:, :3])


def test_masked_scatter_under_two_vmaps():
    x, mask, source = masked_scatter_inputs()
    f = lambda a, m, s: a.masked_scatter(m, s)  # noqa: E731
    got = ft.vmap(ft.vmap(f))(x.view(B, 2, 2, 5), mask.view(B, 2, 2, 5), source.expand(2, -1, -1).transpose(0, 1))
    want = loop(lambda a, m, s: loop(f, a, m, s), x.view(B, 2, 2, 5), mask.view(B, 2, 2, 5),
                source.expand(2, -1, -1).transpose(0, 1))
    torch.testing.assert_close(got, want)


def test_assert_async_checks_every_sample():
    def positive(c):
        torch._assert_async(c > 0, "vmap test: not positive")
        return c

    ft.vmap(positive)(torch.tensor([1.0, 2.0]))
    with pytest.raises(RuntimeError, match="vmap test: not positive"):
        ft.vmap(positive)(torch.tensor([1.0, -2.0]))


# ---- index_reduce with a batched index: a scatter_reduce per sample -------------------------

@pytest.mark.parametrize("reduce", ["prod", "mean", "amax", "amin"])
@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("in_dims", [(0, 0, 0), (None, 0, None), (0, 0, None)])
def test_index_reduce_with_batched_index(reduce, include_self, in_dims):
    torch.manual_seed(0)
    inputs = (torch.randn(B, 5, 4), torch.randint(0, 5, (B, 6)), torch.randn(B, 6, 4))
    args = [a if d is not None else a[0] for a, d in zip(inputs, in_dims)]

    def out_of_place(a, i, s):
        return a.index_reduce(1, i, s.t(), reduce, include_self=include_self)

    def in_place(a, i, s):
        a = a.clone()
        a.index_reduce_(0, i, s, reduce, include_self=include_self)
        return a

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="index_reduce")  # "in beta"
        if in_dims[0] is not None:  # writing into an unbatched self is an error, as it should be
            check(in_place, *args, in_dims=in_dims)
        args[0] = args[0].transpose(-1, -2)
        check(out_of_place, *args, in_dims=in_dims)
