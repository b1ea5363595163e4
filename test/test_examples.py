"""Examples users know from functorch, as tests: ensembles, per-sample grads with BatchNorm, MAML."""
import copy
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import functorch_lite as ft


def assert_close(a, b, atol=1e-5, rtol=1e-5):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def test_ensemble_of_ten_mlps_with_one_vmap():
    models = [nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)) for _ in range(10)]
    params, buffers = ft.stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def run(ours):
        lib = ft if ours else torch.func

        def call(p, b, x):
            return lib.functional_call(base, (p, b), (x,))

        return call, lib

    x = torch.randn(32, 8)
    call, lib = run(True)
    same_data = ft.vmap(call, in_dims=(0, 0, None))(params, buffers, x)
    ref_call, _ = run(False)
    ref = torch.func.vmap(ref_call, in_dims=(0, 0, None))(params, buffers, x)
    assert same_data.shape == (10, 32, 4)
    assert_close(same_data, ref)
    assert_close(same_data, torch.stack([m(x) for m in models]))

    xs = torch.randn(10, 32, 8)  # a different minibatch per model
    different = ft.vmap(call)(params, buffers, xs)
    assert_close(different, torch.stack([m(xi) for m, xi in zip(models, xs)]))


def test_combine_state_for_ensemble_runs_under_vmap():
    models = [nn.Linear(5, 3) for _ in range(4)]
    fmodel, params, buffers = ft.combine_state_for_ensemble(models)
    x = torch.randn(7, 5)
    out = ft.vmap(fmodel, in_dims=(0, 0, None))(params, buffers, x)
    assert_close(out, torch.stack([m(x) for m in models]))


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def test_per_sample_grads_with_batch_norm_after_replace_all_batch_norm_modules_():
    torch.manual_seed(0)
    model = ft.replace_all_batch_norm_modules_(ConvBN())
    ref_model = copy.deepcopy(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))

    def loss(lib, m):
        def f(p, xi, yi):
            out = lib.functional_call(m, p, (xi.unsqueeze(0),))
            return F.cross_entropy(out, yi.unsqueeze(0))

        return f

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # operators still on the for-loop fallback
        ours = ft.vmap(ft.grad(loss(ft, model)), in_dims=(None, 0, 0))(params, x, y)
    ref = torch.func.vmap(torch.func.grad(loss(torch.func, ref_model)), in_dims=(None, 0, 0))(
        params, x, y
    )
    for k in ref:
        assert_close(ours[k], ref[k], atol=1e-4, rtol=1e-4)
    assert model.bn.running_mean is None and not model.bn.track_running_stats


def test_maml_inner_loop_matches_torch_func():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))
    params = {k: v.detach() for k, v in model.named_parameters()}
    tasks_x = torch.randn(4, 10, 1)
    tasks_y = torch.sin(tasks_x)
    query_x, query_y = torch.randn(4, 10, 1), torch.randn(4, 10, 1)

    def make(lib):
        def task_loss(p, x, y):
            return F.mse_loss(lib.functional_call(model, p, (x,)), y)

        def inner_then_outer(p, x, y, qx, qy):
            grads = lib.grad(task_loss)(p, x, y)
            adapted = {k: p[k] - 0.1 * grads[k] for k in p}  # one inner SGD step
            return task_loss(adapted, qx, qy)

        def meta_loss(p):
            losses = lib.vmap(inner_then_outer, in_dims=(None, 0, 0, 0, 0))(
                p, tasks_x, tasks_y, query_x, query_y
            )
            return losses.mean()

        return meta_loss

    ours = ft.grad(make(ft))(params)
    ref = torch.func.grad(make(torch.func))(params)
    for k in ref:
        assert_close(ours[k], ref[k])

    # the same meta-gradient through ordinary autograd
    leaf = {k: v.clone().requires_grad_() for k, v in params.items()}
    make(ft)(leaf).backward()
    for k in ref:
        assert_close(leaf[k].grad, ref[k])
