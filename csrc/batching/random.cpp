// vmap randomness ('error' | 'different' | 'same') for random operators, at the mode key.
#include "batching/random.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <limits>
#include <optional>
#include <vector>

#include "batching/rules.h"
#include "core/ivalues.h"
#include "core/keys.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

// NOTE: [vmap randomness]
// Random operators are seen by the mode key, which is TLS-included while any level is live, so
// it sees them even when no argument is batched (torch.randn(3) inside vmap). The kernel handles
// the innermost live vmap layer below `ceiling_`, then calls the operator again with the ceiling
// lowered to that layer, so every enclosing vmap layer gets its turn, innermost first:
// - 'error': an error naming the operator.
// - 'different': a factory operator gets the batch size prepended to its size (randperm runs per
//   sample); an operator with tensor arguments runs on batched tensors (an unbatched first
//   argument is expanded to the batch first), so every sample draws its own values.
// - 'same': a factory operator runs as is; an in-place operator on a batched tensor draws one
//   sample and copies it into every batch element; *_like operators draw one sample.
// CompositeImplicitAutograd random operators (dropout, ...) are not registered: they decompose
// into the primitive ones handled here.
thread_local int64_t ceiling_ = std::numeric_limits<int64_t>::max();

struct CeilingGuard {
  explicit CeilingGuard(int64_t level) : saved(ceiling_) { ceiling_ = level; }
  ~CeilingGuard() { ceiling_ = saved; }
  int64_t saved;
};

LayerPtr innermostVmapBelowCeiling() {
  const auto& stack = layerStack();
  for (auto it = stack.rbegin(); it != stack.rend(); ++it) {
    if ((*it)->kind == LayerKind::Vmap && (*it)->level < ceiling_) return *it;
  }
  return nullptr;
}

// True when `t`, or a value under its wrappers, is batched at `layer`.
bool batchedAt(at::Tensor t, const LayerPtr& layer) {
  while (layerOf(t) != nullptr) {
    if (auto* b = asBatched(t)) {
      if (b->layer() == layer) return true;
      t = b->value();
    } else {
      t = asGradWrapper(t)->value();
    }
  }
  return false;
}

std::string nameOf(const c10::OperatorHandle& op) {
  const auto& name = op.operator_name();
  return name.overload_name.empty() ? name.name : name.name + "." + name.overload_name;
}

void callBelowMode(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  c10::impl::ExcludeDispatchKeyGuard no_mode(kModeKey);
  op.callBoxed(stack);
}

void differentFactory(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                      const LayerPtr& layer, size_t begin) {
  const auto& args = op.schema().arguments();
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].name() != "size") continue;
    auto sizes = (*stack)[begin + i].toSymIntVector();
    sizes.insert(sizes.begin(), c10::SymInt(layer->batch_size));
    (*stack)[begin + i] = c10::IValue(sizes);
    op.callBoxed(stack);
    auto& ret = stack->back();
    ret = makeBatched(ret.toTensor(), 0, layer);
    return;
  }
  // no size argument (randperm): one call per sample
  std::vector<c10::IValue> arguments = torch::jit::pop(*stack, args.size());
  std::vector<at::Tensor> samples;
  for (int64_t b = 0; b < layer->batch_size; ++b) {
    for (const auto& a : arguments) stack->push_back(a);
    op.callBoxed(stack);
    samples.push_back(torch::jit::pop(*stack).toTensor());
  }
  torch::jit::push(*stack, makeBatched(at::stack(samples), 0, layer));
}

