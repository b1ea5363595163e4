// Shape operators whose arguments are sizes or permutations: view, reshape, expand, permute,
// squeeze, t, repeat, roll, as_strided, padding, joining tensor lists (cat, stack), the *_copy
// forms of views, and the new_* factories.
#include <ATen/ops/cat.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/constant_pad_nd.h>
#include <c10/core/WrapDimMinimal.h>

#include <vector>

#include "batching/rules.h"
#include "core/ivalues.h"
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

at::Tensor repeat(const at::Tensor& front, int64_t rank, const Args& args, const Layer& layer) {
  auto repeats = args[1].toSymIntVector();
  TORCH_CHECK(static_cast<int64_t>(repeats.size()) >= rank, layer.api, ": repeat: the number of "
      "repeat dims (", repeats.size(), ") can not be smaller than the number of dimensions of "
      "the tensor (", rank, ")");
  repeats.insert(repeats.begin(), c10::SymInt(1));
  return padLogicalRank(front, rank, static_cast<int64_t>(repeats.size()) - 1)
      .repeat_symint(repeats);
}

// roll without dims rolls the flattened sample.
at::Tensor roll(const at::Tensor& front, int64_t rank, const Args& args, const Layer& layer) {
  const auto shifts = args[1].toSymIntVector();
  auto dims = args[2].toIntVector();
  if (dims.empty()) {
    return front.reshape({layer.batch_size, -1}).roll_symint(shifts, {1}).view(front.sizes());
  }
  for (auto& d : dims) d = c10::maybe_wrap_dim(d, rank) + 1;
  return front.roll_symint(shifts, dims);
}

// cat and stack: every tensor gets the batch dim in front (unbatched ones are expanded).
template <bool kStack>
void joinRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  std::vector<at::Tensor> tensors;
  int64_t rank = -1;
  std::vector<Unwrapped> inputs;
  for (const at::Tensor& t : args[0].toTensorList()) inputs.push_back(unwrapAt(t, layer));
  // cat skips legacy 1-d empty tensors, as torch.cat does (batched they would be 2-d)
  auto legacyEmpty = [](const Unwrapped& u) {
    return u.logicalRank() == 1 && u.value.sym_numel() == 0;
  };
  for (const Unwrapped& u : inputs) {
    if (!kStack && legacyEmpty(u)) continue;
    if (rank < 0) rank = u.logicalRank();
    tensors.push_back(batchFrontExpanded(u, layer->batch_size));
  }
  if (rank < 0) {  // only legacy empty tensors
    rank = 1;
    for (const Unwrapped& u : inputs) tensors.push_back(batchFrontExpanded(u, layer->batch_size));
  }
  const int64_t dim = c10::maybe_wrap_dim(args[1].toInt(), rank + (kStack ? 1 : 0)) + 1;
  torch::jit::push(*stack,
                   makeBatched(kStack ? at::stack(tensors, dim) : at::cat(tensors, dim), 0, layer));
}

// block_diag(tensors): each sample's blocks (0-d and 1-d ones are 1 x n), in the promoted
// dtype, placed along the diagonal of a [B, rows, cols] tensor.
void blockDiagRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                   const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  const int64_t B = layer->batch_size;
  std::vector<at::Tensor> blocks;
  int64_t cols = 0;
  at::ScalarType dtype = at::kBool;
  bool first = true;
  for (const at::Tensor& t : args[0].toTensorList()) {
    Unwrapped u = unwrapAt(t, layer);
    at::Tensor front = batchFrontExpanded(u, B);
    if (u.logicalRank() < 2) front = front.reshape({B, 1, -1});
    blocks.push_back(front);
    cols += front.size(2);
    dtype = first ? front.scalar_type() : c10::promoteTypes(dtype, front.scalar_type());
    first = false;
  }
  TORCH_CHECK(!blocks.empty(), layer->api, ": block_diag: expected at least one tensor");
  // out of place (each block padded to the full width, then joined), so that blocks batched at
  // an outer level combine too
  std::vector<at::Tensor> rows_of_blocks;
  int64_t c = 0;
  for (const at::Tensor& block : blocks) {
    const int64_t width = block.size(2);
    rows_of_blocks.push_back(at::constant_pad_nd(block.to(dtype), {c, cols - c - width}));
    c += width;
  }
  at::Tensor out = at::cat(rows_of_blocks, 1);
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

