"""functorch_lite.experimental: the names of functorch.experimental."""
from functorch_lite._batch_norm import replace_all_batch_norm_modules_
from functorch_lite._functionalize import functionalize

__all__ = ["functionalize", "replace_all_batch_norm_modules_"]
