// Every dispatch key functorch_lite claims, named once (see NOTE: [Claimed dispatch keys]).
#pragma once

#include <c10/core/DispatchKey.h>
#include <c10/core/DispatchKeySet.h>

namespace functorch_lite {

// NOTE: [Claimed dispatch keys]
// PyTorch's DispatchKey enum is closed, so an extension can only claim keys that core leaves
// unused. Every key the project uses is named here and nowhere else, so a future torch with
// proper extension keys is a one-file change.
//
// - kRouterKey: the tensor key on every functorch_lite wrapper. It sits above Autograd and above
//   torch's own functorch keys, and torch registers no kernels for it. Its fallback (router.cpp)
//   finds the highest live level among an operator's arguments and processes that level.
// - kModeKey: a TLS-included mode key while any level is live. It sees operators without wrapper
//   arguments: factory functions (wrapped at the live grad levels) and random operators (vmap
//   randomness).
// - kUnwrapKey: the "below autograd" key of grad/jvp wrappers. A wrapper's key set is
//   {kRouterKey, ADInplaceOrView, AutogradPrivateUse3, PrivateUse3}: autograd records on the
//   wrapper, then the per-operator kernel on kUnwrapKey (unwrap.cpp) unwraps one level and calls
//   the operator again one level down.
// - kSubclassLikeKeys (Python, PythonTLSSnapshot): carried by every wrapper and never dispatched
//   to, so that ATen treats wrappers as tensor subclasses (NOTE: [Wrappers are
//   tensor-subclass-like] in wrappers.cpp).
constexpr c10::DispatchKey kRouterKey = c10::DispatchKey::TESTING_ONLY_GenericWrapper;
constexpr c10::DispatchKey kModeKey = c10::DispatchKey::TESTING_ONLY_GenericMode;
constexpr c10::DispatchKey kUnwrapKey = c10::DispatchKey::PrivateUse3;
constexpr c10::BackendComponent kUnwrapBackend = c10::BackendComponent::PrivateUse3Bit;
constexpr c10::DispatchKeySet kSubclassLikeKeys = c10::python_ks;

}  // namespace functorch_lite
