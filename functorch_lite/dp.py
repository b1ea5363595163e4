"""DP-SGD building blocks: per-sample gradients, clipping, noise, and their data-parallel sum.

NOTE: [DP-SGD as functions]
A DP-SGD step is five functions over dicts of tensors ({parameter name: tensor}), each usable
alone:
    per_sample_grads   vmap(grad(loss)) over functional_call: {name: [B, *shape]}
    per_sample_norms   the L2 norm of each example's whole gradient (all tensors together): [B]
    clip_per_sample    each example's gradient scaled to a norm of at most max_norm
    clipped_sum        the sum over the batch of the clipped gradients, without building them
    add_noise          Gaussian noise of std noise_multiplier * max_norm from the caller's generator
dp_grads composes them into the noisy mean gradient of one step. Clipping is batched: the
norms are one reduction per tensor, the clip factors one [B] vector, and the clipped sum one
matrix-vector product per tensor (factors @ grads.reshape(B, -1)); nothing loops over examples.
The clip factor is min(1, max_norm / (norm + 1e-6)), the same as Opacus's, so that the two
agree to rounding on the same inputs.

NOTE: [Data-parallel DP-SGD]
Under torch.distributed every rank clips its own shard's examples, then the clipped sums (and
the number of examples) are added across ranks by all_reduce_sum: the tensors are flattened
into buckets of at most bucket_mb megabytes per device and dtype, one all_reduce per bucket
(one in all for a model under 25 MB), issued together and then awaited. Noise is added after
the sum, once: every rank draws it from its own generator, so the generators must be seeded
alike on every rank; then every rank holds the same noisy gradient and, after the same update,
the same parameters, with no broadcast. The sum over shards equals the sum over the full batch
(clipping is per example), so N ranks on N shards step as one process on the whole batch does.
Nothing here assumes a device: buckets live where the gradients live (gloo for CPU tensors,
NCCL for CUDA ones), and the noise is drawn on the generator's device, which must be theirs.
"""
import datetime
import math
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from functorch_lite._autodiff import grad
from functorch_lite._functional_call import functional_call
from functorch_lite._vmap import vmap

__all__ = [
    "add_noise",
    "all_reduce_sum",
    "clip_per_sample",
    "clipped_sum",
    "dp_grads",
    "gather_ensemble",
    "per_sample_grads",
    "per_sample_norms",
]

Grads = Dict[str, Tensor]

_COUNT = "\0examples"  # the key of the example count in dp_grads's all_reduce; no parameter's
_EPS = 1e-6  # keeps max_norm / norm finite for an all-zero gradient; Opacus uses the same


def _check_grads(grads: Any, api: str) -> int:
    """The batch size shared by every tensor of `grads` (a non-empty dict of tensors)."""
    if not isinstance(grads, dict) or not grads:
        raise TypeError(f"{api}: expected a non-empty dict of per-sample gradients "
                        f"{{name: tensor of shape [B, ...]}}, got {type(grads).__name__}")
    sizes = {}
    for name, g in grads.items():
        if not isinstance(g, Tensor) or g.dim() == 0:
            what = f"a {g.dim()}-d tensor" if isinstance(g, Tensor) else type(g).__name__
            raise TypeError(f"{api}: gradient {name!r} should be a tensor with the batch as its "
                            f"first dimension, got {what}")
        sizes[name] = g.shape[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{api}: the gradients disagree on the batch size: {sizes}")
    return next(iter(sizes.values()))


def _rows(g: Tensor, batch: int) -> Tensor:
    """[B, n]: one row per example (also for an empty batch, where reshape(B, -1) is ambiguous)."""
    return g.reshape(batch, math.prod(g.shape[1:]))


def _check_max_norm(max_norm: float, api: str) -> None:
    if not max_norm > 0:
        raise ValueError(f"{api}: max_norm must be positive, got {max_norm}")


# --- per-sample gradients and clipping ---------------------------------------------------------

def per_sample_grads(model: nn.Module, loss_fn: Callable[[Any, Any], Tensor], params: Grads,
                     inputs: Any, targets: Any, *, buffers: Optional[Grads] = None) -> Grads:
    """{name: [B, *shape]}: for each example i, the gradient with respect to `params` of
    loss_fn(model(inputs[i:i+1]), targets[i:i+1]). `inputs` and `targets` are tensors (or
    pytrees of tensors) whose first dimension is the batch."""
    api = "per_sample_grads(model, loss_fn, params, inputs, targets)"
    if not isinstance(params, dict) or not params:
        raise TypeError(f"{api}: params should be a non-empty dict {{name: tensor}}, as "
                        f"dict(model.named_parameters()) gives, got {type(params).__name__}")
    leaves = tree_flatten((inputs, targets))[0]
    sizes = {t.shape[0] if isinstance(t, Tensor) and t.dim() else None for t in leaves}
    if not leaves or None in sizes or len(sizes) > 1:
        shapes = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in leaves]
        raise ValueError(f"{api}: inputs and targets should be tensors sharing their first "
                         f"(batch) dimension, got {shapes}")

    def loss(p, x, y):
        state = p if buffers is None else (p, buffers)
        def one(t):  # the model and the loss see a batch of one example
            return t.unsqueeze(0)

        return loss_fn(functional_call(model, state, tree_map(one, (x,))), tree_map(one, y))

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, inputs, targets)


