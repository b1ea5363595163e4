// The memory pool: large CPU allocations of compiled graphs and live transforms recycled.
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
// thread and inside a compiled graph or not. Outputs are still fresh tensors: a block is reused
// only once nothing refers to it, which is the CUDA caching allocator's contract, on the CPU.
// The pool installs itself as the CPU allocator the first time a guard is entered and hands
// every other allocation to the allocator it replaced, at the cost of one thread-local read.
constexpr size_t kPoolMinBytes = size_t{128} << 10;

// NOTE: [Eager transforms allocate from the pool]
// Eager vmap(grad(f)) has the same cost: its per-sample gradients are as large as a compiled
// graph's, and faulting them in took most of an eager call too. So every live transform level
// (LayerGuard) is a pool scope as well, unless turned off with
// setPoolEnabled(PoolScope::Transforms, false). Nothing else changes: the contract above is the
// allocator's, whoever allocates.

// NOTE: [What the pool keeps]
// Free blocks cost resident memory that glibc would have returned. The pool bounds them twice:
//  - by the limit: at most limit_bytes in free blocks (a quarter of physical memory unless set);
//  - by the recent peak: free and used blocks together at most kHeldPerPeak times the most bytes
//    tensors held at once in the current or the previous outermost scope of any thread. A loop
//    that reuses its blocks keeps them; sizes that are no longer asked for are freed, oldest
//    first, once they push the pool past that bound, so a loop's peak resident memory stays
//    within kHeldPerPeak of what it would be without the pool. Why 1.5: a graph's buffers are
//    not all live at once, so its blocks add up to more than its peak (inductor's graph of the
//    MNIST CNN's per-sample gradients: about 1.3 times); at 1.2 the pool freed and remapped
//    some of them on every call, and the call took 2.7 times as long.
constexpr double kHeldPerPeak = 1.5;

enum class PoolScope { Compiled, Transforms };

// Serves large CPU allocations of this thread from the pool while alive (nests), when the pool
// is enabled for `scope` at construction.
class PoolGuard {
 public:
  explicit PoolGuard(PoolScope scope);
  ~PoolGuard();
  PoolGuard(const PoolGuard&) = delete;
  PoolGuard& operator=(const PoolGuard&) = delete;

 private:
  bool active_;
};

struct PoolStats {
  int64_t free_bytes;       // in free blocks, waiting to be reused
  int64_t used_bytes;       // in blocks that tensors hold
  int64_t peak_used_bytes;  // the most used_bytes in the current and the previous outermost scope
  int64_t reused;           // allocations served by a free block
  int64_t allocated;        // allocations that needed a new block
  int64_t limit_bytes;
  bool installed;           // false when another CPU allocator took precedence
};

PoolStats poolStats();
void setPoolLimit(int64_t bytes);
void setPoolEnabled(PoolScope scope, bool enabled);
bool isPoolEnabled(PoolScope scope);
void emptyPool();  // frees every free block

}  // namespace functorch_lite
