"""Max pooling over windows that tile the input, lowered to a branch-free kernel on the CPU."""

from typing import Any, Callable, Optional, Sequence, Union

import torch

import functorch_lite._C  # noqa: F401  (defines torch.ops.functorch_lite)

aten = torch.ops.aten

# NOTE: [Non-overlapping max pooling without branches] (csrc/compile/max_pool.cpp) says why.
# inductor_compile replaces max_pool2d_with_indices by functorch_lite::max_pool2d_tiled when
# the windows tile a float CPU input; inductor calls that kernel as an extern kernel. The
# backward (max_pool2d_with_indices_backward, which only reads the indices) keeps inductor's
# lowering, and so does every other configuration. _tiling_window is the test tilingWindow
# (csrc/compile/max_pool.h) makes for the vmap rule, made here on the fake tensors of a trace.


def _pair(value: Union[int, Sequence[int]], default: tuple) -> tuple:
    if isinstance(value, int):
        return (value, value)
    if len(value) == 0:
        return default
    return tuple(value) * 2 if len(value) == 1 else tuple(value)


def _tiling_window(
    x: torch.Tensor, kernel_size: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool
) -> Optional[tuple[int, int]]:
    """(kh, kw) when the pooling windows tile the float CPU input without overlap, else None."""
    kernel = _pair(kernel_size, ())
    if (
        x.device.type != "cpu"
        or x.dtype not in (torch.float32, torch.float64)
        or x.dim() not in (3, 4)
        or _pair(stride, kernel) != kernel
        or _pair(padding, (0, 0)) != (0, 0)
        or _pair(dilation, (1, 1)) != (1, 1)
        or ceil_mode
        or x.shape[-2] < kernel[0]
        or x.shape[-1] < kernel[1]
    ):
        return None
    return kernel


def max_pool2d_with_indices(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = (),
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
) -> Any:
    window = _tiling_window(x, kernel_size, stride, padding, dilation, ceil_mode)
    if window is None:
        return NotImplemented
    return torch.ops.functorch_lite.max_pool2d_tiled(x, *window)


def pooling_decompositions(fallbacks: dict) -> dict:
    """max_pool2d_with_indices as above, deferring to fallbacks[op] (if any) where it does not
    apply."""
    op = aten.max_pool2d_with_indices.default
    fallback: Optional[Callable] = fallbacks.get(op)

    def decompose(*args: Any, **kwargs: Any) -> Any:
        out = max_pool2d_with_indices(*args, **kwargs)
        if out is NotImplemented and fallback is not None:
            return fallback(*args, **kwargs)
        return out

    return {op: decompose}
