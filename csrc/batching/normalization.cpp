// Normalization: native_batch_norm, native_layer_norm and native_group_norm, with their
// backward ops.
#include <ATen/TensorOperators.h>
#include <ATen/ops/add.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/native_batch_norm.h>
#include <ATen/ops/native_batch_norm_backward.h>
#include <ATen/ops/native_group_norm.h>
#include <ATen/ops/native_group_norm_backward.h>
#include <ATen/ops/native_layer_norm.h>
#include <ATen/ops/native_layer_norm_backward.h>
#include <ATen/ops/sum.h>

#include <vector>

#include "batching/rules.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

using Args = std::vector<c10::IValue>;

// An optional tensor argument seen from the level (value undefined when absent).
Unwrapped optionalAt(const c10::IValue& v, const LayerPtr& layer) {
  if (!v.isTensor() || !v.toTensor().defined()) return Unwrapped{};
  return unwrapAt(v.toTensor(), layer);
}

std::optional<at::Tensor> orNone(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

void pushBatched(torch::jit::Stack* stack, const at::Tensor& t, int64_t bdim,
                 const LayerPtr& layer) {
  torch::jit::push(*stack, t.defined() ? makeBatched(t, bdim, layer) : t);
}

// A per-channel parameter [C] (or [B, C] batched) viewed to broadcast over a batch-front
// tensor of `rank` dims whose channels are at dim `channel_dim`.
at::Tensor channelView(const Unwrapped& p, int64_t rank, int64_t channel_dim) {
  std::vector<int64_t> shape(rank, 1);
  at::Tensor front = batchFront(p);
  if (p.batched()) shape[0] = front.size(0);
  shape[channel_dim] = front.size(-1);
  return front.reshape(shape);
}

// ---- layer norm ----------------------------------------------------------------------------

// NOTE: [Batching layer norm]
// layer_norm normalizes over the trailing dims, so the batch dim in front is one more leading
// dim: the input (expanded when unbatched) goes through as it is. A batched weight or bias is
// applied after an unweighted normalization. In the backward, grad_weight and grad_bias are
// per-sample sums over the leading dims, computed directly; grad_input comes from the
// operator, with a batched weight folded into the incoming gradient.
void layerNormRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                   const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  const int64_t B = layer->batch_size;
  Unwrapped input = unwrapAt(args[0].toTensor(), layer);
  const auto shape = args[1].toSymIntVector();
  Unwrapped weight = optionalAt(args[2], layer);
  Unwrapped bias = optionalAt(args[3], layer);
  const double eps = args[4].toDouble();
  const int64_t rank = input.logicalRank() + 1;
  at::Tensor x = batchFrontExpanded(input, B).contiguous();
  const bool affine_after = weight.batched() || bias.batched();
  auto r = affine_after
               ? at::native_layer_norm_symint(x, shape, std::nullopt, std::nullopt, eps)
               : at::native_layer_norm_symint(x, shape, orNone(weight.value),
                                              orNone(bias.value), eps);
  at::Tensor out = std::get<0>(r);
  if (affine_after) {
    const int64_t k = static_cast<int64_t>(shape.size());
    auto param = [&](const Unwrapped& p) {
      return p.batched() ? padLogicalRank(batchFront(p), k, rank - 1) : p.value;
    };
    if (weight.value.defined()) out = at::mul(out, param(weight));
    if (bias.value.defined()) out = at::add(out, param(bias));
  }
  pushBatched(stack, out, 0, layer);
  pushBatched(stack, std::get<1>(r), 0, layer);
  pushBatched(stack, std::get<2>(r), 0, layer);
}

