// The matmul family: mm, bmm, mv, dot, vdot, linear, bilinear's _trilinear and the add-product
// operators (addmm, baddbmm, addbmm, addmv, addr). Batched operands meet through broadcasting
// matmul.
#include <ATen/ops/add.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sum.h>

#include "batching/rules.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

using Args = std::vector<c10::IValue>;

// NOTE: [Matmul batching]
// With batch dims in front, torch.matmul's broadcasting does the work: [B, n, k] @ [k, m] folds
// into one mm, and two batched operands become one bmm.
at::Tensor matmulFront(const Unwrapped& a, const Unwrapped& b) {
  return at::matmul(batchFront(a), batchFront(b));
}

void mmRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  auto a = unwrapAt(args[0].toTensor(), layer);
  auto b = unwrapAt(args[1].toTensor(), layer);
  torch::jit::push(*stack, makeBatched(matmulFront(a, b), 0, layer));
}

// mv(m, v): a batch of vectors against one matrix is one mm, [B, k] @ m.T; a batch of
// matrices is a bmm.
at::Tensor mvProduct(const Unwrapped& m, const Unwrapped& v) {
  if (!m.batched()) return at::matmul(batchFront(v), m.value.t());
  return v.batched() ? at::matmul(batchFront(m), batchFront(v).unsqueeze(-1)).squeeze(-1)
                     : at::matmul(batchFront(m), v.value);
}

void mvRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  auto m = unwrapAt(args[0].toTensor(), layer);
  auto v = unwrapAt(args[1].toTensor(), layer);
  torch::jit::push(*stack, makeBatched(mvProduct(m, v), 0, layer));
}

void vdotRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  auto a = unwrapAt(args[0].toTensor(), layer);
  auto b = unwrapAt(args[1].toTensor(), layer);
  TORCH_CHECK(a.logicalRank() == 1 && b.logicalRank() == 1, layer->api,
              ": vdot: 1D tensors expected, but got ", a.logicalRank(), "D and ",
              b.logicalRank(), "D tensors");
  at::Tensor out = at::sum(at::mul(batchFront(a).conj(), batchFront(b)), {-1});
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

void dotRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  auto a = unwrapAt(args[0].toTensor(), layer);
  auto b = unwrapAt(args[1].toTensor(), layer);
  TORCH_CHECK(a.logicalRank() == 1 && b.logicalRank() == 1, layer->api,
              ": dot: 1D tensors expected, but got ", a.logicalRank(), "D and ",
              b.logicalRank(), "D tensors");
  at::Tensor out = at::sum(at::mul(batchFront(a), batchFront(b)), {-1});
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

// The physical product of a rule's two operands, batched at dim 0 (or unbatched when neither
// operand is).
using Product = at::Tensor (*)(const Unwrapped& a, const Unwrapped& b);

at::Tensor mmProduct(const Unwrapped& a, const Unwrapped& b) { return matmulFront(a, b); }

// addbmm sums the per-sample batch of products: [B, b, n, m] -> [B, n, m].
at::Tensor bmmSumProduct(const Unwrapped& a, const Unwrapped& b) {
  return matmulFront(a, b).sum(-3);
}

at::Tensor outerProduct(const Unwrapped& a, const Unwrapped& b) {
  return at::mul(batchFront(a).unsqueeze(-1), batchFront(b).unsqueeze(-2));
}

// NOTE: [Batching add-product operators]
// addmm, baddbmm, addbmm, addmv and addr compute beta * self + alpha * product(m1, m2) per
// sample. The product is batched like its operator's plain version (mm, bmm, mv, outer); self
// gets size-1 dims after its batch dim up to the product's per-sample rank so that it broadcasts
// per sample. beta == 0 ignores self entirely (NaNs included), as the operators do.
template <Product product, int64_t kRank>
void addProductRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                    const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  auto self = unwrapAt(args[0].toTensor(), layer);
  auto m1 = unwrapAt(args[1].toTensor(), layer);
  auto m2 = unwrapAt(args[2].toTensor(), layer);
  const c10::Scalar beta = args[3].toScalar();
  const c10::Scalar alpha = args[4].toScalar();
  at::Tensor prod = product(m1, m2);
  at::Tensor bias = self.batched() ? padLogicalRank(batchFront(self), self.logicalRank(), kRank)
                                   : self.value;
  at::Tensor out;
  if (beta.toComplexDouble() == 0.0) {
    out = alpha.toComplexDouble() == 1.0 ? prod : at::mul(prod, alpha);
  } else {
    if (beta.toComplexDouble() != 1.0) bias = at::mul(bias, beta);
    out = at::add(bias, prod, alpha);
  }
  if (!m1.batched() && !m2.batched() && (!self.batched() || beta.toComplexDouble() == 0.0)) {
    out = batchFrontExpanded(Unwrapped{out, std::nullopt}, layer->batch_size);
  }
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

