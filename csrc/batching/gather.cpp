// Gathering and updating along one dim: gather, index_select, take and put, the index_*
// updates (index_add, index_copy, index_fill, index_reduce), bucketize and searchsorted,
// embedding and its backward.
#include <ATen/TensorOperators.h>
#include <ATen/ops/bucketize.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/embedding_dense_backward.h>
#include <ATen/ops/index.h>
#include <ATen/ops/index_put.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/where.h>
#include <c10/core/WrapDimMinimal.h>

#include <vector>

#include "batching/fallback.h"
#include "batching/rules.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

using Args = std::vector<c10::IValue>;

// NOTE: [Updates along a dim with a batched index]
// index_add / index_copy / index_fill take a 1-d index per sample. With an unbatched index the
// dim just shifts past the batch dim. With a batched one, the update is an index_put along that
// dim: the dim moves next to the batch dim, and [arange(B)[:, None], index] addresses each
// sample's own rows. index_reduce with a batched index is a scatter_reduce along that dim, its
// index expanded over the source (index_reduce's reductions and include_self are
// scatter_reduce's).
enum class AlongDim { Add, Copy, Fill, Reduce };  // Reduce: index_reduce

template <AlongDim kind>
void alongDimRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                  const LayerPtr& layer) {
  const size_t num_args = op.schema().arguments().size();
  const size_t begin = stack->size() - num_args;
  Args arguments(stack->begin() + begin, stack->end());
  const int64_t B = layer->batch_size;
  Unwrapped self = unwrapAt(arguments[0].toTensor(), layer);
  Unwrapped index = unwrapAt(arguments[2].toTensor(), layer);
  const bool inplace = writesArgument(op, 0);
  bool others_batched = index.batched();
  std::optional<Unwrapped> source;  // source (add, copy) or the value tensor (fill)
  if (arguments[3].isTensor()) {
    source = unwrapAt(arguments[3].toTensor(), layer);
    others_batched |= source->batched();
  }
  if (inplace && !self.batched() && others_batched) inplaceIntoUnbatchedError(op, *layer);
  const int64_t rank = self.logicalRank();
  const bool scalar = rank == 0;
  const int64_t dim = c10::maybe_wrap_dim(arguments[1].toInt(), std::max<int64_t>(rank, 1)) + 1;
  at::Tensor x = inplace ? batchFront(self) : batchFrontExpanded(self, B);
  if (scalar) x = x.unsqueeze(1);
  const bool fill_batched_value = kind == AlongDim::Fill && source && source->batched();

  if (!index.batched() && !fill_batched_value) {
    (*stack)[begin] = x;
    (*stack)[begin + 1] = dim;
    if (kind != AlongDim::Fill && source) {
      at::Tensor s = batchFrontExpanded(*source, B);
      (*stack)[begin + 3] = source->logicalRank() == 0 ? s.unsqueeze(1) : s;
    }
    op.callBoxed(stack);
    if (!inplace && scalar) {
      at::Tensor out = torch::jit::pop(*stack).toTensor();
      torch::jit::push(*stack, out.squeeze(1));
    }
    wrapOutputs(op, stack, layer, arguments, 0);
    return;
  }

  torch::jit::drop(*stack, num_args);
  at::Tensor idx = batchFrontExpanded(index, B);
  if (index.logicalRank() == 0) idx = idx.unsqueeze(1);
  at::Tensor moved = x.movedim(dim, 1);  // [B, n, rest]
  at::Tensor values;
  if (kind == AlongDim::Fill) {
    if (source) {
      values = padLogicalRank(batchFrontExpanded(*source, B).to(x.scalar_type()), 0,
                              moved.dim() - 1);
    } else {
      values = at::scalar_tensor(arguments[3].toScalar(), x.options());
    }
    std::vector<int64_t> shape = moved.sizes().vec();
    shape[1] = idx.size(1);
    values = values.expand(shape);
  } else {
    at::Tensor s = batchFrontExpanded(*source, B);
    if (source->logicalRank() == 0) s = s.unsqueeze(1);
    values = s.movedim(dim, 1);
    if (kind == AlongDim::Add) {
      const c10::Scalar alpha = arguments[4].toScalar();
      if (alpha.toComplexDouble() != 1.0) values = values * alpha;
    }
  }
  if (kind == AlongDim::Reduce) {
    std::vector<int64_t> view(values.dim(), 1);
    view[0] = B;
    view[1] = idx.size(1);
    const at::Tensor spread = idx.view(view).expand_as(values);
    const auto reduce = arguments[4].toStringRef();
    const bool include_self = arguments[5].toBool();
    if (inplace) {
      moved.scatter_reduce_(1, spread, values, reduce, include_self);
      torch::jit::push(*stack, arguments[0]);
      return;
    }
    at::Tensor out = moved.scatter_reduce(1, spread, values, reduce, include_self).movedim(1, dim);
    if (scalar) out = out.squeeze(1);
    torch::jit::push(*stack, makeBatched(out, 0, layer));
    return;
  }
  c10::List<std::optional<at::Tensor>> indices;
  indices.push_back(sampleIndex(*layer, 1, idx));
  indices.push_back(idx);
  const bool accumulate = kind == AlongDim::Add;
  if (inplace) {
    moved.index_put_(indices, values, accumulate);
    torch::jit::push(*stack, arguments[0]);
    return;
  }
  at::Tensor out = at::index_put(moved, indices, values, accumulate).movedim(1, dim);
  if (scalar) out = out.squeeze(1);
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

// index_select(self, dim, index): a batched index gathers each sample's own rows.
void indexSelectRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                     const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  const int64_t B = layer->batch_size;
  Unwrapped self = unwrapAt(args[0].toTensor(), layer);
  Unwrapped index = unwrapAt(args[2].toTensor(), layer);
  const int64_t rank = self.logicalRank();
  const int64_t dim = c10::maybe_wrap_dim(args[1].toInt(), std::max<int64_t>(rank, 1)) + 1;
  at::Tensor x = batchFrontExpanded(self, B);
  if (rank == 0) x = x.unsqueeze(1);
  at::Tensor out;
  if (!index.batched()) {
    out = at::index_select(x, dim, index.value);
  } else {
    at::Tensor idx = batchFront(index);
    if (index.logicalRank() == 0) idx = idx.unsqueeze(1);
    c10::List<std::optional<at::Tensor>> indices;
    indices.push_back(sampleIndex(*layer, 1, idx));
    indices.push_back(idx);
    out = at::index(x.movedim(dim, 1), indices).movedim(1, dim);
  }
  if (rank == 0) out = out.squeeze(1);
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

// gather(self, dim, index, sparse_grad): both operands need the batch dim; the output has the
// index's shape (a 0-dim self or index gathers along a size-1 dim).
void gatherRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  const int64_t B = layer->batch_size;
  Unwrapped self = unwrapAt(args[0].toTensor(), layer);
  Unwrapped index = unwrapAt(args[2].toTensor(), layer);
  at::Tensor x = batchFrontExpanded(self, B);
  at::Tensor idx = batchFrontExpanded(index, B);
  if (self.logicalRank() == 0) x = x.unsqueeze(1);
  if (index.logicalRank() == 0) idx = idx.unsqueeze(1);
  const int64_t dim =
      c10::maybe_wrap_dim(args[1].toInt(), std::max<int64_t>(self.logicalRank(), 1)) + 1;
  at::Tensor out = x.gather(dim, idx, args[3].toBool());
  if (index.logicalRank() == 0) out = out.squeeze(1);
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

// take(self, index): self flattened per sample, then a gather.
void takeRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  const int64_t B = layer->batch_size;
  Unwrapped self = unwrapAt(args[0].toTensor(), layer);
  Unwrapped index = unwrapAt(args[1].toTensor(), layer);
  at::Tensor flat = batchFrontExpanded(self, B).reshape({B, -1});
  at::Tensor idx = batchFrontExpanded(index, B);
  at::Tensor flat_idx = idx.reshape({B, -1});
  flat_idx = at::where(flat_idx < 0, flat_idx + flat.size(1), flat_idx);
  torch::jit::push(*stack, makeBatched(flat.gather(1, flat_idx).view(idx.sizes()), 0, layer));
}

