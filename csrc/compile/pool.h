// The memory pool of compiled graphs: large CPU allocations recycled instead of unmapped.
#pragma once

#include <cstddef>
#include <cstdint>

namespace functorch_lite {

// NOTE: [The memory pool of compiled graphs]
// A compiled per-sample-gradient graph writes large fresh outputs on every call (64 x 512 x 784
// floats for the first weight of an MLP). glibc serves allocations this large with mmap and
// returns them with munmap, so every call faults the pages in and has the kernel zero them
// again: for that MLP, about 45 of the 57 ms a call takes.
// While a compiled graph runs (PoolGuard, entered by the compile runtime), CPU allocations of
// at least kPoolMinBytes are served by the pool: a free block of the same rounded size is
// reused (mapped already, not zeroed; torch.empty promises no contents), else a new one is
// allocated. A pooled block returns to the pool when the last tensor using it dies, on any
// thread and inside a compiled graph or not; the pool keeps at most its limit in free blocks
// and frees the rest. Outputs are still fresh tensors: a block is reused only once nothing
// refers to it, which is the CUDA caching allocator's contract, on the CPU.
// The pool installs itself as the CPU allocator the first time a guard is entered and hands
// every other allocation to the allocator it replaced, at the cost of one thread-local read.
constexpr size_t kPoolMinBytes = size_t{128} << 10;

// Serves large CPU allocations of this thread from the pool while alive (nests).
class PoolGuard {
 public:
  PoolGuard();
  ~PoolGuard();
  PoolGuard(const PoolGuard&) = delete;
  PoolGuard& operator=(const PoolGuard&) = delete;
};

struct PoolStats {
  int64_t free_bytes;    // in free blocks, waiting to be reused
  int64_t used_bytes;    // in blocks that tensors hold
  int64_t reused;        // allocations served by a free block
  int64_t allocated;     // allocations that needed a new block
  int64_t limit_bytes;
  bool installed;        // false when another CPU allocator took precedence
};

PoolStats poolStats();
void setPoolLimit(int64_t bytes);
void setPoolEnabled(bool enabled);
bool isPoolEnabled();
void emptyPool();  // frees every free block

}  // namespace functorch_lite
