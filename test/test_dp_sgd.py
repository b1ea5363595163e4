"""functorch_lite.dp in one process: each building block against a per-example for-loop."""
import copy
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import functorch_lite as ft
from functorch_lite import _C, dp


def assert_close(a, b, atol=1e-5, rtol=1e-4):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(F.max_pool2d(F.relu(self.conv(x)), 2).flatten(1))


def make_model(kind):
    if kind == "mlp":
        return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5)), (6,)
    return SmallCNN(), (1, 10, 10)


def make_batch(shape, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=g), torch.randint(0, 5, (batch,), generator=g)


def loop_grads(model, params, x, y):
    """The reference: one backward per example."""
    rows = []
    for xi, yi in zip(x, y):
        p = {k: v.detach().requires_grad_() for k, v in params.items()}
        loss = F.cross_entropy(torch.func.functional_call(model, p, (xi[None],)), yi[None])
        rows.append(dict(zip(p, torch.autograd.grad(loss, list(p.values())))))
    return {k: torch.stack([r[k] for r in rows]) for k in params}


def loop_clipped(grads, max_norm):
    """Per example: the flattened gradient, its norm, its clip; all in Python."""
    batch = next(iter(grads.values())).shape[0]
    out = {k: [] for k in grads}
    for i in range(batch):
        norm = torch.cat([g[i].flatten() for g in grads.values()]).norm()
        factor = min(1.0, max_norm / (norm.item() + 1e-6))
        for k, g in grads.items():
            out[k].append(g[i] * factor)
    return {k: torch.stack(v) for k, v in out.items()}


def random_grads(draw_shapes, batch, seed):
    g = torch.Generator().manual_seed(seed)
    # norms spread around 1, so that some examples are clipped and some are not
    return {f"p{i}": torch.randn(batch, *s, generator=g) * torch.rand(1, generator=g) * 0.5
            for i, s in enumerate(draw_shapes)}


shapes = st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple),
                  min_size=1, max_size=4)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("batch", [1, 7])
def test_per_sample_grads_equal_the_loop_and_torch_func(kind, batch):
    torch.manual_seed(0)
    model, shape = make_model(kind)
    x, y = make_batch(shape, batch)
    params = dict(model.named_parameters())
    ours = dp.per_sample_grads(model, F.cross_entropy, params, x, y)
    assert set(ours) == set(params)
    for k, v in loop_grads(model, params, x, y).items():
        assert_close(ours[k], v)

    def loss(p, xi, yi):
        return F.cross_entropy(torch.func.functional_call(model, p, (xi[None],)), yi[None])

    ref = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for k in params:
        assert_close(ours[k], ref[k])


def test_per_sample_grads_with_buffers_and_pytree_inputs():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.register_buffer("shift", torch.randn(4))

        def forward(self, pair):
            return self.a(pair[0]) * pair[1] + self.shift

    model = TwoInputs()
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    x0, x1, y = torch.randn(5, 3), torch.randn(5, 4), torch.randn(5, 4)
    ours = dp.per_sample_grads(model, F.mse_loss, params, (x0, x1), y, buffers=buffers)
    for i in range(5):
        p = {k: v.detach().requires_grad_() for k, v in params.items()}
        out = torch.func.functional_call(model, (p, buffers), ((x0[i:i + 1], x1[i:i + 1]),))
        ref = torch.autograd.grad(F.mse_loss(out, y[i:i + 1]), list(p.values()))
        for k, r in zip(p, ref):
            assert_close(ours[k][i], r)


@settings(max_examples=30, deadline=None)
@given(shapes=shapes, batch=st.integers(1, 6), seed=st.integers(0, 2**16),
       max_norm=st.floats(0.05, 3.0))
def test_clipping_equals_the_loop(shapes, batch, seed, max_norm):
    grads = random_grads(shapes, batch, seed)
    norms = torch.stack([torch.cat([g[i].flatten() for g in grads.values()]).norm()
                         for i in range(batch)])
    assert_close(dp.per_sample_norms(grads), norms)
    ref = loop_clipped(grads, max_norm)
    clipped = dp.clip_per_sample(grads, max_norm)
    summed = dp.clipped_sum(grads, max_norm)
    for k in grads:
        assert_close(clipped[k], ref[k])
        assert_close(summed[k], ref[k].sum(0))
    assert (dp.per_sample_norms(clipped) <= max_norm * (1 + 1e-5)).all()


