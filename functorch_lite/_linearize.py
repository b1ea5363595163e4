"""linearize: the output of a function and its Jacobian-vector product at fixed primals."""

import torch
from torch.fx.experimental import const_fold
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from functorch_lite import _C, _dynamo
from functorch_lite._autodiff import _name
from functorch_lite._forward import _check_tensors, _jvp_with_argnums

# NOTE: [linearize traces on the second call]
# jvp_fn(*tangents) is jvp at the saved primals. Its first call runs jvp itself, which also
# recomputes func's forward. From the second call on, when that is possible, it runs a graph
# traced once with make_fx from that jvp, in which everything depending on the primals alone
# has been folded into constants (torch.fx's const_fold): only the linear map in the tangents
# is left, without making one-off callers pay for the trace.
# Tracing happens only where no transform is live (a live grad level would wrap the factory
# functions the trace calls), and only when no primal is a wrapper or requires grad (a folded
# constant would cut the graph back to the primals); otherwise, or when tracing fails, calls
# keep running jvp. The traced graph is plain aten ops, so it runs under transforms too:
# vmap(jvp_fn) after two calls batches the linear map alone.


@_dynamo.direct
def linearize(func, *primals):
    """Returns (func(*primals), jvp_fn) where jvp_fn(*tangents) is J @ tangents at primals."""
    api = f"linearize({_name(func)}, *primals)"
    output = func(*primals)
    flat_primals, primals_spec = pytree.tree_flatten(primals)
    _check_tensors(flat_primals, api, "primals")
    return output, _LinearMap(func, primals, flat_primals, primals_spec, api)


class _LinearMap:
    """jvp_fn; see NOTE: [linearize traces on the second call]."""

    def __init__(self, func, primals, flat_primals, primals_spec, api):
        self.func, self.primals, self.api = func, primals, api
        self.flat_primals, self.primals_spec = flat_primals, primals_spec
        self.calls = 0
        self.graph = None  # the folded graph, once traced
        self.out_spec = None
        self.traceable = _C._layer_depth() == 0 and not any(
            p.requires_grad or _C._is_batched(p) or _C._is_grad_wrapper(p) for p in flat_primals
        )

    def __call__(self, *tangents):
        return _dynamo._run(self._call, *tangents)  # NOTE: [torch.compile over our transforms]

    def _call(self, *tangents):
        flat_tangents = self._check(tangents)
        self.calls += 1
        if self.graph is None and self.traceable and self.calls >= 2 and _C._layer_depth() == 0:
            self._trace(flat_tangents)
        if self.graph is not None:  # plain aten ops: they compose with transforms
            return pytree.tree_unflatten(list(self.graph(*flat_tangents)), self.out_spec)
        return self._jvp(tangents)

    def _jvp(self, tangents):
        return _jvp_with_argnums(
            self.func, self.primals, tangents, None, False, False, self.api, "linearize"
        )[1]

    def _trace(self, flat_tangents):
        def flat_jvp(*flat):
            out = self._jvp(pytree.tree_unflatten(list(flat), self.primals_spec))
            leaves, self.out_spec = pytree.tree_flatten(out)
            return leaves

        try:
            with torch.no_grad():
                traced = make_fx(flat_jvp)(*[t.detach() for t in flat_tangents])
            folded = const_fold.split_const_subgraphs(traced)
            folded.run_folding()
        except Exception:  # func cannot be traced: keep running jvp (see the NOTE)
            self.traceable = False
            return
        self.graph = folded

    def _check(self, tangents):
        flat_tangents, tangents_spec = pytree.tree_flatten(tangents)
        if tangents_spec != self.primals_spec:
            raise RuntimeError(
                f"{self.api}: expected the tangents passed to jvp_fn to have the structure of the "
                f"primals ({self.primals_spec}), got {tangents_spec}."
            )
        for i, (p, t) in enumerate(zip(self.flat_primals, flat_tangents)):
            for what in ("shape", "device", "dtype"):
                if getattr(p, what) != getattr(t, what):
                    raise RuntimeError(
                        f"{self.api}: tangent {i} has {what} {getattr(t, what)} but its primal "
                        f"has {what} {getattr(p, what)}."
                    )
        return flat_tangents