// put(self, index, source, accumulate) and put_: take's inverse, a scatter into the flattened
// sample.
void putRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  const int64_t B = layer->batch_size;
  Unwrapped self = unwrapAt(args[0].toTensor(), layer);
  const bool inplace = writesArgument(op, 0);
  if (inplace && !self.batched()) inplaceIntoUnbatchedError(op, *layer);
  at::Tensor front = batchFrontExpanded(self, B);
  at::Tensor flat = front.reshape({B, -1});
  at::Tensor idx = batchFrontExpanded(unwrapAt(args[1].toTensor(), layer), B).reshape({B, -1});
  idx = at::where(idx < 0, idx + flat.size(1), idx);
  at::Tensor src = batchFrontExpanded(unwrapAt(args[2].toTensor(), layer), B).reshape({B, -1});
  at::Tensor out = args[3].toBool() ? flat.scatter_add(1, idx, src) : flat.scatter(1, idx, src);
  if (inplace) {
    front.copy_(out.view(front.sizes()));
    torch::jit::push(*stack, args[0]);
    return;
  }
  torch::jit::push(*stack, makeBatched(out.view(front.sizes()), 0, layer));
}

// NOTE: [Batching embedding]
// As in functorch: a batched weight with unbatched indices folds the batch into the embedding
// dim, [B, V, D] -> [V, B*D]; batched indices with a batched weight are offset by b * V into
// the weight flattened to [B*V, D]. The backward mirrors this; with batched indices the
// padding row is zeroed afterwards (the offsets move it).
void embeddingRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                   const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  const int64_t B = layer->batch_size;
  Unwrapped weight = unwrapAt(args[0].toTensor(), layer);
  Unwrapped indices = unwrapAt(args[1].toTensor(), layer);
  const c10::SymInt padding_idx = args[2].toSymInt();
  const bool scale = args[3].toBool();
  const bool sparse = args[4].toBool();
  at::Tensor out;
  int64_t bdim = 0;
  if (!weight.batched()) {
    out = at::embedding_symint(weight.value, batchFront(indices), padding_idx, scale, sparse);
  } else if (!indices.batched()) {
    at::Tensor w = mergeBatchInto(batchFront(weight), 1);  // [V, B*D]
    out = at::embedding_symint(w, indices.value, padding_idx, scale, sparse);
    out = splitBatchOutOf(out, out.dim() - 1, B);
    bdim = out.dim() - 2;
  } else {
    at::Tensor w = batchFront(weight);
    const int64_t V = w.size(1);
    at::Tensor idx = batchFront(indices);
    idx = idx + sampleIndex(*layer, idx.dim() - 1, idx) * V;
    out = at::embedding_symint(w.reshape({B * V, w.size(2)}), idx, padding_idx, scale, sparse);
  }
  torch::jit::push(*stack, makeBatched(out, bdim, layer));
}

