// Channels-last memory formats under vmap (clone, _to_copy, empty_like, ... with memory_format).
#include "batching/memory_format.h"

#include <vector>

#include "batching/rules.h"
#include "core/ivalues.h"
#include "core/wrappers.h"

namespace functorch_lite {

// NOTE: [Memory formats under vmap]
// memory_format=channels_last names a layout of a rank-4 tensor (channels_last_3d: rank 5), but
// the physical tensor under vmap has one dim more, and ATen refuses it. The operator runs with
// contiguous_format instead, and each batched output is then copied into the layout its samples
// would have had: per-sample channels-last strides, with the batch dim outermost (its stride is
// one sample's size), so `is_contiguous(memory_format=...)` holds for every sample.

std::optional<size_t> memoryFormatArgument(const c10::FunctionSchema& schema) {
  const auto& arguments = schema.arguments();
  for (size_t i = 0; i < arguments.size(); ++i) {
    if (arguments[i].name() == "memory_format") return i;
  }
  return std::nullopt;
}

std::optional<c10::MemoryFormat> takeSampleMemoryFormat(const c10::OperatorHandle& op,
                                                        torch::jit::Stack* stack,
                                                        size_t position) {
  c10::IValue& arg = (*stack)[stack->size() - op.schema().arguments().size() + position];
  if (arg.isNone()) return std::nullopt;
  const c10::MemoryFormat format = arg.toMemoryFormat();
  if (format != c10::MemoryFormat::ChannelsLast && format != c10::MemoryFormat::ChannelsLast3d) {
    return std::nullopt;
  }
  arg = c10::MemoryFormat::Contiguous;
  return format;
}

namespace {

at::Tensor laidOut(const at::Tensor& t, c10::MemoryFormat format, const LayerPtr& layer) {
  const int64_t rank = format == c10::MemoryFormat::ChannelsLast ? 4 : 5;
  Unwrapped u = unwrapAt(t, layer);
  if (!u.batched()) return t.contiguous(format);
  TORCH_CHECK(u.logicalRank() == rank, layer->api, ": required rank ", rank, " tensor to use ",
              rank == 4 ? "channels_last" : "channels_last_3d", " format");
  // Physical dims: batch, N, C, spatial...; per sample, C goes innermost.
  std::vector<int64_t> to_last{0, 1};
  for (int64_t d = 3; d <= rank; ++d) to_last.push_back(d);
  to_last.push_back(2);
  std::vector<int64_t> back{0, 1, rank};
  for (int64_t d = 2; d < rank; ++d) back.push_back(d);
  return makeBatched(batchFront(u).permute(to_last).contiguous().permute(back), 0, layer);
}

}  // namespace

void applySampleMemoryFormat(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                             c10::MemoryFormat format, const LayerPtr& layer) {
  const size_t num_returns = op.schema().returns().size();
  for (size_t i = stack->size() - num_returns; i < stack->size(); ++i) {
    mapTensors((*stack)[i], [&](const at::Tensor& t) { return laidOut(t, format, layer); });
  }
}

}  // namespace functorch_lite
