"""functorch_lite: composable function transforms for PyTorch.

`import functorch_lite as functorch` gives the names of functorch and of torch's func namespace.
"""
import torch  # loaded before the extension, which links against libtorch

from functorch_lite import _C

if _C._built_torch_release != ".".join(torch.__version__.split(".")[:2]):
    raise ImportError(
        f"functorch_lite was built against torch {_C._built_torch_release} but torch "
        f"{torch.__version__} is installed: rebuild it (`make build`, or reinstall with "
        f"`pip install --no-build-isolation .`)"
    )

from functorch_lite import _custom_ops, _guards, _repr  # noqa: E402, F401
from functorch_lite._autodiff import grad, grad_and_value, vjp
from functorch_lite._forward import jvp
from functorch_lite._linearize import linearize
from functorch_lite._memory_pool import (
    empty_memory_pool,
    is_memory_pool_enabled,
    memory_pool_stats,
    set_memory_pool_enabled,
    set_memory_pool_limit,
)
from functorch_lite._jacobians import hessian, jacfwd, jacrev
from functorch_lite._batch_norm import replace_all_batch_norm_modules_
from functorch_lite._functional_call import functional_call
from functorch_lite._functionalize import functionalize
from functorch_lite._module_state import (
    FunctionalModule,
    FunctionalModuleWithBuffers,
    combine_state_for_ensemble,
    make_functional,
    make_functional_with_buffers,
    stack_module_state,
)
from functorch_lite._rearrange import rearrange
from functorch_lite._repr import debug_unwrap
from functorch_lite._vmap import vmap
from functorch_lite import dp  # DP-SGD building blocks: functorch_lite.dp.<name>

# functorch re-exports torch's tracer under this name; it is a building block, not a transform
from torch.fx.experimental.proxy_tensor import make_fx

_guards.install()
_repr.install()
_custom_ops.install()  # NOTE: [Vmap rules registered from Python]

__all__ = [
    "FunctionalModule",
    "FunctionalModuleWithBuffers",
    "combine_state_for_ensemble",
    "debug_unwrap",
    "empty_memory_pool",
    "functional_call",
    "functionalize",
    "grad",
    "grad_and_value",
    "hessian",
    "is_memory_pool_enabled",
    "jacfwd",
    "jacrev",
    "jvp",
    "linearize",
    "make_functional",
    "make_functional_with_buffers",
    "make_fx",
    "memory_pool_stats",
    "rearrange",
    "replace_all_batch_norm_modules_",
    "set_memory_pool_enabled",
    "set_memory_pool_limit",
    "stack_module_state",
    "vjp",
    "vmap",
]
