// linspace and logspace with tensor ends: one range per sample.
#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/where.h>
#include <c10/core/DefaultDtype.h>

#include <vector>

#include "batching/fallback.h"
#include "batching/rules.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

// NOTE: [Ranges with batched ends]
// linspace(start, end, steps) with batched 0-dim ends is a [B, steps] tensor, row b running
// from start[b] to end[b]. It is computed the way ATen's kernel computes each element, in the
// result dtype: the first half counts up from start, the second half down from end,
//   step = (end - start) / (steps - 1)
//   x[i] = i < steps / 2 ? start + step * i : end - step * (steps - 1 - i)
// and logspace is base ** x. Integer result dtypes keep the fallback (ATen steps them in
// double and truncates).
at::Tensor rangeEnd(const c10::IValue& end, const LayerPtr& layer, const at::TensorOptions& options) {
  if (!end.isTensor()) return at::scalar_tensor(end.toScalar(), options).reshape({1, 1});
  Unwrapped u = unwrapAt(end.toTensor(), layer);
  return batchFront(u).to(options.dtype()).reshape({-1, 1});  // [B or 1, 1]
}

BatchRule rangeRule(bool log) {
  return [log](const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
    const auto& schema = op.schema();
    const size_t begin = stack->size() - schema.arguments().size();
    auto arg = [&](const char* name) -> const c10::IValue& {
      return (*stack)[begin + *schema.argumentIndexWithName(name)];
    };
    const c10::IValue& dtype_arg = arg("dtype");
    const auto dtype = dtype_arg.isNone() ? c10::get_default_dtype_as_scalartype()
                                          : dtype_arg.toScalarType();
    if (!at::isFloatingType(dtype) && !at::isComplexType(dtype)) {
      vmapFallback(op, stack, layer);
      return;
    }
    const c10::IValue& device_arg = arg("device");
    const at::Tensor& some_end = arg("start").isTensor() ? arg("start").toTensor()
                                                          : arg("end").toTensor();
    const auto options = at::TensorOptions()
                             .dtype(dtype)
                             .device(device_arg.isNone() ? some_end.device()
                                                         : device_arg.toDevice());
    const at::Tensor start = rangeEnd(arg("start"), layer, options);
    const at::Tensor end = rangeEnd(arg("end"), layer, options);
    const int64_t steps = arg("steps").toInt();
    TORCH_CHECK(steps >= 0, layer->api, ": number of steps must be non-negative");
    const double base = log ? arg("base").toDouble() : 0.0;
    torch::jit::drop(*stack, schema.arguments().size());
    at::Tensor out;
    if (steps <= 1) {
      out = start.expand({-1, steps});  // steps == 1 gives start
    } else {
      const at::Tensor i = at::arange(steps, options).unsqueeze(0);
      const at::Tensor step = (end - start) / static_cast<double>(steps - 1);
      out = at::where(i < steps / 2, start + step * i, end - step * (steps - 1 - i));
    }
    if (log) out = at::pow(base, out);
    const int64_t batch = layer->batch_size;
    torch::jit::push(*stack, makeBatched(out.expand({batch, steps}).contiguous(), 0, layer));
  };
}

const RuleTable kRanges({
    {"aten::linspace.Tensor_Tensor", rangeRule(false)},
    {"aten::linspace.Tensor_Scalar", rangeRule(false)},
    {"aten::linspace.Scalar_Tensor", rangeRule(false)},
    {"aten::logspace.Tensor_Tensor", rangeRule(true)},
    {"aten::logspace.Tensor_Scalar", rangeRule(true)},
    {"aten::logspace.Scalar_Tensor", rangeRule(true)},
});

}  // namespace

}  // namespace functorch_lite
