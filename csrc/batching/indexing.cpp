// Advanced indexing: index and index_put (with the masked forms interpolation decomposes into),
// masked_fill with a tensor value, masked_select with an unbatched mask, and masked_scatter.
#include <ATen/ExpandUtils.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/index.h>
#include <ATen/ops/index_put.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/_assert_async.h>
#include <ATen/ops/gather.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/where.h>

#include <vector>

#include "batching/fallback.h"
#include "batching/rules.h"
#include "core/ivalues.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

using Args = std::vector<c10::IValue>;

std::vector<int64_t> logicalSizes(const Unwrapped& u) {
  auto sizes = u.value.sizes().vec();
  if (u.bdim) sizes.erase(sizes.begin() + *u.bdim);
  return sizes;
}

// NOTE: [Batching advanced indexing]
// Per sample, x[i0, i1, ...] (a list of optional index tensors, None meaning a full slice) puts
// the broadcast shape of the indices where the first index is when the indices are adjacent,
// else in front. Batched, the list gets one more entry in front:
// - no batched index: a full slice. The batch dim stays in front when the indices are adjacent,
//   else it follows the broadcast dims.
// - a batched index: arange(B) as an index, broadcast against the indices (batched ones with
//   their batch dim in front). The result starts with [B, broadcast dims]; when the per-sample
//   indices were adjacent but not first, the per-sample dims before them move back in front of
//   the broadcast dims.
// Boolean masks are turned into long indices first (nonzero), so every entry consumes one dim;
// a batched mask selects a different number of elements per sample and is not supported.
struct IndexPlan {
  std::vector<std::optional<Unwrapped>> indices;  // per-sample entries, masks expanded
  bool any_batched = false;
  bool adjacent = true;
  int64_t first = -1;                // position of the first index
  std::vector<int64_t> broadcast;    // per-sample broadcast shape of the indices
};

// nullopt when an index is a batched mask (the caller falls back).
std::optional<IndexPlan> planIndices(const c10::IValue& list, const LayerPtr& layer) {
  IndexPlan plan;
  for (const c10::IValue& entry : list.toListRef()) {
    if (entry.isNone() || !entry.toTensor().defined()) {
      plan.indices.emplace_back(std::nullopt);
      continue;
    }
    Unwrapped u = unwrapAt(entry.toTensor(), layer);
    const auto dtype = u.value.scalar_type();
    if (dtype == at::kBool || dtype == at::kByte) {
      if (u.batched()) return std::nullopt;
      for (const at::Tensor& t : u.value.nonzero().unbind(1)) {
        plan.indices.emplace_back(Unwrapped{t, std::nullopt});
      }
      continue;
    }
    plan.any_batched |= u.batched();
    plan.indices.emplace_back(u);
  }
  int64_t last = -1;
  bool first_shape = true;
  for (int64_t i = 0; i < static_cast<int64_t>(plan.indices.size()); ++i) {
    if (!plan.indices[i]) continue;
    if (plan.first < 0) plan.first = i;
    if (last >= 0 && i != last + 1) plan.adjacent = false;
    last = i;
    auto sizes = logicalSizes(*plan.indices[i]);
    plan.broadcast = first_shape ? sizes : at::infer_size(plan.broadcast, sizes);
    first_shape = false;
  }
  return plan;
}

bool batchedMaskIndex(const c10::IValue& list, const LayerPtr& layer) {
  for (const c10::IValue& entry : list.toListRef()) {
    if (entry.isNone() || !entry.toTensor().defined()) continue;
    Unwrapped u = unwrapAt(entry.toTensor(), layer);
    const auto dtype = u.value.scalar_type();
    if (u.batched() && (dtype == at::kBool || dtype == at::kByte)) return true;
  }
  return false;
}

// The batched index list: see the NOTE. With `sample_index` the first entry is arange(B).
c10::List<std::optional<at::Tensor>> batchedIndices(const IndexPlan& plan, const Layer& layer,
                                                    const at::Tensor& like, bool sample_index) {
  c10::List<std::optional<at::Tensor>> out;
  const int64_t rank = static_cast<int64_t>(plan.broadcast.size());
  out.push_back(sample_index ? std::optional<at::Tensor>(sampleIndex(layer, rank, like))
                             : std::nullopt);
  for (const auto& entry : plan.indices) {
    if (!entry) {
      out.push_back(std::nullopt);
    } else if (entry->batched()) {
      out.push_back(padLogicalRank(batchFront(*entry), entry->logicalRank(), rank));
    } else {
      out.push_back(entry->value);
    }
  }
  return out;
}

