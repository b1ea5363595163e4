// Pointwise operators: unary, binary and ternary (with broadcasting and type promotion), their
// in-place forms, activation backward ops, and the channel-wise prelu.
#include <ATen/TensorOperators.h>
#include <ATen/native/TypeProperties.h>
#include <ATen/ExpandUtils.h>
#include <ATen/ops/copy.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

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
                        c10::ArrayRef<Unwrapped> tensors, c10::ArrayRef<size_t> slots) {
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
    // meta stand-ins keep the wrapped-number flag: a Python scalar must not promote (x * 1.5)
    auto standIn = [&](at::IntArrayRef shape) {
      at::Tensor meta = at::empty(shape, v.options().device(at::kMeta));
      if (v.unsafeGetTensorImpl()->is_wrapped_number()) {
        meta.unsafeGetTensorImpl()->set_wrapped_number(true);
      }
      return meta;
    };
    logical = at::native::update_result_type_state(standIn(sizes), logical);
    physical = at::native::update_result_type_state(standIn(v.sizes()), physical);
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
  const bool inplace = !args.empty() && writesArgument(op, 0);

  // the tensor arguments (the arguments vector itself is only needed to return in-place ones)
  c10::SmallVector<Unwrapped, 4> tensors;
  c10::SmallVector<size_t, 4> slots;
  int64_t rank = 0;
  for (size_t i = 0; i < args.size(); ++i) {
    const c10::IValue& v = (*stack)[begin + i];
    if (!v.isTensor()) continue;
    tensors.push_back(unwrapAt(v.toTensor(), layer));
    slots.push_back(i);
    rank = std::max(rank, tensors.back().logicalRank());
  }
  if (inplace && !tensors.empty() && slots[0] == 0 && !tensors[0].batched()) {
    inplaceIntoUnbatchedError(op, *layer);
  }
  std::vector<c10::IValue> arguments;
  if (inplace) arguments.assign(stack->begin() + begin, stack->end());

  int64_t out_bdim = 0;
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

// gelu_backward has a oneDNN path that does not broadcast: every operand is expanded to the
// batch-front broadcast shape first.
void materializedPointwiseRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                               const LayerPtr& layer) {
  const size_t n = op.schema().arguments().size();
  const size_t begin = stack->size() - n;
  std::vector<size_t> slots;
  std::vector<int64_t> shape;
  int64_t rank = 0;
  for (size_t i = 0; i < n; ++i) {
    const c10::IValue& v = (*stack)[begin + i];
    if (!v.isTensor()) continue;
    slots.push_back(i);
    rank = std::max(rank, unwrapAt(v.toTensor(), layer).logicalRank());
  }
  for (size_t i : slots) {
    Unwrapped u = unwrapAt((*stack)[begin + i].toTensor(), layer);
    at::Tensor t = padLogicalRank(batchFrontExpanded(u, layer->batch_size), u.logicalRank(), rank);
    shape = shape.empty() ? t.sizes().vec() : at::infer_size(shape, t.sizes());
    (*stack)[begin + i] = t;
  }
  for (size_t i : slots) {
    (*stack)[begin + i] = (*stack)[begin + i].toTensor().expand(shape).contiguous();
  }
  op.callBoxed(stack);
  std::vector<c10::IValue> no_inplace;
  wrapOutputs(op, stack, layer, no_inplace, 0);
}

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
    POINTWISE("aten::log_sigmoid_forward"), POINTWISE("aten::angle"), POINTWISE("aten::i0"),
    POINTWISE("aten::isposinf"), POINTWISE("aten::isneginf"), POINTWISE("aten::isreal"),
    POINTWISE("aten::polygamma"), POINTWISE("aten::mvlgamma"), POINTWISE("aten::round.decimals"),
    POINTWISE("aten::softshrink"), POINTWISE("aten::hardshrink"), POINTWISE("aten::_conj"),
    POINTWISE("aten::_conj_physical"), POINTWISE("aten::frexp.Tensor"), POINTWISE("aten::fix"),
    POINTWISE("aten::real"), POINTWISE("aten::imag"), POINTWISE("aten::view_as_real"),
    POINTWISE("aten::where.Scalar"), POINTWISE("aten::fill.Scalar"),
});

