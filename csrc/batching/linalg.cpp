// Linear algebra: operators on [*, m, n] that already take leading batch dims (the batch goes in
// front), their error checks, solve, and matrix operators with their own rule (trace, dist,
// renorm).
#include <ATen/ops/_linalg_check_errors.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/sub.h>
#include <c10/core/WrapDimMinimal.h>

#include <vector>

#include "batching/rules.h"
#include "core/ivalues.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

using Args = std::vector<c10::IValue>;

// NOTE: [Batched linalg error checks]
// linalg_inv and friends decompose into an *_ex operator and _linalg_check_errors(info, api,
// is_matrix), with is_matrix computed from the per-sample rank. Under vmap the info tensor has
// the batch dim, so the check runs in its batched form (is_matrix=False), which reports the
// failing sample's batch index.
void checkErrorsRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                     const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  Unwrapped info = unwrapAt(args[0].toTensor(), layer);
  at::_linalg_check_errors(batchFront(info), args[1].toStringRef(), /*is_matrix=*/false);
}

// NOTE: [Invalid shapes under vmap]
// An operand with fewer per-sample dims than the operator needs (a 1-D input to cholesky) would
// be read as a matrix once the batch dim is in front: a wrong result, or an error about the
// batched shape. Instead the call is replayed on the first sample, unbatched, so it raises
// exactly the error the unbatched call raises; should that call succeed, the rule still refuses.
[[noreturn]] void invalidShape(const c10::OperatorHandle& op, const torch::jit::Stack& stack,
                               const LayerPtr& layer, size_t arg, int64_t rank, int64_t needed) {
  const size_t n = op.schema().arguments().size();
  if (layer->batch_size > 0) {
    torch::jit::Stack sample(stack.end() - n, stack.end());
    for (auto& v : sample) {
      if (!v.isTensor() || !v.toTensor().defined()) continue;
      Unwrapped u = unwrapAt(v.toTensor(), layer);
      if (u.batched()) v = u.value.select(*u.bdim, 0);
    }
    op.callBoxed(&sample);
  }
  TORCH_CHECK(false, layer->api, ": ", op.schema().operator_name(), " expects argument ",
      op.schema().arguments()[arg].name(), " to have at least ", needed, " dimensions per "
      "sample, but got ", rank);
}

// trace(self) = the sum of the diagonal of a matrix.
void traceRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  const int64_t rank = unwrapAt(stack->end()[-1].toTensor(), layer).logicalRank();
  if (rank != 2) invalidShape(op, *stack, layer, 0, rank, 2);
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  Unwrapped self = unwrapAt(args[0].toTensor(), layer);
  at::Tensor out = batchFront(self).diagonal(0, 1, 2).sum(-1);
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

// dist(self, other, p) = the p-norm of self - other over every per-sample dim.
void distRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  Unwrapped a = unwrapAt(args[0].toTensor(), layer);
  Unwrapped b = unwrapAt(args[1].toTensor(), layer);
  const int64_t rank = std::max(a.logicalRank(), b.logicalRank());
  auto side = [&](const Unwrapped& u) {
    return u.batched() ? padLogicalRank(batchFront(u), u.logicalRank(), rank) : u.value;
  };
  at::Tensor diff = at::sub(side(a), side(b));
  if (diff.dim() == rank) diff = batchFrontExpanded(Unwrapped{diff, std::nullopt},
                                                    layer->batch_size);
  at::Tensor flat = diff.reshape({layer->batch_size, -1});
  at::Tensor out = at::linalg_vector_norm(flat, args[2].toScalar(), {1});
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

// renorm(self, p, dim, maxnorm) normalizes each slice along dim over all other dims, so the
// batch folds into dim: each (sample, slice) pair is one slice.
void renormRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  Unwrapped self = unwrapAt(args[0].toTensor(), layer);
  const int64_t dim = c10::maybe_wrap_dim(args[2].toInt(), self.logicalRank());
  at::Tensor folded = mergeBatchInto(batchFront(self), dim);
  at::Tensor out = folded.renorm(args[1].toScalar(), dim, args[3].toScalar());
  torch::jit::push(*stack,
                   makeBatched(splitBatchOutOf(out, dim, layer->batch_size), dim, layer));
}