def test_clipping_leaves_small_gradients_and_zero_gradients_alone():
    grads = {"w": torch.tensor([[0.3, 0.4], [3.0, 4.0], [0.0, 0.0]])}
    clipped = dp.clip_per_sample(grads, 1.0)["w"]
    assert_close(clipped, torch.tensor([[0.3, 0.4], [0.6, 0.8], [0.0, 0.0]]))
    assert torch.isfinite(dp.clipped_sum(grads, 1.0)["w"]).all()


def test_an_empty_batch_sums_to_zero_and_needs_a_batch_size_to_step():
    model = nn.Linear(3, 2)
    params = dict(model.named_parameters())
    x, y = torch.randn(0, 3), torch.randint(0, 2, (0,))
    grads = dp.per_sample_grads(model, F.cross_entropy, params, x, y)
    assert grads["weight"].shape == (0, 2, 3)
    assert all(torch.equal(v, torch.zeros_like(params[k]))
               for k, v in dp.clipped_sum(grads, 1.0).items())
    step = dp.dp_grads(model, F.cross_entropy, params, x, y, max_norm=1.0, noise_multiplier=1.0,
                       generator=torch.Generator().manual_seed(0), batch_size=4)
    g = torch.Generator().manual_seed(0)
    for k, v in params.items():
        assert_close(step[k], torch.normal(0.0, 1.0, v.shape, generator=g) / 4)
    raises(lambda: dp.dp_grads(model, F.cross_entropy, params, x, y, max_norm=1.0,
                               noise_multiplier=1.0, generator=torch.Generator()), ValueError,
           "dp_grads(model, loss_fn, params, inputs, targets): the step has no examples (on any "
           "rank) to average over; pass batch_size, the expected batch size, to step on noise "
           "alone")


def test_a_scalar_parameter_counts_in_the_norm():
    grads = {"scale": torch.tensor([3.0, 0.0]), "w": torch.tensor([[4.0], [0.5]])}
    assert_close(dp.per_sample_norms(grads), torch.tensor([5.0, 0.5]))
    assert_close(dp.clipped_sum(grads, 1.0)["scale"], torch.tensor(0.6))


def test_dp_grads_carry_no_autograd_history():
    model = nn.Linear(3, 2)
    step = dp.dp_grads(model, F.cross_entropy, dict(model.named_parameters()),
                       torch.randn(4, 3), torch.randint(0, 2, (4,)), max_norm=1.0,
                       noise_multiplier=1.0, generator=torch.Generator())
    assert all(not g.requires_grad for g in step.values())


def test_clipping_keeps_the_dtype():
    grads = {"w": torch.randn(4, 3, dtype=torch.float64), "b": torch.randn(4, 3)}
    for out in (dp.clip_per_sample(grads, 0.5), dp.clipped_sum(grads, 0.5)):
        assert out["w"].dtype == torch.float64 and out["b"].dtype == torch.float32


def test_noise_comes_from_the_generator_and_has_the_asked_std():
    grads = {"a": torch.zeros(200, 100), "b": torch.ones(3)}
    first = dp.add_noise(grads, 1.5, 2.0, torch.Generator().manual_seed(7))
    again = dp.add_noise(grads, 1.5, 2.0, torch.Generator().manual_seed(7))
    other = dp.add_noise(grads, 1.5, 2.0, torch.Generator().manual_seed(8))
    for k in grads:
        assert torch.equal(first[k], again[k])
        assert not torch.equal(first[k], other[k])
    assert abs(first["a"].std().item() - 3.0) < 0.1 and abs(first["a"].mean().item()) < 0.1
    # drawn in the dict's order with torch.normal, as Opacus draws it
    g = torch.Generator().manual_seed(7)
    assert torch.equal(first["a"], torch.normal(0.0, 3.0, (200, 100), generator=g))
    state = torch.get_rng_state()
    dp.add_noise(grads, 1.0, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state), "the global generator must stay untouched"