// linear(input, weight, bias?) = input @ weight.T + bias. It is CompositeImplicit, but its
// decomposition adds the bias in place into the matmul's output, which is unbatched when only
// the bias is batched.
void linearRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  auto input = unwrapAt(args[0].toTensor(), layer);
  auto weight = unwrapAt(args[1].toTensor(), layer);
  const int64_t in_rank = input.logicalRank();
  const bool vector_weight = weight.logicalRank() == 1;
  const int64_t out_rank = in_rank - (vector_weight ? 1 : 0);
  at::Tensor x = batchFront(input);
  at::Tensor out;
  if (!weight.batched()) {
    out = at::matmul(x, vector_weight ? weight.value : weight.value.t());
  } else {
    // [B|1, *, in] @ [B, 1.., in, out]: the weight's batch dim lines up with the input's
    if (!input.batched()) x = x.unsqueeze(0);
    if (in_rank == 1) x = x.unsqueeze(1);
    at::Tensor w = batchFront(weight);
    w = vector_weight ? w.unsqueeze(-1) : w.transpose(-1, -2);
    out = at::matmul(x, padLogicalRank(w, 2, std::max<int64_t>(in_rank, 2)));
    if (vector_weight) out = out.squeeze(-1);
    if (in_rank == 1) out = out.squeeze(1);
  }
  if (args[2].isTensor() && args[2].toTensor().defined()) {
    auto bias = unwrapAt(args[2].toTensor(), layer);
    out = at::add(out, bias.batched() ? padLogicalRank(batchFront(bias), bias.logicalRank(),
                                                       out_rank)
                                      : bias.value);
  }
  if (out.dim() == out_rank) {
    out = batchFrontExpanded(Unwrapped{out, std::nullopt}, layer->batch_size);
  }
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

// _trilinear(i1, i2, i3, expand1, expand2, expand3, sumdim, unroll_dim) (bilinear's kernel):
// every dim list indexes one shared space, which gets the batch dim in front.
void trilinearRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                   const LayerPtr& layer) {
  const size_t begin = stack->size() - op.schema().arguments().size();
  for (size_t i = 0; i < 3; ++i) {
    auto& slot = (*stack)[begin + i];
    slot = batchFrontExpanded(unwrapAt(slot.toTensor(), layer), layer->batch_size);
  }
  for (size_t i = 3; i < 7; ++i) {
    auto dims = (*stack)[begin + i].toIntVector();
    for (auto& d : dims) d += 1;
    (*stack)[begin + i] = dims;
  }
  (*stack)[begin + 7] = (*stack)[begin + 7].toInt() + 1;
  op.callBoxed(stack);
  auto out = torch::jit::pop(*stack).toTensor();
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

const RuleTable kLinear({
    {"aten::mm", mmRule},
    {"aten::bmm", mmRule},
    {"aten::mv", mvRule},
    {"aten::dot", dotRule},
    {"aten::vdot", vdotRule},
    {"aten::linear", linearRule},
    {"aten::_trilinear", trilinearRule},
});

const RuleTable kAddProduct({
    {"aten::addmm", addProductRule<mmProduct, 2>},
    {"aten::baddbmm", addProductRule<mmProduct, 3>},
    {"aten::addbmm", addProductRule<bmmSumProduct, 2>},
    {"aten::addmv", addProductRule<mvProduct, 1>},
    {"aten::addr", addProductRule<outerProduct, 2>},
});

}  // namespace

}  // namespace functorch_lite