// embedding_dense_backward(grad_output, indices, num_weights, padding_idx, scale_grad_by_freq)
void embeddingBackwardRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                           const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  const int64_t B = layer->batch_size;
  Unwrapped grad = unwrapAt(args[0].toTensor(), layer);
  Unwrapped indices = unwrapAt(args[1].toTensor(), layer);
  const int64_t num_weights = args[2].toInt();
  const int64_t padding_idx = args[3].toInt();
  const bool scale = args[4].toBool();
  at::Tensor out;
  if (!indices.batched()) {
    // [B, *, D] -> [*, B*D] -> [V, B*D] -> [V, B, D]
    at::Tensor g = grad.value.movedim(*grad.bdim, -2);
    g = g.reshape({-1, B * g.size(-1)});
    at::Tensor flat_idx = indices.value.reshape({-1});
    out = at::embedding_dense_backward(g, flat_idx, num_weights, padding_idx, scale);
    out = splitBatchOutOf(out, 1, B).movedim(1, 0);
  } else {
    at::Tensor g = batchFrontExpanded(grad, B);
    at::Tensor idx = batchFront(indices);
    idx = idx + sampleIndex(*layer, idx.dim() - 1, idx) * num_weights;
    out = at::embedding_dense_backward(g, idx, B * num_weights, -1, scale);
    out = out.view({B, num_weights, out.size(1)});
    if (padding_idx >= 0 && padding_idx < num_weights) out.select(1, padding_idx).zero_();
  }
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