// NOTE: [Batching matrix operators]
// Linear algebra operators take [*, m, n] operands whose leading dims broadcast against each
// other, so the batch dim goes in front of every operand (expanded when unbatched). Operands
// can have fewer per-sample leading dims than others (a [n, k] right-hand side against a
// [2, n, n] matrix); each gets size-1 dims after the batch dim until every operand has as many
// leading dims, given each operand's core rank (2 for a matrix, 1 for pivots or tau, 0 for a
// tolerance). Placeholder outputs (the empty 1-d U and Vh when compute_uv=False, lstsq's empty
// residuals) become [B, 0], like the per-sample [0].
struct MatrixSpec {
  std::vector<int64_t> cores;  // the core rank of each argument (2 when not listed)
  bool contiguous = false;     // the kernel needs contiguous operands (matrix_exp)
};

BatchRule matrixRule(MatrixSpec spec) {
  return [spec](const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
    const int64_t B = layer->batch_size;
    const size_t num_args = op.schema().arguments().size();
    const size_t begin = stack->size() - num_args;
    auto coreRank = [&](size_t i) { return i < spec.cores.size() ? spec.cores[i] : 2; };
    std::vector<std::pair<size_t, Unwrapped>> operands;
    int64_t leading = 0;
    for (size_t i = 0; i < num_args; ++i) {
      const c10::IValue& v = (*stack)[begin + i];
      if (!v.isTensor() || !v.toTensor().defined()) continue;
      operands.emplace_back(i, unwrapAt(v.toTensor(), layer));
      const int64_t rank = operands.back().second.logicalRank();
      if (rank < coreRank(i)) invalidShape(op, *stack, layer, i, rank, coreRank(i));
      leading = std::max(leading, rank - coreRank(i));
    }
    for (const auto& [i, u] : operands) {
      const int64_t rank = u.logicalRank();
      const int64_t missing = std::max<int64_t>(leading - (rank - coreRank(i)), 0);
      at::Tensor t = padLogicalRank(batchFrontExpanded(u, B), rank, rank + missing);
      (*stack)[begin + i] = spec.contiguous ? t.contiguous() : t;
    }
    op.callBoxed(stack);
    const size_t num_returns = op.schema().returns().size();
    for (size_t j = stack->size() - num_returns; j < stack->size(); ++j) {
      mapTensors((*stack)[j], [&](const at::Tensor& t) {
        at::Tensor out = t.dim() == 1 && t.numel() == 0 ? t.new_empty({B, 0}) : t;
        return makeBatched(out, 0, layer);
      });
    }
  };
}

MatrixSpec cores(std::vector<int64_t> c, bool contiguous = false) {
  return MatrixSpec{std::move(c), contiguous};
}

// _linalg_solve_ex(A, B, left, check_errors): B is a vector per sample when it has one dim, or
// one dim fewer than A and A's shape without its last dim (as linalg.solve decides).
void solveRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  const size_t begin = stack->size() - op.schema().arguments().size();
  Unwrapped a = unwrapAt((*stack)[begin].toTensor(), layer);
  Unwrapped b = unwrapAt((*stack)[begin + 1].toTensor(), layer);
  if (a.logicalRank() < 2) invalidShape(op, *stack, layer, 0, a.logicalRank(), 2);
  auto logical = [](const Unwrapped& u) {
    auto sizes = u.value.sizes().vec();
    if (u.bdim) sizes.erase(sizes.begin() + *u.bdim);
    return sizes;
  };
  const auto a_sizes = logical(a);
  const auto b_sizes = logical(b);
  const bool vector = b_sizes.size() == 1 ||
      (b_sizes.size() + 1 == a_sizes.size() &&
       std::equal(b_sizes.begin(), b_sizes.end(), a_sizes.begin()));
  if (!vector) {
    static const BatchRule matrix_case = matrixRule(cores({2, 2}));
    return matrix_case(op, stack, layer);
  }
  // a batch of vectors must have exactly A's leading dims to be read as vectors
  const int64_t B = layer->batch_size;
  at::Tensor a_front = batchFrontExpanded(a, B);
  at::Tensor b_front = padLogicalRank(batchFrontExpanded(b, B), b.logicalRank(),
                                      a.logicalRank() - 1);
  (*stack)[begin] = a_front;
  (*stack)[begin + 1] = b_front.expand(a_front.sizes().slice(0, a_front.dim() - 1));
  std::vector<c10::IValue> arguments;
  op.callBoxed(stack);
  wrapOutputs(op, stack, layer, arguments, 0);
}

