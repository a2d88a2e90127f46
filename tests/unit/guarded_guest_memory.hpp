// Guest RAM for loader tests with a large inaccessible guard after it: a
// loader that writes past the end of guest RAM crashes the test instead of
// silently corrupting whatever the host has mapped there.
#pragma once

#include <sys/mman.h>

#include <cstdint>
#include <stdexcept>

#include <modevisor/api/guest_memory.hpp>

namespace modevisor::host {

class GuardedGuestMemory final : public api::GuestMemory {
 public:
  static constexpr std::uint64_t kGuard = 256ull << 20;
  explicit GuardedGuestMemory(std::uint64_t bytes) : size_(bytes) {
    void* p = ::mmap(nullptr, bytes + kGuard, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("cannot reserve test guest RAM");
    base_ = static_cast<std::uint8_t*>(p);
    if (::mprotect(base_, bytes, PROT_READ | PROT_WRITE) != 0) throw std::runtime_error("mprotect");
  }
  ~GuardedGuestMemory() override { ::munmap(base_, size_ + kGuard); }
  GuardedGuestMemory(const GuardedGuestMemory&) = delete;
  GuardedGuestMemory& operator=(const GuardedGuestMemory&) = delete;

  std::uint8_t* host_base() override { return base_; }
  std::uint64_t size() const override { return size_; }
  int fd() const override { return -1; }
  void mark_dirty(std::uint64_t gpa, std::uint64_t length) override {
    if (gpa + length > size_ || gpa + length < gpa) throw std::logic_error("marked dirty beyond guest RAM");
  }

 private:
  std::uint8_t* base_ = nullptr;
  std::uint64_t size_ = 0;
};

}  // namespace modevisor::host