// NOTE: [as_strided under vmap]
// A batched tensor's logical storage offset is its first sample's (BatchedTensorImpl reports
// value.storage_offset()), and as_strided's storage_offset is read relative to each sample's
// own: sample b's view starts batch_stride * b further than sample 0's. A loop computing the
// offset of x[b].as_strided(...) from x[b].storage_offset(), as ATen's backward formulas do,
// gives the same views. Without an offset the view starts where each sample does.
at::Tensor asStrided(const at::Tensor& front, int64_t, const Args& args, const Layer& layer) {
  std::vector<c10::SymInt> strides{front.sym_stride(0)};
  for (const auto& s : args[2].toSymIntVector()) strides.push_back(s);
  const c10::SymInt offset =
      args[3].isNone() ? front.sym_storage_offset() : args[3].toSymInt();
  return front.as_strided_symint(withBatch(layer, args[1].toSymIntVector()), strides, offset);
}

// NOTE: [In-place view operators]
// squeeze_, unsqueeze_, transpose_, t_ and as_strided_ change a tensor's metadata, not its data. The
// out-of-place operator runs on the batched tensor, and the wrapper takes the resulting physical
// value (a view of its old one), so every later use sees the new logical shape.
BatchRule inplaceViewRule(const char* name, const char* overload) {
  return [name, overload](const c10::OperatorHandle& op, torch::jit::Stack* stack,
                          const LayerPtr& layer) {
    const auto out_of_place = c10::Dispatcher::singleton().findSchemaOrThrow(name, overload);
    const at::Tensor self = (*stack)[stack->size() - op.schema().arguments().size()].toTensor();
    out_of_place.callBoxed(stack);
    const at::Tensor result = torch::jit::pop(*stack).toTensor();
    auto* batched_self = asBatched(self);
    auto* batched_result = asBatched(result);
    TORCH_CHECK(batched_self != nullptr && batched_result != nullptr, layer->api, ": the in-place "
        "view operator ", op.schema().operator_name(), " needs its tensor batched at this level; "
        "use the out-of-place operator instead.");
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
    {"aten::as_strided_", inplaceViewRule("aten::as_strided", "")},
});

// NOTE: [The *_copy forms of views]
// view_copy, permute_copy, unbind_copy, ... take the same arguments as their view: the view runs
// (through its own rule) and its outputs are cloned.
BatchRule copyOfViewRule(const char* name, const char* overload) {
  return [name, overload](const c10::OperatorHandle&, torch::jit::Stack* stack,
                          const LayerPtr& layer) {
    const auto view = c10::Dispatcher::singleton().findSchemaOrThrow(name, overload);
    view.callBoxed(stack);
    mapTensors(stack->back(), [&](const at::Tensor& t) {
      Unwrapped u = unwrapAt(t, layer);
      return u.batched() ? makeBatched(u.value.clone(), *u.bdim, layer) : t.clone();
    });
  };
}

// new_zeros(self, size, ...) and friends: as in functorch the result is batched, [B, *size],
// made from the physical self (for its dtype and device): decompositions write into it in place
// (grad.new_zeros(sizes).index_put_(...)), which needs a batched tensor.
void newFactoryRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                    const LayerPtr& layer) {
  const size_t begin = stack->size() - op.schema().arguments().size();
  (*stack)[begin] = unwrapAt((*stack)[begin].toTensor(), layer).value;
  (*stack)[begin + 1] = withBatch(*layer, (*stack)[begin + 1].toSymIntVector());
  op.callBoxed(stack);
  torch::jit::push(*stack, makeBatched(torch::jit::pop(*stack).toTensor(), 0, layer));
}

