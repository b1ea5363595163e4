// Operators that take dim arguments: reductions, softmax, scans, FFTs, gathers and scatters,
// views such as select, slice, transpose, split and unbind, and the backward ops of views. The
// batch dim goes in front and the dims shift by one.
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
  int64_t scalar_out_rank = 0;    // the per-sample output rank for a 0-dim input (flatten: 1)
};

std::vector<int64_t> allLogicalDims(int64_t rank) {
  std::vector<int64_t> dims;
  for (int64_t d = 1; d <= rank; ++d) dims.push_back(d);
  return dims;
}

// The value of the operator's `keepdim` argument (false when it has none).
bool keepdimArgument(const c10::OperatorHandle& op, const std::vector<c10::IValue>& arguments) {
  const auto& args = op.schema().arguments();
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].name() == "keepdim" && arguments[i].isBool()) return arguments[i].toBool();
  }
  return false;
}

// NOTE: [Dim-shifting batching]
// Every batched tensor argument gets its batch dim in front, so a logical dim d (wrapped against
// the logical rank) is physical dim d + 1. An operator on a per-sample 0-dim tensor (which
// accepts dim 0 or -1) runs on a size-1 dim instead, and its outputs are reshaped to the
// per-sample rank the operator gives a 0-dim input (0 for reductions, 1 for flatten).
// Outputs are batched at dim 0. An in-place operator needs a batched self when any other
// argument is batched.
BatchRule dimRule(DimRuleSpec spec) {
  return [spec](const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
    const auto& args = op.schema().arguments();
    const size_t begin = stack->size() - args.size();
    std::vector<c10::IValue> arguments(stack->begin() + begin, stack->end());
    TORCH_CHECK(arguments[0].isTensor(), "dimRule expects a tensor first argument");
    const Unwrapped self = unwrapAt(arguments[0].toTensor(), layer);
    const int64_t rank = self.logicalRank();
    const bool scalar_as_vector = rank == 0 && spec.extra_rank == 0 && !spec.dims.empty();
    const int64_t wrap_rank = (scalar_as_vector ? 1 : rank) + spec.extra_rank;
    if (!self.batched() && writesArgument(op, 0)) inplaceIntoUnbatchedError(op, *layer);

    for (size_t i = 0; i < args.size(); ++i) {
      if (!arguments[i].isTensor()) continue;
      Unwrapped u = unwrapAt(arguments[i].toTensor(), layer);
      if (!u.batched() && !spec.expand_unbatched) continue;
      at::Tensor front = batchFrontExpanded(u, layer->batch_size);
      if (scalar_as_vector && u.logicalRank() == 0) front = front.unsqueeze(1);
      (*stack)[begin + i] = front;
    }
    bool flattened = false;  // an absent dim reduced the flattened sample
    for (const auto& dim : spec.dims) {
      c10::IValue& slot = (*stack)[begin + dim.index];
      switch (dim.kind) {
        case DimKind::OptionalDim:
          if (slot.isNone()) {
            // argmax(dim=None) and friends: reduce over the flattened sample
            auto& self = (*stack)[begin];
            self = self.toTensor().reshape({layer->batch_size, -1});
            slot = int64_t{1};
            flattened = true;
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
    if (flattened && rank > 1 && keepdimArgument(op, arguments)) {
      // keepdim over the flattened sample keeps one size-1 dim per per-sample dim
      std::vector<int64_t> shape(rank + 1, 1);
      shape[0] = layer->batch_size;
      const size_t num_returns = op.schema().returns().size();
      for (size_t j = stack->size() - num_returns; j < stack->size(); ++j) {
        auto* b = (*stack)[j].isTensor() ? asBatched((*stack)[j].toTensor()) : nullptr;
        if (b != nullptr && b->layer() == layer) {
          (*stack)[j] = makeBatched(b->value().reshape(shape), 0, layer);
        }
      }
    }
    if (scalar_as_vector) {
      const size_t num_returns = op.schema().returns().size();
      std::vector<int64_t> shape(1 + spec.scalar_out_rank, 1);
      shape[0] = layer->batch_size;
      for (size_t j = stack->size() - num_returns; j < stack->size(); ++j) {
        auto& ret = (*stack)[j];
        if (!ret.isTensor()) continue;
        auto* b = asBatched(ret.toTensor());
        if (b != nullptr && b->layer() == layer &&
            b->value().dim() != static_cast<int64_t>(shape.size())) {
          ret = makeBatched(b->value().reshape(shape), 0, layer);
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

// A view whose output for a 0-dim input has one dim (flatten, unfold).
DimRuleSpec shiftToVector(std::vector<DimArg> dims) {
  DimRuleSpec spec = shift(std::move(dims));
  spec.scalar_out_rank = 1;
  return spec;
}

// NOTE: [Batching view backward ops]
// select_backward(grad, input_sizes, dim, ...) and its siblings scatter the gradient of a view
// into zeros of the input's sizes: the batch size goes in front of input_sizes, the gradient
// gets its batch dim in front, and the dims (wrapped against the input's rank) shift by one.
BatchRule viewBackwardRule(std::vector<size_t> dim_args) {
  return [dim_args](const c10::OperatorHandle& op, torch::jit::Stack* stack,
                    const LayerPtr& layer) {
    const size_t begin = stack->size() - op.schema().arguments().size();
    std::vector<c10::IValue> arguments(stack->begin() + begin, stack->end());
    auto sizes = arguments[1].toSymIntVector();
    const int64_t rank = static_cast<int64_t>(sizes.size());
    if (rank == 0) {
      // a view of a 0-dim input (unfold) has its one element: the gradient is that element
      at::Tensor g = batchFrontExpanded(unwrapAt(arguments[0].toTensor(), layer),
                                        layer->batch_size);
      torch::jit::drop(*stack, arguments.size());
      torch::jit::push(*stack, makeBatched(g.reshape({layer->batch_size}), 0, layer));
      return;
    }
    sizes.insert(sizes.begin(), c10::SymInt(layer->batch_size));
    (*stack)[begin] =
        batchFrontExpanded(unwrapAt(arguments[0].toTensor(), layer), layer->batch_size);
    (*stack)[begin + 1] = sizes;
    for (size_t i : dim_args) {
      (*stack)[begin + i] = c10::maybe_wrap_dim((*stack)[begin + i].toInt(), rank) + 1;
    }
    op.callBoxed(stack);
    wrapOutputs(op, stack, layer, arguments, 0);
  };
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
    {"aten::nanmedian.dim", dimRule(reduce({{1, kDim}}))},
    {"aten::count_nonzero", dimRule(reduce({{1, kOptDim}}))},
    {"aten::count_nonzero.dim_IntList", dimRule(reduce({{1, kDims}}))},
    {"aten::norm.ScalarOpt_dim", dimRule(reduce({{2, kDims}}))},
    {"aten::norm.ScalarOpt_dim_dtype", dimRule(reduce({{2, kDims}}))},
    {"aten::_safe_softmax", dimRule(reduce({{1, kDim}}))},
    {"aten::cumsum_", dimRule(reduce({{1, kDim}}))},
    {"aten::cumprod_", dimRule(reduce({{1, kDim}}))},
    {"aten::glu", dimRule(shift({{1, kDim}}))},
    {"aten::glu_backward", dimRule(shiftAll({{2, kDim}}))},
    {"aten::sort", dimRule(reduce({{1, kDim}}))},
    {"aten::sort.stable", dimRule(reduce({{2, kDim}}))},
    {"aten::topk", dimRule(reduce({{2, kDim}}))},
    {"aten::kthvalue", dimRule(reduce({{2, kDim}}))},
    {"aten::flip", dimRule(shift({{1, kDims}}))},
    {"aten::rot90", dimRule(shift({{2, kDims}}))},
    {"aten::_fft_r2c", dimRule(shift({{1, kDims}}))},
    {"aten::_fft_c2r", dimRule(shift({{1, kDims}}))},
    {"aten::_fft_c2c", dimRule(shift({{1, kDims}}))},
    {"aten::linalg_cross", dimRule(shiftAll({{2, kDim}}))},
});

// Gathers and scatters along a dim: every operand needs the batch dim (an index and its source
// line up element by element).
const RuleTable kGatherScatter({
    {"aten::scatter.src", dimRule(shiftAll({{1, kDim}}))},
    {"aten::scatter_.src", dimRule(shiftAll({{1, kDim}}))},
    {"aten::scatter.value", dimRule(shiftAll({{1, kDim}}))},
    {"aten::scatter_.value", dimRule(shiftAll({{1, kDim}}))},
    {"aten::scatter.reduce", dimRule(shiftAll({{1, kDim}}))},
    {"aten::scatter_.reduce", dimRule(shiftAll({{1, kDim}}))},
    {"aten::scatter.value_reduce", dimRule(shiftAll({{1, kDim}}))},
    {"aten::scatter_.value_reduce", dimRule(shiftAll({{1, kDim}}))},
    {"aten::scatter_add", dimRule(shiftAll({{1, kDim}}))},
    {"aten::scatter_add_", dimRule(shiftAll({{1, kDim}}))},
    {"aten::scatter_reduce.two", dimRule(shiftAll({{1, kDim}}))},
    {"aten::scatter_reduce_.two", dimRule(shiftAll({{1, kDim}}))},
    {"aten::select_scatter", dimRule(shiftAll({{2, kDim}}))},
    {"aten::slice_scatter", dimRule(shiftAll({{2, kDim}}))},
    {"aten::diagonal_scatter", dimRule(shiftAll({{3, kDim}, {4, kDim}}))},
});

const RuleTable kViewBackward({
    {"aten::select_backward", viewBackwardRule({2})},
    {"aten::slice_backward", viewBackwardRule({2})},
    {"aten::diagonal_backward", viewBackwardRule({3, 4})},
    {"aten::unfold_backward", viewBackwardRule({2})},
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
    {"aten::diag_embed", dimRule(shift({{2, kDim}, {3, kDim}}, /*extra_rank=*/1))},
    {"aten::unsafe_split.Tensor", dimRule(shift({{2, kDim}}))},
    {"aten::unsafe_split_with_sizes", dimRule(shift({{2, kDim}}))},
    {"aten::squeeze.dim", dimRule(shift({{1, kDim}}))},
    {"aten::squeeze.dims", dimRule(shift({{1, kDims}}))},
    {"aten::movedim.int", dimRule(shift({{1, kDim}, {2, kDim}}))},
    {"aten::unfold", dimRule(shiftToVector({{1, kDim}}))},
    {"aten::flatten.using_ints", dimRule(shiftToVector({{1, kDim}, {2, kDim}}))},
    {"aten::unflatten.int", dimRule(shift({{1, kDim}}))},
});

}  // namespace

}  // namespace functorch_lite
