// Pooling, upsampling, padding, unfolding and grid sampling (and their backward ops): operators
// whose leading dim is independent samples, so the batch folds into it.
#include <ATen/core/grad_mode.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>

#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "batching/rules.h"
#include "compile/max_pool.h"
#include "core/ivalues.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

// NOTE: [Batching by folding into the leading dim]
// Pooling, upsampling, padding, im2col and grid_sample treat their leading dim (N, or C for an
// unbatched [C, H, W] input) as independent planes. So every tensor argument gets its batch
// dim in front (expanded when unbatched) and merged into its first logical dim,
// [B, N, ...] -> [B*N, ...], which keeps the rank the operator expects; every output is split
// again, [B*N, ...] -> [B, N, ...]. Size arguments that describe a whole input (the input_size
// of upsampling backward ops) get their first entry multiplied by the batch size.
// `kernel`, when given, runs the operator on the folded arguments instead of op.callBoxed.
using Kernel = void (*)(const c10::OperatorHandle&, torch::jit::Stack*);

BatchRule foldRule(std::vector<size_t> size_args = {}, Kernel kernel = nullptr) {
  return [size_args, kernel](const c10::OperatorHandle& op, torch::jit::Stack* stack,
                             const LayerPtr& layer) {
    const int64_t B = layer->batch_size;
    const size_t num_args = op.schema().arguments().size();
    const size_t begin = stack->size() - num_args;
    for (size_t i = begin; i < stack->size(); ++i) {
      mapTensors((*stack)[i], [&](const at::Tensor& t) {
        Unwrapped u = unwrapAt(t, layer);
        at::Tensor front = batchFrontExpanded(u, B);
        if (u.logicalRank() == 0) return front;
        // some kernels index their inputs as contiguous: an expanded operand (a size-1 N folded
        // with a stride-0 batch dim is still a view) must be materialized
        return mergeBatchInto(front, 0).contiguous();
      });
    }
    for (size_t i : size_args) {
      auto sizes = (*stack)[begin + i].toSymIntVector();
      sizes[0] = sizes[0] * B;
      (*stack)[begin + i] = sizes;
    }
    if (kernel != nullptr) {
      kernel(op, stack);
    } else {
      op.callBoxed(stack);
    }
    const size_t num_returns = op.schema().returns().size();
    for (size_t j = stack->size() - num_returns; j < stack->size(); ++j) {
      mapTensors((*stack)[j], [&](const at::Tensor& t) {
        return makeBatched(splitBatchOutOf(t, 0, B), 0, layer);
      });
    }
  };
}

// NOTE: [Tiled max pooling under vmap]
// Folded, a batch of 2x2 poolings is one max_pool2d_with_indices over B*N planes, which the
// eager kernel runs with branches on the data (NOTE: [Non-overlapping max pooling without
// branches]). When the windows tile the input, functorch_lite::max_pool2d_tiled computes the
// same values and indices without them. It is used only on a plain CPU tensor: one that no
// transform wraps, autograd does not record (it has no derivative formula of its own; the
// transforms record max_pool2d_with_indices at their own levels, above this one) and no
// Python mode sees (make_fx traces through vmap into aten graphs).
bool plainForTiledKernel(const at::Tensor& t) {
  const c10::DispatchKeySet ignored = c10::autograd_dispatch_keyset |
                                      c10::autocast_dispatch_keyset |
                                      c10::DispatchKeySet(c10::DispatchKey::ADInplaceOrView);
  return (t.key_set() - ignored).highestPriorityTypeId() == c10::DispatchKey::CPU &&
         !(at::GradMode::is_enabled() && t.requires_grad()) &&
         !c10::impl::TorchDispatchModeTLS::any_modes_set();
}

void maxPool2dKernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const size_t begin = stack->size() - op.schema().arguments().size();
  const at::Tensor self = (*stack)[begin].toTensor();
  std::optional<std::pair<int64_t, int64_t>> window;
  if (plainForTiledKernel(self)) {
    window = tilingWindow(self, (*stack)[begin + 1].toIntVector(),
                          (*stack)[begin + 2].toIntVector(), (*stack)[begin + 3].toIntVector(),
                          (*stack)[begin + 4].toIntVector(), (*stack)[begin + 5].toBool());
  }
  if (!window) {
    op.callBoxed(stack);
    return;
  }
  static const auto tiled =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("functorch_lite::max_pool2d_tiled", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, int64_t)>();
  auto [values, indices] = tiled.call(self, window->first, window->second);
  torch::jit::drop(*stack, op.schema().arguments().size());
  torch::jit::push(*stack, std::move(values), std::move(indices));
}

