// The CPU allocator behind the memory pool of compiled graphs.
#include "compile/pool.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <atomic>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace functorch_lite {
namespace {

// See NOTE: [The memory pool of compiled graphs].
thread_local int pool_depth = 0;
std::atomic<bool> pool_enabled{true};

constexpr size_t kPageBytes = 4096;

size_t roundUp(size_t n) { return (n + kPageBytes - 1) / kPageBytes * kPageBytes; }

class PoolAllocator final : public c10::Allocator {
 public:
  explicit PoolAllocator(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(size_t n) override {
    if (pool_depth == 0 || n < kPoolMinBytes || !pool_enabled.load(std::memory_order_relaxed)) {
      return base_->allocate(n);
    }
    size_t size = roundUp(n);
    void* ptr = take(size);
    if (ptr == nullptr) ptr = c10::alloc_cpu(size);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      used_[ptr] = size;
      used_bytes_ += size;
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
    return {free_bytes_, used_bytes_, reused_, allocated_, limit_bytes_,
            c10::GetCPUAllocator() == this};
  }

  void setLimit(int64_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    limit_bytes_ = bytes;
    trim();
  }

  void empty() {
    std::lock_guard<std::mutex> lock(mutex_);
    auto limit = limit_bytes_;
    limit_bytes_ = 0;
    trim();
    limit_bytes_ = limit;
  }

 private:
  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.find(size);
    if (it == free_.end() || it->second.empty()) {
      allocated_++;
      return nullptr;
    }
    void* ptr = it->second.back();
    it->second.pop_back();
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
    free_[size].push_back(ptr);
    free_bytes_ += size;
    trim();
    return true;
  }

  // Frees free blocks until their bytes are within the limit.
  void trim() {
    for (auto it = free_.begin(); free_bytes_ > limit_bytes_ && it != free_.end(); ++it) {
      while (!it->second.empty() && free_bytes_ > limit_bytes_) {
        c10::free_cpu(it->second.back());
        it->second.pop_back();
        free_bytes_ -= it->first;
      }
    }
  }

  c10::Allocator* base_;
  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  std::unordered_map<void*, size_t> used_;
  int64_t free_bytes_ = 0;
  int64_t used_bytes_ = 0;
  int64_t reused_ = 0;
  int64_t allocated_ = 0;
  int64_t limit_bytes_ = int64_t{1} << 30;
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

}  // namespace

PoolGuard::PoolGuard() {
  pool();
  pool_depth++;
}

PoolGuard::~PoolGuard() { pool_depth--; }

PoolStats poolStats() { return pool().stats(); }
void setPoolLimit(int64_t bytes) { pool().setLimit(bytes); }
void setPoolEnabled(bool enabled) { pool_enabled = enabled; }
bool isPoolEnabled() { return pool_enabled; }
void emptyPool() { pool().empty(); }

}  // namespace functorch_lite