// [B, broadcast, lead, after] -> [B, lead, broadcast, after] (or back, with `inverse`).
at::Tensor moveLeadDims(const at::Tensor& t, const IndexPlan& plan, bool inverse) {
  if (!plan.adjacent || plan.first <= 0) return t;
  const int64_t nb = static_cast<int64_t>(plan.broadcast.size());
  std::vector<int64_t> lead_now, lead_then;
  for (int64_t i = 0; i < plan.first; ++i) {
    lead_now.push_back(1 + nb + i);
    lead_then.push_back(1 + i);
  }
  return inverse ? t.movedim(lead_then, lead_now) : t.movedim(lead_now, lead_then);
}

void indexRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  if (batchedMaskIndex(stack->back(), layer)) return vmapFallback(op, stack, layer);
  Args args = torch::jit::pop(*stack, 2);
  Unwrapped self = unwrapAt(args[0].toTensor(), layer);
  IndexPlan plan = *planIndices(args[1], layer);
  at::Tensor out;
  int64_t bdim = 0;
  if (!plan.any_batched) {
    out = at::index(batchFront(self), batchedIndices(plan, *layer, self.value, false));
    if (!plan.adjacent) bdim = static_cast<int64_t>(plan.broadcast.size());
  } else {
    at::Tensor x = batchFrontExpanded(self, layer->batch_size);
    out = moveLeadDims(at::index(x, batchedIndices(plan, *layer, x, true)), plan, false);
  }
  torch::jit::push(*stack, makeBatched(out, bdim, layer));
}

// index_put(self, indices, values, accumulate) and its in-place forms: values are broadcast to
// the per-sample indexed shape, laid out like the batched indexing result, and put with
// arange(B) in front of the indices.
void indexPutRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                  const LayerPtr& layer) {
  const size_t num_args = op.schema().arguments().size();
  const size_t begin = stack->size() - num_args;
  if (batchedMaskIndex((*stack)[begin + 1], layer)) return vmapFallback(op, stack, layer);
  Args arguments(stack->begin() + begin, stack->end());
  Unwrapped self = unwrapAt(arguments[0].toTensor(), layer);
  Unwrapped values = unwrapAt(arguments[2].toTensor(), layer);
  IndexPlan plan = *planIndices(arguments[1], layer);
  const bool inplace = writesArgument(op, 0);
  if (inplace && !self.batched()) inplaceIntoUnbatchedError(op, *layer);

  // the per-sample indexed shape
  const auto self_sizes = logicalSizes(self);
  const int64_t consumed = static_cast<int64_t>(plan.indices.size());
  std::vector<int64_t> indexed;
  if (plan.adjacent) {
    indexed.assign(self_sizes.begin(), self_sizes.begin() + plan.first);
    indexed.insert(indexed.end(), plan.broadcast.begin(), plan.broadcast.end());
  } else {
    indexed = plan.broadcast;
    for (int64_t i = 0; i < consumed; ++i) {
      if (!plan.indices[i]) indexed.push_back(self_sizes[i]);
    }
  }
  if (plan.adjacent) {
    int64_t last = consumed - 1;
    while (last >= 0 && !plan.indices[last]) --last;
    for (int64_t i = last + 1; i < consumed; ++i) indexed.push_back(self_sizes[i]);
  }
  indexed.insert(indexed.end(), self_sizes.begin() + consumed, self_sizes.end());

  const int64_t B = layer->batch_size;
  at::Tensor v = padLogicalRank(batchFrontExpanded(values, B), values.logicalRank(),
                                static_cast<int64_t>(indexed.size()));
  std::vector<int64_t> full{B};
  full.insert(full.end(), indexed.begin(), indexed.end());
  v = moveLeadDims(v.expand(full), plan, true);

  at::Tensor x = inplace ? batchFront(self) : batchFrontExpanded(self, B);
  (*stack)[begin] = x;
  (*stack)[begin + 1] = batchedIndices(plan, *layer, x, true);
  (*stack)[begin + 2] = v;
  op.callBoxed(stack);
  wrapOutputs(op, stack, layer, arguments, 0);
}

