"""Batched OpInfo cases and the "vmap(op) equals the for-loop" check, shared by
test/test_vmap_opinfo.py and benchmarks/opinfo_coverage.py."""
import contextlib
import itertools
import warnings

import torch
from torch.utils import _pytree as pytree

# NOTE: [Batched OpInfo cases]
# Like functorch's test generator: for each OpInfo sample (float32, CPU, no grad), every tensor
# among (input, *args) is batched by stacking B per-sample variants along the batch dim, either
# dim 0 or the last dim (a non-zero dim), once alone and once all together; a last case batches
# every tensor at two nested vmap levels. The reference is a Python loop over the samples,
# stacked. kwargs stay unbatched (vmap maps positional arguments only).
# Each sample gets its own data, so that a rule mixing up samples, or one that reads the indices
# or mask of sample 0 for all of them, fails:
# - floating tensors are scaled by a positive factor, which keeps signs, zeros, symmetry and
#   positive-definiteness, so inputs stay in the op's domain;
# - integer and bool tensors (indices, masks, targets, repeats) are permuted: flipped along
#   every dim and/or rolled by one along every dim. Both map each slice along any dim onto a
#   slice (reordered), so an index stays in range, the values of one slice stay distinct when
#   they were (scatter), the number of true mask entries is kept (masked_scatter, and the
#   output shape of masked_select and nonzero), and per-sample results differ;
# - sorted 1-D integer tensors (offsets, boundaries, split points) are kept: permuting them
#   leaves the op's domain. So are integer tensors with one element (their valid range is not
#   known) and, necessarily, constant ones; bool tensors with one element are negated for odd
#   samples.
# test/test_vmap_per_sample_indices.py draws indices independently per sample instead, for the
# indexing, gather/scatter and mask rules.
B = 3
B_OUTER = 2
_SCALES = (1.0, 0.75, 0.5, 0.875, 0.625, 0.9)


class Skip(Exception):
    """This sample (or OpInfo) cannot be checked; the message says why."""


def _permute(t, k):
    """The k-th per-sample variant of an integer or bool tensor (see NOTE above)."""
    if t.dim() == 0 or t.numel() <= 1:
        return ~t if t.dtype == torch.bool and k % 2 else t.clone()
    if t.dim() == 1 and t.dtype != torch.bool and bool((t[1:] >= t[:-1]).all()):
        return t.clone()
    dims = tuple(range(t.dim()))
    if k % 2:
        t = t.flip(dims)
    if k >= 2:
        t = t.roll((1,) * len(dims), dims)
    return t.clone()


def _perturb(t, k):
    if k == 0:
        return t.clone()
    if t.is_floating_point() or t.is_complex():
        return t * _SCALES[k % len(_SCALES)]
    return _permute(t, k)


def _stack_copies(t, bdim, count, offset=0):
    copies = [_perturb(t, offset + k) for k in range(count)]
    return torch.stack(copies, dim=t.dim() if bdim == -1 else 0)


def _select(t, bdim, b):
    return t.select(bdim, b)


def flat_sample(sample):
    """(leaves, spec, kwargs, is_tensor) for op(sample.input, *sample.args, **sample.kwargs)."""
    leaves, spec = pytree.tree_flatten((sample.input, tuple(sample.args)))
    is_tensor = [isinstance(leaf, torch.Tensor) for leaf in leaves]
    return leaves, spec, dict(sample.kwargs), is_tensor


def _call(op, leaves, spec, kwargs):
    inp, args = pytree.tree_unflatten(list(leaves), spec)
    return op(inp, *args, **kwargs)


def _stack_outputs(outs):
    """Stacks a list of per-sample outputs (pytrees of tensors) along dim 0."""
    flats = [pytree.tree_flatten(o) for o in outs]
    spec = flats[0][1]
    for leaves, s in flats:
        if s != spec:
            raise Skip("the loop reference returns different structures per sample")
        for leaf in leaves:
            if not isinstance(leaf, torch.Tensor):
                raise Skip(f"the op returns a non-tensor ({type(leaf).__name__})")
    stacked = []
    for i in range(len(flats[0][0])):
        pieces = [leaves[i] for leaves, _ in flats]
        if any(p.shape != pieces[0].shape for p in pieces):
            raise Skip("the loop reference returns different shapes per sample")
        stacked.append(torch.stack(pieces))
    return pytree.tree_unflatten(stacked, spec)


