// The CPU allocator behind the memory pool of compiled graphs and live transforms.
#include "compile/pool.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <mutex>
#include <map>
#include <unordered_map>

namespace functorch_lite {
namespace {

// See NOTE: [The memory pool of compiled graphs] and NOTE: [What the pool keeps].
thread_local int pool_depth = 0;
std::atomic<bool> compiled_enabled{true};
std::atomic<bool> transforms_enabled{true};

constexpr size_t kPageBytes = 4096;

size_t roundUp(size_t n) { return (n + kPageBytes - 1) / kPageBytes * kPageBytes; }

int64_t defaultLimit() {
  long pages = sysconf(_SC_PHYS_PAGES);
  long page_size = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return int64_t{1} << 30;
  return static_cast<int64_t>(pages) * page_size / 4;
}

class PoolAllocator final : public c10::Allocator {
 public:
  explicit PoolAllocator(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(size_t n) override {
    if (pool_depth == 0 || n < kPoolMinBytes) {
      return base_->allocate(n);
    }
    size_t size = roundUp(n);
    void* ptr = take(size);  // may be a larger block: size becomes its size
    if (ptr == nullptr) ptr = c10::alloc_cpu(size);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      used_[ptr] = size;
      used_bytes_ += size;
      peak_ = std::max(peak_, used_bytes_);
      trim();
    }
    c10::profiledCPUMemoryReporter().New(ptr, size);  // what the profiler sees, as by default
    return {ptr, ptr, &release, c10::Device(c10::kCPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // The deleter of every pooled block, and raw_deleter for memory the base allocator gave.
  static void release(void* ptr);

  PoolStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {free_bytes_, used_bytes_, std::max(peak_, prev_peak_), reused_, allocated_,
            limit_bytes_, c10::GetCPUAllocator() == this};
  }

  void setLimit(int64_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    limit_bytes_ = bytes;
    trim();
  }

  void empty() {
    std::lock_guard<std::mutex> lock(mutex_);
    while (free_bytes_ > 0) freeOldest();
  }

  // An outermost scope begins: the peak of the one before becomes the previous peak.
  void newWindow() {
    std::lock_guard<std::mutex> lock(mutex_);
    prev_peak_ = peak_;
    peak_ = used_bytes_;
    trim();
  }

 private:
  struct Block {
    void* ptr;
    uint64_t freed_at;  // when it became free, to free the oldest first
  };

  // The smallest free block of at least `size` bytes and at most 1.25 times that (the
  // most recently freed of its size: likeliest still in cache); size becomes the block's size.
  // Serving near sizes from one block keeps a loop whose sizes vary a little (inductor's buffers)
  // from needing a block per size, which the peak bound would churn through.
  void* take(size_t& size) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.lower_bound(size);
    if (it == free_.end() || it->first > size + size / 4) {
      allocated_++;
      return nullptr;
    }
    void* ptr = it->second.back().ptr;
    it->second.pop_back();
    size = it->first;
    if (it->second.empty()) free_.erase(it);
    free_bytes_ -= size;
    reused_++;
    return ptr;
  }

  // Returns true when ptr was a pooled block (now free or freed).
  bool giveBack(void* ptr) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = used_.find(ptr);
    if (it == used_.end()) return false;
    size_t size = it->second;
    used_.erase(it);
    used_bytes_ -= size;
    free_[size].push_back({ptr, clock_++});
    free_bytes_ += size;
    trim();
    return true;
  }

  // Frees the oldest free blocks until free_bytes_ is within the limit and the peak bound.
  void trim() {
    auto held_cap = static_cast<int64_t>(kHeldPerPeak * std::max(peak_, prev_peak_));
    int64_t bound = std::min(limit_bytes_, std::max<int64_t>(held_cap - used_bytes_, 0));
    while (free_bytes_ > bound) freeOldest();
  }

  void freeOldest() {
    auto oldest = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (!it->second.empty() &&
          (oldest == free_.end() || it->second.front().freed_at < oldest->second.front().freed_at)) {
        oldest = it;
      }
    }
    c10::free_cpu(oldest->second.front().ptr);
    oldest->second.pop_front();
    free_bytes_ -= oldest->first;
    if (oldest->second.empty()) free_.erase(oldest);
  }

  c10::Allocator* base_;
  std::mutex mutex_;
  std::map<size_t, std::deque<Block>> free_;  // by size, for best fit; no empty entries
  std::unordered_map<void*, size_t> used_;
  int64_t free_bytes_ = 0;
  int64_t used_bytes_ = 0;
  int64_t peak_ = 0;       // the most used_bytes_ since the current outermost scope began
  int64_t prev_peak_ = 0;  // ... in the one before
  uint64_t clock_ = 0;
  int64_t reused_ = 0;
  int64_t allocated_ = 0;
  int64_t limit_bytes_ = defaultLimit();
};

// Created on first use and never destroyed: tensors may free pooled blocks during exit.
PoolAllocator& pool() {
  static PoolAllocator* instance = [] {
    auto* p = new PoolAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(p, /*priority=*/0);
    return p;
  }();
  return *instance;
}

void PoolAllocator::release(void* ptr) {
  if (pool().giveBack(ptr)) {
    c10::profiledCPUMemoryReporter().Delete(ptr);
    return;
  }
  // Memory from the base allocator freed through raw_deleter.
  auto deleter = pool().base_->raw_deleter();
  if (deleter != nullptr) {
    deleter(ptr);
  } else {
    c10::free_cpu(ptr);
  }
}

std::atomic<bool>& enabledFlag(PoolScope scope) {
  return scope == PoolScope::Compiled ? compiled_enabled : transforms_enabled;
}

}  // namespace

PoolGuard::PoolGuard(PoolScope scope)
    : active_(enabledFlag(scope).load(std::memory_order_relaxed)) {
  if (!active_) return;
  if (pool_depth++ == 0) pool().newWindow();
}

PoolGuard::~PoolGuard() {
  if (active_) pool_depth--;
}

PoolStats poolStats() { return pool().stats(); }
void setPoolLimit(int64_t bytes) { pool().setLimit(bytes); }
void setPoolEnabled(PoolScope scope, bool enabled) { enabledFlag(scope) = enabled; }
bool isPoolEnabled(PoolScope scope) { return enabledFlag(scope); }
void emptyPool() { pool().empty(); }

}  // namespace functorch_lite
