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
