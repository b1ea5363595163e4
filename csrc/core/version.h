// The torch versions functorch_lite builds against, and every difference between them.
#pragma once

#include <torch/headeronly/version.h>

// NOTE: [Supported torch versions]
// The extension is built and tested against torch 2.13 and 2.14 (setup.py refuses others; CI
// runs the suite on 2.13.0 and 2.14.1). Where their C++ APIs differ, the difference is decided
// here, with FUNCTORCH_LITE_TORCH_AT_LEAST, and code elsewhere uses what this header defines
// instead of testing TORCH_VERSION_* itself. Today the two differ only in the language their
// headers need (C++20 from 2.14 on; setup.py compiles both as C++20).
// Operators new in 2.14 (linalg_matrix_sqrth, linalg_polar) need no guard where they are only
// named: batching rules are registered by operator name (RuleTable) and looked up when an
// operator reaches a vmap level, so on 2.13 their names match nothing. Code that calls such an
// operator through its at:: function (whose header 2.13 lacks) goes under
// FUNCTORCH_LITE_TORCH_AT_LEAST(2, 14).
#define FUNCTORCH_LITE_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

static_assert(FUNCTORCH_LITE_TORCH_AT_LEAST(2, 13), "functorch_lite needs torch 2.13 or newer");

namespace functorch_lite {

#define FUNCTORCH_LITE_STRINGIFY_(x) #x
#define FUNCTORCH_LITE_STRINGIFY(x) FUNCTORCH_LITE_STRINGIFY_(x)

// "MAJOR.MINOR" of the torch whose headers the extension was compiled with; the package checks
// it against the torch it runs with (functorch_lite/__init__.py).
inline constexpr const char* kBuiltTorchRelease =
    FUNCTORCH_LITE_STRINGIFY(TORCH_VERSION_MAJOR) "." FUNCTORCH_LITE_STRINGIFY(TORCH_VERSION_MINOR);

}  // namespace functorch_lite
