// Batching rules: the registry, and the helpers every rule is written with.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/Tensor.h>

#include <functional>
#include <initializer_list>
#include <optional>
#include <utility>

#include "core/layer.h"

namespace functorch_lite {

// NOTE: [Batching rules are boxed]
// The router reaches a vmap level with the operator's arguments boxed on the stack, so a rule is
// a boxed function: it replaces the batched arguments of its level by physical tensors, calls an
// operator on them, and leaves the outputs, wrapped as BatchedTensors, on the stack. Families of
// operators share one rule (pointwise with broadcasting, dim-shifting, reductions), registered
// one line per operator in tables grouped by family.
using BatchRule =
    std::function<void(const c10::OperatorHandle&, torch::jit::Stack*, const LayerPtr&)>;

// Registers rules at static-initialisation time: `const RuleTable kRules({{"aten::neg", r}});`
struct RuleTable {
  RuleTable(std::initializer_list<std::pair<const char*, BatchRule>> rules);
};

// The rule registered for `op`, or nullptr.
const BatchRule* findBatchRule(const c10::OperatorHandle& op);

// A tensor argument seen from one vmap level: its physical value and batch dim (nullopt when the
// argument is not batched at this level).
struct Unwrapped {
  at::Tensor value;
  std::optional<int64_t> bdim;

  bool batched() const { return bdim.has_value(); }
  int64_t logicalRank() const { return value.dim() - (bdim ? 1 : 0); }
};

Unwrapped unwrapAt(const at::Tensor& t, const LayerPtr& layer);

// The physical value with the batch dim moved to the front (unchanged when unbatched).
at::Tensor batchFront(const Unwrapped& u);

// Like batchFront, but an unbatched tensor is expanded to the batch size in front.
at::Tensor batchFrontExpanded(const Unwrapped& u, int64_t batch_size);

// Inserts size-1 dims after the front batch dim until the logical rank is `rank`.
at::Tensor padLogicalRank(at::Tensor front, int64_t logical_rank, int64_t rank);

// The batch dim (in front of `front`) merged into logical dim `dim` as its outer factor:
// [B, d0, .., dk, ..] -> [d0, .., B*dk, ..].
at::Tensor mergeBatchInto(const at::Tensor& front, int64_t dim);

// The inverse: dim `dim` of `t` (of size B*k) split into [B, k], with B at `dim`.
at::Tensor splitBatchOutOf(const at::Tensor& t, int64_t dim, int64_t batch_size);

// arange(B) shaped [B, 1, ..., 1] (rank + 1 dims), on `like`'s device: as an extra index in front
// of per-sample indices, it keeps each sample to its own rows.
at::Tensor sampleIndex(const Layer& layer, int64_t rank, const at::Tensor& like);

// NOTE: [Leading-dims batching]
// A rule for operators that already accept any number of leading dims (constant_pad_nd,
// view_as_complex, tril_, ...): every tensor argument (also inside lists) gets its batch dim in
// front, unbatched ones are expanded to the batch size so that operands agree on their leading
// dims, and every output is batched at dim 0.
void leadingDimsRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                     const LayerPtr& layer);

// Runs the operator's CompositeImplicitAutograd decomposition (its pieces come back through the
// router), as the vmap level does for such operators without a rule.
void decompose(const c10::OperatorHandle& op, torch::jit::Stack* stack);

// Wraps every tensor output on the stack as batched at `bdim`; in-place and out= outputs return
// the original (already batched) argument from `arguments`.
void wrapOutputs(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer,
                 const std::vector<c10::IValue>& arguments, int64_t bdim = 0);

// True when argument i of `op` is written in place.
bool writesArgument(const c10::OperatorHandle& op, size_t i);

// The rule of pointwise operators (see NOTE: [Pointwise batching]).
void pointwiseRule(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer);

[[noreturn]] void inplaceIntoUnbatchedError(const c10::OperatorHandle& op, const Layer& layer);

}  // namespace functorch_lite
