// Operators that take dim arguments: reductions, softmax, scans, and views such as select,
// slice, transpose, split and unbind. The batch dim goes in front and the dims shift by one.
#include <c10/core/WrapDimMinimal.h>

#include <vector>

#include "batching/rules.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

enum class DimKind { Dim, OptionalDim, DimList, OptionalDimList };

struct DimArg {
  size_t index;
  DimKind kind;
};

struct DimRuleSpec {
  std::vector<DimArg> dims;
  int64_t extra_rank = 0;         // the output has this many more dims (unsqueeze)
  bool reduction = false;         // an absent or empty dim list means every dim
  bool expand_unbatched = false;  // every tensor argument needs the batch dim
};

std::vector<int64_t> allLogicalDims(int64_t rank) {
  std::vector<int64_t> dims;
  for (int64_t d = 1; d <= rank; ++d) dims.push_back(d);
  return dims;
}

// NOTE: [Dim-shifting batching]
// Every batched tensor argument gets its batch dim in front, so a logical dim d (wrapped against
// the logical rank) is physical dim d + 1. A reduction over a per-sample 0-dim tensor runs on a
// size-1 dim that is squeezed away again. Outputs are batched at dim 0.
BatchRule dimRule(DimRuleSpec spec) {
  return [spec](const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
    const auto& args = op.schema().arguments();
    const size_t begin = stack->size() - args.size();
    std::vector<c10::IValue> arguments(stack->begin() + begin, stack->end());
    TORCH_CHECK(arguments[0].isTensor(), "dimRule expects a tensor first argument");
    const int64_t rank = unwrapAt(arguments[0].toTensor(), layer).logicalRank();
    const bool scalar_as_vector = spec.reduction && rank == 0;
    const int64_t wrap_rank = (scalar_as_vector ? 1 : rank) + spec.extra_rank;

    for (size_t i = 0; i < args.size(); ++i) {
      if (!arguments[i].isTensor()) continue;
      Unwrapped u = unwrapAt(arguments[i].toTensor(), layer);
      if (!u.batched() && !spec.expand_unbatched) continue;
      at::Tensor front = batchFrontExpanded(u, layer->batch_size);
      if (scalar_as_vector && u.logicalRank() == 0) front = front.unsqueeze(1);
      (*stack)[begin + i] = front;
    }
    for (const auto& dim : spec.dims) {
      c10::IValue& slot = (*stack)[begin + dim.index];
      switch (dim.kind) {
        case DimKind::OptionalDim:
          if (slot.isNone()) {
            // argmax(dim=None) and friends: reduce over the flattened sample
            auto& self = (*stack)[begin];
            self = self.toTensor().reshape({layer->batch_size, -1});
            slot = int64_t{1};
            break;
          }
          [[fallthrough]];
        case DimKind::Dim:
          slot = c10::maybe_wrap_dim(slot.toInt(), wrap_rank) + 1;
          break;
        case DimKind::OptionalDimList:
        case DimKind::DimList: {
          if (slot.isNone() || (spec.reduction && slot.toIntVector().empty())) {
            slot = allLogicalDims(scalar_as_vector ? 1 : rank);
            break;
          }
          std::vector<int64_t> dims = slot.toIntVector();
          for (auto& d : dims) d = c10::maybe_wrap_dim(d, wrap_rank) + 1;
          slot = dims;
          break;
        }
      }
    }
    op.callBoxed(stack);
    wrapOutputs(op, stack, layer, arguments, 0);
    if (scalar_as_vector) {
      const size_t num_returns = op.schema().returns().size();
      for (size_t j = stack->size() - num_returns; j < stack->size(); ++j) {
        auto& ret = (*stack)[j];
        if (!ret.isTensor()) continue;
        auto* b = asBatched(ret.toTensor());
        if (b != nullptr && b->layer() == layer && b->value().dim() == 2) {
          ret = makeBatched(b->value().squeeze(1), 0, layer);
        }
      }
    }
  };
}

DimRuleSpec reduce(std::vector<DimArg> dims) {
  DimRuleSpec spec;
  spec.dims = std::move(dims);
  spec.reduction = true;
  return spec;
}

DimRuleSpec shift(std::vector<DimArg> dims, int64_t extra_rank = 0) {
  DimRuleSpec spec;
  spec.dims = std::move(dims);
  spec.extra_rank = extra_rank;
  return spec;
}

DimRuleSpec shiftAll(std::vector<DimArg> dims) {
  DimRuleSpec spec = reduce(std::move(dims));
  spec.expand_unbatched = true;
  return spec;
}