const RuleTable kUnaryInplace({
    POINTWISE("aten::tan_"), POINTWISE("aten::exp2_"), POINTWISE("aten::expm1_"),
    POINTWISE("aten::log2_"), POINTWISE("aten::log10_"), POINTWISE("aten::log1p_"),
    POINTWISE("aten::rsqrt_"), POINTWISE("aten::gelu_"), POINTWISE("aten::silu_"),
    POINTWISE("aten::elu_"), POINTWISE("aten::leaky_relu_"), POINTWISE("aten::hardtanh_"),
    POINTWISE("aten::erf_"), POINTWISE("aten::erfc_"), POINTWISE("aten::erfinv_"),
    POINTWISE("aten::reciprocal_"), POINTWISE("aten::sign_"), POINTWISE("aten::sgn_"),
    POINTWISE("aten::floor_"), POINTWISE("aten::ceil_"), POINTWISE("aten::round_"),
    POINTWISE("aten::round_.decimals"), POINTWISE("aten::trunc_"), POINTWISE("aten::fix_"),
    POINTWISE("aten::frac_"), POINTWISE("aten::asin_"), POINTWISE("aten::acos_"),
    POINTWISE("aten::atan_"), POINTWISE("aten::sinh_"), POINTWISE("aten::cosh_"),
    POINTWISE("aten::asinh_"), POINTWISE("aten::acosh_"), POINTWISE("aten::atanh_"),
    POINTWISE("aten::logical_not_"), POINTWISE("aten::bitwise_not_"), POINTWISE("aten::square_"),
    POINTWISE("aten::lgamma_"), POINTWISE("aten::digamma_"), POINTWISE("aten::nan_to_num_"),
    POINTWISE("aten::conj_physical_"), POINTWISE("aten::clamp_min_"),
    POINTWISE("aten::clamp_max_"), POINTWISE("aten::hardsigmoid_"),
    POINTWISE("aten::hardswish_"), POINTWISE("aten::mish_"), POINTWISE("aten::logit_"),
    POINTWISE("aten::sinc_"), POINTWISE("aten::deg2rad_"), POINTWISE("aten::rad2deg_"),
    POINTWISE("aten::threshold_"), POINTWISE("aten::celu_"), POINTWISE("aten::selu_"),
    POINTWISE("aten::i0_"), POINTWISE("aten::polygamma_"), POINTWISE("aten::mvlgamma_"),
});

