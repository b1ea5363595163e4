// The router: the fallback on kRouterKey that processes the highest live level among an
// operator's arguments.
#include "core/router.h"

#include <algorithm>
#include <vector>

#include <ATen/FunctionalTensorWrapper.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/_has_same_storage_numel.h>
#include <ATen/ops/zeros.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "batching/vmap.h"
#include "core/ivalues.h"
#include "core/keys.h"
#include "core/unwrap.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

// NOTE: [Escaped wrappers]
// A wrapper whose layer was popped has escaped its transform. A dead GradWrapper behaves as its
// value (as in functorch); a dead BatchedTensor has no meaning outside its vmap, so using it is
// an error.
at::Tensor stripDead(at::Tensor t) {
  while (const LayerPtr* layer = layerOf(t)) {
    if ((*layer)->alive) break;
    if (asBatched(t)) {
      TORCH_CHECK(false,
          "vmap: a batched tensor created inside a vmapped function was used after that vmap "
          "returned. Return it from the function (vmap then gives it a batch dimension) instead "
          "of storing it in a global or a closure.");
    }
    t = asGradWrapper(t)->value();
  }
  return t;
}

[[noreturn]] void capturedMutationError(const c10::OperatorHandle& op, const Layer& layer) {
  TORCH_CHECK(false, layer.api, ": the function called the in-place operator ",
      op.schema().operator_name(), " that would mutate a captured Tensor (a tensor from outside "
      "the function, not one of its inputs). Mutating captured tensors inside ", layer.api,
      " is not supported: clone the tensor first, or pass it to the function as an input.");
}

bool functionalizationIsOn() {
  return c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::Functionalize) &&
         !c10::impl::tls_is_dispatch_key_excluded(c10::DispatchKey::Functionalize);
}

// The level functionalize was entered at (NOTE: [Factory functions inside functionalize]).
thread_local int64_t functionalize_level_ = -1;

// NOTE: [Processing a grad or jvp level]
// Every tensor argument not already at this level is lifted into an immutable wrapper at this
// level, so autograd at this level tracks only this level's tensors (captured tensors and
// lower-level wrappers become constants). Then the router key is excluded and the operator is
// called again: Autograd records on the wrappers, and the unwrap kernel below it (unwrap.cpp)
// calls the operator one level down.
//
// NOTE: [Which writes into captured tensors are refused]
// Only an in-place operator proper (its first argument written and returned, `x.add_(y)`)
// is refused when it writes into a captured tensor: its result would carry this level's
// derivatives that the captured tensor cannot hold. Operators that update other arguments as
// a side effect, such as batch_norm's running statistics, write values that carry none of
// them; they run on the captured tensor as they would outside the transform (as in functorch).
bool isInplaceOperator(const c10::FunctionSchema& schema) {
  const auto& args = schema.arguments();
  if (args.empty() || !writes(args[0]) || schema.returns().size() != 1) return false;
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i].alias_info() != nullptr) return false;
  }
  return true;
}

void processGradLevel(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                      const LayerPtr& layer) {
  const auto& args = op.schema().arguments();
  const size_t begin = argumentsBegin(*stack, args.size());
  const bool inplace = isInplaceOperator(op.schema());
  for (size_t i = 0; i < args.size(); ++i) {
    const bool written = inplace && i == 0;
    mapTensors((*stack)[begin + i], [&](const at::Tensor& t) {
      auto* wrapper = asGradWrapper(t);
      if (wrapper != nullptr && wrapper->layer() == layer) {
        if (written && wrapper->immutable()) capturedMutationError(op, *layer);
        return t;
      }
      if (written) capturedMutationError(op, *layer);
      return makeGradWrapper(t, layer, /*immutable=*/true);
    });
  }
  SavedDispatchState saved;
  ProcessingGuard processing(layer->level + 1);
  // NOTE: [Python modes see only plain tensors]
  // Between the router and the unwrap kernel only this level's wrappers are around; tracing and
  // fake-tensor modes (make_fx, FakeTensorMode) must not see them. The Python keys are excluded
  // here and come back, with the rest of the saved state, in the unwrap kernel.
  //
  // Functionalization, when this level was entered inside functionalize, sits below this level:
  // it is excluded too, or the Functionalize kernel (between Autograd and the unwrap kernel)
  // would wrap this level's wrappers in FunctionalTensorWrappers, nesting them upside down.
  c10::DispatchKeySet excluded({kRouterKey, c10::DispatchKey::Python,
                                c10::DispatchKey::PythonTLSSnapshot,
                                c10::DispatchKey::PreDispatch});
  if (layer->level > functionalize_level_ && functionalizationIsOn()) {
    excluded = excluded.add(c10::DispatchKey::Functionalize);
  }
  // NOTE: [A grad level always records]
  // Autograd at this level is this level's transform, not the caller's autograd: it runs even
  // where the caller excluded the autograd keys, as functorch does when it enters a grad layer.
  // torch's *_like factories (torch.empty_like, ...) call their operator below autograd; inside
  // functionalize that operator first syncs its argument, and the views it replays then (to
  // regenerate a view of a mutated tensor) must be recorded, or the view loses its gradient.
  // Inference mode keeps the keys excluded: its tensors can't be recorded.
  c10::impl::LocalDispatchKeySet local = c10::impl::tls_local_dispatch_key_set();
  if (!c10::InferenceMode::is_enabled()) {
    local.excluded_ = local.excluded_ - c10::autograd_dispatch_keyset.add(
                                            c10::DispatchKey::ADInplaceOrView);
  }
  local.excluded_ = local.excluded_ | excluded;
  c10::impl::ForceDispatchKeyGuard no_router(local);
  op.callBoxed(stack);
}