const RuleTable kPooling({
    {"aten::max_pool1d", foldRule()},
    {"aten::max_pool2d_with_indices", foldRule({}, maxPool2dKernel)},
    {"aten::max_pool2d_with_indices_backward", foldRule()},
    {"aten::max_pool3d_with_indices", foldRule()},
    {"aten::max_pool3d_with_indices_backward", foldRule()},
    {"aten::avg_pool2d", foldRule()},
    {"aten::avg_pool2d_backward", foldRule()},
    {"aten::avg_pool3d", foldRule()},
    {"aten::avg_pool3d_backward", foldRule()},
    {"aten::_adaptive_avg_pool2d", foldRule()},
    {"aten::_adaptive_avg_pool2d_backward", foldRule()},
    {"aten::_adaptive_avg_pool3d", foldRule()},
    {"aten::_adaptive_avg_pool3d_backward", foldRule()},
    {"aten::adaptive_max_pool2d", foldRule()},
    {"aten::adaptive_max_pool2d_backward", foldRule()},
    {"aten::adaptive_max_pool3d", foldRule()},
    {"aten::adaptive_max_pool3d_backward", foldRule()},
    {"aten::max_unpool2d", foldRule()},
    {"aten::max_unpool3d", foldRule()},
});

const RuleTable kUpsampling({
    {"aten::upsample_nearest1d", foldRule()},
    {"aten::upsample_nearest2d", foldRule()},
    {"aten::upsample_nearest3d", foldRule()},
    {"aten::_upsample_nearest_exact1d", foldRule()},
    {"aten::_upsample_nearest_exact2d", foldRule()},
    {"aten::_upsample_nearest_exact3d", foldRule()},
    {"aten::upsample_linear1d", foldRule()},
    {"aten::upsample_bilinear2d", foldRule()},
    {"aten::_upsample_bilinear2d_aa", foldRule()},
    {"aten::upsample_bicubic2d", foldRule()},
    {"aten::_upsample_bicubic2d_aa", foldRule()},
    {"aten::upsample_trilinear3d", foldRule()},
    {"aten::upsample_nearest1d_backward", foldRule({2})},
    {"aten::upsample_nearest2d_backward", foldRule({2})},
    {"aten::upsample_nearest3d_backward", foldRule({2})},
    {"aten::_upsample_nearest_exact1d_backward", foldRule({2})},
    {"aten::_upsample_nearest_exact2d_backward", foldRule({2})},
    {"aten::_upsample_nearest_exact3d_backward", foldRule({2})},
    {"aten::upsample_linear1d_backward", foldRule({2})},
    {"aten::upsample_bilinear2d_backward", foldRule({2})},
    {"aten::_upsample_bilinear2d_aa_backward", foldRule({2})},
    {"aten::upsample_bicubic2d_backward", foldRule({2})},
    {"aten::_upsample_bicubic2d_aa_backward", foldRule({2})},
    {"aten::upsample_trilinear3d_backward", foldRule({2})},
});

const RuleTable kPadding({
    {"aten::reflection_pad1d", foldRule()},
    {"aten::reflection_pad2d", foldRule()},
    {"aten::reflection_pad3d", foldRule()},
    {"aten::reflection_pad1d_backward", foldRule()},
    {"aten::reflection_pad2d_backward", foldRule()},
    {"aten::reflection_pad3d_backward", foldRule()},
    {"aten::replication_pad1d", foldRule()},
    {"aten::replication_pad2d", foldRule()},
    {"aten::replication_pad3d", foldRule()},
    {"aten::replication_pad1d_backward", foldRule()},
    {"aten::replication_pad2d_backward", foldRule()},
    {"aten::replication_pad3d_backward", foldRule()},
});

const RuleTable kPlanes({
    {"aten::im2col", foldRule()},
    {"aten::col2im", foldRule()},
    {"aten::pixel_shuffle", foldRule()},
    {"aten::pixel_unshuffle", foldRule()},
    {"aten::channel_shuffle", foldRule()},
    {"aten::native_channel_shuffle", foldRule()},
    {"aten::grid_sampler_2d", foldRule()},
    {"aten::grid_sampler_2d_backward", foldRule()},
    {"aten::grid_sampler_3d", foldRule()},
    {"aten::grid_sampler_3d_backward", foldRule()},
});

}  // namespace

}  // namespace functorch_lite
