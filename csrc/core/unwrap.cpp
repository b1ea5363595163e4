// The per-operator kernel on kUnwrapKey that unwraps one grad/jvp level below autograd.
#include "core/unwrap.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/GradMode.h>

#include <atomic>
#include <mutex>
#include <optional>
#include <vector>

#include "core/ivalues.h"
#include "core/keys.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

thread_local std::vector<c10::impl::LocalDispatchKeySet> saved_states_;

void unwrapKernel(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const size_t num_args = schema.arguments().size();
  const size_t begin = argumentsBegin(*stack, num_args);

  LayerPtr layer;
  for (size_t i = begin; i < stack->size(); ++i) {
    forEachTensor((*stack)[i], [&](const at::Tensor& t) {
      if (auto* w = asGradWrapper(t)) {
        if (!layer || w->layer()->level > layer->level) layer = w->layer();
      }
    });
  }
  // Reachable from user code only with a foreign tensor that carries our backend key
  TORCH_CHECK(layer, "functorch_lite: the operator ", schema.operator_name(), " got a tensor "
      "that carries the key of a grad transform's wrapper without being one.");

  std::vector<c10::IValue> arguments(stack->begin() + begin, stack->end());
  for (size_t i = begin; i < stack->size(); ++i) {
    mapTensors((*stack)[i], [&](const at::Tensor& t) {
      auto* w = asGradWrapper(t);
      return (w != nullptr && w->layer() == layer) ? w->value() : t;
    });
  }

  {
    // NOTE: [Calling one level down]
    // Below autograd the TLS excludes the autograd keys and the router; the level below must see
    // the dispatch state the router saw on entry, and the grad mode that was in force outside
    // this layer (so an outer no_grad applies to the lower levels, see layer.cpp).
    c10::impl::ForceDispatchKeyGuard restore(
        saved_states_.empty() ? c10::impl::tls_local_dispatch_key_set() : saved_states_.back());
    if (saved_states_.empty()) {
      c10::impl::tls_set_dispatch_key_excluded(kRouterKey, false);
    }
    std::optional<c10::AutoGradMode> grad_mode;
    std::optional<c10::AutoFwGradMode> fwd_grad_mode;
    if (layer->kind == LayerKind::Grad && !layer->prev_grad_mode) grad_mode.emplace(false);
    if (layer->kind == LayerKind::Jvp && !layer->prev_fwd_grad_mode) fwd_grad_mode.emplace(false);
    ProcessingGuard processing(layer->level);
    op.callBoxed(stack);
  }

  const size_t num_returns = schema.returns().size();
  const size_t ret_begin = stack->size() - num_returns;
  for (size_t j = 0; j < num_returns; ++j) {
    c10::IValue& ret = (*stack)[ret_begin + j];
    const int64_t written = writtenArgument(schema, j);
    if (written >= 0) {
      ret = arguments[written];
      if (auto* w = asGradWrapper(ret.toTensor())) w->refreshMetadata();
      continue;
    }
    mapTensors(ret, [&](const at::Tensor& t) { return makeGradWrapper(t, layer); });
  }
}

// NOTE: [Registering the unwrap kernel]
// A backend fallback on PrivateUse3 is not enough: CompositeExplicitAutograd kernels are
// registered for every backend key and win over a fallback. So the unwrap kernel is registered
// per operator, for every operator WITHOUT a CompositeImplicitAutograd kernel (a direct
// registration would remove their decomposition at AutogradPrivateUse3). Registering from the
// registration listener's callback would deadlock (the dispatcher holds its lock), so new
// operators are queued and registered on the next layer push.
std::mutex pending_mutex_;
std::vector<c10::OperatorName> pending_;
std::atomic<bool> has_pending_{false};

class PendingQueue : public c10::OpRegistrationListener {
 public:
  void onOperatorRegistered(const c10::OperatorHandle& op) override {
    std::lock_guard<std::mutex> lock(pending_mutex_);
    pending_.push_back(op.operator_name());
    has_pending_ = true;
  }
  void onOperatorDeregistered(const c10::OperatorHandle&) override {}
};

std::vector<c10::RegistrationHandleRAII>& registrations() {
  static auto* handles = new std::vector<c10::RegistrationHandleRAII>();  // lives until exit
  return *handles;
}

}  // namespace

SavedDispatchState::SavedDispatchState() {
  saved_states_.push_back(c10::impl::tls_local_dispatch_key_set());
}

SavedDispatchState::~SavedDispatchState() {
  saved_states_.pop_back();
}

void registerPendingUnwrapKernels() {
  static auto* listener = new c10::RegistrationHandleRAII(
      c10::Dispatcher::singleton().addRegistrationListener(std::make_unique<PendingQueue>()));
  (void)listener;
  if (!has_pending_) return;
  std::vector<c10::OperatorName> names;
  {
    std::lock_guard<std::mutex> lock(pending_mutex_);
    names.swap(pending_);
    has_pending_ = false;
  }
  auto& dispatcher = c10::Dispatcher::singleton();
  for (const auto& name : names) {
    auto op = dispatcher.findOp(name);
    if (!op || !op->hasSchema()) continue;
    if (op->hasKernelForDispatchKey(c10::DispatchKey::CompositeImplicitAutograd)) continue;
    registrations().push_back(dispatcher.registerImpl(
        name, kUnwrapKey, c10::KernelFunction::makeFromBoxedFunction<&unwrapKernel>(),
        std::nullopt, nullptr, "functorch_lite unwrap kernel"));
  }
}

}  // namespace functorch_lite