class Case:
    """One batched call: vmap(vmap?(f, inner_dims), dims)(*batched) vs the loop's `expected`."""

    def __init__(self, op, spec, kwargs, batched, dims, inner_dims, name):
        self.op, self.spec, self.kwargs = op, spec, kwargs
        self.batched, self.dims, self.inner_dims, self.name = batched, dims, inner_dims, name

    def func(self, *leaves):
        return _call(self.op, leaves, self.spec, self.kwargs)

    def run(self, vmap):
        if self.inner_dims is None:
            return vmap(self.func, in_dims=self.dims)(*self.batched)
        return vmap(vmap(self.func, in_dims=self.inner_dims), in_dims=self.dims)(*self.batched)

    def reference(self):
        if self.inner_dims is None:
            return self._loop(self.batched, self.dims, self.func)
        def inner(*leaves):
            return self._loop(leaves, self.inner_dims, self.func)
        return self._loop(self.batched, self.dims, inner)

    @staticmethod
    def _loop(leaves, dims, fn):
        size = next(x.shape[d] for x, d in zip(leaves, dims) if d is not None)
        outs = []
        for b in range(size):
            outs.append(fn(*[x if d is None else _select(x, d, b) for x, d in zip(leaves, dims)]))
        return _stack_outputs(outs)


def batched_cases(op, sample, nested=True):
    """Every Case of one sample (see NOTE: [Batched OpInfo cases])."""
    leaves, spec, kwargs, is_tensor = flat_sample(sample)
    leaves = [x.detach() if t else x for x, t in zip(leaves, is_tensor)]
    tensor_slots = [i for i, t in enumerate(is_tensor) if t]
    if not tensor_slots:
        return []
    if any(leaves[i].layout != torch.strided for i in tensor_slots):
        raise Skip("sparse or other non-strided inputs")
    choices = []
    for bdim in (0, -1):
        for i in tensor_slots:
            choices.append(((i,), bdim, f"arg{i}@{bdim}"))
        if len(tensor_slots) > 1:
            choices.append((tuple(tensor_slots), bdim, f"all@{bdim}"))
    cases = []
    for slots, bdim, name in choices:
        batched = list(leaves)
        dims = [None] * len(leaves)
        for i in slots:
            batched[i] = _stack_copies(leaves[i], bdim, B)
            dims[i] = -1 if bdim == -1 else 0
        cases.append(Case(op, spec, kwargs, batched, tuple(dims), None, name))
    if nested:
        batched = list(leaves)
        dims = [None] * len(leaves)
        inner = [None] * len(leaves)
        for i in tensor_slots:
            rows = [_stack_copies(leaves[i], -1, B, offset=k) for k in range(B_OUTER)]
            batched[i] = torch.stack(rows)
            dims[i], inner[i] = 0, -1
        cases.append(Case(op, spec, kwargs, batched, tuple(dims), tuple(inner), "nested"))
    return cases


