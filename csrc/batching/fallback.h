// The boxed for-loop fallback for operators without a batching rule, and its switches.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <map>
#include <string>

#include "core/layer.h"

namespace functorch_lite {

void vmapFallback(const c10::OperatorHandle& op, torch::jit::Stack* stack, const LayerPtr& layer);

void setFallbackEnabled(bool enabled);
bool isFallbackEnabled();
void setFallbackWarningEnabled(bool enabled);
bool isFallbackWarningEnabled();

// Counting which operators went through the fallback, and how often.
void setFallbackCounting(bool enabled);
std::map<std::string, int64_t> fallbackCounts();
void resetFallbackCounts();

}  // namespace functorch_lite