// masked_fill(self, mask, value): the output has self's shape, so self is expanded when only the
// mask or the value is batched; a batched value tensor becomes a where().
const RuleTable kGather({
    {"aten::gather", gatherRule},
    {"aten::index_select", indexSelectRule},
    {"aten::take", takeRule},
    {"aten::put", putRule},
    {"aten::put_", putRule},
});

const RuleTable kAlongDim({
    {"aten::index_add", alongDimRule<AlongDim::Add>},
    {"aten::index_add_", alongDimRule<AlongDim::Add>},
    {"aten::index_copy", alongDimRule<AlongDim::Copy>},
    {"aten::index_copy_", alongDimRule<AlongDim::Copy>},
    {"aten::index_fill.int_Scalar", alongDimRule<AlongDim::Fill>},
    {"aten::index_fill_.int_Scalar", alongDimRule<AlongDim::Fill>},
    {"aten::index_fill.int_Tensor", alongDimRule<AlongDim::Fill>},
    {"aten::index_fill_.int_Tensor", alongDimRule<AlongDim::Fill>},
    {"aten::index_reduce", alongDimRule<AlongDim::Reduce>},
    {"aten::index_reduce_", alongDimRule<AlongDim::Reduce>},
});


// NOTE: [Batching bucketize and searchsorted]
// A sorted sequence shared by every sample (unbatched, or 1-d per sample) searches each
// sample's values: per-sample 1-d sequences become the rows of a [B, K] sequence and the values
// are flattened to [B, n], which searchsorted pairs row by row. N-d sequences already pair
// their leading dims with the values', and the batch dim is one more.
at::Tensor searchRows(const at::Tensor& seq_front, const at::Tensor& values_front, bool out_int32,
                      bool right, const std::optional<c10::string_view>& side,
                      const std::optional<at::Tensor>& sorter_front) {
  const int64_t B = values_front.size(0);
  at::Tensor out = at::searchsorted(seq_front, values_front.reshape({B, -1}), out_int32, right,
                                    side, sorter_front);
  return out.view(values_front.sizes());
}

void bucketizeRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                   const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  Unwrapped self = unwrapAt(args[0].toTensor(), layer);
  Unwrapped boundaries = unwrapAt(args[1].toTensor(), layer);
  const bool out_int32 = args[2].toBool();
  const bool right = args[3].toBool();
  at::Tensor out;
  if (!boundaries.batched()) {
    out = at::bucketize(batchFront(self), boundaries.value, out_int32, right);
  } else {
    out = searchRows(batchFront(boundaries), batchFrontExpanded(self, layer->batch_size),
                     out_int32, right, std::nullopt, std::nullopt);
  }
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

// searchsorted(sorted_sequence, self, out_int32, right, side, sorter)
void searchsortedRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                      const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  const int64_t B = layer->batch_size;
  Unwrapped seq = unwrapAt(args[0].toTensor(), layer);
  Unwrapped self = unwrapAt(args[1].toTensor(), layer);
  const bool out_int32 = args[2].toBool();
  const bool right = args[3].toBool();
  std::optional<c10::string_view> side;
  if (!args[4].isNone()) side = args[4].toStringView();
  std::optional<at::Tensor> sorter;
  if (args[5].isTensor()) sorter = batchFrontExpanded(unwrapAt(args[5].toTensor(), layer), B);
  at::Tensor s = batchFrontExpanded(seq, B);
  at::Tensor v = batchFrontExpanded(self, B);
  at::Tensor out;
  if (seq.logicalRank() == 1) {
    out = searchRows(s, v, out_int32, right, side, sorter);
  } else {
    out = at::searchsorted(s, v, out_int32, right, side, sorter);
  }
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

const RuleTable kSearch({
    {"aten::bucketize.Tensor", bucketizeRule},
    {"aten::searchsorted.Tensor", searchsortedRule},
});


const RuleTable kEmbedding({
    {"aten::embedding", embeddingRule},
    {"aten::embedding_dense_backward", embeddingBackwardRule},
});


}  // namespace

}  // namespace functorch_lite