def per_sample_norms(grads: Grads) -> Tensor:
    """[B]: the L2 norm of each example's gradient, taken over all of its tensors together."""
    batch = _check_grads(grads, "per_sample_norms(grads)")
    norms = [torch.linalg.vector_norm(_rows(g, batch), dim=1) for g in grads.values()]
    device = norms[0].device  # a model split over devices: the norms meet on the first one
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms], dim=1), dim=1)


def _clip_factors(grads: Grads, max_norm: float) -> Tensor:
    return (max_norm / (per_sample_norms(grads) + _EPS)).clamp(max=1.0)


def clip_per_sample(grads: Grads, max_norm: float) -> Grads:
    """Each example's gradient scaled by min(1, max_norm / its norm): a norm of at most max_norm."""
    api = "clip_per_sample(grads, max_norm)"
    _check_grads(grads, api)
    _check_max_norm(max_norm, api)
    factors = _clip_factors(grads, max_norm)
    return {k: g * factors.to(g.device, g.dtype).view(-1, *[1] * (g.dim() - 1))
            for k, g in grads.items()}


def clipped_sum(grads: Grads, max_norm: float) -> Grads:
    """{name: shape}: the sum over the batch of clip_per_sample(grads, max_norm), computed as
    one matrix-vector product per tensor, without the clipped per-sample gradients."""
    api = "clipped_sum(grads, max_norm)"
    batch = _check_grads(grads, api)
    _check_max_norm(max_norm, api)
    factors = _clip_factors(grads, max_norm)
    return {k: (factors.to(g.device, g.dtype) @ _rows(g, batch)).view(g.shape[1:])
            for k, g in grads.items()}


def add_noise(grads: Grads, noise_multiplier: float, max_norm: float,
              generator: torch.Generator) -> Grads:
    """`grads` plus Gaussian noise of std noise_multiplier * max_norm drawn from `generator`,
    one tensor after the other in the dict's order. Seed the generator alike on every rank
    to draw the same noise everywhere."""
    api = "add_noise(grads, noise_multiplier, max_norm, generator)"
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{api}: generator should be a torch.Generator (seeded by the caller), "
                        f"got {type(generator).__name__}")
    if not isinstance(grads, dict) or not all(isinstance(g, Tensor) for g in grads.values()):
        raise TypeError(f"{api}: expected a dict {{name: tensor}}, got {type(grads).__name__}")
    if not noise_multiplier >= 0:
        raise ValueError(f"{api}: noise_multiplier must be non-negative, got {noise_multiplier}")
    _check_max_norm(max_norm, api)
    std = noise_multiplier * max_norm
    out = {}
    for k, g in grads.items():
        if g.device.type != generator.device.type:
            raise ValueError(f"{api}: the generator is on {generator.device} but gradient {k!r} "
                             f"is on {g.device}; make the generator where the gradients live, "
                             f"torch.Generator(device=...)")
        out[k] = g if std == 0 else g + torch.normal(
            0.0, std, g.shape, generator=generator, dtype=g.dtype, device=g.device)
    return out


# --- across processes --------------------------------------------------------------------------

def _wait(work: Any, timeout: Optional[datetime.timedelta], api: str, what: str) -> None:
    try:
        if timeout is None:
            work.wait()
        else:
            work.wait(timeout)
    except RuntimeError as e:
        raise RuntimeError(f"{api}: {what} did not complete: {e}") from e


def _check_distributed(api: str) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"{api}: torch.distributed is not initialized; call "
                           f"torch.distributed.init_process_group first (gloo for CPU tensors, "
                           f"nccl for CUDA ones)")


def _buckets(tensors: List[Tensor], cap_bytes: int) -> List[List[int]]:
    """Indices of `tensors` grouped by device and dtype, each group cut at cap_bytes."""
    groups: Dict[Any, List[List[int]]] = {}
    filled: Dict[Any, int] = {}  # bytes in each group's last bucket
    for i, t in enumerate(tensors):
        key, size = (t.device, t.dtype), t.numel() * t.element_size()
        buckets = groups.setdefault(key, [[]])
        if buckets[-1] and filled[key] + size > cap_bytes:
            buckets.append([])
            filled[key] = 0
        buckets[-1].append(i)
        filled[key] = filled.get(key, 0) + size
    return [b for buckets in groups.values() for b in buckets]


