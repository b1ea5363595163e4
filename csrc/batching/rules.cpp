// The rule registry, the vmap level's dispatch (rule, decomposition, fallback) and rule helpers.
#include "batching/rules.h"

#include <mutex>
#include <string>
#include <unordered_map>

#include "batching/fallback.h"
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
};

// NOTE: [Rule lookup cache]
// Rules are registered by name; the router looks them up by operator on every call, so the
// answer is cached per operator (keyed by the address of its schema, stable while it is
// registered).
const OpEntry& lookup(const c10::OperatorHandle& op) {
  static std::mutex mutex;
  static auto* cache = new std::unordered_map<const void*, OpEntry>();
  std::lock_guard<std::mutex> lock(mutex);
  const void* key = &op.schema();
  auto it = cache->find(key);
  if (it != cache->end()) return it->second;
  const BatchRule* rule = findBatchRule(op);
  const bool decompose =
      rule == nullptr && op.hasKernelForDispatchKey(c10::DispatchKey::CompositeImplicitAutograd);
  return cache->emplace(key, OpEntry{rule, decompose}).first->second;
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

void processVmapLevel(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                      const LayerPtr& layer) {
  const OpEntry& entry = lookup(op);
  if (entry.rule != nullptr) {
    (*entry.rule)(op, stack, layer);
  } else if (entry.decompose) {
    // The PrivateUse3 slot of an operator without our unwrap kernel holds its
    // CompositeImplicitAutograd kernel: calling it decomposes the operator, and the pieces come
    // back through the router.
    op.redispatchBoxed(c10::DispatchKeySet(kUnwrapKey), stack);
  } else {
    vmapFallback(op, stack, layer);
  }
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

bool writesArgument(const c10::OperatorHandle& op, size_t i) {
  const auto* alias = op.schema().arguments()[i].alias_info();
  return alias != nullptr && alias->isWrite();
}

void wrapOutputs(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer,
                 const std::vector<c10::IValue>& arguments, int64_t bdim) {
  const auto& schema = op.schema();
  const size_t num_returns = schema.returns().size();
  const size_t begin = stack->size() - num_returns;
  for (size_t j = 0; j < num_returns; ++j) {
    c10::IValue& ret = (*stack)[begin + j];
    const auto* ret_alias = schema.returns()[j].alias_info();
    if (ret_alias != nullptr && ret_alias->isWrite()) {
      for (size_t i = 0; i < schema.arguments().size(); ++i) {
        const auto* arg_alias = schema.arguments()[i].alias_info();
        if (arg_alias != nullptr && arg_alias->beforeSets() == ret_alias->beforeSets()) {
          ret = arguments[i];
          break;
        }
      }
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
