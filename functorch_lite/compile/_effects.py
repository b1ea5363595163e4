"""Error-checking operators with an ordered effect (aten._linalg_check_errors) in traced graphs."""

import contextlib
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch._C import _TorchDispatchModeKey
from torch._subclasses.functional_tensor import FunctionalTensor
from torch.utils._python_dispatch import TorchDispatchMode, _disable_infra_mode

# NOTE: [Error checks in traced graphs]
# linalg.inv, linalg.solve, linalg.cholesky, ... compute an *_ex operator and then call
# aten._linalg_check_errors(info, api, is_matrix), which raises on a singular (or otherwise
# failed) input and returns nothing. torch registers it as an operator with an ordered effect,
# so functionalization wants an effect token threaded through the graph for it. The graphs here
# have no tokens: instead, while tracing, the check skips functionalization (it only reads its
# input, so there is nothing to functionalize) and is recorded as it is. Being effectful, it
# survives dead-code elimination, and the partitioners put it in the forward graph when its
# input is a forward value (in the backward otherwise), so a compiled linalg.inv raises on a
# singular matrix like the eager one.
CHECKS = {torch.ops.aten._linalg_check_errors.default}


class RecordChecks(TorchDispatchMode):
    """Lets the error checks of CHECKS bypass functionalization while a function is traced."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if func in CHECKS and any(
            isinstance(a, FunctionalTensor) for a in pytree.tree_leaves((args, kwargs))
        ):
            def unwrap(t: FunctionalTensor) -> torch.Tensor:
                torch._sync(t)
                return torch._from_functional_tensor(t.elem)

            args, kwargs = pytree.tree_map_only(FunctionalTensor, unwrap, (args, kwargs))
            with contextlib.contextmanager(_disable_infra_mode)(_TorchDispatchModeKey.FUNCTIONAL):
                return func(*args, **kwargs)
        return func(*args, **kwargs)