// new_empty_strided(self, size, stride, ...): each sample gets its own block of storage, so the
// batch dim's stride is the extent of one sample.
void newEmptyStridedRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                         const LayerPtr& layer) {
  const size_t begin = stack->size() - op.schema().arguments().size();
  auto sizes = (*stack)[begin + 1].toSymIntVector();
  auto strides = (*stack)[begin + 2].toSymIntVector();
  c10::SymInt extent = 1;
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] == 0) {
      extent = 0;
      break;
    }
    extent = extent + (sizes[d] - 1) * strides[d];
  }
  sizes.insert(sizes.begin(), c10::SymInt(layer->batch_size));
  strides.insert(strides.begin(), extent);
  (*stack)[begin] = unwrapAt((*stack)[begin].toTensor(), layer).value;
  (*stack)[begin + 1] = sizes;
  (*stack)[begin + 2] = strides;
  op.callBoxed(stack);
  torch::jit::push(*stack, makeBatched(torch::jit::pop(*stack).toTensor(), 0, layer));
}

const RuleTable kCopies({
    {"aten::view_copy", copyOfViewRule("aten::view", "")},
    {"aten::expand_copy", copyOfViewRule("aten::expand", "")},
    {"aten::permute_copy", copyOfViewRule("aten::permute", "")},
    {"aten::t_copy", copyOfViewRule("aten::t", "")},
    {"aten::alias_copy", copyOfViewRule("aten::alias", "")},
    {"aten::detach_copy", copyOfViewRule("aten::detach", "")},
    {"aten::diagonal_copy", copyOfViewRule("aten::diagonal", "")},
    {"aten::narrow_copy", copyOfViewRule("aten::narrow", "")},
    {"aten::select_copy.int", copyOfViewRule("aten::select", "int")},
    {"aten::slice_copy.Tensor", copyOfViewRule("aten::slice", "Tensor")},
    {"aten::split_copy.Tensor", copyOfViewRule("aten::split", "Tensor")},
    {"aten::split_with_sizes_copy", copyOfViewRule("aten::split_with_sizes", "")},
    {"aten::unbind_copy.int", copyOfViewRule("aten::unbind", "int")},
    {"aten::unfold_copy", copyOfViewRule("aten::unfold", "")},
    {"aten::squeeze_copy", copyOfViewRule("aten::squeeze", "")},
    {"aten::squeeze_copy.dim", copyOfViewRule("aten::squeeze", "dim")},
    {"aten::squeeze_copy.dims", copyOfViewRule("aten::squeeze", "dims")},
    {"aten::unsqueeze_copy", copyOfViewRule("aten::unsqueeze", "")},
    {"aten::transpose_copy.int", copyOfViewRule("aten::transpose", "int")},
    {"aten::view_as_real_copy", copyOfViewRule("aten::view_as_real", "")},
    {"aten::view_as_complex_copy", copyOfViewRule("aten::view_as_complex", "")},
    {"aten::as_strided_copy", copyOfViewRule("aten::as_strided", "")},
});

const RuleTable kNewFactories({
    {"aten::new_zeros", newFactoryRule},
    {"aten::new_ones", newFactoryRule},
    {"aten::new_full", newFactoryRule},
    {"aten::new_empty", newFactoryRule},
    {"aten::new_empty_strided", newEmptyStridedRule},
});

const RuleTable kViews({
    {"aten::view", frontRule(view)},
    {"aten::_unsafe_view", frontRule(reshape)},
    {"aten::reshape", frontRule(reshape)},
    {"aten::expand", frontRule(expand)},
    {"aten::permute", frontRule(permute)},
    {"aten::t", frontRule(transposeMatrix)},
    {"aten::squeeze", frontRule(squeezeAll)},
    {"aten::repeat", frontRule(repeat)},
    {"aten::roll", frontRule(roll)},
    {"aten::as_strided", frontRule(asStrided)},
    {"aten::constant_pad_nd", leadingDimsRule},
    {"aten::view_as_complex", leadingDimsRule},
    {"aten::cat", joinRule<false>},
    {"aten::stack", joinRule<true>},
    {"aten::block_diag", blockDiagRule},
});

}  // namespace

}  // namespace functorch_lite
