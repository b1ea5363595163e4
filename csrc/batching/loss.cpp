// Losses that reduce over the sample: nll_loss, the pointwise losses (mse, binary cross entropy,
// smooth l1, huber, soft margin) and their backward ops.
#include <ATen/core/Reduction.h>
#include <ATen/ops/nll_loss_backward.h>
#include <ATen/ops/nll_loss_forward.h>
#include <ATen/ops/div.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/ones.h>
#include <ATen/ExpandUtils.h>
#include <ATen/ops/zeros.h>

#include "batching/fallback.h"
#include "batching/rules.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

using Args = std::vector<c10::IValue>;

// NOTE: [Batching nll_loss]
// Per sample, the input is [N, C, *d] (or [C]) and the target [N, *d] (or []). With the batch
// in front, the classes move last and both are flattened into one [B*N*d, C] problem with
// reduction='none'; the per-sample reduction (sum, or mean weighted by the per-sample total
// weight) is applied afterwards. The backward runs the same way: the incoming gradient is
// spread to per-element gradients first. nll_loss2d is the same problem with d = [H, W].
struct NllProblem {
  at::Tensor input;   // [B*n, C]
  at::Tensor target;  // [B*n]
  int64_t n;          // elements per sample (1 for a [C] input)
  std::vector<int64_t> moved_sizes;  // the input with the batch in front and the classes last
  std::vector<int64_t> target_sizes;  // the target with the batch in front
};

