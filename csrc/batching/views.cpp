// Shape operators whose arguments are sizes or permutations: view, reshape, expand, permute,
// squeeze, t, and joining tensor lists (cat, stack).
#include <ATen/ops/cat.h>
#include <ATen/ops/stack.h>
#include <c10/core/WrapDimMinimal.h>

#include <vector>

#include "batching/rules.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

using Args = std::vector<c10::IValue>;

// Pops the operator's arguments, lets `body` compute the physical output, and pushes it batched
// at dim 0.
template <typename Body>
BatchRule frontRule(Body body) {
  return [body](const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
    Args args = torch::jit::pop(*stack, op.schema().arguments().size());
    Unwrapped self = unwrapAt(args[0].toTensor(), layer);
    at::Tensor front = batchFront(self);
    torch::jit::push(*stack, makeBatched(body(front, self.logicalRank(), args, *layer), 0, layer));
  };
}

std::vector<c10::SymInt> withBatch(const Layer& layer, c10::SymIntArrayRef sizes) {
  std::vector<c10::SymInt> out;
  out.reserve(sizes.size() + 1);
  out.emplace_back(layer.batch_size);
  out.insert(out.end(), sizes.begin(), sizes.end());
  return out;
}

at::Tensor view(const at::Tensor& front, int64_t, const Args& args, const Layer& layer) {
  return front.view_symint(withBatch(layer, args[1].toSymIntVector()));
}

at::Tensor reshape(const at::Tensor& front, int64_t, const Args& args, const Layer& layer) {
  return front.reshape_symint(withBatch(layer, args[1].toSymIntVector()));
}

at::Tensor expand(const at::Tensor& front, int64_t rank, const Args& args, const Layer& layer) {
  auto sizes = args[1].toSymIntVector();
  TORCH_CHECK(static_cast<int64_t>(sizes.size()) >= rank, layer.api, ": expand: the number of "
      "sizes provided (", sizes.size(), ") must be at least the number of dimensions (", rank,
      ")");
  at::Tensor padded = padLogicalRank(front, rank, static_cast<int64_t>(sizes.size()));
  return padded.expand_symint(withBatch(layer, sizes));
}

at::Tensor permute(const at::Tensor& front, int64_t rank, const Args& args, const Layer&) {
  std::vector<int64_t> dims{0};
  for (int64_t d : args[1].toIntVector()) dims.push_back(c10::maybe_wrap_dim(d, rank) + 1);
  return front.permute(dims);
}

at::Tensor transposeMatrix(const at::Tensor& front, int64_t rank, const Args&, const Layer&) {
  return rank < 2 ? front : front.transpose(1, 2);
}

at::Tensor squeezeAll(const at::Tensor& front, int64_t, const Args&, const Layer&) {
  std::vector<int64_t> dims;
  for (int64_t d = 1; d < front.dim(); ++d) {
    if (front.sym_size(d) == 1) dims.push_back(d);
  }
  return front.squeeze(dims);
}

// cat and stack: every tensor gets the batch dim in front (unbatched ones are expanded).
template <bool kStack>
void joinRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  std::vector<at::Tensor> tensors;
  int64_t rank = -1;
  for (const at::Tensor& t : args[0].toTensorList()) {
    Unwrapped u = unwrapAt(t, layer);
    // cat skips legacy 1-d empty tensors when fixing the rank, as torch.cat does
    if (rank < 0 && (kStack || !(u.logicalRank() == 1 && u.value.sym_numel() == 0))) {
      rank = u.logicalRank();
    }
    tensors.push_back(batchFrontExpanded(u, layer->batch_size));
  }
  if (rank < 0) rank = 1;
  const int64_t dim = c10::maybe_wrap_dim(args[1].toInt(), rank + (kStack ? 1 : 0)) + 1;
  torch::jit::push(*stack,
                   makeBatched(kStack ? at::stack(tensors, dim) : at::cat(tensors, dim), 0, layer));
}

// NOTE: [In-place view operators]
// squeeze_, unsqueeze_, transpose_ and t_ change a tensor's metadata, not its data. The
// out-of-place operator runs on the batched tensor, and the wrapper takes the resulting physical
// value (a view of its old one), so every later use sees the new logical shape.
BatchRule inplaceViewRule(const char* name, const char* overload) {
  return [name, overload](const c10::OperatorHandle& op, torch::jit::Stack* stack,
                          const LayerPtr& layer) {
    static_cast<void>(op);
    const auto out_of_place = c10::Dispatcher::singleton().findSchemaOrThrow(name, overload);
    const at::Tensor self = (*stack)[stack->size() - op.schema().arguments().size()].toTensor();
    out_of_place.callBoxed(stack);
    const at::Tensor result = torch::jit::pop(*stack).toTensor();
    auto* batched_self = asBatched(self);
    auto* batched_result = asBatched(result);
    TORCH_INTERNAL_ASSERT(batched_self != nullptr && batched_result != nullptr);
    batched_self->replaceValue(batched_result->value(), batched_result->bdim());
    torch::jit::push(*stack, self);
  };
}

const RuleTable kInplaceViews({
    {"aten::squeeze_", inplaceViewRule("aten::squeeze", "")},
    {"aten::squeeze_.dim", inplaceViewRule("aten::squeeze", "dim")},
    {"aten::squeeze_.dims", inplaceViewRule("aten::squeeze", "dims")},
    {"aten::unsqueeze_", inplaceViewRule("aten::unsqueeze", "")},
    {"aten::transpose_", inplaceViewRule("aten::transpose", "int")},
    {"aten::t_", inplaceViewRule("aten::t", "")},
});

const RuleTable kViews({
    {"aten::view", frontRule(view)},
    {"aten::_unsafe_view", frontRule(reshape)},
    {"aten::reshape", frontRule(reshape)},
    {"aten::expand", frontRule(expand)},
    {"aten::permute", frontRule(permute)},
    {"aten::t", frontRule(transposeMatrix)},
    {"aten::squeeze", frontRule(squeezeAll)},
    {"aten::cat", joinRule<false>},
    {"aten::stack", joinRule<true>},
});

}  // namespace

}  // namespace functorch_lite
