// The stand-in for an MMIO operand while the instruction that accesses it runs
// natively (emulate_mmio_native): the device's bytes are staged here, the
// instruction is translated with its memory operand redirected to the stage,
// and what it wrote goes back to the device.
//
// The stage is the start of a page of its own, between inaccessible guards of
// 1 MiB on each side, never a heap object: an instruction whose real footprint
// exceeds its operand (anything the emulator failed to recognise as such)
// faults in a guard, which the fault handler reports to the guest as #GP,
// instead of reading or writing the monitor's own memory.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>

namespace modevisor::bt {

class MmioStage {
 public:
  static constexpr std::size_t kBytes = 4096;         // room for the widest operand (FXSAVE's 512 bytes)
  static constexpr std::size_t kGuard = 1u << 20;

  MmioStage() {
    void* p = mmap(nullptr, kGuard + kBytes + kGuard, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("bt-swmmu: cannot map the MMIO stage");
    base_ = static_cast<std::uint8_t*>(p);
    if (mprotect(base_ + kGuard, kBytes, PROT_READ | PROT_WRITE) != 0) {
      munmap(base_, kGuard + kBytes + kGuard);
      throw std::runtime_error("bt-swmmu: cannot map the MMIO stage");
    }
  }
  ~MmioStage() { munmap(base_, kGuard + kBytes + kGuard); }
  MmioStage(const MmioStage&) = delete;
  MmioStage& operator=(const MmioStage&) = delete;

  std::uint8_t* data() const { return base_ + kGuard; }
  // Whether [p, p + n) lies inside the stage (for tests and assertions).
  bool contains(const void* p, std::size_t n) const {
    auto* b = static_cast<const std::uint8_t*>(p);
    return b >= data() && b + n <= data() + kBytes;
  }

 private:
  std::uint8_t* base_ = nullptr;
};

}  // namespace modevisor::bt