def test_zero_noise_is_the_identity():
    grads = {"a": torch.randn(4)}
    assert torch.equal(dp.add_noise(grads, 0.0, 1.0, torch.Generator())["a"], grads["a"])


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_dp_grads_is_the_noisy_mean_of_clipped_gradients(kind):
    torch.manual_seed(0)
    model, shape = make_model(kind)
    x, y = make_batch(shape, 9)
    params = dict(model.named_parameters())
    ours = dp.dp_grads(model, F.cross_entropy, params, x, y, max_norm=0.1,
                       noise_multiplier=0.7, generator=torch.Generator().manual_seed(3))
    clipped = loop_clipped(loop_grads(model, params, x, y), 0.1)
    g = torch.Generator().manual_seed(3)
    for k, v in params.items():
        noise = torch.normal(0.0, 0.07, v.shape, generator=g)
        assert_close(ours[k], (clipped[k].sum(0) + noise) / 9)
    expected = dp.dp_grads(model, F.cross_entropy, params, x, y, max_norm=0.1,
                           noise_multiplier=0.0, generator=torch.Generator(), batch_size=12)
    for k in params:
        assert_close(expected[k], clipped[k].sum(0) / 12)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # Opacus's hooks, not ours
def test_dp_sgd_steps_equal_opacus(kind):
    """Five DP-SGD steps with Opacus's GradSampleModule and DPOptimizer, and with ours, from
    the same parameters and the same generator seed, end at the same parameters."""
    opacus = pytest.importorskip("opacus")
    from opacus.optimizers import DPOptimizer

    torch.manual_seed(0)
    model, shape = make_model(kind)
    theirs = opacus.GradSampleModule(copy.deepcopy(model))
    optimizer = DPOptimizer(torch.optim.SGD(theirs.parameters(), lr=0.5), noise_multiplier=1.0,
                            max_grad_norm=0.5, expected_batch_size=8,
                            generator=torch.Generator().manual_seed(11))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    generator = torch.Generator().manual_seed(11)
    for step in range(5):
        x, y = make_batch(shape, 8, seed=step)
        optimizer.zero_grad()
        F.cross_entropy(theirs(x), y).backward()
        optimizer.step()
        grads = dp.dp_grads(model, F.cross_entropy, params, x, y, max_norm=0.5,
                            noise_multiplier=1.0, generator=generator)
        params = {k: p - 0.5 * grads[k] for k, p in params.items()}
    for k, p in theirs._module.named_parameters():
        assert_close(params[k], p.detach(), atol=1e-5, rtol=1e-4)


# --- errors ------------------------------------------------------------------------------------

def raises(call, error, text):
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == text


def test_errors_name_the_api():
    model = nn.Linear(3, 2)
    params = dict(model.named_parameters())
    raises(lambda: dp.per_sample_grads(model, F.mse_loss, list(params.values()),
                                       torch.randn(4, 3), torch.randn(4, 2)), TypeError,
           "per_sample_grads(model, loss_fn, params, inputs, targets): params should be a "
           "non-empty dict {name: tensor}, as dict(model.named_parameters()) gives, got list")
    raises(lambda: dp.per_sample_grads(model, F.mse_loss, params, torch.randn(4, 3),
                                       torch.randn(5, 2)), ValueError,
           "per_sample_grads(model, loss_fn, params, inputs, targets): inputs and targets "
           "should be tensors sharing their first (batch) dimension, got [(4, 3), (5, 2)]")
    raises(lambda: dp.clipped_sum({"a": torch.randn(3, 2), "b": torch.randn(4)}, 1.0),
           ValueError, "clipped_sum(grads, max_norm): the gradients disagree on the batch "
           "size: {'a': 3, 'b': 4}")
    raises(lambda: dp.clip_per_sample({"a": torch.randn(3, 2)}, 0.0), ValueError,
           "clip_per_sample(grads, max_norm): max_norm must be positive, got 0.0")
    raises(lambda: dp.per_sample_norms({"a": torch.tensor(1.0)}), TypeError,
           "per_sample_norms(grads): gradient 'a' should be a tensor with the batch as its "
           "first dimension, got a 0-d tensor")
    raises(lambda: dp.per_sample_norms({}), TypeError,
           "per_sample_norms(grads): expected a non-empty dict of per-sample gradients "
           "{name: tensor of shape [B, ...]}, got dict")
    raises(lambda: dp.add_noise({"a": torch.zeros(2)}, 1.0, 1.0, 0), TypeError,
           "add_noise(grads, noise_multiplier, max_norm, generator): generator should be a "
           "torch.Generator (seeded by the caller), got int")
    raises(lambda: dp.add_noise({"a": torch.zeros(2)}, -1.0, 1.0, torch.Generator()),
           ValueError, "add_noise(grads, noise_multiplier, max_norm, generator): "
           "noise_multiplier must be non-negative, got -1.0")
    raises(lambda: dp.add_noise({"a": torch.zeros(2, device="meta")}, 1.0, 1.0,
                                torch.Generator()), ValueError,
           "add_noise(grads, noise_multiplier, max_norm, generator): the generator is on cpu "
           "but gradient 'a' is on meta; make the generator where the gradients live, "
           "torch.Generator(device=...)")


