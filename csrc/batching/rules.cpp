// The rule registry, the vmap level's dispatch (rule, decomposition, fallback) and rule helpers.
#include "batching/rules.h"

#include <ATen/ops/arange.h>

#include <atomic>
#include <mutex>
#include <string>
#include <unordered_map>

#include "batching/fallback.h"
#include "batching/memory_format.h"
#include "batching/vmap.h"
#include "core/ivalues.h"
#include "core/keys.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

std::unordered_map<std::string, BatchRule>& rulesByName() {
  static auto* rules = new std::unordered_map<std::string, BatchRule>();
  return *rules;
}

struct OpEntry {
  const BatchRule* rule;
  bool decompose;  // has a CompositeImplicitAutograd kernel and no rule
  std::optional<size_t> memory_format;  // position of a memory_format argument
};

// NOTE: [Rule lookup cache]
// Rules are registered by name; the router looks them up by operator on every call, so the
// answer is cached per operator (keyed by the address of its schema, stable while it is
// registered). The shared cache takes a lock; each thread keeps its own copy of the entries it
// used, so the hot path (the same few operators over and over) takes no lock.
const OpEntry& lookup(const c10::OperatorHandle& op) {
  const void* key = &op.schema();
  thread_local std::unordered_map<const void*, const OpEntry*> local;
  auto hit = local.find(key);
  if (hit != local.end()) return *hit->second;
  static std::mutex mutex;
  static auto* cache = new std::unordered_map<const void*, OpEntry>();
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache->find(key);
  if (it == cache->end()) {
    const BatchRule* rule = findBatchRule(op);
    const bool decompose =
        rule == nullptr && op.hasKernelForDispatchKey(c10::DispatchKey::CompositeImplicitAutograd);
    it = cache->emplace(key, OpEntry{rule, decompose, memoryFormatArgument(op.schema())}).first;
  }
  local.emplace(key, &it->second);  // unordered_map nodes never move
  return it->second;
}

}  // namespace

RuleTable::RuleTable(std::initializer_list<std::pair<const char*, BatchRule>> rules) {
  for (const auto& [name, rule] : rules) rulesByName()[name] = rule;
}

const BatchRule* findBatchRule(const c10::OperatorHandle& op) {
  const auto& name = op.operator_name();
  std::string key = name.name;
  if (!name.overload_name.empty()) key += "." + name.overload_name;
  auto it = rulesByName().find(key);
  return it == rulesByName().end() ? nullptr : &it->second;
}

namespace {
std::atomic<PythonRuleHook> python_rule_hook{nullptr};  // NOTE: [Vmap rules registered from Python]
}  // namespace

void processVmapLevel(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                      const LayerPtr& layer) {
  const OpEntry& entry = lookup(op);
  if (entry.decompose) {
    decompose(op, stack);
    return;
  }
  std::optional<c10::MemoryFormat> format;
  if (entry.memory_format) format = takeSampleMemoryFormat(op, stack, *entry.memory_format);
  if (entry.rule != nullptr) {
    (*entry.rule)(op, stack, layer);
  } else {
    const PythonRuleHook hook = python_rule_hook.load();
    if (hook == nullptr || !hook(op, stack, layer)) vmapFallback(op, stack, layer);
  }
  if (format) applySampleMemoryFormat(op, stack, *format, layer);
}

void setPythonRuleHook(PythonRuleHook hook) { python_rule_hook = hook; }

void decompose(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  // The PrivateUse3 slot of an operator without our unwrap kernel holds its
  // CompositeImplicitAutograd kernel: calling it decomposes the operator, and the pieces come
  // back through the router.
  op.redispatchBoxed(c10::DispatchKeySet(kUnwrapKey), stack);
}

Unwrapped unwrapAt(const at::Tensor& t, const LayerPtr& layer) {
  if (auto* b = asBatched(t)) {
    if (b->layer() == layer) return {b->value(), b->bdim()};
  }
  return {t, std::nullopt};
}

at::Tensor batchFront(const Unwrapped& u) {
  if (!u.bdim || *u.bdim == 0) return u.value;
  return u.value.movedim(*u.bdim, 0);
}

at::Tensor batchFrontExpanded(const Unwrapped& u, int64_t batch_size) {
  if (u.bdim) return batchFront(u);
  c10::SymDimVector sizes(u.value.sym_sizes().begin(), u.value.sym_sizes().end());
  sizes.insert(sizes.begin(), c10::SymInt(batch_size));
  return u.value.unsqueeze(0).expand_symint(sizes);
}

at::Tensor padLogicalRank(at::Tensor front, int64_t logical_rank, int64_t rank) {
  for (int64_t r = logical_rank; r < rank; ++r) front = front.unsqueeze(1);
  return front;
}

at::Tensor mergeBatchInto(const at::Tensor& front, int64_t dim) {
  at::Tensor moved = front.movedim(0, dim);
  c10::SymDimVector sizes(moved.sym_sizes().begin(), moved.sym_sizes().end());
  sizes[dim] = sizes[dim] * sizes[dim + 1];
  sizes.erase(sizes.begin() + dim + 1);
  return moved.reshape_symint(sizes);
}

at::Tensor splitBatchOutOf(const at::Tensor& t, int64_t dim, int64_t batch_size) {
  c10::SymDimVector sizes(t.sym_sizes().begin(), t.sym_sizes().end());
  c10::SymInt inner = sizes[dim] / batch_size;
  sizes[dim] = c10::SymInt(batch_size);
  sizes.insert(sizes.begin() + dim + 1, inner);
  return t.reshape_symint(sizes);
}

at::Tensor sampleIndex(const Layer& layer, int64_t rank, const at::Tensor& like) {
  std::vector<int64_t> shape(rank + 1, 1);
  shape[0] = layer.batch_size;
  return at::arange(layer.batch_size, like.options().dtype(at::kLong)).view(shape);
}

void leadingDimsRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                     const LayerPtr& layer) {
  const size_t num_args = op.schema().arguments().size();
  const size_t begin = stack->size() - num_args;
  std::vector<c10::IValue> arguments(stack->begin() + begin, stack->end());
  for (size_t i = begin; i < stack->size(); ++i) {
    mapTensors((*stack)[i], [&](const at::Tensor& t) {
      return batchFrontExpanded(unwrapAt(t, layer), layer->batch_size);
    });
  }
  op.callBoxed(stack);
  wrapOutputs(op, stack, layer, arguments, 0);
}

bool writesArgument(const c10::OperatorHandle& op, size_t i) {
  return writes(op.schema().arguments()[i]);
}

void wrapOutputs(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer,
                 const std::vector<c10::IValue>& arguments, int64_t bdim) {
  const auto& schema = op.schema();
  const size_t num_returns = schema.returns().size();
  const size_t begin = stack->size() - num_returns;
  for (size_t j = 0; j < num_returns; ++j) {
    c10::IValue& ret = (*stack)[begin + j];
    const int64_t written = writtenArgument(schema, j);
    if (written >= 0) {
      ret = arguments[written];
      continue;
    }
    mapTensors(ret, [&](const at::Tensor& t) { return makeBatched(t, bdim, layer); });
  }
}

void inplaceIntoUnbatchedError(const c10::OperatorHandle& op, const Layer& layer) {
  TORCH_CHECK(false, layer.api, ": the in-place operator ", op.schema().operator_name(),
      " would write batched values into a tensor that is not batched (it was created outside "
      "the vmapped function, or does not depend on the vmapped inputs). Use the out-of-place "
      "version of the operator instead.");
}

}  // namespace functorch_lite