// NOTE: [functionalize inside our transforms]
// functionalize(f) called inside grad, vjp, jvp or vmap wraps our wrappers in torch's
// FunctionalTensorWrappers, which inherit the router key (NOTE: [Tensors that inherit the
// router key]). Functionalization is then the innermost transform, so it goes first: the
// operator goes straight to its Functionalize kernel (its CompositeImplicitAutograd
// decomposition first, if it has one, so views such as reshape are seen as views). That kernel
// unwraps and calls the operator again on our wrappers, with the full dispatch state, so the
// router then processes their level as usual (Autograd records at grad levels, vmap rules run).
// When an argument is a wrapper of a level entered inside functionalize, that level is above
// functionalization and goes first.
// Skipping Autograd on the FunctionalTensorWrappers is what functorch's layer stack does too:
// gradients flow through the wrapped tensors. Any other foreign tensor with the router key is
// an error rather than a misread wrapper.
void processFunctionalization(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                              c10::DispatchKeySet keys) {
  TORCH_CHECK(keys.has(c10::DispatchKey::Functionalize),
      "functorch_lite: the operator ", op.schema().operator_name(), " got a tensor subclass "
      "that wraps a tensor of a functorch_lite transform; only torch's functionalization "
      "wrappers (functorch_lite.functionalize) may wrap them.");
  if (op.hasKernelForDispatchKey(c10::DispatchKey::CompositeImplicitAutograd) &&
      !op.hasKernelForDispatchKey(c10::DispatchKey::Functionalize)) {
    op.redispatchBoxed(c10::DispatchKeySet(c10::DispatchKey::CompositeImplicitAutograd), stack);
    return;
  }
  const c10::DispatchKeySet below(c10::DispatchKeySet::FULL_AFTER,
                                  c10::DispatchKey::Functionalize);
  op.redispatchBoxed((keys & below).add(c10::DispatchKey::Functionalize), stack);
}

void routerFallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const size_t num_args = op.schema().arguments().size();
  const size_t begin = argumentsBegin(*stack, num_args);
  const LayerPtr* top = nullptr;
  bool foreign = false;
  c10::DispatchKeySet keys;
  for (size_t i = begin; i < stack->size(); ++i) {
    forEachTensor((*stack)[i], [&](const at::Tensor& t) {
      if (t.defined()) keys = keys | t.key_set();
      foreign = foreign || isForeignWithRouterKey(t);
    });
  }
  for (size_t i = begin; i < stack->size(); ++i) {
    bool has_dead = false;
    forEachTensor((*stack)[i], [&](const at::Tensor& t) {
      const LayerPtr* layer = layerOf(t);
      if (layer != nullptr && !(*layer)->alive) has_dead = true;
    });
    if (has_dead) mapTensors((*stack)[i], stripDead);
    forEachTensor((*stack)[i], [&](const at::Tensor& t) {
      const LayerPtr* layer = layerOf(t);
      if (layer != nullptr && (top == nullptr || (*layer)->level > (*top)->level)) top = layer;
    });
  }
  // Functionalization sits between the levels entered before and after functionalize; a
  // level above it is processed first (FunctionalTensorWrappers are plain tensors to it).
  if (foreign && (top == nullptr || (*top)->level <= functionalize_level_)) {
    processFunctionalization(op, stack, keys);
    return;
  }
  if (top == nullptr) {
    op.callBoxed(stack);  // only escaped grad wrappers were here: they act as their values
    return;
  }
  const LayerPtr layer = *top;  // keep it alive: the stack slots holding it get replaced
  if (layer->kind == LayerKind::Vmap) {
    ProcessingGuard processing(layer->level);
    processVmapLevel(op, stack, layer);
  } else {
    processGradLevel(op, stack, layer);
  }
}

