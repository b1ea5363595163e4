// Processing a vmap level: the batching rule, a decomposition, or the for-loop fallback.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include "core/layer.h"

namespace functorch_lite {

void processVmapLevel(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                      const LayerPtr& layer);

}  // namespace functorch_lite