// The special functions: unary, or binary with broadcasting.
const RuleTable kSpecial({
    POINTWISE("aten::special_i0e"), POINTWISE("aten::special_i1"), POINTWISE("aten::special_i1e"),
    POINTWISE("aten::special_entr"), POINTWISE("aten::special_ndtri"),
    POINTWISE("aten::special_log_ndtr"), POINTWISE("aten::special_erfcx"),
    POINTWISE("aten::special_airy_ai"), POINTWISE("aten::special_bessel_j0"),
    POINTWISE("aten::special_bessel_j1"), POINTWISE("aten::special_bessel_y0"),
    POINTWISE("aten::special_bessel_y1"), POINTWISE("aten::special_modified_bessel_i0"),
    POINTWISE("aten::special_modified_bessel_i1"), POINTWISE("aten::special_modified_bessel_k0"),
    POINTWISE("aten::special_modified_bessel_k1"),
    POINTWISE("aten::special_scaled_modified_bessel_k0"),
    POINTWISE("aten::special_scaled_modified_bessel_k1"),
    POINTWISE("aten::special_spherical_bessel_j0"), POINTWISE("aten::special_gammaln"),
    POINTWISE("aten::special_xlog1py"), POINTWISE("aten::special_xlog1py.self_scalar"),
    POINTWISE("aten::special_xlog1py.other_scalar"), POINTWISE("aten::special_zeta"),
    POINTWISE("aten::special_zeta.self_scalar"), POINTWISE("aten::special_zeta.other_scalar"),
    POINTWISE("aten::special_chebyshev_polynomial_t"),
    POINTWISE("aten::special_chebyshev_polynomial_u"),
    POINTWISE("aten::special_chebyshev_polynomial_v"),
    POINTWISE("aten::special_chebyshev_polynomial_w"),
    POINTWISE("aten::special_hermite_polynomial_h"),
    POINTWISE("aten::special_hermite_polynomial_he"),
    POINTWISE("aten::special_laguerre_polynomial_l"),
    POINTWISE("aten::special_legendre_polynomial_p"),
    POINTWISE("aten::special_shifted_chebyshev_polynomial_t"),
    POINTWISE("aten::special_shifted_chebyshev_polynomial_u"),
    POINTWISE("aten::special_shifted_chebyshev_polynomial_v"),
    POINTWISE("aten::special_shifted_chebyshev_polynomial_w"),
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
    POINTWISE("aten::copy_"), POINTWISE("aten::isclose"), POINTWISE("aten::nextafter"), POINTWISE("aten::heaviside"),
    POINTWISE("aten::logaddexp2"), POINTWISE("aten::ldexp.Tensor"),
    POINTWISE("aten::copysign.Scalar"), POINTWISE("aten::igamma"), POINTWISE("aten::igammac"),
    POINTWISE("aten::polar"), POINTWISE("aten::complex"), POINTWISE("aten::xlogy.Scalar_Self"),
    POINTWISE("aten::xlogy.Scalar_Other"), POINTWISE("aten::gcd"), POINTWISE("aten::lcm"),
    POINTWISE("aten::bitwise_left_shift.Tensor"), POINTWISE("aten::bitwise_right_shift.Tensor"),
    POINTWISE("aten::bitwise_left_shift.Tensor_Scalar"),
    POINTWISE("aten::bitwise_right_shift.Tensor_Scalar"), POINTWISE("aten::bitwise_and.Scalar"),
    POINTWISE("aten::bitwise_or.Scalar"), POINTWISE("aten::bitwise_xor.Scalar"),
    POINTWISE("aten::float_power.Tensor_Tensor"), POINTWISE("aten::float_power.Tensor_Scalar"),
    POINTWISE("aten::float_power.Scalar"), POINTWISE("aten::true_divide.Tensor"),
    POINTWISE("aten::remainder.Scalar_Tensor"),
    // backward ops of activations
    POINTWISE("aten::threshold_backward"), POINTWISE("aten::sigmoid_backward"),
    POINTWISE("aten::tanh_backward"), {"aten::gelu_backward", materializedPointwiseRule},
    POINTWISE("aten::silu_backward"), POINTWISE("aten::elu_backward"),
    POINTWISE("aten::leaky_relu_backward"), POINTWISE("aten::hardtanh_backward"),
    POINTWISE("aten::softplus_backward"), POINTWISE("aten::hardsigmoid_backward"),
    POINTWISE("aten::hardswish_backward"), POINTWISE("aten::mish_backward"),
    POINTWISE("aten::logit_backward"), POINTWISE("aten::log_sigmoid_backward"),
    POINTWISE("aten::softshrink_backward"), POINTWISE("aten::hardshrink_backward"),
    POINTWISE("aten::native_dropout_backward"),
});

