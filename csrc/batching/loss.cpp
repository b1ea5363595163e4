// Losses that reduce over the sample: nll_loss and its backward.
#include <ATen/core/Reduction.h>
#include <ATen/ops/nll_loss_backward.h>
#include <ATen/ops/nll_loss_forward.h>
#include <ATen/ops/div.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>

#include "batching/fallback.h"
#include "batching/rules.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

using Args = std::vector<c10::IValue>;

// NOTE: [Batching nll_loss]
// Per sample, the input is [N, C] (or [C]) and the target [N] (or []). With the batch in front
// both are flattened into one [B*N, C] problem with reduction='none'; the per-sample reduction
// (sum, or mean weighted by the per-sample total weight) is applied afterwards. The backward
// runs the same way: the incoming gradient is spread to per-element gradients first.
struct NllProblem {
  at::Tensor input;   // [B*N, C]
  at::Tensor target;  // [B*N]
  int64_t n;          // elements per sample (1 for a [C] input)
};

NllProblem flatten(const Unwrapped& self, const Unwrapped& target, const Layer& layer) {
  at::Tensor input = batchFrontExpanded(self, layer.batch_size);
  at::Tensor tgt = batchFrontExpanded(target, layer.batch_size);
  const int64_t classes = input.size(-1);
  const int64_t n = self.logicalRank() == 1 ? 1 : input.size(1);
  return {input.reshape({-1, classes}), tgt.reshape({-1}), n};
}

// Per-element weights [B, n]: weight[target] (or 1), 0 where target == ignore_index.
at::Tensor elementWeights(const NllProblem& p, const std::optional<at::Tensor>& weight,
                          int64_t ignore_index, int64_t batch_size) {
  at::Tensor valid = p.target.ne(ignore_index);
  at::Tensor w = (weight && weight->defined())
                     ? at::mul(weight->index_select(0, p.target.where(valid, 0)), valid)
                     : valid.to(p.input.scalar_type());
  return w.reshape({batch_size, p.n});
}

bool weightBatched(const c10::IValue& weight, const LayerPtr& layer) {
  return weight.isTensor() && unwrapAt(weight.toTensor(), layer).batched();
}

// nll_loss_forward(self, target, weight?, reduction, ignore_index) -> (output, total_weight)
void nllForwardRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                    const LayerPtr& layer) {
  if (weightBatched((*stack)[stack->size() - 3], layer)) return vmapFallback(op, stack, layer);
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  auto self = unwrapAt(args[0].toTensor(), layer);
  auto target = unwrapAt(args[1].toTensor(), layer);
  auto weight = args[2].toOptional<at::Tensor>();
  const int64_t reduction = args[3].toInt();
  const int64_t ignore_index = args[4].toInt();
  const int64_t B = layer->batch_size;

  NllProblem p = flatten(self, target, *layer);
  at::Tensor loss = std::get<0>(
      at::nll_loss_forward(p.input, p.target, weight, at::Reduction::None, ignore_index));
  at::Tensor total_weight = elementWeights(p, weight, ignore_index, B).sum(1);
  loss = loss.reshape({B, p.n});
  at::Tensor out;
  if (reduction == at::Reduction::None) {
    out = self.logicalRank() == 1 ? loss.squeeze(1) : loss;
  } else if (reduction == at::Reduction::Sum) {
    out = loss.sum(1);
  } else {
    out = at::div(loss.sum(1), total_weight);
  }
  torch::jit::push(*stack, makeBatched(out, 0, layer));
  torch::jit::push(*stack, makeBatched(total_weight, 0, layer));
}

// nll_loss_backward(grad_output, self, target, weight?, reduction, ignore_index, total_weight)
void nllBackwardRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                     const LayerPtr& layer) {
  if (weightBatched((*stack)[stack->size() - 4], layer)) return vmapFallback(op, stack, layer);
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  auto grad = unwrapAt(args[0].toTensor(), layer);
  auto self = unwrapAt(args[1].toTensor(), layer);
  auto target = unwrapAt(args[2].toTensor(), layer);
  auto weight = args[3].toOptional<at::Tensor>();
  const int64_t reduction = args[4].toInt();
  const int64_t ignore_index = args[5].toInt();
  auto total_weight = unwrapAt(args[6].toTensor(), layer);
  const int64_t B = layer->batch_size;

  NllProblem p = flatten(self, target, *layer);
  at::Tensor g = batchFrontExpanded(grad, B);
  if (reduction == at::Reduction::None) {
    g = g.reshape({B, p.n});
  } else {
    if (reduction == at::Reduction::Mean) g = at::div(g, batchFrontExpanded(total_weight, B));
    g = g.reshape({B, 1}).expand({B, p.n});
  }
  at::Tensor grad_input = at::nll_loss_backward(
      g.reshape({-1}), p.input, p.target, weight, at::Reduction::None, ignore_index,
      at::ones({}, p.input.options()));
  at::Tensor out = self.logicalRank() == 1 ? grad_input.reshape({B, -1})
                                           : grad_input.reshape({B, p.n, -1});
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

const RuleTable kLoss({
    {"aten::nll_loss_forward", nllForwardRule},
    {"aten::nll_loss_backward", nllBackwardRule},
});

}  // namespace

}  // namespace functorch_lite