void randomnessKernel(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack* stack) {
  const LayerPtr layer = innermostVmapBelowCeiling();
  if (!layer) return callBelowMode(op, stack);
  CeilingGuard guard(layer->level);
  const auto& args = op.schema().arguments();
  const size_t begin = stack->size() - args.size();

  TORCH_CHECK(layer->randomness != Randomness::Error, layer->api, ": called the random operator ",
      nameOf(op), " inside a vmapped function with randomness='error' (the default). Pass "
      "randomness='different' (each sample draws its own values) or randomness='same' (one draw "
      "shared by the whole batch) to vmap, or draw the random values outside vmap.");

  bool has_tensor = false;
  bool any_batched = false;
  for (size_t i = begin; i < stack->size(); ++i) {
    forEachTensor((*stack)[i], [&](const at::Tensor& t) {
      has_tensor = true;
      any_batched |= batchedAt(t, layer);
    });
  }
  const bool inplace = !args.empty() && writesArgument(op, 0);
  const bool like = op.operator_name().name.size() > 5 &&
                    op.operator_name().name.compare(op.operator_name().name.size() - 5, 5, "_like") == 0;

  if (layer->randomness == Randomness::Different) {
    if (!has_tensor) return differentFactory(op, stack, layer, begin);
    if (inplace) {
      TORCH_CHECK(batchedAt((*stack)[begin].toTensor(), layer), layer->api,
          ": randomness='different' asks each sample for its own values, but the in-place random "
          "operator ", nameOf(op), " writes into a tensor that is not batched. Make the tensor "
          "batched first (e.g. expand it over the batch), or use randomness='same'.");
    } else if (!any_batched && (*stack)[begin].isTensor()) {
      const at::Tensor self = (*stack)[begin].toTensor();
      auto sizes = self.sizes().vec();
      sizes.insert(sizes.begin(), layer->batch_size);
      (*stack)[begin] = makeBatched(self.unsqueeze(0).expand(sizes), 0, layer);
    }
    return op.callBoxed(stack);
  }

  // randomness == 'same'
  if (!any_batched) return op.callBoxed(stack);
  if (like && !inplace) {
    const at::Tensor self = (*stack)[begin].toTensor();
    (*stack)[begin] = at::empty(self.sizes(), self.options().device(self.device()));
    return op.callBoxed(stack);
  }
  if (inplace) {
    const at::Tensor self = (*stack)[begin].toTensor();
    bool others_batched = false;
    for (size_t i = begin + 1; i < stack->size(); ++i) {
      forEachTensor((*stack)[i], [&](const at::Tensor& t) { others_batched |= batchedAt(t, layer); });
    }
    if (!others_batched) {
      at::Tensor sample = at::empty(self.sizes(), at::TensorOptions(self.scalar_type()).device(self.device()));
      (*stack)[begin] = sample;
      op.callBoxed(stack);
      torch::jit::drop(*stack, op.schema().returns().size());
      self.copy_(sample);
      torch::jit::push(*stack, self);
      return;
    }
  }
  TORCH_CHECK(false, layer->api, ": randomness='same' is not supported yet for the random "
      "operator ", nameOf(op), " with batched inputs; use randomness='different', or draw the "
      "random values outside vmap.");
}

// Below the mode key, a random operator on batched tensors is pointwise: one physical call draws
// independent values for every sample.
const RuleTable kRandomPointwise({
    {"aten::rand_like", pointwiseRule}, {"aten::randn_like", pointwiseRule},
    {"aten::randint_like", pointwiseRule}, {"aten::randint_like.low_dtype", pointwiseRule},
    {"aten::bernoulli", pointwiseRule}, {"aten::bernoulli.p", pointwiseRule},
    {"aten::bernoulli_.float", pointwiseRule}, {"aten::bernoulli_.Tensor", pointwiseRule},
    {"aten::uniform_", pointwiseRule}, {"aten::normal_", pointwiseRule},
    {"aten::exponential_", pointwiseRule}, {"aten::geometric_", pointwiseRule},
    {"aten::log_normal_", pointwiseRule}, {"aten::cauchy_", pointwiseRule},
    {"aten::random_", pointwiseRule}, {"aten::random_.from", pointwiseRule},
    {"aten::random_.to", pointwiseRule}, {"aten::normal.Tensor_float", pointwiseRule},
    {"aten::normal.float_Tensor", pointwiseRule}, {"aten::normal.Tensor_Tensor", pointwiseRule},
    {"aten::poisson", pointwiseRule}, {"aten::native_dropout", pointwiseRule},
});

}  // namespace

void registerRandomnessKernels() {
  static auto* handles = new std::vector<c10::RegistrationHandleRAII>();  // lives until exit
  auto& dispatcher = c10::Dispatcher::singleton();
  for (const auto& name : dispatcher.getAllOpNames()) {
    auto op = dispatcher.findOp(name);
    if (!op || !op->hasSchema() || !op->hasTag(at::Tag::nondeterministic_seeded)) continue;
    if (op->hasKernelForDispatchKey(c10::DispatchKey::CompositeImplicitAutograd)) continue;
    handles->push_back(dispatcher.registerImpl(
        name, kModeKey, c10::KernelFunction::makeFromBoxedFunction<&randomnessKernel>(),
        std::nullopt, nullptr, "functorch_lite vmap randomness"));
  }
}

}  // namespace functorch_lite