// native_layer_norm_backward(grad_out, input, normalized_shape, mean, rstd, weight?, bias?,
//                            output_mask)
void layerNormBackwardRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                           const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  const int64_t B = layer->batch_size;
  Unwrapped grad = unwrapAt(args[0].toTensor(), layer);
  Unwrapped input = unwrapAt(args[1].toTensor(), layer);
  const auto shape = args[2].toSymIntVector();
  // the kernel indexes its operands as contiguous: expanded (unbatched) ones are materialized
  at::Tensor mean = batchFrontExpanded(unwrapAt(args[3].toTensor(), layer), B).contiguous();
  at::Tensor rstd = batchFrontExpanded(unwrapAt(args[4].toTensor(), layer), B).contiguous();
  Unwrapped weight = optionalAt(args[5], layer);
  Unwrapped bias = optionalAt(args[6], layer);
  const auto mask = args[7].toBoolList();
  const int64_t rank = input.logicalRank() + 1;
  const int64_t k = static_cast<int64_t>(shape.size());
  at::Tensor g = batchFrontExpanded(grad, B).contiguous();
  at::Tensor x = batchFrontExpanded(input, B).contiguous();

  at::Tensor grad_input, grad_weight, grad_bias;
  if (mask[0]) {
    if (weight.batched()) {
      at::Tensor g_eff = at::mul(g, padLogicalRank(batchFront(weight), k, rank - 1));
      grad_input = std::get<0>(at::native_layer_norm_backward_symint(
          g_eff, x, shape, mean, rstd, std::nullopt, std::nullopt, {true, false, false}));
    } else {
      grad_input = std::get<0>(at::native_layer_norm_backward_symint(
          g, x, shape, mean, rstd, orNone(weight.value), std::nullopt, {true, false, false}));
    }
  }
  std::vector<int64_t> lead;  // the per-sample leading dims, summed over
  for (int64_t d = 1; d < rank - k; ++d) lead.push_back(d);
  auto sumLead = [&](const at::Tensor& t) { return lead.empty() ? t : t.sum(lead); };
  if (mask[1] && weight.value.defined()) {
    grad_weight = sumLead(at::mul(g, at::mul(x - mean, rstd)));
  }
  if (mask[2] && bias.value.defined()) grad_bias = sumLead(g);
  pushBatched(stack, grad_input, 0, layer);
  pushBatched(stack, grad_weight, 0, layer);
  pushBatched(stack, grad_bias, 0, layer);
}

// ---- group norm ----------------------------------------------------------------------------

// NOTE: [Batching group norm]
// Groups never span samples of N, so the batch folds into N: [B, N, C, *] -> [B*N, C, *], and
// mean / rstd ([N, groups]) unfold to [B, N, groups]. A batched weight or bias is applied after;
// per-sample grad_weight and grad_bias are sums over N and the spatial dims, computed directly.
void groupNormRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                   const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  const int64_t B = layer->batch_size;
  Unwrapped input = unwrapAt(args[0].toTensor(), layer);
  Unwrapped weight = optionalAt(args[1], layer);
  Unwrapped bias = optionalAt(args[2], layer);
  const c10::SymInt N = args[3].toSymInt();
  const c10::SymInt C = args[4].toSymInt();
  const c10::SymInt HxW = args[5].toSymInt();
  const int64_t group = args[6].toInt();
  const double eps = args[7].toDouble();
  at::Tensor x = mergeBatchInto(batchFrontExpanded(input, B), 0).contiguous();
  const bool affine_after = weight.batched() || bias.batched();
  auto r = affine_after
               ? at::native_group_norm_symint(x, std::nullopt, std::nullopt, N * B, C, HxW,
                                              group, eps)
               : at::native_group_norm_symint(x, orNone(weight.value), orNone(bias.value),
                                              N * B, C, HxW, group, eps);
  at::Tensor out = splitBatchOutOf(std::get<0>(r), 0, B);
  if (affine_after) {
    if (weight.value.defined()) out = at::mul(out, channelView(weight, out.dim(), 2));
    if (bias.value.defined()) out = at::add(out, channelView(bias, out.dim(), 2));
  }
  pushBatched(stack, out, 0, layer);
  pushBatched(stack, splitBatchOutOf(std::get<1>(r), 0, B), 0, layer);
  pushBatched(stack, splitBatchOutOf(std::get<2>(r), 0, B), 0, layer);
}