const RuleTable kBinaryInplace({
    POINTWISE("aten::sub_.Scalar"), POINTWISE("aten::div_.Tensor_mode"),
    POINTWISE("aten::div_.Scalar_mode"), POINTWISE("aten::remainder_.Tensor"),
    POINTWISE("aten::remainder_.Scalar"), POINTWISE("aten::fmod_.Tensor"),
    POINTWISE("aten::fmod_.Scalar"), POINTWISE("aten::atan2_"), POINTWISE("aten::hypot_"),
    POINTWISE("aten::copysign_.Tensor"), POINTWISE("aten::copysign_.Scalar"),
    POINTWISE("aten::xlogy_.Tensor"), POINTWISE("aten::xlogy_.Scalar_Other"),
    POINTWISE("aten::bitwise_and_.Tensor"), POINTWISE("aten::bitwise_or_.Tensor"),
    POINTWISE("aten::bitwise_xor_.Tensor"), POINTWISE("aten::bitwise_and_.Scalar"),
    POINTWISE("aten::bitwise_or_.Scalar"), POINTWISE("aten::bitwise_xor_.Scalar"),
    POINTWISE("aten::bitwise_left_shift_.Tensor"), POINTWISE("aten::bitwise_right_shift_.Tensor"),
    POINTWISE("aten::bitwise_left_shift_.Tensor_Scalar"),
    POINTWISE("aten::bitwise_right_shift_.Tensor_Scalar"), POINTWISE("aten::logical_and_"),
    POINTWISE("aten::logical_or_"), POINTWISE("aten::logical_xor_"), POINTWISE("aten::eq_.Tensor"),
    POINTWISE("aten::eq_.Scalar"), POINTWISE("aten::ne_.Tensor"), POINTWISE("aten::ne_.Scalar"),
    POINTWISE("aten::lt_.Tensor"), POINTWISE("aten::lt_.Scalar"), POINTWISE("aten::le_.Tensor"),
    POINTWISE("aten::le_.Scalar"), POINTWISE("aten::gt_.Tensor"), POINTWISE("aten::gt_.Scalar"),
    POINTWISE("aten::ge_.Tensor"), POINTWISE("aten::ge_.Scalar"), POINTWISE("aten::clamp_.Tensor"),
    POINTWISE("aten::clamp_min_.Tensor"), POINTWISE("aten::clamp_max_.Tensor"),
    POINTWISE("aten::nextafter_"), POINTWISE("aten::heaviside_"), POINTWISE("aten::igamma_"),
    POINTWISE("aten::igammac_"), POINTWISE("aten::gcd_"), POINTWISE("aten::lcm_"),
    POINTWISE("aten::float_power_.Scalar"), POINTWISE("aten::float_power_.Tensor"),
    POINTWISE("aten::true_divide_.Tensor"), POINTWISE("aten::pow_.Tensor"),
});

const RuleTable kTernary({
    POINTWISE("aten::where.self"), POINTWISE("aten::where.ScalarSelf"),
    POINTWISE("aten::where.ScalarOther"), POINTWISE("aten::addcmul"),
    POINTWISE("aten::addcmul_"), POINTWISE("aten::addcdiv"), POINTWISE("aten::addcdiv_"),
    POINTWISE("aten::lerp.Scalar"), POINTWISE("aten::lerp.Tensor"),
    POINTWISE("aten::lerp_.Scalar"), POINTWISE("aten::lerp_.Tensor"),
});

// NOTE: [Batching prelu]
// _prelu_kernel(self, weight) applies one slope per channel (dim 1 of a per-sample input of
// rank >= 2, else a single slope), so the weight is viewed onto the channel dim rather than
// broadcast from the right.
at::Tensor slopeView(const Unwrapped& weight, int64_t rank) {
  at::Tensor w = batchFront(weight);
  std::vector<int64_t> shape(rank + 1, 1);
  if (weight.batched()) shape[0] = w.size(0);
  if (rank >= 2) shape[2] = w.size(-1);
  return w.reshape(shape);
}

void preluRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  auto args = torch::jit::pop(*stack, op.schema().arguments().size());
  Unwrapped self = unwrapAt(args[0].toTensor(), layer);
  Unwrapped weight = unwrapAt(args[1].toTensor(), layer);
  at::Tensor x = batchFrontExpanded(self, layer->batch_size);
  at::Tensor out = at::where(x > 0, x, x * slopeView(weight, self.logicalRank()));
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