// NOTE: [Metadata queries at the router]
// Forward AD checks every tangent it attaches (AutogradMeta::set_fw_grad) with is_same_size and
// _has_same_storage_numel. Under vmap(jvp) the tangent is a grad wrapper around a BatchedTensor,
// and a per-sample answer cannot be batched into one bool. Both queries are answered here, at
// the top, for any level: every wrapper's sizes are the logical ones, so is_same_size compares
// them directly. _has_same_storage_numel(tangent, primal) (does the tangent's storage have the
// primal's layout?) has no meaning for a batched tensor; it answers true then, and otherwise
// asks the plain tensors under the wrappers.
//
// NOTE: [Tangents batched like their primal]
// One exception: a primal batched at a vmap level at which its tangent is not (jacfwd's basis
// vector attached to a primal of an outer vmap, or a constant tangent). The answer is then
// false, so set_fw_grad replaces the tangent with _new_zeros_with_same_feature_meta(tangent,
// primal) (batched at the primal's levels too, batching/forward_ad.cpp) and copies it in. An
// in-place operator on the primal later writes its new, batched tangent into that tangent in
// place (`self_t.copy_(...)`), which vmap allows only into a tensor batched at that level, so
// the tangent must be batched at both levels. The price: under vmap(jacfwd(f)) every sample
// carries its own copy of the basis, so an operation on the tangent alone (W @ t) runs once per
// sample instead of once for all of them.
struct Peeled {
  at::Tensor plain;                       // the tensor under every wrapper
  std::vector<const Layer*> vmap_layers;  // the vmap layers it is batched at
};

Peeled peel(at::Tensor t) {
  Peeled out;
  while (layerOf(t) != nullptr || at::functionalization::impl::isFunctionalTensor(t)) {
    if (auto* batched = asBatched(t)) {
      out.vmap_layers.push_back(batched->layer().get());
      t = batched->value();
    } else if (auto* wrapper = asGradWrapper(t)) {
      t = wrapper->value();
    } else {
      // a FunctionalTensorWrapper around our wrappers (NOTE: [functionalize inside our
      // transforms]) is asked about the tensor it wraps
      t = at::functionalization::impl::from_functional_tensor(t);
    }
  }
  out.plain = t;
  return out;
}

bool isSameSize(const at::Tensor& self, const at::Tensor& other) {
  return self.sym_sizes() == other.sym_sizes();
}

bool hasSameStorageNumel(const at::Tensor& self, const at::Tensor& other) {
  const Peeled tangent = peel(self);
  const Peeled primal = peel(other);
  for (const Layer* layer : primal.vmap_layers) {
    if (std::find(tangent.vmap_layers.begin(), tangent.vmap_layers.end(), layer) ==
        tangent.vmap_layers.end()) {
      return false;  // NOTE: [Tangents batched like their primal]
    }
  }
  if (!tangent.vmap_layers.empty() || !primal.vmap_layers.empty()) return true;
  // Plain tensors are asked with the mode key off: a ZeroTensor tangent reaches the kernel
  // through ZeroTensor's fallback, which materializes it with at::zeros, and a factory called
  // under the mode key would be wrapped at the live grad levels (NOTE: [Factory functions
  // inside grad]), handing a wrapper to a kernel that reads its storage.
  c10::impl::ExcludeDispatchKeyGuard no_mode(kModeKey);
  return at::_has_same_storage_numel(tangent.plain, primal.plain);
}

// NOTE: [Factory functions inside grad]
// A tensor made from nothing (torch.zeros, torch.full, ...) inside a grad-transformed function
// is wrapped at every live grad/jvp level below the level being processed (see
// NOTE: [The level being processed]), innermost outside, as if it had been made from the
// function's inputs. So writing tracked values into it in place is recorded at those levels,
// rather than reported as mutating a captured tensor.
//
// NOTE: [Factory functions inside functionalize]
// functionalize has no level of its own: it sits above the levels that were live when it was
// entered and below the ones entered inside it (functionalize_level_). While functionalization
// is on, a factory's plain result is wrapped at the grad levels below functionalize, then in a
// FunctionalTensorWrapper, then at the grad levels above it, the order its inputs were wrapped
// in. Otherwise a FunctionalTensorWrapper could end up under one of our wrappers inside a
// functionalize that is itself inside that transform, and reach a CPU kernel unwrapped.
//
// NOTE: [Shape checks of functionalization]
// Before it replaces an in-place operator by its out-of-place version, a Functionalize kernel
// runs the in-place operator on meta copies of its arguments, with functionalization skipped,
// to report the shape errors only the in-place form has. Those meta tensors are scratch, not
// values of the function: factories they call (the meta kernels are Python references that
// build their results from scalar tensors) are left plain. Wrapped, they would lift the meta
// copy of the written argument into this level, and its write-back (copy_) would be refused
// as a write into a captured tensor.
bool inFunctionalizationShapeCheck(const at::Tensor& out) {
  return out.is_meta() &&
         c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::Functionalize) &&
         c10::impl::tls_is_dispatch_key_excluded(c10::DispatchKey::Functionalize);
}

