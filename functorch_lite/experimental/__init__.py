"""functorch_lite.experimental: the names of functorch.experimental."""
from functorch_lite._batch_norm import replace_all_batch_norm_modules_
from functorch_lite._forward import jvp
from functorch_lite._functionalize import functionalize
from functorch_lite._jacobians import hessian, jacfwd
from functorch_lite._vmap import chunk_vmap

__all__ = [
    "chunk_vmap",
    "functionalize",
    "hessian",
    "jacfwd",
    "jvp",
    "replace_all_batch_norm_modules_",
]
