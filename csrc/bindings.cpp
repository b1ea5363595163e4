// Python bindings for functorch_lite._C (pybind only; the logic lives in core/ and batching/).
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/extension.h>

#include <memory>

#include "batching/fallback.h"
#include "batching/random.h"
#include "batching/vmap.h"
#include "compile/pool.h"
#include "core/keys.h"
#include "core/layer.h"
#include "core/router.h"
#include "core/unwrap.h"
#include "core/version.h"
#include "core/wrappers.h"

namespace functorch_lite {
namespace {

// A transform level as a Python context manager: __enter__ pushes and returns the level number,
// __exit__ pops (see LayerGuard).
class PyLayer {
 public:
  PyLayer(LayerKind kind, int64_t batch_size, Randomness randomness, std::string api)
      : kind_(kind), batch_size_(batch_size), randomness_(randomness), api_(std::move(api)) {}

  int64_t enter() {
    TORCH_CHECK(!guard_, api_, ": a transform level cannot be entered twice");
    guard_ = std::make_unique<LayerGuard>(kind_, batch_size_, randomness_, api_);
    return guard_->layer()->level;
  }

  void exit(const py::args&) { guard_.reset(); }

 private:
  LayerKind kind_;
  int64_t batch_size_;
  Randomness randomness_;
  std::string api_;
  std::unique_ptr<LayerGuard> guard_;
};

Randomness parseRandomness(const std::string& name) {
  if (name == "error") return Randomness::Error;
  if (name == "same") return Randomness::Same;
  if (name == "different") return Randomness::Different;
  TORCH_CHECK(false, "vmap: randomness must be 'error', 'different' or 'same', got '", name, "'");
}

const LayerPtr& liveLayer(int64_t level) {
  for (const auto& layer : layerStack()) {
    if (layer->level == level) return layer;
  }
  TORCH_CHECK(false, "functorch_lite: no live transform level ", level);
}

at::Tensor addBatchDim(const at::Tensor& t, int64_t bdim, int64_t level) {
  return makeBatched(t, bdim, liveLayer(level));
}

// The tensor without this level's batch dim, which goes to `out_dim`; a tensor that is not
// batched at this level did not depend on the batched inputs and is expanded.
at::Tensor removeBatchDim(const at::Tensor& t, int64_t level, int64_t batch_size,
                          int64_t out_dim) {
  auto* b = asBatched(t);
  if (b != nullptr && b->layer() == liveLayer(level)) {
    return b->bdim() == out_dim ? b->value() : b->value().movedim(b->bdim(), out_dim);
  }
  auto sizes = t.sizes().vec();
  sizes.insert(sizes.begin() + out_dim, batch_size);
  return t.unsqueeze(out_dim).expand(sizes);
}

at::Tensor wrapForGrad(const at::Tensor& t, int64_t level) {
  return makeGradWrapper(t, liveLayer(level));
}

at::Tensor unwrapForGrad(const at::Tensor& t, int64_t level) {
  auto* w = asGradWrapper(t);
  if (w != nullptr && w->layer()->level == level) return w->value();
  return t;
}

// (batch_size, randomness) of a live vmap level, for autograd.Function vmap rules (VmapInfo).
py::tuple vmapInfo(int64_t level) {
  const LayerPtr& layer = liveLayer(level);
  TORCH_CHECK(layer->kind == LayerKind::Vmap, "functorch_lite: level ", level,
              " is not a vmap level");
  const char* randomness = layer->randomness == Randomness::Error  ? "error"
                           : layer->randomness == Randomness::Same ? "same"
                                                                   : "different";
  return py::make_tuple(layer->batch_size, randomness);
}

py::object levelOf(const at::Tensor& t) {
  const LayerPtr* layer = layerOf(t);
  if (layer == nullptr) return py::none();
  return py::int_((*layer)->level);
}

// The memory pool as a Python context manager (see PoolGuard).
class PyPool {
 public:
  void enter() { guard_ = std::make_unique<PoolGuard>(PoolScope::Compiled); }
  void exit(const py::args&) { guard_.reset(); }

 private:
  std::unique_ptr<PoolGuard> guard_;
};

// The Python handler of NOTE: [Vmap rules registered from Python]: handler(name, level,
// num_returns, args, kwargs) returns None (no rule) or the list of the operator's outputs.
py::object& pythonRuleHandler() {
  static auto* handler = new py::object();  // never destroyed: no Python calls during exit
  return *handler;
}

bool runPythonRule(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                   const LayerPtr& layer) {
  py::gil_scoped_acquire gil;
  const py::object& handler = pythonRuleHandler();
  if (!handler) return false;
  const auto& schema = op.schema();
  const size_t num_args = schema.arguments().size();
  const size_t begin = stack->size() - num_args;
  py::list args;
  py::dict kwargs;
  for (size_t i = 0; i < num_args; ++i) {
    py::object value = torch::jit::toPyObject((*stack)[begin + i]);
    if (schema.arguments()[i].kwarg_only()) {
      kwargs[py::str(schema.arguments()[i].name())] = value;
    } else {
      args.append(value);
    }
  }
  const auto& returns = schema.returns();
  py::object result = handler(schema.name(), layer->level, returns.size(), py::tuple(args), kwargs);
  if (result.is_none()) return false;
  py::list outputs(result);
  torch::jit::drop(*stack, num_args);
  for (size_t i = 0; i < returns.size(); ++i) {
    stack->push_back(torch::jit::toIValue(outputs[i], returns[i].type()));
  }
  return true;
}

PoolScope parsePoolScope(const std::string& name) {
  if (name == "compiled") return PoolScope::Compiled;
  if (name == "transforms") return PoolScope::Transforms;
  TORCH_CHECK(false, "memory pool: scope must be 'compiled' or 'transforms', got '", name, "'");
}

py::dict poolStatsDict() {
  PoolStats s = poolStats();
  py::dict d;
  d["free_bytes"] = s.free_bytes;
  d["used_bytes"] = s.used_bytes;
  d["peak_used_bytes"] = s.peak_used_bytes;
  d["reused"] = s.reused;
  d["allocated"] = s.allocated;
  d["limit_bytes"] = s.limit_bytes;
  d["installed"] = s.installed;
  return d;
}

}  // namespace
}  // namespace functorch_lite