const MatrixSpec kUnary = cores({2});
const MatrixSpec kTwoMatrices = cores({2, 2});

const RuleTable kMatrix({
    {"aten::_linalg_det", matrixRule(kUnary)},
    {"aten::_linalg_slogdet", matrixRule(kUnary)},
    {"aten::linalg_inv_ex", matrixRule(kUnary)},
    {"aten::linalg_cholesky_ex", matrixRule(kUnary)},
    {"aten::cholesky", matrixRule(kUnary)},
    {"aten::cholesky_inverse", matrixRule(kUnary)},
    {"aten::linalg_qr", matrixRule(kUnary)},
    {"aten::geqrf", matrixRule(kUnary)},
    {"aten::_linalg_svd", matrixRule(kUnary)},
    {"aten::_linalg_eigh", matrixRule(kUnary)},
    {"aten::linalg_eig", matrixRule(kUnary)},
    {"aten::_linalg_eigvals", matrixRule(kUnary)},
    {"aten::linalg_lu_factor_ex", matrixRule(kUnary)},
    {"aten::linalg_lu", matrixRule(kUnary)},
    {"aten::linalg_ldl_factor_ex", matrixRule(kUnary)},
    {"aten::linalg_matrix_exp", matrixRule(cores({2}, /*contiguous=*/true))},
    // new in torch 2.14: on 2.13 these names match no operator (NOTE: [Supported torch versions])
    {"aten::linalg_matrix_sqrth", matrixRule(kUnary)},
    {"aten::linalg_polar", matrixRule(kUnary)},
    {"aten::linalg_matrix_rank", matrixRule(kUnary)},
    {"aten::linalg_matrix_rank.atol_rtol_float", matrixRule(kUnary)},
    {"aten::tril", matrixRule(kUnary)},
    {"aten::triu", matrixRule(kUnary)},
    {"aten::cholesky_solve", matrixRule(kTwoMatrices)},
    {"aten::triangular_solve", matrixRule(kTwoMatrices)},
    {"aten::linalg_solve_triangular", matrixRule(kTwoMatrices)},
    {"aten::linalg_lstsq", matrixRule(kTwoMatrices)},
    {"aten::_cdist_forward", matrixRule(kTwoMatrices)},
    {"aten::_cdist_backward", matrixRule(cores({2, 2, 2, -1, 2}))},
    {"aten::linalg_lu_solve", matrixRule(cores({2, 1, 2}))},
    {"aten::linalg_ldl_solve", matrixRule(cores({2, 1, 2}))},
    {"aten::lu_unpack", matrixRule(cores({2, 1}))},
    {"aten::linalg_householder_product", matrixRule(cores({2, 1}))},
    {"aten::ormqr", matrixRule(cores({2, 1, 2}))},
    {"aten::linalg_pinv.atol_rtol_tensor", matrixRule(cores({2, 0, 0}))},
    {"aten::linalg_matrix_rank.atol_rtol_tensor", matrixRule(cores({2, 0, 0}))},
    {"aten::linalg_matrix_rank.tol_tensor", matrixRule(cores({2, 0}))},
});

const RuleTable kMatrixInplace({
    {"aten::tril_", leadingDimsRule},
    {"aten::triu_", leadingDimsRule},
});

const RuleTable kLinalg({
    {"aten::_linalg_check_errors", checkErrorsRule},
    {"aten::trace", traceRule},
    {"aten::dist", distRule},
    {"aten::renorm", renormRule},
    {"aten::_linalg_solve_ex", solveRule},
});

}  // namespace

}  // namespace functorch_lite
