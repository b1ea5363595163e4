// vmap randomness ('error' | 'different' | 'same') for random operators, at the mode key.
#include "batching/random.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/stack.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <utility>
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
//   tensor argument is expanded to the batch first), so every sample draws its own values.
// - 'same': a factory operator runs as is; an in-place operator on a batched tensor draws one
//   sample and copies it into every batch element; *_like operators draw for one sample of
//   this level (the first, with the batches of inner vmap levels kept; see firstSampleAt).
// CompositeImplicitAutograd random operators decompose into the primitive ones handled here;
// the dropout family alone has a kernel of its own (NOTE: [Dropout of an unbatched tensor]).
//
// NOTE: [Random values are drawn in batch-front order]
// A generator hands out its numbers in the order the kernel fills the tensor, so a seeded vmap
// reproduces one unbatched call over the batched shape [B, ...] only when every random call sees
// that physical tensor: the batch dim in front. So factory operators prepend the batch size, and
// below the mode key random operators on batched tensors get every batched argument with its
// batch dim moved to the front (in-place ones fill that view), their output batched at 0. With
// the same seed or generator, vmap(f, randomness='different') then returns what f returns for
// the whole batch at once.
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

// `t` without its batch dim at `layer` (its first sample there), keeping the wrappers of the
// vmap levels inside `layer`: what one draw for the whole of `layer`'s batch is shaped like.
// nullopt when `t` is not batched at `layer` under vmap wrappers only.
std::optional<at::Tensor> firstSampleAt(const at::Tensor& t, const LayerPtr& layer) {
  auto* b = asBatched(t);
  if (b == nullptr) return std::nullopt;
  if (b->layer() == layer) return b->value().select(b->bdim(), 0);
  std::optional<at::Tensor> inner = firstSampleAt(b->value(), layer);
  if (!inner) return std::nullopt;
  return makeBatched(*inner, b->bdim(), b->layer());
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

void randomnessKernel(const c10::OperatorHandle& op, c10::DispatchKeySet,
                      torch::jit::Stack* stack) {
  const LayerPtr layer = innermostVmapBelowCeiling();
  if (!layer) return callBelowMode(op, stack);
  CeilingGuard guard(layer->level);
  const auto& args = op.schema().arguments();
  const size_t begin = stack->size() - args.size();

  TORCH_CHECK(layer->randomness != Randomness::Error, layer->api, ": called random operation "
      "while in randomness error mode (the random operator ", nameOf(op), ", with "
      "randomness='error', the default). Please either use the 'same' or 'different' randomness "
      "flags on vmap (randomness='different': each sample draws its own values; 'same': one "
      "draw shared by the whole batch) or perform the randomness operation out of vmap.");

  bool has_tensor = false;
  bool any_batched = false;
  for (size_t i = begin; i < stack->size(); ++i) {
    forEachTensor((*stack)[i], [&](const at::Tensor& t) {
      has_tensor = true;
      any_batched |= batchedAt(t, layer);
    });
  }
  const bool inplace = !args.empty() && writesArgument(op, 0);
  const std::string& base = op.operator_name().name;
  const bool like = base.size() > 5 && base.compare(base.size() - 5, 5, "_like") == 0;

  if (layer->randomness == Randomness::Different) {
    if (!has_tensor) return differentFactory(op, stack, layer, begin);
    if (inplace) {
      TORCH_CHECK(batchedAt((*stack)[begin].toTensor(), layer), layer->api,
          ": Cannot ask for different inplace randomness on an unbatched tensor. This will "
          "appear like same randomness. The in-place random operator ", nameOf(op), " writes "
          "into a tensor that is not batched: make it batched first (e.g. expand it over the "
          "batch and clone it), or use randomness='same'.");
    } else if (!any_batched) {
      // the first tensor argument is expanded over the batch, so that every sample draws
      for (size_t i = begin; i < stack->size(); ++i) {
        if (!(*stack)[i].isTensor()) continue;
        const at::Tensor self = (*stack)[i].toTensor();
        auto sizes = self.sizes().vec();
        sizes.insert(sizes.begin(), layer->batch_size);
        (*stack)[i] = makeBatched(self.unsqueeze(0).expand(sizes), 0, layer);
        break;
      }
    }
    return op.callBoxed(stack);
  }

  // randomness == 'same'
  if (!any_batched) return op.callBoxed(stack);
  if (like && !inplace) {
    const at::Tensor self = (*stack)[begin].toTensor();
    std::optional<at::Tensor> sample = firstSampleAt(self, layer);
    (*stack)[begin] = sample ? *sample
                             : at::empty(self.sizes(), self.options().device(self.device()));
    return op.callBoxed(stack);
  }
  if (inplace) {
    const at::Tensor self = (*stack)[begin].toTensor();
    bool others_batched = false;
    for (size_t i = begin + 1; i < stack->size(); ++i) {
      forEachTensor((*stack)[i],
                    [&](const at::Tensor& t) { others_batched |= batchedAt(t, layer); });
    }
    if (!others_batched) {
      const auto options = at::TensorOptions(self.scalar_type()).device(self.device());
      at::Tensor sample = at::empty(self.sizes(), options);
      (*stack)[begin] = sample;
      op.callBoxed(stack);
      torch::jit::drop(*stack, op.schema().returns().size());
      self.copy_(sample);
      torch::jit::push(*stack, self);
      return;
    }
  }
  TORCH_CHECK(false, layer->api, ": Vmap does not currently support same randomness with a "
      "batched tensor input (the random operator ", nameOf(op), " with randomness='same'); use "
      "randomness='different', or draw the random values outside vmap.");
}

// Below the mode key, a random operator on batched tensors is pointwise: one physical call draws
// independent values for every sample, in batch-front order (NOTE: [Random values are drawn in
// batch-front order]).
void randomPointwiseRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                         const LayerPtr& layer) {
  const auto& args = op.schema().arguments();
  const size_t begin = stack->size() - args.size();
  const bool inplace = !args.empty() && writesArgument(op, 0);
  std::vector<std::pair<size_t, Unwrapped>> tensors;
  int64_t rank = 0;
  for (size_t i = 0; i < args.size(); ++i) {
    const c10::IValue& v = (*stack)[begin + i];
    if (!v.isTensor()) continue;
    tensors.emplace_back(i, unwrapAt(v.toTensor(), layer));
    rank = std::max(rank, tensors.back().second.logicalRank());
  }
  if (inplace && !tensors.empty() && tensors[0].first == 0 && !tensors[0].second.batched()) {
    inplaceIntoUnbatchedError(op, *layer);
  }
  std::vector<c10::IValue> arguments;
  if (inplace) arguments.assign(stack->begin() + begin, stack->end());
  for (const auto& [slot, u] : tensors) {
    if (u.batched()) (*stack)[begin + slot] = padLogicalRank(batchFront(u), u.logicalRank(), rank);
  }
  op.callBoxed(stack);
  wrapOutputs(op, stack, layer, arguments, 0);
}

