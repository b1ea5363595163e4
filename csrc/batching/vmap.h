// Processing a vmap level: the batching rule, a decomposition, a rule registered from Python
// (torch.library.register_vmap), or the for-loop fallback.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include "core/layer.h"

namespace functorch_lite {

void processVmapLevel(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                      const LayerPtr& layer);

// NOTE: [Vmap rules registered from Python]
// A custom operator (torch.library.custom_op) may carry a vmap rule registered with
// torch.library.register_vmap. An operator with neither a C++ rule nor a decomposition is offered
// to the Python hook before the fallback: the hook (installed by functorch_lite._custom_ops)
// runs the registered rule on the physical arguments and returns true, or returns false and
// leaves the stack alone when the operator has no such rule.
using PythonRuleHook = bool (*)(const c10::OperatorHandle&, torch::jit::Stack*, const LayerPtr&);
void setPythonRuleHook(PythonRuleHook hook);

}  // namespace functorch_lite
