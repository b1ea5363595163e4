// Reductions over every dim of a sample (sum(x), mean(x), max(x), ...): the sample is flattened
// and the operator's dim overload reduces it. Also asserts over every sample.
#include <ATen/ops/all.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/amin.h>
#include <ATen/ops/any.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/median.h>
#include <ATen/ops/nanmedian.h>
#include <ATen/ops/norm.h>
#include <ATen/ops/prod.h>
#include <ATen/ops/sum.h>

#include "batching/rules.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

using Args = std::vector<c10::IValue>;
using Reduce = at::Tensor (*)(const at::Tensor& flat, const Args& args);

template <Reduce reduce>
void reduceAllRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                   const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  Unwrapped self = unwrapAt(args[0].toTensor(), layer);
  at::Tensor flat = batchFront(self).reshape({layer->batch_size, -1});
  torch::jit::push(*stack, makeBatched(reduce(flat, args), 0, layer));
}

std::optional<at::ScalarType> dtypeArg(const Args& args) {
  return args[1].isNone() ? std::nullopt : std::optional<at::ScalarType>(args[1].toScalarType());
}

at::Tensor sum(const at::Tensor& flat, const Args& args) {
  return at::sum(flat, {1}, false, dtypeArg(args));
}
at::Tensor mean(const at::Tensor& flat, const Args& args) {
  return at::mean(flat, {1}, false, dtypeArg(args));
}
at::Tensor prod(const at::Tensor& flat, const Args& args) {
  return at::prod(flat, 1, false, dtypeArg(args));
}
at::Tensor max(const at::Tensor& flat, const Args&) { return at::amax(flat, {1}); }
at::Tensor min(const at::Tensor& flat, const Args&) { return at::amin(flat, {1}); }
at::Tensor all(const at::Tensor& flat, const Args&) { return at::all(flat, 1); }
at::Tensor any(const at::Tensor& flat, const Args&) { return at::any(flat, 1); }
at::Tensor median(const at::Tensor& flat, const Args&) {
  return std::get<0>(at::median(flat, 1));
}
at::Tensor nanmedian(const at::Tensor& flat, const Args&) {
  return std::get<0>(at::nanmedian(flat, 1));
}
// norm(self, p) and norm(self, p?, dtype)
at::Tensor norm(const at::Tensor& flat, const Args& args) {
  const auto p = args[1].toOptional<at::Scalar>();
  if (args.size() > 2) return at::norm(flat, p, {1}, false, args[2].toScalarType());
  return at::norm(flat, p, {1}, false);
}

// _assert_async(condition[, message]) on a batched condition asserts it for every sample: the
// operator runs once on all of them.
void assertRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  c10::IValue& condition = (*stack)[stack->size() - op.schema().arguments().size()];
  condition = unwrapAt(condition.toTensor(), layer).value.all();
  op.callBoxed(stack);
}

const RuleTable kAsserts({
    {"aten::_assert_async", assertRule},
    {"aten::_assert_async.msg", assertRule},
});

const RuleTable kReduceAll({
    {"aten::sum", reduceAllRule<sum>},
    {"aten::mean", reduceAllRule<mean>},
    {"aten::prod", reduceAllRule<prod>},
    {"aten::max", reduceAllRule<max>},
    {"aten::min", reduceAllRule<min>},
    {"aten::all", reduceAllRule<all>},
    {"aten::any", reduceAllRule<any>},
    {"aten::median", reduceAllRule<median>},
    {"aten::nanmedian", reduceAllRule<nanmedian>},
    {"aten::norm.Scalar", reduceAllRule<norm>},
    {"aten::norm.ScalarOpt_dtype", reduceAllRule<norm>},
});

}  // namespace

}  // namespace functorch_lite
