// Guest RAM: one memfd mapped once in the monitor process.  The fd lets a
// translator map guest pages into shadow address spaces and a driver register
// the same pages as a KVM memory slot, and it is what migration sends.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include <modevisor/api/guest_memory.hpp>

namespace modevisor::host {

class GuestRam final : public api::GuestMemory {
 public:
  explicit GuestRam(std::uint64_t bytes);  // throws std::system_error
  ~GuestRam() override;
  GuestRam(const GuestRam&) = delete;
  GuestRam& operator=(const GuestRam&) = delete;

  std::uint8_t* host_base() override { return base_; }
  std::uint64_t size() const override { return size_; }
  int fd() const override { return fd_; }
  // Any thread; call it after the write (see api::GuestMemory::mark_dirty).
  void mark_dirty(std::uint64_t gpa, std::uint64_t length) override;

  // Pages the host itself wrote (loader, devices) since the last call; one
  // bit per 4 KiB page.  Each word is taken with an atomic exchange, so a
  // mark_dirty racing with it lands in this result or in the next one.
  std::vector<std::uint64_t> take_host_dirty();

 private:
  int fd_ = -1;
  std::uint8_t* base_ = nullptr;
  std::uint64_t size_ = 0;
  std::size_t host_dirty_words_ = 0;
  std::unique_ptr<std::atomic<std::uint64_t>[]> host_dirty_;
};

}  // namespace modevisor::host