PYBIND11_MODULE(_C, m) {
  using namespace functorch_lite;
  m.doc() = "functorch_lite dispatcher extension";
  registerRouter();
  registerPendingUnwrapKernels();
  registerRandomnessKernels();

  py::class_<PyLayer>(m, "_Layer")
      .def("__enter__", &PyLayer::enter)
      .def("__exit__", &PyLayer::exit);
  m.def("_vmap_level", [](int64_t batch_size, const std::string& randomness, std::string api) {
    return std::make_unique<PyLayer>(LayerKind::Vmap, batch_size, parseRandomness(randomness),
                                     std::move(api));
  });
  m.def("_grad_level", [](std::string api) {
    return std::make_unique<PyLayer>(LayerKind::Grad, 0, Randomness::Error, std::move(api));
  });
  m.def("_jvp_level", [](std::string api) {
    return std::make_unique<PyLayer>(LayerKind::Jvp, 0, Randomness::Error, std::move(api));
  });
  m.attr("_built_torch_release") = kBuiltTorchRelease;
  m.def("_layer_depth", [] { return layerStack().size(); });
  m.def("_set_functionalize_level", &setFunctionalizeLevel);

  m.def("_add_batch_dim", &addBatchDim);
  m.def("_remove_batch_dim", &removeBatchDim);
  m.def("_wrap_for_grad", &wrapForGrad);
  m.def("_unwrap_for_grad", &unwrapForGrad);
  m.def("_is_batched", [](const at::Tensor& t) { return asBatched(t) != nullptr; });
  m.def("_is_grad_wrapper", [](const at::Tensor& t) { return asGradWrapper(t) != nullptr; });
  m.def("_level_of", &levelOf);
  m.def("_vmap_info", &vmapInfo);
  // True while the router processes a grad/jvp level (Autograd is running an operator on its
  // wrappers): an autograd.Function applied there is part of that operator's autograd kernel.
  m.def("_in_grad_level_processing",
        [] { return c10::impl::tls_is_dispatch_key_excluded(kRouterKey); });
  m.def("_is_alive", [](const at::Tensor& t) {
    const LayerPtr* layer = layerOf(t);
    return layer != nullptr && (*layer)->alive.load();
  });
  m.def("_unwrap_batched", [](const at::Tensor& t) {
    auto* b = asBatched(t);
    TORCH_CHECK(b != nullptr, "functorch_lite: not a batched tensor");
    return py::make_tuple(b->value(), b->bdim());
  });
  m.def("_unwrap_grad_wrapper", [](const at::Tensor& t) {
    auto* w = asGradWrapper(t);
    TORCH_CHECK(w != nullptr, "functorch_lite: not a grad wrapper");
    return w->value();
  });

  m.def("_set_vmap_fallback_enabled", &setFallbackEnabled);
  m.def("_is_vmap_fallback_enabled", &isFallbackEnabled);
  m.def("_set_vmap_fallback_warning_enabled", &setFallbackWarningEnabled);
  m.def("_is_vmap_fallback_warning_enabled", &isFallbackWarningEnabled);
  m.def("_set_fallback_counting", &setFallbackCounting);
  m.def("_fallback_counts", &fallbackCounts);
  m.def("_reset_fallback_counts", &resetFallbackCounts);

  py::class_<PyPool>(m, "_MemoryPool")
      .def(py::init<>())
      .def("__enter__", &PyPool::enter)
      .def("__exit__", &PyPool::exit);
  m.def("_memory_pool_stats", &poolStatsDict);
  m.def("_set_python_vmap_rule_handler", [](py::object handler) {
    pythonRuleHandler() = std::move(handler);
    setPythonRuleHook(&runPythonRule);
  });
  m.def("_set_memory_pool_limit", &setPoolLimit);
  m.def("_set_memory_pool_enabled", [](const std::string& scope, bool enabled) {
    setPoolEnabled(parsePoolScope(scope), enabled);
  });
  m.def("_is_memory_pool_enabled",
        [](const std::string& scope) { return isPoolEnabled(parsePoolScope(scope)); });
  m.def("_empty_memory_pool", &emptyPool);
}