//
// NOTE: [No ZeroTensors inside functionalize]
// Derivative formulas make zeros with at::_efficientzerotensor, a tensor with the ZeroTensor
// key and no data. ZeroTensor's kernels run before Functionalize's, so on a
// FunctionalTensorWrapper around a ZeroTensor a view operator (view, reshape, ...) runs
// ZeroTensor's kernel on the wrapper itself: it makes a plain TensorImpl that carries the
// Functionalize key and the wrapper's storage, which torch._sync then reads as a wrapper and
// crashes on. While functionalize is running (even inside one of its kernels, where it is
// excluded) such zeros are made as ordinary zeros, so no ZeroTensor reaches a wrapper.
void factoryKernel(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack* stack) {
  const bool functional = functionalizationIsOn();
  {
    c10::impl::ExcludeDispatchKeyGuard no_mode(
        functional ? c10::DispatchKeySet({kModeKey, c10::DispatchKey::Functionalize})
                   : c10::DispatchKeySet(kModeKey));
    op.callBoxed(stack);
    const at::Tensor& made = stack->back().toTensor();
    if (made._is_zerotensor() &&
        c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::Functionalize)) {
      stack->back() = at::zeros_symint(made.sym_sizes(), made.options());
    }
  }
  c10::IValue& out = stack->back();
  if (inFunctionalizationShapeCheck(out.toTensor())) return;
  const int64_t bound = processingBound();
  auto wrapLevels = [&](auto&& selected) {
    for (const auto& layer : layerStack()) {
      if (layer->kind == LayerKind::Vmap || layer->level >= bound || !selected(*layer)) continue;
      out = makeGradWrapper(out.toTensor(), layer);
    }
  };
  if (!functional) {
    wrapLevels([](const Layer&) { return true; });
    return;
  }
  wrapLevels([](const Layer& l) { return l.level <= functionalize_level_; });
  out = at::functionalization::impl::to_functional_tensor(out.toTensor());
  wrapLevels([](const Layer& l) { return l.level > functionalize_level_; });
}

bool mentionsTensor(const c10::TypePtr& type) {
  if (type->kind() == c10::TypeKind::TensorType) return true;
  for (const auto& inner : type->containedTypes()) {
    if (mentionsTensor(inner)) return true;
  }
  return false;
}

// Operators that make one tensor from no tensors. aten::empty* are left alone: torch.tensor(...)
// builds its result with them and then writes into the storage directly.
bool isFactory(const c10::OperatorHandle& op) {
  const auto& schema = op.schema();
  if (schema.name().rfind("aten::empty", 0) == 0) return false;
  for (const auto& arg : schema.arguments()) {
    if (mentionsTensor(arg.type())) return false;
  }
  return schema.returns().size() == 1 &&
         schema.returns()[0].type()->kind() == c10::TypeKind::TensorType && !schema.is_mutable() &&
         !op.hasTag(at::Tag::nondeterministic_seeded) &&  // see batching/random.cpp
         !op.hasKernelForDispatchKey(c10::DispatchKey::CompositeImplicitAutograd);
}

void registerFactoryKernels() {
  static auto* handles = new std::vector<c10::RegistrationHandleRAII>();  // lives until exit
  auto& dispatcher = c10::Dispatcher::singleton();
  for (const auto& name : dispatcher.getAllOpNames()) {
    if (name.name.rfind("aten::", 0) != 0) continue;
    auto op = dispatcher.findOp(name);
    if (!op || !op->hasSchema() || !isFactory(*op)) continue;
    handles->push_back(dispatcher.registerImpl(
        name, kModeKey, c10::KernelFunction::makeFromBoxedFunction<&factoryKernel>(),
        std::nullopt, nullptr, "functorch_lite factory wrapping"));
  }
}

}  // namespace

int64_t setFunctionalizeLevel(int64_t level) {
  const int64_t previous = functionalize_level_;
  functionalize_level_ = level;
  return previous;
}

void registerRouter() {
  static torch::Library router(torch::Library::IMPL, "_", kRouterKey, __FILE__, __LINE__);
  router.fallback(torch::CppFunction::makeFromBoxedFunction<&routerFallback>());
  static torch::Library mode(torch::Library::IMPL, "_", kModeKey, __FILE__, __LINE__);
  mode.fallback(torch::CppFunction::makeFallthrough());
  static torch::Library metadata(torch::Library::IMPL, "aten", kRouterKey, __FILE__, __LINE__);
  metadata.impl("is_same_size", TORCH_FN(isSameSize));
  metadata.impl("_has_same_storage_numel", TORCH_FN(hasSameStorageNumel));
  registerFactoryKernels();
}

}  // namespace functorch_lite