#define RANDOM_POINTWISE(name) {name, randomPointwiseRule}

const RuleTable kRandomPointwise({
    RANDOM_POINTWISE("aten::rand_like"), RANDOM_POINTWISE("aten::randn_like"),
    RANDOM_POINTWISE("aten::randint_like"), RANDOM_POINTWISE("aten::randint_like.low_dtype"),
    RANDOM_POINTWISE("aten::bernoulli"), RANDOM_POINTWISE("aten::bernoulli.p"),
    RANDOM_POINTWISE("aten::bernoulli_.float"), RANDOM_POINTWISE("aten::bernoulli_.Tensor"),
    RANDOM_POINTWISE("aten::uniform_"), RANDOM_POINTWISE("aten::normal_"),
    RANDOM_POINTWISE("aten::exponential_"), RANDOM_POINTWISE("aten::geometric_"),
    RANDOM_POINTWISE("aten::log_normal_"), RANDOM_POINTWISE("aten::cauchy_"),
    RANDOM_POINTWISE("aten::random_"), RANDOM_POINTWISE("aten::random_.from"),
    RANDOM_POINTWISE("aten::random_.to"), RANDOM_POINTWISE("aten::normal.Tensor_float"),
    RANDOM_POINTWISE("aten::normal.float_Tensor"), RANDOM_POINTWISE("aten::normal.Tensor_Tensor"),
    RANDOM_POINTWISE("aten::poisson"), RANDOM_POINTWISE("aten::native_dropout"),
});