# NOTE: [OpInfo tolerances]
# Every comparison uses torch's float32 defaults (atol 1e-5, rtol 1.3e-6), for vmap(op) and
# vmap(vjp) alike, except the OpInfos named exactly below. Each entry says why batching changes
# the rounding and what was measured (max abs difference from the loop over the OpInfo's first 12
# samples, CPU, torch 2.13). torch.func's vmap needs the same entries on the same inputs.
_LOOSE = (1e-4, 1e-4)
_LOOSER = (1e-3, 1e-3)
VMAP_TOLERANCES = {
    # Sums a batch of matrix products into one matrix; the batched call reduces the stacked
    # products in another order than the per-sample kernel. 9.2e-5.
    "addbmm": _LOOSE,
    # The samples run as one convolution (the vmap dim folded into the batch or the groups), for
    # which the CPU backend picks another blocking of the long 3-d reduction. 2.4e-4.
    "nn.functional.conv_transpose3d": _LOOSE,
}
VJP_TOLERANCES = {
    # The weight gradient of a 3-d convolution reduces over batch and every output position;
    # batched, as one convolution, the order differs. conv3d 9.2e-5, conv_transpose3d 7.6e-5.
    "nn.functional.conv3d": _LOOSE,
    "nn.functional.conv_transpose3d": _LOOSE,
    # cumprod's backward is a reversed cumulative sum of products, vectorized differently on
    # the stacked samples. 1.2e-4.
    "masked.cumprod": _LOOSE,
    # The input gradient of layer norm, (g - mean(g) - x_hat * mean(g * x_hat)) / sigma, is a
    # difference of nearly equal terms: its absolute error is that of the terms, which the
    # batched reductions round differently, so elements near zero differ far beyond rtol.
    # layer_norm 3.7e-5; native_layer_norm, whose samples have larger terms, 1.5e-4.
    "nn.functional.layer_norm": _LOOSE,
    "native_layer_norm": _LOOSER,
}
_DEFAULT = (1e-5, 1.3e-6)


def tolerance(op_name):
    """(atol, rtol) for vmap(op) of the OpInfo named exactly `op_name` (NOTE: [OpInfo
    tolerances])."""
    return VMAP_TOLERANCES.get(op_name, _DEFAULT)


def vjp_tolerance(op_name):
    """(atol, rtol) for vmap(vjp(op)) (NOTE: [OpInfo tolerances])."""
    return VJP_TOLERANCES.get(op_name, _DEFAULT)


def check_case(case, vmap, op_name, expected=None):
    """Runs the case under `vmap` and compares it with the loop; raises AssertionError on a
    mismatch (anything the vmap call raises propagates)."""
    if expected is None:
        expected = case.reference()
    actual = case.run(vmap)
    atol, rtol = tolerance(op_name)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=True,
                               check_stride=False, check_layout=False,
                               msg=lambda m: f"{op_name} [{case.name}]: {m}")


def samples(op, max_samples=None):
    """The OpInfo's float32 CPU samples, generated from a fixed seed."""
    if torch.float32 not in op.supported_dtypes("cpu"):
        raise Skip("no float32 CPU support")
    torch.manual_seed(0)
    try:
        out = list(itertools.islice(op.sample_inputs("cpu", torch.float32, requires_grad=False),
                                    max_samples))
    except Exception as e:  # noqa: BLE001 - OpInfo generators raise anything
        raise Skip(f"sample generation failed: {type(e).__name__}: {e}") from None
    return out


def op_callable(op):
    return op.op


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def reference_or_skip(case):
    """The loop reference, or Skip when the loop itself errors (the op rejects the sliced
    inputs, or its output cannot be stacked)."""
    try:
        with quiet():
            return case.reference()
    except Skip:
        raise
    except Exception as e:  # noqa: BLE001
        raise Skip(f"the loop reference errors: {type(e).__name__}: {str(e)[:120]}") from None


_RANDOM_NAMES = ("rand", "dropout", "bernoulli", "multinomial", "normal", "uniform", "cauchy",
                 "exponential", "geometric", "log_normal", "rrelu")


def is_random_op(op):
    """Random OpInfos: their loop reference reseeds per call (OpInfo's wrapper_set_seed), so
    it cannot be compared with one batched call."""
    code = getattr(op.op, "__code__", None)
    if code is not None and "wrapper_set_seed" in code.co_names:
        return True
    name = op.name.split(".")[-1] if op.name.startswith("nn.functional.") else op.name
    return any(name.startswith(r) or name.endswith(r) for r in _RANDOM_NAMES) and \
        name not in ("normalize", "layer_norm")


def is_nondeterministic(case):
    """True when two runs of the loop reference differ (random operators)."""
    with quiet():
        try:
            a, b = case.reference(), case.reference()
        except Exception:  # noqa: BLE001
            return True
    try:
        torch.testing.assert_close(a, b, equal_nan=True, check_stride=False)
    except AssertionError:
        return True
    return False


