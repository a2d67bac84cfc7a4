// A caching CPU allocator for inference, installed only while a forward runs (vitsuite native ops).
//
// Why: glibc serves large blocks (a 128 x 128 x 96 float map is 6 MB) with mmap, or from the heap top that
// it trims again after the free, so every forward re-faults its large temporaries page by page: on the VMs
// of docs/models.md ~30 000 minor faults (~4 us each with the kernel zeroing the page) per DRSformer
// forward, ~8 % of its time. PyTorch has no CPU caching allocator outside its mobile build, so this one
// keeps freed large blocks by exact size and hands them out again; a forward of the same shapes then
// allocates no new pages. Small blocks go to the allocator it replaced.
//
// Operators (namespace vitsuite_native):
//   cpu_cache_enter() -> bool    install (nesting counted; False when another allocator of higher priority
//                                is registered, then nothing changes)
//   cpu_cache_exit()             uninstall when the outermost scope ends (cached blocks stay for the next)
//   cpu_cache_stats() -> int[]   [cached bytes, live bytes, hits, misses, installed depth]
//   cpu_cache_empty()            free every cached block
//   cpu_cache_set_limit(bytes)   most bytes kept cached (blocks freed beyond it; default 2 GB)
// Blocks allocated inside a scope return to the cache whenever they are freed, inside or outside it.

#include <ATen/ATen.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kMinCached = 256 << 10;  // below this the system allocator is fast (no mmap / trim)
constexpr size_t kAlign = 64;
constexpr size_t kRound = 4096;           // sizes rounded to pages: equal shapes share blocks

struct CachingCPUAllocator final : public c10::Allocator {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;  // rounded size -> blocks
  std::unordered_map<void*, size_t> live;                      // block -> rounded size
  c10::Allocator* previous = nullptr;
  int64_t depth = 0, hits = 0, misses = 0;
  size_t cached = 0, live_bytes = 0, limit = size_t(2) << 30;

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinCached) return previous->allocate(n);
    const size_t size = (n + kRound - 1) / kRound * kRound;
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> g(mu);
      auto it = free_blocks.find(size);
      if (it != free_blocks.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
        cached -= size;
        ++hits;
      } else {
        ++misses;
      }
    }
    if (p == nullptr) {
      p = std::aligned_alloc(kAlign, size);
      if (p == nullptr) {  // out of memory: give the cache back and retry once
        empty();
        p = std::aligned_alloc(kAlign, size);
      }
      TORCH_CHECK(p != nullptr, "vitsuite cpu cache: out of memory allocating ", size, " bytes");
    }
    {
      std::lock_guard<std::mutex> g(mu);
      live[p] = size;
      live_bytes += size;
    }
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  static void release(void* p);

  void give_back(void* p) {
    enum { kCached, kFree, kForeign } fate = kFree;
    {
      std::lock_guard<std::mutex> g(mu);
      auto it = live.find(p);
      if (it == live.end()) {
        fate = kForeign;
      } else {
        const size_t size = it->second;
        live.erase(it);
        live_bytes -= size;
        if (cached + size <= limit) {
          free_blocks[size].push_back(p);
          cached += size;
          fate = kCached;
        }
      }
    }
    if (fate == kFree) {
      std::free(p);
    } else if (fate == kForeign) {
      // A block of the replaced allocator freed through raw_deallocate while this one is installed
      // (oneDNN allocates and frees its scratch memory through whichever CPU allocator is current).
      c10::DeleterFnPtr d = previous ? previous->raw_deleter() : nullptr;
      if (d) d(p); else std::free(p);
    }
  }

  void empty() {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> g(mu);
      for (auto& kv : free_blocks)
        for (void* p : kv.second) drop.push_back(p);
      free_blocks.clear();
      cached = 0;
    }
    for (void* p : drop) std::free(p);
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

CachingCPUAllocator& instance() {
  static auto* a = new CachingCPUAllocator();  // never destroyed: blocks may be freed at interpreter exit
  return *a;
}

void CachingCPUAllocator::release(void* p) { instance().give_back(p); }

bool cpu_cache_enter() {
  auto& a = instance();
  std::lock_guard<std::mutex> g(a.mu);
  if (a.depth == 0) {
    c10::Allocator* current = c10::GetCPUAllocator();
    if (current != &a) a.previous = current;
    c10::SetCPUAllocator(&a, /*priority=*/0);
    if (c10::GetCPUAllocator() != &a) return false;  // a higher-priority allocator is registered
  }
  ++a.depth;
  return true;
}

void cpu_cache_exit() {
  auto& a = instance();
  std::lock_guard<std::mutex> g(a.mu);
  TORCH_CHECK(a.depth > 0, "cpu_cache_exit without cpu_cache_enter");
  if (--a.depth == 0) c10::SetCPUAllocator(a.previous, /*priority=*/0);
}

std::vector<int64_t> cpu_cache_stats() {
  auto& a = instance();
  std::lock_guard<std::mutex> g(a.mu);
  return {int64_t(a.cached), int64_t(a.live_bytes), a.hits, a.misses, a.depth};
}

void cpu_cache_empty() { instance().empty(); }

void cpu_cache_set_limit(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "cpu_cache_set_limit: bytes must be >= 0");
  auto& a = instance();
  {
    std::lock_guard<std::mutex> g(a.mu);
    a.limit = size_t(bytes);
  }
  a.empty();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vitsuite_native, m) {
  m.def("cpu_cache_enter() -> bool", &cpu_cache_enter);
  m.def("cpu_cache_exit() -> ()", &cpu_cache_exit);
  m.def("cpu_cache_stats() -> int[]", &cpu_cache_stats);
  m.def("cpu_cache_empty() -> ()", &cpu_cache_empty);
  m.def("cpu_cache_set_limit(int bytes) -> ()", &cpu_cache_set_limit);
}