// NOTE: [Dropout of an unbatched tensor]
// dropout(x) decomposes into an in-place bernoulli_ on a tensor like x. Under
// randomness='different' that is wrong twice: for an unbatched x the in-place draw would be
// refused (one mask cannot hold a draw per sample), and for a batched x the mask would be drawn
// in the physical layout of x rather than batch-front (NOTE: [Random values are drawn in
// batch-front order]). So at the mode key, under an innermost vmap level with 'different':
// - dropout draws its mask itself, as a contiguous [B, ...] tensor batched at that level (also
//   when x is unbatched, or wrapped by an inner grad level), and returns x * mask / (1 - p);
// - feature_dropout, alpha_dropout and feature_alpha_dropout get x with its batch dim in front,
//   contiguous (an unbatched x expanded over the batch first), then continue below the mode key
//   (their CompositeImplicitAutograd decomposition), whose pieces dispatch as usual.
// Every sample gets its own mask: the values of the same call over the [B, ...] input.
void dropoutKernel(const c10::OperatorHandle& op, c10::DispatchKeySet ks,
                   torch::jit::Stack* stack) {
  const auto& args = op.schema().arguments();
  const size_t begin = stack->size() - args.size();
  const LayerPtr layer = innermostVmapBelowCeiling();
  const at::Tensor input = (*stack)[begin].toTensor();
  const double p = (*stack)[begin + 1].toDouble();
  const bool train = (*stack)[begin + 2].toBool();
  if (!layer || layer->randomness != Randomness::Different || !train || p <= 0 || p >= 1) {
    return op.redispatchBoxed(ks & c10::DispatchKeySet(c10::DispatchKeySet::FULL_AFTER, kModeKey),
                              stack);
  }
  const bool batched = batchedAt(input, layer);
  if (op.operator_name().name == "aten::dropout") {
    // the mask is a contiguous [B, ...] draw, batch dim in front, whatever the input's layout
    bool batched_elsewhere = false;
    for (const auto& other : layerStack()) {
      batched_elsewhere |=
          other != layer && other->kind == LayerKind::Vmap && batchedAt(input, other);
    }
    at::Tensor noise;
    if (batched_elsewhere) {  // batched at the enclosing vmap levels too, like the input
      noise = at::empty_like(input, at::MemoryFormat::Contiguous);
    } else {
      c10::impl::ExcludeDispatchKeyGuard no_mode(kModeKey);  // plain, not made at grad levels
      auto sizes = input.sizes().vec();
      sizes.insert(sizes.begin(), layer->batch_size);
      const auto options = at::TensorOptions(input.scalar_type()).device(input.device());
      noise = makeBatched(at::empty(sizes, options), 0, layer);
    }
    noise.bernoulli_(1 - p).div_(1 - p);
    torch::jit::drop(*stack, args.size());
    torch::jit::push(*stack, input.mul(noise));
    return;
  }
  // the others draw into a tensor like their input: it gets the batch dim in front, contiguous
  // (an unbatched one expanded first), where the input is not wrapped above this layer
  if (layerOf(input) == nullptr || (*layerOf(input))->level <= layer->level) {
    at::Tensor front;
    if (batched) {
      front = batchFront(unwrapAt(input, layer));
    } else {
      auto sizes = input.sizes().vec();
      sizes.insert(sizes.begin(), layer->batch_size);
      front = input.unsqueeze(0).expand(sizes);
    }
    const at::Tensor dense = makeBatched(front.contiguous(), 0, layer);
    (*stack)[begin] = dense;
    ks = ks | dense.key_set();
  }
  op.redispatchBoxed(ks & c10::DispatchKeySet(c10::DispatchKeySet::FULL_AFTER, kModeKey), stack);
}

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
  for (const char* name : {"aten::dropout", "aten::feature_dropout", "aten::alpha_dropout",
                           "aten::feature_alpha_dropout"}) {
    handles->push_back(dispatcher.registerImpl(
        c10::OperatorName(name, ""), kModeKey,
        c10::KernelFunction::makeFromBoxedFunction<&dropoutKernel>(), std::nullopt, nullptr,
        "functorch_lite vmap dropout randomness"));
  }
}

}  // namespace functorch_lite
