// The per-operator kernel that unwraps one grad/jvp level below autograd.
#pragma once

#include <c10/core/impl/LocalDispatchKeySet.h>

namespace functorch_lite {

// Registers the unwrap kernel for operators defined since the last call (see
// NOTE: [Registering the unwrap kernel]). Cheap when there is nothing pending.
void registerPendingUnwrapKernels();

// The TLS dispatch state the router saw when it entered a grad/jvp level; the unwrap kernel
// restores it to call one level down. Push/pop only through this guard.
class SavedDispatchState {
 public:
  SavedDispatchState();
  ~SavedDispatchState();
};

}  // namespace functorch_lite
