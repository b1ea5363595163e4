// The thread-local stack of live transform layers, pushed and popped only through LayerGuard.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "compile/pool.h"

namespace functorch_lite {

enum class LayerKind { Vmap, Grad, Jvp };
enum class Randomness { Error, Same, Different };

// NOTE: [Levels live on tensors]
// Each live transform is a Layer on a thread-local stack, but every wrapper also holds a
// shared_ptr to its Layer. The router routes by the layers it finds on an operator's tensors
// (the highest live level wins, like JAX's top trace), never by the stack, so backward passes
// that the autograd engine runs on another thread still route correctly. The stack only gives
// out level numbers and configuration; `alive` turns false when the layer is popped, which is
// how an escaped wrapper is recognised.
struct Layer {
  int64_t level;
  LayerKind kind;
  int64_t batch_size;       // vmap only
  Randomness randomness;    // vmap only
  bool prev_grad_mode;      // grad mode to restore below this layer
  bool prev_fwd_grad_mode;  // forward-grad mode to restore below this layer
  std::string api;          // the API the user called ("vmap", "grad", "jacrev", ...), for errors
  std::atomic<bool> alive{true};
};
using LayerPtr = std::shared_ptr<Layer>;

// The live layers of this thread, innermost last.
const std::vector<LayerPtr>& layerStack();

// Pushes a layer on construction and pops it (marking it dead) on destruction, so an exception
// can never leave a stale level behind. While it lives, large CPU allocations of this thread come
// from the memory pool (NOTE: [Eager transforms allocate from the pool]).
class LayerGuard {
 public:
  LayerGuard(LayerKind kind, int64_t batch_size, Randomness randomness, std::string api);
  ~LayerGuard();
  LayerGuard(const LayerGuard&) = delete;
  LayerGuard& operator=(const LayerGuard&) = delete;

  const LayerPtr& layer() const { return layer_; }

 private:
  PoolGuard pool_{PoolScope::Transforms};
  LayerPtr layer_;
};

// NOTE: [The level being processed]
// While the router processes level L (a batching rule, or autograd at a grad level) and while
// the unwrap kernel calls one level down, the operators called belong to levels below L (or to
// L itself at a grad level). Factory functions (torch.zeros, ...) are wrapped only at the grad
// levels below this bound, so tensors made inside a rule never reach a level above it.
int64_t processingBound();

class ProcessingGuard {
 public:
  explicit ProcessingGuard(int64_t bound);
  ~ProcessingGuard();
  ProcessingGuard(const ProcessingGuard&) = delete;
  ProcessingGuard& operator=(const ProcessingGuard&) = delete;

 private:
  int64_t saved_;
};

}  // namespace functorch_lite
