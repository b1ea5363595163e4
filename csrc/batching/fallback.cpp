// The boxed for-loop fallback: slice every batched argument, call the operator per sample, stack.
#include "batching/fallback.h"

#include <ATen/ops/stack.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <mutex>
#include <set>

#include "batching/rules.h"
#include "core/ivalues.h"
#include "core/wrappers.h"

namespace functorch_lite {

namespace {

std::atomic<bool> enabled_{true};
std::atomic<bool> warn_{true};
std::atomic<bool> counting_{false};
std::mutex mutex_;
std::set<std::string> warned_;
std::map<std::string, int64_t> counts_;

std::string nameOf(const c10::OperatorHandle& op) {
  const auto& name = op.operator_name();
  return name.overload_name.empty() ? name.name : name.name + "." + name.overload_name;
}

// NOTE: [Data-dependent operators under vmap]
// Operators that turn a tensor's value into a Python number or a branch cannot be batched:
// each sample would give a different answer.
void checkDataDependent(const c10::OperatorHandle& op, const Layer& layer) {
  const auto& name = op.operator_name().name;
  if (name == "aten::_local_scalar_dense" || name == "aten::item") {
    TORCH_CHECK(false, layer.api, ": .item() (or float(), int(), .tolist()) was called on a "
        "batched tensor inside the vmapped function. It looks like you're calling .item() on a "
        "Tensor: each sample has its own value, so there is no single Python number to return. "
        "Keep the computation in tensors instead.");
  }
  if (name == "aten::is_nonzero" || name == "aten::equal") {
    TORCH_CHECK(false, layer.api, ": data-dependent control flow on a batched tensor (a Python "
        "`if`, `while` or bool() on its value, or torch.equal) inside the vmapped function. "
        "Each sample may take a different branch; use torch.where or masking instead.");
  }
}

void recordUse(const c10::OperatorHandle& op, const Layer& layer) {
  TORCH_CHECK(enabled_, layer.api, ": the operator ", nameOf(op), " has no batching rule and the "
      "for-loop fallback is disabled (functorch_lite._C._set_vmap_fallback_enabled(False)).");
  if (!warn_ && !counting_) return;
  std::lock_guard<std::mutex> lock(mutex_);
  if (counting_) ++counts_[nameOf(op)];
  if (warn_ && warned_.insert(nameOf(op)).second) {
    TORCH_WARN(layer.api, ": there is a performance drop because ", nameOf(op), " has no "
        "batching rule and runs in a for-loop over the batch (this warning is shown once per "
        "operator; turn it off with functorch_lite._C._set_vmap_fallback_warning_enabled(False)).");
  }
}

at::Tensor stackSamples(const std::vector<at::Tensor>& samples, const c10::OperatorHandle& op,
                        const Layer& layer) {
  for (const auto& s : samples) {
    TORCH_CHECK(s.sizes() == samples[0].sizes(), layer.api, ": the operator ", nameOf(op),
        " returned tensors of different shapes for different samples (its output shape depends "
        "on the data, as for nonzero or unique), so they cannot be stacked into one batch.");
  }
  return at::stack(samples, 0);
}

// is_nonzero and equal decompose into .item(); their own rule names the control flow instead.
void dataDependentRule(const c10::OperatorHandle& op, torch::jit::Stack*, const LayerPtr& layer) {
  checkDataDependent(op, *layer);
}

const RuleTable kDataDependent({
    {"aten::is_nonzero", dataDependentRule},
    {"aten::equal", dataDependentRule},
});

}  // namespace

void vmapFallback(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer) {
  checkDataDependent(op, *layer);
  recordUse(op, *layer);
  const auto& schema = op.schema();
  const size_t num_args = schema.arguments().size();
  std::vector<c10::IValue> arguments = torch::jit::pop(*stack, num_args);

  auto isBatched = [&](const c10::IValue& v) {
    bool batched = false;
    forEachTensor(v, [&](const at::Tensor& t) { batched |= unwrapAt(t, layer).batched(); });
    return batched;
  };
  bool reads_batched = false;
  for (size_t i = 0; i < num_args; ++i) {
    if (!writesArgument(op, i)) reads_batched |= isBatched(arguments[i]);
  }
  for (size_t i = 0; i < num_args; ++i) {
    if (writesArgument(op, i) && reads_batched && !isBatched(arguments[i])) {
      inplaceIntoUnbatchedError(op, *layer);
    }
  }

  // NOTE: [Fallback slices]
  // Written arguments get views of their samples, so that writes land in the batch; read-only
  // ones get contiguous samples, as a plain call would usually see them (some kernels, such as
  // _pdist_forward's, require contiguous inputs). Operators that read strides (as_strided and
  // its relatives) get views: their strides were computed from the batched tensor's logical
  // strides, which are the views' strides.
  const bool reads_strides = schema.name().find("as_strided") != std::string::npos ||
                             schema.name() == "aten::_reshape_alias";
  const size_t num_returns = schema.returns().size();
  std::vector<std::vector<c10::IValue>> per_sample(num_returns);
  for (int64_t b = 0; b < layer->batch_size; ++b) {
    for (size_t i = 0; i < num_args; ++i) {
      c10::IValue arg = arguments[i];
      const bool view = reads_strides || writesArgument(op, i);
      mapTensors(arg, [&](const at::Tensor& t) {
        Unwrapped u = unwrapAt(t, layer);
        if (!u.batched()) return t;
        at::Tensor sample = u.value.select(*u.bdim, b);
        return view ? sample : sample.contiguous();
      });
      stack->push_back(std::move(arg));
    }
    op.callBoxed(stack);
    auto rets = torch::jit::pop(*stack, num_returns);
    for (size_t j = 0; j < num_returns; ++j) per_sample[j].push_back(std::move(rets[j]));
  }

  for (size_t j = 0; j < num_returns; ++j) {
    const int64_t written = writtenArgument(schema, j);
    if (written >= 0) {
      stack->push_back(arguments[written]);
      continue;
    }
    const auto& type = schema.returns()[j].type();
    if (type->kind() == c10::TypeKind::TensorType) {
      std::vector<at::Tensor> samples;
      for (auto& v : per_sample[j]) samples.push_back(v.toTensor());
      TORCH_CHECK(!samples.empty(), layer->api, ": the operator ", nameOf(op),
          " has no batching rule, and the for-loop fallback cannot run it on a batch of size 0.");
      if (!samples[0].defined()) {
        stack->push_back(at::Tensor());  // an output the operator did not compute (output_mask)
        continue;
      }
      stack->push_back(makeBatched(stackSamples(samples, op, *layer), 0, layer));
    } else if (type->kind() == c10::TypeKind::ListType &&
               type->containedType(0)->kind() == c10::TypeKind::TensorType) {
      TORCH_CHECK(!per_sample[j].empty(), layer->api, ": the operator ", nameOf(op),
          " has no batching rule, and the for-loop fallback cannot run it on a batch of size 0.");
      const size_t n = per_sample[j][0].toTensorList().size();
      c10::List<at::Tensor> out;
      for (size_t k = 0; k < n; ++k) {
        std::vector<at::Tensor> samples;
        for (auto& v : per_sample[j]) {
          auto list = v.toTensorList();
          TORCH_CHECK(list.size() == n, layer->api, ": the operator ", nameOf(op),
              " returned lists of different lengths for different samples.");
          samples.push_back(list.get(k));
        }
        out.push_back(makeBatched(stackSamples(samples, op, *layer), 0, layer));
      }
      stack->push_back(std::move(out));
    } else {
      TORCH_CHECK(false, layer->api, ": the operator ", nameOf(op), " returned a ", type->str(),
          ", which cannot be batched: each sample would give its own value.");
    }
  }
}

void setFallbackEnabled(bool enabled) { enabled_ = enabled; }
bool isFallbackEnabled() { return enabled_; }
void setFallbackWarningEnabled(bool enabled) { warn_ = enabled; }
bool isFallbackWarningEnabled() { return warn_; }
void setFallbackCounting(bool enabled) { counting_ = enabled; }

std::map<std::string, int64_t> fallbackCounts() {
  std::lock_guard<std::mutex> lock(mutex_);
  return counts_;
}

void resetFallbackCounts() {
  std::lock_guard<std::mutex> lock(mutex_);
  counts_.clear();
}

}  // namespace functorch_lite
