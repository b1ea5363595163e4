// Operators that forward-mode AD calls on its own (tangent layouts, jvp helpers), batched so
// that vmap(jvp), jacfwd and hessian run without the for-loop fallback.
#include <ATen/ops/_new_zeros_with_same_feature_meta.h>
#include <ATen/ops/glu_jvp.h>

#include "batching/rules.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

// NOTE: [Batching _new_zeros_with_same_feature_meta]
// Forward AD calls _new_zeros_with_same_feature_meta(self, other, n) to make a zero tangent
// laid out like the primal `other` (sizes, strides, storage offset, and a storage of the
// primal's size), with self's first n sizes as extra leading dims, so that the views it later
// takes of the tangent match the primal's. Its values are zeros: only the layout matters. The
// rule calls it on physical tensors:
// - `other` batched at bdim d: its physical layout is the layout of every sample together, so
//   the batch dim becomes one of the feature dims, at n + d. self's leading sizes are its
//   logical ones (its batch dim, if any, is moved to the back, out of the first n).
// - only `self` batched: its batch dim becomes one more leading dim, in front.
void newZerosWithSameFeatureMetaRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                                     const LayerPtr& layer) {
  const size_t begin = stack->size() - op.schema().arguments().size();
  const Unwrapped self = unwrapAt((*stack)[begin].toTensor(), layer);
  const Unwrapped other = unwrapAt((*stack)[begin + 1].toTensor(), layer);
  const int64_t n = (*stack)[begin + 2].toInt();
  at::Tensor out;
  int64_t out_bdim = 0;
  if (other.batched()) {
    const at::Tensor lead = self.batched() ? self.value.movedim(*self.bdim, -1) : self.value;
    out = at::_new_zeros_with_same_feature_meta(lead, other.value, n);
    out_bdim = n + *other.bdim;
  } else {
    out = at::_new_zeros_with_same_feature_meta(batchFront(self), other.value, n + 1);
  }
  torch::jit::drop(*stack, op.schema().arguments().size());
  torch::jit::push(*stack, makeBatched(out, out_bdim, layer));
}

// glu_jvp(glu, x, dx, dim): every operand is x-shaped along `dim` (glu halved), so the batch
// dim goes in front of all three and `dim` moves past it.
void gluJvpRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  const size_t begin = stack->size() - op.schema().arguments().size();
  const int64_t batch = layer->batch_size;
  const Unwrapped x = unwrapAt((*stack)[begin + 1].toTensor(), layer);
  const int64_t rank = x.logicalRank();
  int64_t dim = (*stack)[begin + 3].toInt();
  dim = c10::maybe_wrap_dim(dim, rank) + 1;
  const at::Tensor glu = batchFrontExpanded(unwrapAt((*stack)[begin].toTensor(), layer), batch);
  const at::Tensor dx = batchFrontExpanded(unwrapAt((*stack)[begin + 2].toTensor(), layer), batch);
  const at::Tensor out = at::glu_jvp(glu, batchFrontExpanded(x, batch), dx, dim);
  torch::jit::drop(*stack, op.schema().arguments().size());
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

const RuleTable kForwardAd({
    {"aten::_new_zeros_with_same_feature_meta", newZerosWithSameFeatureMetaRule},
    {"aten::glu_jvp", gluJvpRule},
});

}  // namespace

}  // namespace functorch_lite
