// functorch_lite::max_pool2d_tiled: max pooling over windows that tile the input, without
// branches on the data (see NOTE: [Non-overlapping max pooling without branches]).
#include "compile/max_pool.h"

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

namespace functorch_lite {
namespace {

// NOTE: [Non-overlapping max pooling without branches]
// max_pool2d_with_indices compares each window's elements with branches, eagerly and as
// inductor generates it; on ReLU outputs (half zeros) those branches are unpredictable and
// the 2x2 pooling in a per-sample-gradient CNN took 1.5 ms, longer than its convolutions.
// When the windows tile the input (stride == kernel_size, no padding or dilation, floor mode),
// inductor_compile lowers the operator to this kernel (functorch_lite/compile/_pooling.py).
// It walks each window in the eager order and keeps an element when
//   take = element > best  or  element is NaN
// (the eager CPU kernel's test: ties keep the first maximum, a NaN wins) for a whole row of
// outputs at once, as a vectorized select (omp simd; the build passes -fopenmp-simd), so no
// branch depends on the data.

template <typename T>
using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;

template <typename T>
void poolRows(const T* in, T* out, int64_t* indices, int64_t rows, int64_t height,
              int64_t width, int64_t kh, int64_t kw) {
  const int64_t out_h = height / kh, out_w = width / kw, window = kh * kw;
  // Per window position k: its offset from the window's corner, and its (row, column).
  std::vector<int64_t> offset(window), row_of(window), col_of(window);
  for (int64_t k = 0; k < window; ++k) {
    row_of[k] = k / kw;
    col_of[k] = k % kw;
    offset[k] = row_of[k] * width + col_of[k];
  }
  std::vector<Bits<T>> best_k(out_w);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t oh = r % out_h;
    const T* corner = in + (r / out_h) * height * width + oh * kh * width;
    T* best = out + r * out_w;
    for (int64_t ow = 0; ow < out_w; ++ow) best[ow] = corner[ow * kw];
    std::fill(best_k.begin(), best_k.end(), Bits<T>(0));
    for (int64_t k = 1; k < window; ++k) {
      const T* element = corner + offset[k];
      Bits<T>* chosen = best_k.data();
#pragma omp simd
      for (int64_t ow = 0; ow < out_w; ++ow) {
        const T value = element[ow * kw];
        const bool take = (value > best[ow]) | (value != value);
        best[ow] = take ? value : best[ow];
        chosen[ow] = take ? Bits<T>(k) : chosen[ow];
      }
    }
    for (int64_t ow = 0; ow < out_w; ++ow) {
      const Bits<T> k = best_k[ow];
      indices[r * out_w + ow] = (oh * kh + row_of[k]) * width + ow * kw + col_of[k];
    }
  }
}

std::vector<int64_t> pooledSizes(const at::Tensor& self, int64_t kh, int64_t kw) {
  TORCH_CHECK(self.dim() == 3 || self.dim() == 4,
              "max_pool2d_tiled: expected a 3-D or 4-D input, got ", self.dim(), "-D");
  TORCH_CHECK(kh > 0 && kw > 0 && self.size(-2) >= kh && self.size(-1) >= kw,
              "max_pool2d_tiled: the window ", kh, "x", kw, " does not fit the input");
  auto sizes = self.sizes().vec();
  sizes[sizes.size() - 2] /= kh;
  sizes[sizes.size() - 1] /= kw;
  return sizes;
}

std::tuple<at::Tensor, at::Tensor> maxPool2dTiled(const at::Tensor& self, int64_t kh,
                                                   int64_t kw) {
  auto sizes = pooledSizes(self, kh, kw);
  auto input = self.contiguous();
  auto out = at::empty(sizes, self.options());
  auto indices = at::empty(sizes, self.options().dtype(at::kLong));
  const int64_t rows = out.numel() / sizes.back();
  if (rows == 0 || sizes.back() == 0) return {out, indices};
  AT_DISPATCH_FLOATING_TYPES(self.scalar_type(), "max_pool2d_tiled", [&] {
    poolRows<scalar_t>(input.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                       indices.mutable_data_ptr<int64_t>(), rows, self.size(-2),
                       self.size(-1), kh, kw);
  });
  return {out, indices};
}

std::tuple<at::Tensor, at::Tensor> maxPool2dTiledMeta(const at::Tensor& self, int64_t kh,
                                                       int64_t kw) {
  auto sizes = pooledSizes(self, kh, kw);
  return {at::empty(sizes, self.options()),
          at::empty(sizes, self.options().dtype(at::kLong))};
}

}  // namespace

std::optional<std::pair<int64_t, int64_t>> tilingWindow(const at::Tensor& self,
                                                        at::IntArrayRef kernel_size,
                                                        at::IntArrayRef stride,
                                                        at::IntArrayRef padding,
                                                        at::IntArrayRef dilation, bool ceil_mode) {
  auto pair = [](at::IntArrayRef v, int64_t fill) -> std::pair<int64_t, int64_t> {
    if (v.empty()) return {fill, fill};
    return {v[0], v.size() == 1 ? v[0] : v[1]};
  };
  if (kernel_size.empty() || kernel_size.size() > 2) return std::nullopt;
  const auto kernel = pair(kernel_size, 0);
  const auto strides = stride.empty() ? kernel : pair(stride, 0);
  using Pair = std::pair<int64_t, int64_t>;
  const bool tiles = strides == kernel && pair(padding, 0) == Pair{0, 0} &&
                     pair(dilation, 1) == Pair{1, 1} && !ceil_mode;
  const bool supported = self.device().is_cpu() && (self.dim() == 3 || self.dim() == 4) &&
                         (self.scalar_type() == at::kFloat || self.scalar_type() == at::kDouble);
  if (!tiles || !supported || kernel.first < 1 || kernel.second < 1 ||
      self.size(-2) < kernel.first || self.size(-1) < kernel.second) {
    return std::nullopt;
  }
  return kernel;
}

TORCH_LIBRARY(functorch_lite, m) {
  m.def("max_pool2d_tiled(Tensor self, int kh, int kw) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(functorch_lite, CPU, m) { m.impl("max_pool2d_tiled", &maxPool2dTiled); }

TORCH_LIBRARY_IMPL(functorch_lite, Meta, m) {
  m.impl("max_pool2d_tiled", &maxPool2dTiledMeta);
}

}  // namespace functorch_lite