# NOTE: [Batched vjp cases]
# Backward operators run under vmap whenever vmap(grad), vmap(vjp) or jacrev is used. A vjp case
# batches the differentiable (floating) tensors of a sample and a cotangent for each floating
# output, and computes vmap(lambda *p, ct: vjp(f, *p)[1](ct)) against a loop of
# torch.autograd.grad. Unused inputs get zero gradients in the reference.
class VjpCase:
    def __init__(self, op, spec, kwargs, leaves, diff_slots, batched, name):
        self.op, self.spec, self.kwargs, self.leaves = op, spec, kwargs, leaves
        self.diff_slots, self.batched, self.name = diff_slots, batched, name
        self.dims = (0,) * len(batched)

    def _f(self, *prims):
        leaves = list(self.leaves)
        for i, p in zip(self.diff_slots, prims):
            leaves[i] = p
        out = pytree.tree_leaves(_call(self.op, leaves, self.spec, self.kwargs))
        return tuple(o for o in out if isinstance(o, torch.Tensor) and o.is_floating_point())

    def run(self, vmap, vjp):
        n = len(self.diff_slots)

        def per_sample(*args):
            _, vjp_fn = vjp(self._f, *args[:n])
            return tuple(vjp_fn(tuple(args[n:])))
        return vmap(per_sample, in_dims=self.dims)(*self.batched)

    def reference(self):
        n = len(self.diff_slots)
        outs = []
        for b in range(self.batched[0].shape[0]):
            prims = [x[b].detach().requires_grad_(True) for x in self.batched[:n]]
            cts = [x[b] for x in self.batched[n:]]
            with torch.enable_grad():
                out = self._f(*prims)
                # outputs that do not depend on the inputs contribute nothing
                pairs = [(o, c) for o, c in zip(out, cts) if o.requires_grad]
                grads = torch.autograd.grad([o for o, _ in pairs], prims,
                                            [c for _, c in pairs], allow_unused=True)
            outs.append(tuple(torch.zeros_like(p) if g is None else g
                              for g, p in zip(grads, prims)))
        return _stack_outputs(outs)


def vjp_case(op, sample):
    """The VjpCase of one sample, or Skip."""
    if not op.supports_autograd:
        raise Skip("the op does not support autograd")
    leaves, spec, kwargs, is_tensor = flat_sample(sample)
    leaves = [x.detach() if t else x for x, t in zip(leaves, is_tensor)]
    diff = [i for i, t in enumerate(is_tensor) if t and leaves[i].is_floating_point()]
    if not diff:
        raise Skip("no floating tensor inputs")
    if any(leaves[i].layout != torch.strided for i, t in enumerate(is_tensor) if t):
        raise Skip("sparse or other non-strided inputs")
    probe = VjpCase(op.op, spec, kwargs, leaves, diff, [], "vjp")
    with quiet():
        try:
            outs = probe._f(*[leaves[i] for i in diff])
        except Exception as e:  # noqa: BLE001
            raise Skip(f"the op errors: {type(e).__name__}") from None
    if not outs:
        raise Skip("no floating outputs")
    gen = torch.Generator().manual_seed(0)
    cts = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]

    def make(slots):
        batched = [_stack_copies(leaves[i], 0, B) for i in slots]
        return VjpCase(op.op, spec, kwargs, leaves, slots, batched + [_stack_copies(c, 0, B)
                                                                      for c in cts], "vjp")
    case = make(diff)
    try:
        with quiet():
            case.reference()
    except RuntimeError as e:
        # some arguments (targets, ...) are not differentiable: the input alone then
        input_slots = [i for i in diff if i < len(pytree.tree_leaves(sample.input))]
        if "differentiable" not in str(e) or not input_slots or input_slots == diff:
            raise Skip(f"the loop reference errors: {str(e)[:80]}") from None
        case = make(input_slots)
    return case


def check_vjp_case(case, vmap, vjp, op_name, expected=None):
    if expected is None:
        expected = case.reference()
    actual = case.run(vmap, vjp)
    atol, rtol = vjp_tolerance(op_name)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=True,
                               check_stride=False, msg=lambda m: f"{op_name} [vjp]: {m}")
