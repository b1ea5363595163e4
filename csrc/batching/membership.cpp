// isin: membership of elements in a set of test elements that differs per sample.
#include <ATen/ops/gather.h>
#include <ATen/ops/result_type.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros_like.h>

#include <vector>

#include "batching/rules.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

// NOTE: [Batching isin]
// With unbatched test elements, isin is elementwise in `elements`: it runs on the physical
// tensor as is. With batched test elements every sample has its own set, so each row of the
// [B, M] test elements is sorted and each sample's elements are looked up in their own row
// with a batched searchsorted; an element is in the set when the value found there equals it
// (so NaN, equal to nothing, is in no set, as in isin). That costs O((N + M) log M) per
// sample and no [N, M] comparison table.
void isinRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  const size_t begin = stack->size() - op.schema().arguments().size();
  const c10::IValue& elements_arg = (*stack)[begin];
  const c10::IValue& test_arg = (*stack)[begin + 1];
  const bool test_batched = test_arg.isTensor() && unwrapAt(test_arg.toTensor(), layer).batched();
  if (!test_batched) {  // only `elements` is batched: elementwise
    Unwrapped elements = unwrapAt(elements_arg.toTensor(), layer);
    (*stack)[begin] = elements.value;
    op.callBoxed(stack);
    torch::jit::push(*stack, makeBatched(torch::jit::pop(*stack).toTensor(), *elements.bdim, layer));
    return;
  }
  const int64_t batch = layer->batch_size;
  const bool invert = (*stack)[begin + 3].toBool();
  const at::Tensor test = batchFront(unwrapAt(test_arg.toTensor(), layer)).reshape({batch, -1});
  at::Tensor elements;
  std::vector<int64_t> shape{batch};
  if (elements_arg.isTensor()) {
    Unwrapped u = unwrapAt(elements_arg.toTensor(), layer);
    elements = batchFrontExpanded(u, batch);
    for (int64_t d = 1; d < elements.dim(); ++d) shape.push_back(elements.size(d));
  } else {
    elements = at::scalar_tensor(elements_arg.toScalar(), test.options()).expand({batch});
  }
  const auto dtype = at::result_type(elements, test);
  const at::Tensor values = elements.to(dtype).reshape({batch, -1}).contiguous();
  const at::Tensor sorted = std::get<0>(at::sort(test.to(dtype), 1));
  at::Tensor found;
  if (sorted.size(1) == 0) {
    found = at::zeros_like(values, values.options().dtype(at::kBool));
  } else {
    const at::Tensor at_or_after = at::searchsorted(sorted, values).clamp_max(sorted.size(1) - 1);
    found = sorted.gather(1, at_or_after).eq(values);
  }
  if (invert) found = found.logical_not();
  torch::jit::drop(*stack, op.schema().arguments().size());
  torch::jit::push(*stack, makeBatched(found.reshape(shape), 0, layer));
}

const RuleTable kMembership({
    {"aten::isin.Tensor_Tensor", isinRule},
    {"aten::isin.Tensor_Scalar", isinRule},
    {"aten::isin.Scalar_Tensor", isinRule},
});

}  // namespace

}  // namespace functorch_lite
