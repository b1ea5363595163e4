// Registers the router fallback (kRouterKey) and the mode key's fallthrough.
#pragma once

#include <cstdint>

namespace functorch_lite {

void registerRouter();

// The highest level that was live when the running functionalize was entered (-1: none), so
// that factory functions are wrapped in the order of the transforms (NOTE: [Factory functions
// inside functionalize] in router.cpp). Returns the previous value.
int64_t setFunctionalizeLevel(int64_t level);

}  // namespace functorch_lite