// _prelu_kernel_backward(grad_output, self, weight) -> (grad_self, grad_weight)
void preluBackwardRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                       const LayerPtr& layer) {
  auto args = torch::jit::pop(*stack, op.schema().arguments().size());
  const int64_t B = layer->batch_size;
  Unwrapped grad = unwrapAt(args[0].toTensor(), layer);
  Unwrapped self = unwrapAt(args[1].toTensor(), layer);
  Unwrapped weight = unwrapAt(args[2].toTensor(), layer);
  const int64_t rank = self.logicalRank();
  at::Tensor g = batchFrontExpanded(grad, B);
  at::Tensor x = batchFrontExpanded(self, B);
  at::Tensor positive = x > 0;
  at::Tensor grad_self = at::where(positive, g, g * slopeView(weight, rank));
  at::Tensor per_element = at::where(positive, at::zeros_like(x), x * g);
  at::Tensor grad_weight;
  if (rank >= 2) {
    std::vector<int64_t> dims{1};
    for (int64_t d = 3; d <= rank; ++d) dims.push_back(d);
    grad_weight = per_element.sum(dims);
  } else {
    grad_weight = per_element.reshape({B, -1}).sum(1, /*keepdim=*/false).reshape({B, 1});
  }
  if (weight.logicalRank() == 0) grad_weight = grad_weight.reshape({B});
  torch::jit::push(*stack, makeBatched(grad_self, 0, layer));
  torch::jit::push(*stack, makeBatched(grad_weight, 0, layer));
}

// fill.Tensor(self, value) and fill_.Tensor: the value is 0-dim per sample, so a batched value
// is copied in (broadcast over each sample) rather than passed to fill.
void fillTensorRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                    const LayerPtr& layer) {
  auto args = torch::jit::pop(*stack, 2);
  Unwrapped self = unwrapAt(args[0].toTensor(), layer);
  Unwrapped value = unwrapAt(args[1].toTensor(), layer);
  const bool inplace = writesArgument(op, 0);
  if (inplace && !self.batched()) inplaceIntoUnbatchedError(op, *layer);
  at::Tensor x = inplace ? batchFront(self) : batchFrontExpanded(self, layer->batch_size).clone();
  at::Tensor v = value.batched() ? padLogicalRank(batchFront(value), 0, self.logicalRank())
                                 : value.value;
  x.copy_(v);
  torch::jit::push(*stack, inplace ? args[0] : c10::IValue(makeBatched(x, 0, layer)));
}

// NOTE: [The functional copy keeps self's layout]
// copy(self, src) -> Tensor, what functionalization turns `self.copy_(src)` into, returns a
// tensor with self's strides (clone_preserve_strides) holding src's values. Forward AD relies
// on that: set_fw_grad makes a tangent laid out like its primal and fills it with copy_, and a
// view of the primal later expects the view of the tangent to have the primal view's strides
// (torch's internal assert `!this_view_meta->has_fw_view()` otherwise). The for-loop fallback
// stacks the samples contiguously instead; here the copy is taken of self's physical value
// with its batch dim in front, a view with self's memory layout, so every sample keeps self's
// strides. An unbatched self is expanded into a fresh batched tensor.
void functionalCopyRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                        const LayerPtr& layer) {
  auto args = torch::jit::pop(*stack, op.schema().arguments().size());
  Unwrapped self = unwrapAt(args[0].toTensor(), layer);
  Unwrapped src = unwrapAt(args[1].toTensor(), layer);
  const bool non_blocking = args[2].toBool();
  at::Tensor source = src.batched()
      ? padLogicalRank(batchFront(src), src.logicalRank(), self.logicalRank())
      : src.value;
  at::Tensor out;
  if (self.batched()) {
    out = at::copy(batchFront(self), source, non_blocking);
  } else {
    std::vector<int64_t> sizes = self.value.sizes().vec();
    sizes.insert(sizes.begin(), layer->batch_size);
    out = self.value.new_empty(sizes);
    out.copy_(source, non_blocking);
  }
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

const RuleTable kChannelwise({
    {"aten::_prelu_kernel", preluRule},
    {"aten::_prelu_kernel_backward", preluBackwardRule},
    {"aten::fill.Tensor", fillTensorRule},
    {"aten::fill_.Tensor", fillTensorRule},
});

const RuleTable kCopy({
    {"aten::copy", functionalCopyRule},
});

}  // namespace

}  // namespace functorch_lite