// NOTE: [Masked indexing as a composition]
// _unsafe_masked_index(x, mask, indices, fill) and _unsafe_masked_index_put_accumulate(x, mask,
// indices, values) (what interpolation decomposes into) are written with the operators they
// stand for, called on the batched arguments themselves, so each piece goes through its own
// rule: the indices clamped into range, then index + masked_fill, or masked_fill + an
// accumulating index_put.
c10::List<std::optional<at::Tensor>> clampedIndices(const at::Tensor& x, const c10::IValue& list,
                                                    bool allow_negative) {
  c10::List<std::optional<at::Tensor>> out;
  int64_t dim = 0;
  for (const c10::IValue& entry : list.toListRef()) {
    if (entry.isNone() || !entry.toTensor().defined()) {
      out.push_back(std::nullopt);
    } else {
      const int64_t size = x.size(dim);
      out.push_back(entry.toTensor().clamp(allow_negative ? -size : 0, size - 1));
    }
    ++dim;
  }
  return out;
}

void maskedIndexRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                     const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  const at::Tensor& x = args[0].toTensor();
  const at::Tensor& mask = args[1].toTensor();
  at::Tensor out = at::index(x, clampedIndices(x, args[2], false))
                       .masked_fill(mask.logical_not(), args[3].toScalar());
  Unwrapped u = unwrapAt(out, layer);
  torch::jit::push(*stack, u.batched() ? out
                                       : makeBatched(batchFrontExpanded(u, layer->batch_size), 0,
                                                     layer));
}

void maskedIndexPutRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                        const LayerPtr& layer) {
  Args args = torch::jit::pop(*stack, op.schema().arguments().size());
  const at::Tensor& x = args[0].toTensor();
  const at::Tensor& mask = args[1].toTensor();
  at::Tensor values = args[3].toTensor().masked_fill(mask.logical_not(), 0);
  at::Tensor out = at::index_put(x, clampedIndices(x, args[2], true), values, true);
  Unwrapped u = unwrapAt(out, layer);
  torch::jit::push(*stack, u.batched() ? out
                                       : makeBatched(batchFrontExpanded(u, layer->batch_size), 0,
                                                     layer));
}

void maskedFillRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                    const LayerPtr& layer) {
  const size_t begin = stack->size() - 3;
  Args arguments(stack->begin() + begin, stack->end());
  const int64_t B = layer->batch_size;
  Unwrapped self = unwrapAt(arguments[0].toTensor(), layer);
  Unwrapped mask = unwrapAt(arguments[1].toTensor(), layer);
  std::optional<Unwrapped> value;
  if (arguments[2].isTensor()) value = unwrapAt(arguments[2].toTensor(), layer);
  const bool value_batched = value && value->batched();
  const bool inplace = writesArgument(op, 0);
  if (inplace && !self.batched()) inplaceIntoUnbatchedError(op, *layer);
  // out of place, self broadcasts against the mask
  const int64_t rank = std::max(self.logicalRank(), mask.logicalRank());
  at::Tensor x = padLogicalRank(batchFrontExpanded(self, B), self.logicalRank(), rank);
  at::Tensor m = mask.batched() ? padLogicalRank(batchFront(mask), mask.logicalRank(), rank)
                                : mask.value;
  if (!value_batched) {
    (*stack)[begin] = x;
    (*stack)[begin + 1] = m;
    op.callBoxed(stack);
    wrapOutputs(op, stack, layer, arguments, 0);
    return;
  }
  torch::jit::drop(*stack, 3);
  at::Tensor v = padLogicalRank(batchFront(*value).to(x.scalar_type()), 0, rank);
  at::Tensor out = at::where(m, v, x);
  if (inplace) {
    x.copy_(out);
    torch::jit::push(*stack, arguments[0]);
    return;
  }
  torch::jit::push(*stack, makeBatched(out, 0, layer));
}