NllProblem flatten(const Unwrapped& self, const Unwrapped& target, const Layer& layer) {
  at::Tensor input = batchFrontExpanded(self, layer.batch_size);
  at::Tensor tgt = batchFrontExpanded(target, layer.batch_size);
  if (self.logicalRank() >= 3) input = input.movedim(2, -1);
  const int64_t classes = input.size(-1);
  const int64_t n = self.logicalRank() == 1 ? 1 : tgt.numel() / std::max<int64_t>(tgt.size(0), 1);
  return {input.reshape({-1, classes}), tgt.reshape({-1}), n, input.sizes().vec(),
          tgt.sizes().vec()};
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
    out = loss.reshape(p.target_sizes);
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
  at::Tensor out = grad_input.reshape(p.moved_sizes);
  if (self.logicalRank() >= 3) out = out.movedim(-1, 2);
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

// NOTE: [Batching pointwise losses]
// mse_loss, binary_cross_entropy(_with_logits), smooth_l1_loss, huber_loss and soft_margin_loss
// are a pointwise loss followed by a reduction over the whole sample. The operator runs with
// reduction='none' on operands lined up like a pointwise operator's (batch dim in front, size-1
// dims up to the largest per-sample rank), and the per-sample mean or sum follows over every dim
// but the batch dim. Their backward ops take the incoming per-sample gradient of the reduced
// loss: it is spread to every element (divided by the per-sample element count for 'mean') and
// the backward op runs with reduction='none'.
BatchRule pointwiseLossRule(size_t reduction_index, bool backward) {
  return [reduction_index, backward](const c10::OperatorHandle& op, torch::jit::Stack* stack,
                                     const LayerPtr& layer) {
    const size_t n = op.schema().arguments().size();
    const size_t begin = stack->size() - n;
    const int64_t B = layer->batch_size;
    const int64_t reduction = (*stack)[begin + reduction_index].toInt();
    (*stack)[begin + reduction_index] = static_cast<int64_t>(at::Reduction::None);

    std::vector<std::pair<size_t, Unwrapped>> operands;  // every tensor but the gradient
    int64_t rank = 0;
    for (size_t i = backward ? 1 : 0; i < n; ++i) {
      const c10::IValue& v = (*stack)[begin + i];
      if (!v.isTensor() || !v.toTensor().defined()) continue;
      operands.emplace_back(i, unwrapAt(v.toTensor(), layer));
      rank = std::max(rank, operands.back().second.logicalRank());
    }
    const Unwrapped& self = operands.front().second;
    const int64_t self_numel = self.value.numel() / (self.batched() ? B : 1);
    std::vector<int64_t> shape(rank + 1, 1);  // the batch-front broadcast shape of the operands
    shape[0] = B;
    for (const auto& [i, u] : operands) {
      at::Tensor t = u.batched() ? padLogicalRank(batchFront(u), u.logicalRank(), rank) : u.value;
      (*stack)[begin + i] = t;
      shape = at::infer_size(shape, t.sizes());
    }
    // the input and target must have the same shape (weights broadcast)
    for (size_t k = 0; k < 2 && k < operands.size(); ++k) {
      auto& slot = (*stack)[begin + operands[k].first];
      slot = slot.toTensor().expand(shape);
    }
    if (!backward) {
      op.callBoxed(stack);
      at::Tensor out = torch::jit::pop(*stack).toTensor();
      if (out.dim() == rank) out = out.expand(shape);
      if (reduction != at::Reduction::None && out.dim() > 1) {
        std::vector<int64_t> dims;
        for (int64_t d = 1; d < out.dim(); ++d) dims.push_back(d);
        out = reduction == at::Reduction::Mean ? out.mean(dims) : out.sum(dims);
      }
      torch::jit::push(*stack, makeBatched(out, 0, layer));
      return;
    }
    Unwrapped grad = unwrapAt((*stack)[begin].toTensor(), layer);
    at::Tensor g;
    if (reduction == at::Reduction::None) {
      g = grad.batched() ? padLogicalRank(batchFront(grad), grad.logicalRank(), rank)
                         : grad.value;
    } else {
      g = padLogicalRank(batchFrontExpanded(grad, B), 0, rank);
      if (reduction == at::Reduction::Mean) g = at::div(g, self_numel);
    }
    (*stack)[begin] = g.expand(at::infer_size(shape, g.sizes()));
    op.callBoxed(stack);
    at::Tensor out = torch::jit::pop(*stack).toTensor();
    torch::jit::push(*stack, makeBatched(out, 0, layer));
  };
}

// ctc_loss with tensor lengths reads the lengths as numbers in its decomposition: batched
// lengths differ per sample, so they go through the for-loop fallback; otherwise it decomposes.
void ctcLossRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  const size_t begin = stack->size() - op.schema().arguments().size();
  for (size_t i : {size_t{2}, size_t{3}}) {
    if (unwrapAt((*stack)[begin + i].toTensor(), layer).batched()) {
      return vmapFallback(op, stack, layer);
    }
  }
  decompose(op, stack);
}

const RuleTable kLoss({
    {"aten::ctc_loss.Tensor", ctcLossRule},
    {"aten::nll_loss_forward", nllForwardRule},
    {"aten::nll_loss_backward", nllBackwardRule},
    {"aten::nll_loss2d_forward", nllForwardRule},
    {"aten::nll_loss2d_backward", nllBackwardRule},
});

const RuleTable kPointwiseLoss({
    {"aten::mse_loss", pointwiseLossRule(2, false)},
    {"aten::mse_loss_backward", pointwiseLossRule(3, true)},
    {"aten::binary_cross_entropy", pointwiseLossRule(3, false)},
    {"aten::binary_cross_entropy_backward", pointwiseLossRule(4, true)},
    {"aten::binary_cross_entropy_with_logits", pointwiseLossRule(4, false)},
    {"aten::smooth_l1_loss", pointwiseLossRule(2, false)},
    {"aten::smooth_l1_loss_backward", pointwiseLossRule(3, true)},
    {"aten::huber_loss", pointwiseLossRule(2, false)},
    {"aten::huber_loss_backward", pointwiseLossRule(3, true)},
    {"aten::soft_margin_loss", pointwiseLossRule(2, false)},
    {"aten::soft_margin_loss_backward", pointwiseLossRule(3, true)},
});

}  // namespace

}  // namespace functorch_lite