constexpr DimKind kDim = DimKind::Dim;
constexpr DimKind kOptDim = DimKind::OptionalDim;
constexpr DimKind kDims = DimKind::DimList;
constexpr DimKind kOptDims = DimKind::OptionalDimList;

const RuleTable kReductions({
    {"aten::sum.dim_IntList", dimRule(reduce({{1, kOptDims}}))},
    {"aten::mean.dim", dimRule(reduce({{1, kOptDims}}))},
    {"aten::nansum", dimRule(reduce({{1, kOptDims}}))},
    {"aten::prod.dim_int", dimRule(reduce({{1, kDim}}))},
    {"aten::amax", dimRule(reduce({{1, kDims}}))},
    {"aten::amin", dimRule(reduce({{1, kDims}}))},
    {"aten::aminmax", dimRule(reduce({{1, kOptDim}}))},
    {"aten::max.dim", dimRule(reduce({{1, kDim}}))},
    {"aten::min.dim", dimRule(reduce({{1, kDim}}))},
    {"aten::argmax", dimRule(reduce({{1, kOptDim}}))},
    {"aten::argmin", dimRule(reduce({{1, kOptDim}}))},
    {"aten::all.dim", dimRule(reduce({{1, kDim}}))},
    {"aten::any.dim", dimRule(reduce({{1, kDim}}))},
    {"aten::all.dims", dimRule(reduce({{1, kOptDims}}))},
    {"aten::any.dims", dimRule(reduce({{1, kOptDims}}))},
    {"aten::logsumexp", dimRule(reduce({{1, kDims}}))},
    {"aten::var.correction", dimRule(reduce({{1, kOptDims}}))},
    {"aten::std.correction", dimRule(reduce({{1, kOptDims}}))},
    {"aten::var_mean.correction", dimRule(reduce({{1, kOptDims}}))},
    {"aten::std_mean.correction", dimRule(reduce({{1, kOptDims}}))},
    {"aten::linalg_vector_norm", dimRule(reduce({{2, kOptDims}}))},
    {"aten::mode", dimRule(reduce({{1, kDim}}))},
    {"aten::median.dim", dimRule(reduce({{1, kDim}}))},
    {"aten::cumsum", dimRule(reduce({{1, kDim}}))},
    {"aten::cumprod", dimRule(reduce({{1, kDim}}))},
    {"aten::cummax", dimRule(reduce({{1, kDim}}))},
    {"aten::cummin", dimRule(reduce({{1, kDim}}))},
    {"aten::logcumsumexp", dimRule(reduce({{1, kDim}}))},
    {"aten::_softmax", dimRule(reduce({{1, kDim}}))},
    {"aten::_log_softmax", dimRule(reduce({{1, kDim}}))},
    {"aten::_softmax_backward_data", dimRule(shiftAll({{2, kDim}}))},
    {"aten::_log_softmax_backward_data", dimRule(shiftAll({{2, kDim}}))},
    {"aten::sort", dimRule(reduce({{1, kDim}}))},
    {"aten::sort.stable", dimRule(reduce({{2, kDim}}))},
    {"aten::topk", dimRule(reduce({{2, kDim}}))},
    {"aten::kthvalue", dimRule(reduce({{2, kDim}}))},
    {"aten::flip", dimRule(shift({{1, kDims}}))},
});

const RuleTable kDimViews({
    {"aten::select.int", dimRule(shift({{1, kDim}}))},
    {"aten::slice.Tensor", dimRule(shift({{1, kDim}}))},
    {"aten::narrow", dimRule(shift({{1, kDim}}))},
    {"aten::transpose.int", dimRule(shift({{1, kDim}, {2, kDim}}))},
    {"aten::diagonal", dimRule(shift({{2, kDim}, {3, kDim}}))},
    {"aten::split.Tensor", dimRule(shift({{2, kDim}}))},
    {"aten::split_with_sizes", dimRule(shift({{2, kDim}}))},
    {"aten::unbind.int", dimRule(shift({{1, kDim}}))},
    {"aten::unsqueeze", dimRule(shift({{1, kDim}}, /*extra_rank=*/1))},
    {"aten::squeeze.dim", dimRule(shift({{1, kDim}}))},
    {"aten::squeeze.dims", dimRule(shift({{1, kDims}}))},
    {"aten::movedim.int", dimRule(shift({{1, kDim}, {2, kDim}}))},
    {"aten::unfold", dimRule(shift({{1, kDim}}))},
    {"aten::flatten.using_ints", dimRule(shift({{1, kDim}, {2, kDim}}))},
    {"aten::unflatten.int", dimRule(shift({{1, kDim}}))},
});

}  // namespace

}  // namespace functorch_lite
