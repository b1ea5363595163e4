// Registers the router fallback (kRouterKey) and the mode key's fallthrough.
#pragma once

namespace functorch_lite {

void registerRouter();

}  // namespace functorch_lite