def all_reduce_sum(tensors: Grads, *, group: Any = None, bucket_mb: float = 25.0,
                   timeout: Optional[datetime.timedelta] = None) -> Grads:
    """{name: tensor}: each tensor summed over the ranks of `group` (the default group when
    None). The tensors are flattened into buckets of at most `bucket_mb` megabytes, one
    all_reduce per bucket; the inputs are left as they are. `timeout` bounds the wait."""
    api = "all_reduce_sum(tensors)"
    _check_distributed(api)
    if not isinstance(tensors, dict) or not all(isinstance(t, Tensor) for t in tensors.values()):
        raise TypeError(f"{api}: expected a dict {{name: tensor}}, got {type(tensors).__name__}")
    names, values = list(tensors), list(tensors.values())
    out: List[Optional[Tensor]] = [None] * len(values)
    pending = []
    for bucket in _buckets(values, int(bucket_mb * 2**20)):
        flat = torch.cat([values[i].reshape(-1) for i in bucket])
        pending.append((bucket, flat, dist.all_reduce(flat, group=group, async_op=True)))
    for n, (bucket, flat, work) in enumerate(pending):
        _wait(work, timeout, api, f"the all_reduce of bucket {n + 1} of {len(pending)}")
        for i, piece in zip(bucket, flat.split([values[i].numel() for i in bucket])):
            out[i] = piece.view(values[i].shape)
    return dict(zip(names, out))


def dp_grads(model: nn.Module, loss_fn: Callable[[Any, Any], Tensor], params: Grads,
             inputs: Any, targets: Any, *, max_norm: float, noise_multiplier: float,
             generator: torch.Generator, batch_size: Optional[int] = None,
             buffers: Optional[Grads] = None, group: Any = None,
             timeout: Optional[datetime.timedelta] = None) -> Grads:
    """{name: shape}: the DP-SGD gradient of one step, (the sum of clipped per-sample gradients
    + noise) / batch_size. Under an initialized torch.distributed, `inputs` and `targets` are
    this rank's shard and the clipped sums are added across the ranks of `group` before the
    noise (see NOTE: [Data-parallel DP-SGD]). `batch_size` defaults to the number of examples
    in the step (over all ranks); with Poisson sampling pass the expected batch size. The
    result carries no autograd history: the step is not differentiated."""
    api = "dp_grads(model, loss_fn, params, inputs, targets)"
    _check_max_norm(max_norm, api)
    if isinstance(params, dict):  # a graph back to the parameters would only cost memory
        params = {k: v.detach() if isinstance(v, Tensor) else v for k, v in params.items()}
    grads = per_sample_grads(model, loss_fn, params, inputs, targets, buffers=buffers)
    summed = clipped_sum(grads, max_norm)
    count = next(iter(grads.values())).shape[0]
    if dist.is_available() and dist.is_initialized():
        if batch_size is None:  # counted in the gradients' bucket: no collective of its own
            anchor = next(iter(summed.values()))
            wide = anchor.dtype in (torch.float32, torch.float64)  # a count exact to 2**24
            summed[_COUNT] = torch.tensor([count], device=anchor.device,
                                          dtype=anchor.dtype if wide else torch.float32)
        summed = all_reduce_sum(summed, group=group, timeout=timeout)
        if batch_size is None:
            count = round(summed.pop(_COUNT).item())
    if batch_size is None and count == 0:
        raise ValueError(f"{api}: the step has no examples (on any rank) to average over; "
                         f"pass batch_size, the expected batch size, to step on noise alone")
    noisy = add_noise(summed, noise_multiplier, max_norm, generator)
    scale = 1.0 / (count if batch_size is None else batch_size)
    return {k: g * scale for k, g in noisy.items()}


def gather_ensemble(predictions: Tensor, *, group: Any = None,
                    timeout: Optional[datetime.timedelta] = None) -> Tensor:
    """[M, ...]: this rank's [m, ...] predictions (one row per model it holds, as
    vmap over stack_module_state gives) concatenated with every other rank's, in rank order.
    Ranks may hold different numbers of models; the other dimensions must agree. The result
    carries no autograd history."""
    api = "gather_ensemble(predictions)"
    _check_distributed(api)
    if not isinstance(predictions, Tensor) or predictions.dim() == 0:
        what = "a 0-d tensor" if isinstance(predictions, Tensor) else type(predictions).__name__
        raise TypeError(f"{api}: expected a tensor whose first dimension is the models, got "
                        f"{what}")
    world = dist.get_world_size(group)
    # one small collective for every rank's shape, so that uneven counts pad instead of hang
    shape = torch.tensor([predictions.dim(), *predictions.shape, *[0] * 7][:8],
                         device=predictions.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    _wait(dist.all_gather(shapes, shape, group=group, async_op=True), timeout, api,
          "the all_gather of the prediction shapes")
    dims = [s.tolist() for s in shapes]
    if predictions.dim() > 7 or any(d[0] != predictions.dim() or d[2:] != dims[0][2:]
                                    for d in dims):
        raise ValueError(f"{api}: the ranks' predictions should agree on every dimension but "
                         f"the first (and have at most 7), got shapes "
                         f"{[tuple(d[1:1 + d[0]]) for d in dims]}")
    most = max(d[1] for d in dims)
    padded = predictions.new_zeros((most, *predictions.shape[1:]))
    padded[: predictions.shape[0]] = predictions.detach()  # a collective is not differentiated
    gathered = [torch.empty_like(padded) for _ in range(world)]
    _wait(dist.all_gather(gathered, padded, group=group, async_op=True), timeout, api,
          "the all_gather of the predictions")
    return torch.cat([g[: d[1]] for g, d in zip(gathered, dims)])
