#include "platform/guest_ram.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

namespace modevisor::host {

GuestRam::GuestRam(std::uint64_t bytes) : size_(bytes) {
  fd_ = ::memfd_create("modevisor-guest-ram", MFD_CLOEXEC);
  if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "memfd_create for guest RAM");
  if (::ftruncate(fd_, static_cast<off_t>(bytes)) != 0) {
    int err = errno;
    ::close(fd_);
    throw std::system_error(err, std::generic_category(), "sizing guest RAM");
  }
  void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd_, 0);
  if (base == MAP_FAILED) {
    int err = errno;
    ::close(fd_);
    throw std::system_error(err, std::generic_category(), "mapping guest RAM");
  }
  base_ = static_cast<std::uint8_t*>(base);
  host_dirty_words_ = (bytes / 4096 + 63) / 64;
  host_dirty_ = std::make_unique<std::atomic<std::uint64_t>[]>(host_dirty_words_);  // zeroed
}

GuestRam::~GuestRam() {
  if (base_) ::munmap(base_, size_);
  if (fd_ >= 0) ::close(fd_);
}

void GuestRam::mark_dirty(std::uint64_t gpa, std::uint64_t length) {
  if (length == 0 || gpa >= size_) return;
  const std::uint64_t last = std::min(gpa + length, size_) - 1;
  for (std::uint64_t page = gpa / 4096; page <= last / 4096; ++page)
    host_dirty_[page / 64].fetch_or(1ull << (page % 64), std::memory_order_acq_rel);
}

std::vector<std::uint64_t> GuestRam::take_host_dirty() {
  std::vector<std::uint64_t> out(host_dirty_words_, 0);
  for (std::size_t i = 0; i < host_dirty_words_; ++i) out[i] = host_dirty_[i].exchange(0, std::memory_order_acq_rel);
  return out;
}

}  // namespace modevisor::host
