// Convolution and its backward (1d/2d/3d, transposed, grouped): the batch folds into N or groups.
#include <ATen/ops/add.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/sum.h>

#include <vector>

#include "batching/rules.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

using Args = std::vector<c10::IValue>;

// NOTE: [Batching convolution]
// The standard trick (as in functorch): with an unbatched weight the batch folds into N,
// [B, N, C, ...] -> [B*N, C, ...], and the output unfolds again. With a batched weight the batch
// folds into the groups: input [B, N, C, ...] -> [N, B*C, ...], weight [B, O, C/g, ...] ->
// [B*O, C/g, ...] and groups g -> B*g, so that each sample's channels meet only its own filters;
// the output [N, B*O, ...] is batched at dim 1. A transposed convolution's weight is
// [C, O/g, ...], so the batch folds into its first dim alike. An unbatched input with a batched
// weight is expanded (it is a view). A batched bias is added after the convolution.
struct ConvParams {
  std::vector<int64_t> stride, padding, dilation, output_padding;
  bool transposed;
  int64_t groups;
};

ConvParams paramsFrom(const Args& args, size_t first) {
  return {args[first].toIntVector(), args[first + 1].toIntVector(),
          args[first + 2].toIntVector(), args[first + 4].toIntVector(),
          args[first + 3].toBool(), args[first + 5].toInt()};
}

at::Tensor conv(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                const ConvParams& p, int64_t groups) {
  return at::convolution(x, w, b, p.stride, p.padding, p.dilation, p.transposed,
                         p.output_padding, groups);
}

// [B, N, ...] (batched) and the weight folded into the groups: see the NOTE.
at::Tensor groupFoldedInput(const at::Tensor& x_front) { return mergeBatchInto(x_front, 1); }
at::Tensor groupFoldedWeight(const at::Tensor& w_front) { return mergeBatchInto(w_front, 0); }

void convolutionRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                     const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  const int64_t B = layer->batch_size;
  auto input = unwrapAt(args[0].toTensor(), layer);
  auto weight = unwrapAt(args[1].toTensor(), layer);
  std::optional<at::Tensor> bias_arg = args[2].toOptional<at::Tensor>();
  Unwrapped bias = bias_arg && bias_arg->defined() ? unwrapAt(*bias_arg, layer) : Unwrapped{};
  const ConvParams p = paramsFrom(args, 3);

  // a bias folds along when the weight is unbatched and the bias is too; otherwise it is added
  // afterwards
  const bool bias_inside = bias.value.defined() && !bias.batched() && !weight.batched();
  std::optional<at::Tensor> inner_bias =
      bias_inside ? std::optional<at::Tensor>(bias.value) : std::nullopt;
  at::Tensor out;  // batch in front
  if (!weight.batched()) {
    at::Tensor x = batchFrontExpanded(input, B);
    out = splitBatchOutOf(conv(mergeBatchInto(x, 0), weight.value, inner_bias, p, p.groups), 0, B);
  } else {
    at::Tensor x = batchFrontExpanded(input, B);
    at::Tensor folded = conv(groupFoldedInput(x), groupFoldedWeight(batchFront(weight)),
                             std::nullopt, p, p.groups * B);
    out = splitBatchOutOf(folded, 1, B).movedim(1, 0);
  }
  if (bias.value.defined() && !bias_inside) {
    // [B, O] or [O] -> broadcast over [B, N, O, spatial...]
    const int64_t spatial = out.dim() - 3;
    at::Tensor b = batchFrontExpanded(bias, B);
    std::vector<int64_t> shape{B, 1, b.size(1)};
    shape.insert(shape.end(), spatial, 1);
    out = at::add(out, b.reshape(shape));
  }
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

// convolution_backward(grad_output, input, weight, bias_sizes?, stride, padding, dilation,
//                      transposed, output_padding, groups, output_mask) -> (gI, gW, gB)
// With an unbatched weight, grad_input folds the batch into N; grad_weight needs the
// per-sample sums, so it folds into the groups (with the weight expanded), and grad_bias is a
// plain sum. With a batched weight everything folds into the groups.
void convolutionBackwardRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                             const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  const int64_t B = layer->batch_size;
  auto grad = unwrapAt(args[0].toTensor(), layer);
  auto input = unwrapAt(args[1].toTensor(), layer);
  auto weight = unwrapAt(args[2].toTensor(), layer);
  const ConvParams p = paramsFrom(args, 4);
  const auto mask = args[10].toBoolList();
  const bool want_input = mask[0], want_weight = mask[1], want_bias = mask[2];

  at::Tensor g = batchFrontExpanded(grad, B);
  at::Tensor x = batchFrontExpanded(input, B);
  at::Tensor grad_input, grad_weight, grad_bias;
  const int64_t out_channels = g.size(2);
  if (!weight.batched()) {
    if (want_input) {
      auto r = at::convolution_backward(mergeBatchInto(g, 0), mergeBatchInto(x, 0), weight.value,
                                        std::nullopt, p.stride, p.padding, p.dilation,
                                        p.transposed, p.output_padding, p.groups,
                                        {true, false, false});
      grad_input = splitBatchOutOf(std::get<0>(r), 0, B);
    }
    if (want_weight) {
      at::Tensor w = batchFrontExpanded(weight, B);
      auto r = at::convolution_backward(groupFoldedInput(g), groupFoldedInput(x),
                                        groupFoldedWeight(w), std::nullopt, p.stride, p.padding,
                                        p.dilation, p.transposed, p.output_padding,
                                        p.groups * B, {false, true, false});
      grad_weight = splitBatchOutOf(std::get<1>(r), 0, B);
    }
    if (want_bias) {
      std::vector<int64_t> dims{1};
      for (int64_t d = 3; d < g.dim(); ++d) dims.push_back(d);
      grad_bias = g.sum(dims);
    }
  } else {
    const std::vector<int64_t> bias_sizes{B * out_channels};
    auto r = at::convolution_backward(groupFoldedInput(g), groupFoldedInput(x),
                                      groupFoldedWeight(batchFront(weight)),
                                      want_bias ? at::OptionalIntArrayRef(bias_sizes)
                                                : at::OptionalIntArrayRef(),
                                      p.stride, p.padding, p.dilation, p.transposed,
                                      p.output_padding, p.groups * B,
                                      {want_input, want_weight, want_bias});
    if (want_input) grad_input = splitBatchOutOf(std::get<0>(r), 1, B).movedim(1, 0);
    if (want_weight) grad_weight = splitBatchOutOf(std::get<1>(r), 0, B);
    if (want_bias) grad_bias = splitBatchOutOf(std::get<2>(r), 0, B);
  }
  for (const at::Tensor& t : {grad_input, grad_weight, grad_bias}) {
    torch::jit::push(*stack, t.defined() ? makeBatched(t, 0, layer) : t);
  }
}

const RuleTable kConvolution({
    {"aten::convolution", convolutionRule},
    {"aten::convolution_backward", convolutionBackwardRule},
});

}  // namespace

}  // namespace functorch_lite
