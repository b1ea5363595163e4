// functorch_lite::max_pool2d_tiled, and when max_pool2d_with_indices may use it.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <utility>

namespace functorch_lite {

// The window (kh, kw) when max_pool2d_with_indices(self, kernel_size, stride, padding,
// dilation, ceil_mode) has windows that tile `self` and the tiled kernel takes `self` (a 3-D
// or 4-D float or double CPU tensor); nullopt otherwise.
std::optional<std::pair<int64_t, int64_t>> tilingWindow(const at::Tensor& self,
                                                        at::IntArrayRef kernel_size,
                                                        at::IntArrayRef stride,
                                                        at::IntArrayRef padding,
                                                        at::IntArrayRef dilation, bool ceil_mode);

}  // namespace functorch_lite
