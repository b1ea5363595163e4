// Pooling, upsampling, padding, unfolding and grid sampling (and their backward ops): operators
// whose leading dim is independent samples, so the batch folds into it.
#include <c10/core/SymIntArrayRef.h>

#include <vector>

#include "batching/rules.h"
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
BatchRule foldRule(std::vector<size_t> size_args = {}) {
  return [size_args](const c10::OperatorHandle& op, torch::jit::Stack* stack,
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
    op.callBoxed(stack);
    const size_t num_returns = op.schema().returns().size();
    for (size_t j = stack->size() - num_returns; j < stack->size(); ++j) {
      mapTensors((*stack)[j], [&](const at::Tensor& t) {
        return makeBatched(splitBatchOutOf(t, 0, B), 0, layer);
      });
    }
  };
}

const RuleTable kPooling({
    {"aten::max_pool1d", foldRule()},
    {"aten::max_pool2d_with_indices", foldRule()},
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