// masked_select(self, mask) with a mask that is not batched selects the same positions in
// every sample, so the output has one shape: the physical self, broadcast against the mask
// behind its batch dim, keeps the mask's positions along one flattened dim. A batched mask
// selects a different number of elements per sample and stays with the fallback, which
// reports it when the counts differ.
void maskedSelectRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                      const LayerPtr& layer) {
  const size_t begin = stack->size() - 2;
  Unwrapped self = unwrapAt((*stack)[begin].toTensor(), layer);
  Unwrapped mask = unwrapAt((*stack)[begin + 1].toTensor(), layer);
  if (mask.batched()) {
    vmapFallback(op, stack, layer);
    return;
  }
  const auto shape = at::infer_size(logicalSizes(self), mask.value.sizes());
  std::vector<int64_t> batched_shape{layer->batch_size};
  batched_shape.insert(batched_shape.end(), shape.begin(), shape.end());
  const at::Tensor values =
      padLogicalRank(batchFrontExpanded(self, layer->batch_size), self.logicalRank(),
                     static_cast<int64_t>(shape.size()))
          .expand(batched_shape);
  const at::Tensor positions = mask.value.expand(shape).reshape(-1).nonzero().squeeze(1);
  torch::jit::drop(*stack, 2);
  torch::jit::push(*stack,
                   makeBatched(values.reshape({layer->batch_size, -1}).index_select(1, positions),
                               0, layer));
}

// masked_scatter(self, mask, source): each sample writes the first elements of its own source
// into the positions of its mask, in order. The element for position p is source[k], k being
// the number of mask positions before p, so one cumsum over the flattened [B, N] mask gives
// every sample's gather index at once.
void maskedScatterRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                       const LayerPtr& layer) {
  const size_t begin = stack->size() - 3;
  const int64_t batch = layer->batch_size;
  Unwrapped self = unwrapAt((*stack)[begin].toTensor(), layer);
  Unwrapped mask = unwrapAt((*stack)[begin + 1].toTensor(), layer);
  Unwrapped source = unwrapAt((*stack)[begin + 2].toTensor(), layer);
  const auto shape = at::infer_size(logicalSizes(self), logicalSizes(mask));
  const int64_t rank = static_cast<int64_t>(shape.size());
  std::vector<int64_t> batched_shape{batch};
  batched_shape.insert(batched_shape.end(), shape.begin(), shape.end());
  auto flat = [&](const Unwrapped& u) {
    return padLogicalRank(batchFrontExpanded(u, batch), u.logicalRank(), rank)
        .expand(batched_shape)
        .reshape({batch, -1});
  };
  const at::Tensor values = flat(self);
  const at::Tensor chosen = flat(mask);
  const at::Tensor sources = batchFrontExpanded(source, batch).reshape({batch, -1});
  const at::Tensor count = chosen.sum(1);
  // An assert op, not .item(): make_fx traces it into the graph, and fake tensors skip it.
  at::_assert_async(count.le(sources.size(1)).all(),
                    layer->api + ": masked_scatter: expected source to have at least as many "
                                 "elements as ones in mask, in every sample");
  at::Tensor out = values;
  if (sources.size(1) > 0) {
    const at::Tensor index = (chosen.cumsum(1) - 1).clamp(0, sources.size(1) - 1);
    out = at::where(chosen, sources.gather(1, index), values);
  }
  torch::jit::drop(*stack, 3);
  torch::jit::push(*stack, makeBatched(out.reshape(batched_shape), 0, layer));
}

const RuleTable kIndex({
    {"aten::index.Tensor", indexRule},
    {"aten::index_put", indexPutRule},
    {"aten::index_put_", indexPutRule},
    {"aten::_index_put_impl_", indexPutRule},
    {"aten::_unsafe_masked_index", maskedIndexRule},
    {"aten::_unsafe_masked_index_put_accumulate", maskedIndexPutRule},
    {"aten::masked_select", maskedSelectRule},
    {"aten::masked_scatter", maskedScatterRule},
});

const RuleTable kMaskedFill({
    {"aten::masked_fill.Scalar", maskedFillRule},
    {"aten::masked_fill_.Scalar", maskedFillRule},
    {"aten::masked_fill.Tensor", maskedFillRule},
    {"aten::masked_fill_.Tensor", maskedFillRule},
});


}  // namespace

}  // namespace functorch_lite