def test_collectives_without_a_process_group_say_so():
    text = ("torch.distributed is not initialized; call torch.distributed.init_process_group "
            "first (gloo for CPU tensors, nccl for CUDA ones)")
    raises(lambda: dp.all_reduce_sum({"a": torch.zeros(2)}), RuntimeError,
           f"all_reduce_sum(tensors): {text}")
    raises(lambda: dp.gather_ensemble(torch.zeros(2, 3)), RuntimeError,
           f"gather_ensemble(predictions): {text}")


def test_a_failed_call_leaves_no_level_behind():
    model = nn.Linear(3, 2)

    def bad_loss(out, target):
        raise ValueError("bad loss")

    with pytest.raises(ValueError, match=re.escape("bad loss")):
        dp.per_sample_grads(model, bad_loss, dict(model.named_parameters()),
                            torch.randn(4, 3), torch.randn(4, 2))
    assert _C._layer_depth() == 0
    x = torch.randn(4, 3)
    assert_close(ft.vmap(torch.sin)(x), torch.sin(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_step_equals_cpu_and_nccl_sums():
    import datetime
    import os
    import tempfile

    import torch.distributed as dist

    torch.manual_seed(0)
    model, shape = make_model("cnn")
    x, y = make_batch(shape, 6)
    cpu = {k: v.detach().clone() for k, v in model.named_parameters()}
    gpu = {k: v.cuda() for k, v in cpu.items()}  # functional_call runs the module with either

    def step(params, device, noise):
        return dp.dp_grads(model, F.cross_entropy, params, x.to(device), y.to(device),
                           max_norm=0.5, noise_multiplier=noise,
                           generator=torch.Generator(device=device).manual_seed(1))

    expected = step(cpu, "cpu", 0.0)
    for k, v in step(gpu, "cuda", 0.0).items():
        assert v.is_cuda
        assert_close(v.cpu(), expected[k])
    first, again = step(gpu, "cuda", 1.0), step(gpu, "cuda", 1.0)
    assert all(torch.equal(first[k], again[k]) for k in first)
    with pytest.raises(ValueError, match="the generator is on cpu but gradient"):
        dp.add_noise(first, 1.0, 1.0, torch.Generator())

    with tempfile.TemporaryDirectory() as d:  # a world of one, through NCCL
        dist.init_process_group("nccl", store=dist.FileStore(os.path.join(d, "store"), 1),
                                rank=0, world_size=1, timeout=datetime.timedelta(seconds=60))
        try:
            summed = dp.all_reduce_sum(first, timeout=datetime.timedelta(seconds=60))
            assert all(torch.equal(summed[k], first[k]) for k in first)
            preds = torch.randn(3, 4, device="cuda")
            assert torch.equal(dp.gather_ensemble(preds), preds)
        finally:
            dist.destroy_process_group()


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(0, 40), st.sampled_from([torch.float32,
                                                                     torch.float64])),
                      min_size=1, max_size=12),
       cap=st.integers(1, 200))
def test_buckets_hold_every_tensor_once_by_dtype_within_the_cap(sizes, cap):
    from functorch_lite.dp import _buckets

    tensors = [torch.zeros(n, dtype=dtype) for n, dtype in sizes]
    buckets = _buckets(tensors, cap)
    assert sorted(i for b in buckets for i in b) == list(range(len(tensors)))
    for b in buckets:
        assert b == sorted(b) and len({tensors[i].dtype for i in b}) == 1
        nbytes = sum(tensors[i].numel() * tensors[i].element_size() for i in b)
        assert nbytes <= cap or len(b) == 1, "only a tensor over the cap may exceed it, alone"
