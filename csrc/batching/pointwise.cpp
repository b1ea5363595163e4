// Pointwise operators: unary, binary and ternary, with broadcasting and type promotion.
#include <ATen/native/TypeProperties.h>
#include <ATen/ops/empty.h>

#include "batching/rules.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

// Arguments that select rather than combine values take no part in type promotion.
bool promotes(const c10::Argument& arg) {
  return arg.name() != "condition" && arg.name() != "mask";
}

// NOTE: [Type promotion of logical scalars]
// A batched tensor that is 0-dim per sample is 1-dim physically, and 0-dim tensors rank lower in
// type promotion than dimensioned ones. When that could change the result dtype (dtypes differ),
// the promoted dtype is computed from the logical shapes and the arguments are cast to it.
void promoteLikeLogical(const c10::OperatorHandle& op, torch::jit::Stack* stack, size_t begin,
                        const std::vector<Unwrapped>& tensors, const std::vector<size_t>& slots) {
  bool has_logical_scalar = false;
  bool mixed = false;
  for (size_t k = 0; k < tensors.size(); ++k) {
    has_logical_scalar |= tensors[k].batched() && tensors[k].logicalRank() == 0;
    mixed |= tensors[k].value.scalar_type() != tensors[0].value.scalar_type();
  }
  if (!has_logical_scalar || !mixed) return;
  at::native::ResultTypeState logical{};
  at::native::ResultTypeState physical{};
  for (size_t k = 0; k < tensors.size(); ++k) {
    if (!promotes(op.schema().arguments()[slots[k]])) continue;
    const auto& v = tensors[k].value;
    auto sizes = v.sizes().vec();
    if (tensors[k].bdim) sizes.erase(sizes.begin() + *tensors[k].bdim);
    logical = at::native::update_result_type_state(
        at::empty(sizes, v.options().device(at::kMeta)), logical);
    physical = at::native::update_result_type_state(
        at::empty(v.sizes(), v.options().device(at::kMeta)), physical);
  }
  const auto want = at::native::result_type(logical);
  if (want == at::native::result_type(physical)) return;
  for (size_t k = 0; k < tensors.size(); ++k) {
    if (!promotes(op.schema().arguments()[slots[k]])) continue;
    auto& slot = (*stack)[begin + slots[k]];
    slot = slot.toTensor().to(want);
  }
}

}  // namespace

// NOTE: [Pointwise batching]
// A single batched tensor argument keeps its batch dim where it is (a pointwise operator
// preserves the shape). Otherwise every batched argument gets its batch dim in front and size-1
// dims after it up to the largest logical rank, so that broadcasting lines samples up;
// unbatched arguments broadcast as they are. In-place operators need a batched self whenever
// any other argument is batched.
void pointwiseRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                   const LayerPtr& layer) {
  const auto& args = op.schema().arguments();
  const size_t begin = stack->size() - args.size();
  std::vector<c10::IValue> arguments(stack->begin() + begin, stack->end());

  std::vector<Unwrapped> tensors;
  std::vector<size_t> slots;
  for (size_t i = 0; i < args.size(); ++i) {
    if (!arguments[i].isTensor()) continue;
    tensors.push_back(unwrapAt(arguments[i].toTensor(), layer));
    slots.push_back(i);
  }

  int64_t out_bdim = 0;
  size_t num_batched = 0;
  int64_t rank = 0;
  for (const auto& u : tensors) {
    num_batched += u.batched();
    rank = std::max(rank, u.logicalRank());
  }
  const bool inplace = !args.empty() && writesArgument(op, 0);
  if (inplace && !tensors.empty() && slots[0] == 0 && !tensors[0].batched()) {
    inplaceIntoUnbatchedError(op, *layer);
  }

  if (tensors.size() == 1) {
    (*stack)[begin + slots[0]] = tensors[0].value;
    out_bdim = *tensors[0].bdim;
  } else {
    for (size_t k = 0; k < tensors.size(); ++k) {
      const auto& u = tensors[k];
      if (!u.batched()) continue;
      (*stack)[begin + slots[k]] = padLogicalRank(batchFront(u), u.logicalRank(), rank);
    }
    if (!inplace) promoteLikeLogical(op, stack, begin, tensors, slots);
  }
  op.callBoxed(stack);
  wrapOutputs(op, stack, layer, arguments, out_bdim);
}

