// The matmul family: mm, bmm, mv, dot, addmm. Batched operands meet through broadcasting matmul.
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

void mvRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  auto m = unwrapAt(args[0].toTensor(), layer);
  auto v = unwrapAt(args[1].toTensor(), layer);
  at::Tensor out = v.batched() ? at::matmul(batchFront(m), batchFront(v).unsqueeze(-1)).squeeze(-1)
                               : at::matmul(batchFront(m), v.value);
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

// addmm(self, mat1, mat2, beta, alpha) = beta * self + alpha * (mat1 @ mat2)
void addmmRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  auto self = unwrapAt(args[0].toTensor(), layer);
  auto m1 = unwrapAt(args[1].toTensor(), layer);
  auto m2 = unwrapAt(args[2].toTensor(), layer);
  const c10::Scalar beta = args[3].toScalar();
  const c10::Scalar alpha = args[4].toScalar();
  at::Tensor product = matmulFront(m1, m2);
  at::Tensor bias = self.batched() ? padLogicalRank(batchFront(self), self.logicalRank(), 2)
                                   : self.value;
  at::Tensor out;
  if (beta.toComplexDouble() == 0.0) {
    out = alpha.toComplexDouble() == 1.0 ? product : at::mul(product, alpha);
  } else {
    if (beta.toComplexDouble() != 1.0) bias = at::mul(bias, beta);
    out = at::add(bias, product, alpha);
  }
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

const RuleTable kLinear({
    {"aten::mm", mmRule},
    {"aten::bmm", mmRule},
    {"aten::mv", mvRule},
    {"aten::dot", dotRule},
    {"aten::addmm", addmmRule},
});

}  // namespace

}  // namespace functorch_lite
