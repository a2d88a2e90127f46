// Shared pieces of the libFuzzer targets: a scratch file the file-based
// loaders can read, and the rule every target checks: bad input ends in a
// clear error (InputError, which names the file and position), never in a
// crash, a sanitizer report or any other exception escaping.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>

#include <modevisor/api/guest_memory.hpp>

#include "common/errors.hpp"

namespace modevisor::fuzz {

// One file per fuzzing process, rewritten for every input.  It lives in a
// private folder so relative paths in the YAML resolve somewhere harmless.
class ScratchFile {
 public:
  explicit ScratchFile(const std::string& name) {
    const char* tmp = std::getenv("TMPDIR");
    folder_ = std::filesystem::path(tmp && *tmp ? tmp : "/tmp") /
              ("modevisor-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(folder_);
    path_ = folder_ / name;
  }
  ~ScratchFile() {
    std::error_code ec;
    std::filesystem::remove_all(folder_, ec);
  }
  const std::filesystem::path& write(std::span<const std::uint8_t> bytes) {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    return path_;
  }
  const std::filesystem::path& folder() const { return folder_; }

 private:
  std::filesystem::path folder_, path_;
};

// Runs `parse`; an InputError is the expected answer to bad input.  Any other
// exception escapes to libFuzzer, which reports it as a crash: a bad file
// must never surface as yaml-cpp's, the standard library's or an allocator's
// exception.  An InputError must say something.
template <typename F>
void expect_clear_error(F&& parse) {
  try {
    parse();
  } catch (const host::InputError& e) {
    if (std::string(e.what()).empty()) {
      std::fprintf(stderr, "fuzz: an InputError with an empty message\n");
      std::abort();
    }
  }
}

// Guest RAM with an inaccessible guard region on each side: a loader or
// engine that writes (or reads) past guest RAM faults at once instead of
// silently touching whatever the host has mapped next to it.
class GuardedRam final : public api::GuestMemory {
 public:
  static constexpr std::size_t kGuard = 1u << 20;
  explicit GuardedRam(std::uint64_t bytes) : size_(bytes) {
    fd_ = ::memfd_create("fuzz-ram", MFD_CLOEXEC);
    if (fd_ < 0 || ::ftruncate(fd_, static_cast<off_t>(bytes)) != 0) std::abort();
    void* area = ::mmap(nullptr, bytes + 2 * kGuard, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (area == MAP_FAILED) std::abort();
    area_ = static_cast<std::uint8_t*>(area);
    base_ = area_ + kGuard;
    if (::mmap(base_, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd_, 0) == MAP_FAILED) std::abort();
  }
  ~GuardedRam() override {
    ::munmap(area_, size_ + 2 * kGuard);
    ::close(fd_);
  }
  GuardedRam(const GuardedRam&) = delete;
  GuardedRam& operator=(const GuardedRam&) = delete;
  std::uint8_t* host_base() override { return base_; }
  std::uint64_t size() const override { return size_; }
  int fd() const override { return fd_; }
  void mark_dirty(std::uint64_t, std::uint64_t) override {}

 private:
  std::uint64_t size_;
  int fd_ = -1;
  std::uint8_t* area_ = nullptr;
  std::uint8_t* base_ = nullptr;
};

// Little-endian field reader for the targets that split their input.
struct Reader {
  std::span<const std::uint8_t> in;
  std::uint32_t u(unsigned bytes) {
    std::uint32_t v = 0;
    for (unsigned i = 0; i < bytes && !in.empty(); ++i) {
      v |= static_cast<std::uint32_t>(in[0]) << (8 * i);
      in = in.subspan(1);
    }
    return v;
  }
  std::span<const std::uint8_t> take(std::size_t n) {
    n = n < in.size() ? n : in.size();
    auto head = in.subspan(0, n);
    in = in.subspan(n);
    return head;
  }
};

// A target's LLVMFuzzerInitialize for seeds made by code: with
// MODEVISOR_FUZZ_WRITE_SEEDS=DIR (scripts/fuzz.sh), `write` fills DIR and the
// process ends; otherwise fuzzing goes on.
inline int write_seeds_when_asked(void (*write)(const std::string& dir)) {
  if (const char* dir = std::getenv("MODEVISOR_FUZZ_WRITE_SEEDS")) {
    write(dir);
    std::exit(0);
  }
  return 0;
}

}  // namespace modevisor::fuzz