namespace {

#define POINTWISE(name) {name, pointwiseRule}

const RuleTable kUnary({
    POINTWISE("aten::abs"), POINTWISE("aten::abs_"), POINTWISE("aten::neg"),
    POINTWISE("aten::neg_"), POINTWISE("aten::sin"), POINTWISE("aten::sin_"),
    POINTWISE("aten::cos"), POINTWISE("aten::cos_"), POINTWISE("aten::tan"),
    POINTWISE("aten::tanh"), POINTWISE("aten::tanh_"), POINTWISE("aten::exp"),
    POINTWISE("aten::exp_"), POINTWISE("aten::exp2"), POINTWISE("aten::expm1"),
    POINTWISE("aten::log"), POINTWISE("aten::log_"), POINTWISE("aten::log2"),
    POINTWISE("aten::log10"), POINTWISE("aten::log1p"), POINTWISE("aten::sqrt"),
    POINTWISE("aten::sqrt_"), POINTWISE("aten::rsqrt"), POINTWISE("aten::sigmoid"),
    POINTWISE("aten::sigmoid_"), POINTWISE("aten::relu"), POINTWISE("aten::relu_"),
    POINTWISE("aten::gelu"), POINTWISE("aten::silu"), POINTWISE("aten::elu"),
    POINTWISE("aten::leaky_relu"), POINTWISE("aten::hardtanh"), POINTWISE("aten::softplus"),
    POINTWISE("aten::erf"), POINTWISE("aten::erfc"), POINTWISE("aten::erfinv"),
    POINTWISE("aten::reciprocal"), POINTWISE("aten::sign"), POINTWISE("aten::sgn"),
    POINTWISE("aten::floor"), POINTWISE("aten::ceil"), POINTWISE("aten::round"),
    POINTWISE("aten::trunc"), POINTWISE("aten::frac"), POINTWISE("aten::asin"),
    POINTWISE("aten::acos"), POINTWISE("aten::atan"), POINTWISE("aten::sinh"),
    POINTWISE("aten::cosh"), POINTWISE("aten::asinh"), POINTWISE("aten::acosh"),
    POINTWISE("aten::atanh"), POINTWISE("aten::logical_not"), POINTWISE("aten::bitwise_not"),
    POINTWISE("aten::isnan"), POINTWISE("aten::isinf"), POINTWISE("aten::isfinite"),
    POINTWISE("aten::square"), POINTWISE("aten::lgamma"), POINTWISE("aten::digamma"),
    POINTWISE("aten::nan_to_num"), POINTWISE("aten::clone"), POINTWISE("aten::detach"),
    POINTWISE("aten::alias"), POINTWISE("aten::_to_copy"), POINTWISE("aten::zero_"),
    POINTWISE("aten::fill_.Scalar"), POINTWISE("aten::zeros_like"),
    POINTWISE("aten::ones_like"), POINTWISE("aten::empty_like"), POINTWISE("aten::full_like"),
    POINTWISE("aten::conj_physical"), POINTWISE("aten::positive"),
    POINTWISE("aten::pow.Tensor_Scalar"), POINTWISE("aten::pow_.Scalar"),
    POINTWISE("aten::clamp"), POINTWISE("aten::clamp_"), POINTWISE("aten::clamp_min"),
    POINTWISE("aten::clamp_max"), POINTWISE("aten::hardsigmoid"), POINTWISE("aten::hardswish"),
    POINTWISE("aten::mish"), POINTWISE("aten::logit"), POINTWISE("aten::sinc"),
    POINTWISE("aten::deg2rad"), POINTWISE("aten::rad2deg"), POINTWISE("aten::signbit"),
    POINTWISE("aten::threshold"), POINTWISE("aten::celu"), POINTWISE("aten::selu"),
    POINTWISE("aten::log_sigmoid_forward"),
});

const RuleTable kBinary({
    POINTWISE("aten::add.Tensor"), POINTWISE("aten::add_.Tensor"),
    POINTWISE("aten::add.Scalar"), POINTWISE("aten::add_.Scalar"),
    POINTWISE("aten::sub.Tensor"), POINTWISE("aten::sub_.Tensor"),
    POINTWISE("aten::sub.Scalar"), POINTWISE("aten::rsub.Tensor"),
    POINTWISE("aten::rsub.Scalar"), POINTWISE("aten::mul.Tensor"),
    POINTWISE("aten::mul_.Tensor"), POINTWISE("aten::mul.Scalar"),
    POINTWISE("aten::mul_.Scalar"), POINTWISE("aten::div.Tensor"),
    POINTWISE("aten::div_.Tensor"), POINTWISE("aten::div.Scalar"),
    POINTWISE("aten::div_.Scalar"), POINTWISE("aten::div.Tensor_mode"),
    POINTWISE("aten::div.Scalar_mode"), POINTWISE("aten::pow.Tensor_Tensor"),
    POINTWISE("aten::pow.Scalar"), POINTWISE("aten::remainder.Tensor"),
    POINTWISE("aten::remainder.Scalar"), POINTWISE("aten::fmod.Tensor"),
    POINTWISE("aten::fmod.Scalar"), POINTWISE("aten::atan2"), POINTWISE("aten::maximum"),
    POINTWISE("aten::minimum"), POINTWISE("aten::fmax"), POINTWISE("aten::fmin"),
    POINTWISE("aten::hypot"), POINTWISE("aten::copysign.Tensor"),
    POINTWISE("aten::xlogy.Tensor"), POINTWISE("aten::logaddexp"),
    POINTWISE("aten::floor_divide"), POINTWISE("aten::bitwise_and.Tensor"),
    POINTWISE("aten::bitwise_or.Tensor"), POINTWISE("aten::bitwise_xor.Tensor"),
    POINTWISE("aten::logical_and"), POINTWISE("aten::logical_or"),
    POINTWISE("aten::logical_xor"), POINTWISE("aten::eq.Tensor"), POINTWISE("aten::eq.Scalar"),
    POINTWISE("aten::ne.Tensor"), POINTWISE("aten::ne.Scalar"), POINTWISE("aten::lt.Tensor"),
    POINTWISE("aten::lt.Scalar"), POINTWISE("aten::le.Tensor"), POINTWISE("aten::le.Scalar"),
    POINTWISE("aten::gt.Tensor"), POINTWISE("aten::gt.Scalar"), POINTWISE("aten::ge.Tensor"),
    POINTWISE("aten::ge.Scalar"), POINTWISE("aten::clamp.Tensor"),
    POINTWISE("aten::clamp_min.Tensor"), POINTWISE("aten::clamp_max.Tensor"),
    POINTWISE("aten::masked_fill.Scalar"), POINTWISE("aten::masked_fill_.Scalar"),
    POINTWISE("aten::copy_"),
    // backward ops of activations
    POINTWISE("aten::threshold_backward"), POINTWISE("aten::sigmoid_backward"),
    POINTWISE("aten::tanh_backward"), POINTWISE("aten::gelu_backward"),
    POINTWISE("aten::silu_backward"), POINTWISE("aten::elu_backward"),
    POINTWISE("aten::leaky_relu_backward"), POINTWISE("aten::hardtanh_backward"),
    POINTWISE("aten::softplus_backward"), POINTWISE("aten::hardsigmoid_backward"),
    POINTWISE("aten::hardswish_backward"), POINTWISE("aten::mish_backward"),
    POINTWISE("aten::logit_backward"), POINTWISE("aten::log_sigmoid_backward"),
});

const RuleTable kTernary({
    POINTWISE("aten::where.self"), POINTWISE("aten::where.ScalarSelf"),
    POINTWISE("aten::where.ScalarOther"), POINTWISE("aten::addcmul"),
    POINTWISE("aten::addcmul_"), POINTWISE("aten::addcdiv"), POINTWISE("aten::addcdiv_"),
    POINTWISE("aten::lerp.Scalar"), POINTWISE("aten::lerp.Tensor"),
});

}  // namespace

}  // namespace functorch_lite