// native_group_norm_backward(grad_out, input, mean, rstd, weight?, N, C, HxW, group, mask)
void groupNormBackwardRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                           const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  const int64_t B = layer->batch_size;
  at::Tensor g = batchFrontExpanded(unwrapAt(args[0].toTensor(), layer), B);
  at::Tensor x = batchFrontExpanded(unwrapAt(args[1].toTensor(), layer), B);
  at::Tensor mean = batchFrontExpanded(unwrapAt(args[2].toTensor(), layer), B);
  at::Tensor rstd = batchFrontExpanded(unwrapAt(args[3].toTensor(), layer), B);
  Unwrapped weight = optionalAt(args[4], layer);
  const c10::SymInt N = args[5].toSymInt();
  const c10::SymInt C = args[6].toSymInt();
  const c10::SymInt HxW = args[7].toSymInt();
  const int64_t group = args[8].toInt();
  const auto mask = args[9].toBoolList();

  at::Tensor grad_input, grad_weight, grad_bias;
  if (mask[0]) {
    at::Tensor g_eff = weight.batched() ? at::mul(g, channelView(weight, g.dim(), 2)) : g;
    auto w = weight.batched() ? std::nullopt : orNone(weight.value);
    grad_input = std::get<0>(at::native_group_norm_backward_symint(
        mergeBatchInto(g_eff, 0).contiguous(), mergeBatchInto(x, 0).contiguous(),
        mergeBatchInto(mean, 0), mergeBatchInto(rstd, 0), w, N * B, C, HxW, group,
        {true, false, false}));
    grad_input = splitBatchOutOf(grad_input, 0, B);
  }
  std::vector<int64_t> dims{1};  // N and the spatial dims
  for (int64_t d = 3; d < g.dim(); ++d) dims.push_back(d);
  if (mask[1] && weight.value.defined()) {
    // x_hat per group: [B, N, group, C/group * HxW]
    std::vector<int64_t> grouped{B, x.size(1), group, -1};
    at::Tensor x_hat = (x.reshape(grouped) - mean.unsqueeze(-1)) * rstd.unsqueeze(-1);
    grad_weight = at::mul(g, x_hat.reshape(x.sizes())).sum(dims);
  }
  if (mask[2]) grad_bias = g.sum(dims);
  pushBatched(stack, grad_input, 0, layer);
  pushBatched(stack, grad_weight, 0, layer);
  pushBatched(stack, grad_bias, 0, layer);
}

// ---- batch norm ----------------------------------------------------------------------------

// NOTE: [Batching batch norm]
// Batch norm computes statistics per channel over N and the spatial dims, so the batch folds
// into the channels: [B, N, C, *] -> [N, B*C, *]; per-channel tensors become [B*C] (a batched
// [B, C] flattened, an unbatched [C] repeated). In training the running statistics are updated
// in place, so they must be batched when the input is (one set per sample), as in functorch.
at::Tensor perChannel(const Unwrapped& p, int64_t batch_size) {
  if (!p.value.defined()) return at::Tensor();
  return p.batched() ? batchFront(p).reshape({-1}) : p.value.repeat({batch_size});
}

void batchNormRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                   const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  const int64_t B = layer->batch_size;
  Unwrapped input = unwrapAt(args[0].toTensor(), layer);
  Unwrapped weight = optionalAt(args[1], layer);
  Unwrapped bias = optionalAt(args[2], layer);
  Unwrapped running_mean = optionalAt(args[3], layer);
  Unwrapped running_var = optionalAt(args[4], layer);
  const bool training = args[5].toBool();
  const double momentum = args[6].toDouble();
  const double eps = args[7].toDouble();
  if (training) {
    for (const Unwrapped* stats : {&running_mean, &running_var}) {
      TORCH_CHECK(!stats->value.defined() || stats->batched(), layer->api, ": batch_norm in "
          "training mode updates its running_mean and running_var in place, but they are not "
          "batched while the input is: each sample would write its own statistics into the "
          "same tensor. Use functorch_lite.replace_all_batch_norm_modules_(module) (or "
          "track_running_stats=False), or pass running statistics batched like the input.");
    }
  }
  // running statistics are updated through a [B*C] view of their physical value; a copy (when
  // no such view exists) is written back
  auto statsView = [&](const Unwrapped& s) {
    if (!s.value.defined() || !training) return perChannel(s, B);
    return batchFront(s).reshape({-1});
  };
  at::Tensor mean_flat = statsView(running_mean);
  at::Tensor var_flat = statsView(running_var);
  at::Tensor x = mergeBatchInto(batchFrontExpanded(input, B), 1).contiguous();
  auto r = at::native_batch_norm(x, orNone(perChannel(weight, B)), orNone(perChannel(bias, B)),
                                 orNone(mean_flat), orNone(var_flat), training, momentum, eps);
  if (training) {
    if (running_mean.value.defined() && !mean_flat.is_alias_of(running_mean.value)) {
      batchFront(running_mean).copy_(mean_flat.view(batchFront(running_mean).sizes()));
    }
    if (running_var.value.defined() && !var_flat.is_alias_of(running_var.value)) {
      batchFront(running_var).copy_(var_flat.view(batchFront(running_var).sizes()));
    }
  }
  pushBatched(stack, splitBatchOutOf(std::get<0>(r), 1, B), 1, layer);
  pushBatched(stack, splitBatchOutOf(std::get<1>(r), 0, B), 0, layer);
  pushBatched(stack, splitBatchOutOf(std::get<2>(r), 0, B), 0, layer);
}

// native_batch_norm_backward(grad_out, input, weight?, running_mean?, running_var?, save_mean?,
//                            save_invstd?, train, eps, output_mask)
void batchNormBackwardRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                           const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  const int64_t B = layer->batch_size;
  at::Tensor g =
      mergeBatchInto(batchFrontExpanded(unwrapAt(args[0].toTensor(), layer), B), 1).contiguous();
  at::Tensor x =
      mergeBatchInto(batchFrontExpanded(unwrapAt(args[1].toTensor(), layer), B), 1).contiguous();
  std::vector<at::Tensor> channels;
  for (size_t i = 2; i <= 6; ++i) channels.push_back(perChannel(optionalAt(args[i], layer), B));
  const bool train = args[7].toBool();
  const double eps = args[8].toDouble();
  const auto mask = args[9].toBoolList();
  auto r = at::native_batch_norm_backward(
      g, x, orNone(channels[0]), orNone(channels[1]), orNone(channels[2]), orNone(channels[3]),
      orNone(channels[4]), train, eps, {mask[0], mask[1], mask[2]});
  const at::Tensor& gi = std::get<0>(r);
  pushBatched(stack, gi.defined() ? splitBatchOutOf(gi, 1, B) : gi, 1, layer);
  for (const at::Tensor& t : {std::get<1>(r), std::get<2>(r)}) {
    pushBatched(stack, t.defined() ? splitBatchOutOf(t, 0, B) : t, 0, layer);
  }
}

const RuleTable kNormalization({
    {"aten::native_layer_norm", layerNormRule},
    {"aten::native_layer_norm_backward", layerNormBackwardRule},
    {"aten::native_group_norm", groupNormRule},
    {"aten::native_group_norm_backward", groupNormBackwardRule},
    {"aten::native_batch_norm", batchNormRule},
    {"aten::_native_batch_norm_legit", batchNormRule},  // native_batch_norm's arguments
    {"aten::native_batch_norm_backward", batchNormBackwardRule},
});

}  // namespace

}  // namespace functorch_lite
