// DR7's breakpoints (SDM 17.2): which of DR0-DR3 is enabled (Ln or Gn), for
// what (R/Wn: instruction, data write, I/O, data read/write) and how long
// (LENn).  Instruction breakpoints are the translator's (a block never runs
// across one: see CodeBreakpoints); I/O breakpoints the emulator's (all port
// I/O is emulated); data breakpoints the shadow MMU's and the emulator's
// (DataBreakpoints).
#pragma once

#include <array>
#include <cstdint>

namespace modevisor::bt {

enum class BreakpointKind : std::uint8_t { Instruction = 0, DataWrite = 1, Io = 2, DataReadWrite = 3 };

namespace debug_registers {

constexpr std::uint64_t kDr6Fixed = 0xffff0ff0;  // what DR6 reads as with no condition recorded
constexpr std::uint64_t kDr7Fixed = 0x400;
constexpr std::uint64_t kDr6TaskSwitch = 0x8000;  // BT: the incoming TSS's T bit
constexpr std::uint64_t kDr7LocalEnables = 0x55;  // L0-L3: cleared by a task switch
constexpr std::uint64_t kDr7GeneralDetect = 1u << 13;  // GD: a MOV DRn is a #DB fault (cleared by #DB entry)
constexpr std::uint64_t kDr6GeneralDetect = 1u << 13;  // BD: that #DB's status bit
constexpr std::uint32_t kCr4De = 1u << 3;         // debugging extensions: I/O breakpoints, DR4/DR5 #UD

inline bool enabled(std::uint64_t dr7, unsigned i) { return (dr7 >> (2 * i)) & 3; }
inline BreakpointKind kind(std::uint64_t dr7, unsigned i) {
  return static_cast<BreakpointKind>((dr7 >> (16 + 4 * i)) & 3);
}
// LENn: 1, 2, 8 (undefined outside 64-bit mode; QEMU takes 8 too), 4 bytes.
inline std::uint32_t length(std::uint64_t dr7, unsigned i) {
  constexpr std::uint32_t kLen[4] = {1, 2, 8, 4};
  return kLen[(dr7 >> (18 + 4 * i)) & 3];
}

// DR6's B0-B3 for an IN/OUT of `size` bytes at `port`: the enabled I/O
// breakpoints whose ports overlap it (CR4.DE set; without it R/W 10 is
// undefined and nothing matches).
inline unsigned io_hits(const std::array<std::uint64_t, 8>& dr, std::uint32_t cr4, std::uint16_t port,
                        unsigned size) {
  if (!(cr4 & kCr4De)) return 0;
  unsigned hits = 0;
  for (unsigned i = 0; i < 4; ++i) {
    if (!enabled(dr[7], i) || kind(dr[7], i) != BreakpointKind::Io) continue;
    const std::uint64_t first = dr[i] & 0xffff, last = first + length(dr[7], i) - 1;
    if (std::uint64_t{port} + size - 1 >= first && port <= last) hits |= 1u << i;
  }
  return hits;
}

}  // namespace debug_registers

// The enabled data breakpoints: DRn's address with its low bits cleared to
// LENn's alignment (the range the hardware compares), hit by a write (R/W
// 01) or any access but a fetch (R/W 11) that overlaps it.  The shadow MMU
// keeps their pages unmapped, so every access to them is the monitor's.
struct DataBreakpoints {
  std::array<std::uint32_t, 4> first{};
  std::array<std::uint32_t, 4> length{};
  unsigned enabled = 0;     // bit i: DRi is an enabled data breakpoint
  unsigned writes_only = 0;  // bit i: R/W 01

  static DataBreakpoints from(const std::array<std::uint64_t, 8>& dr) {
    DataBreakpoints d;
    for (unsigned i = 0; i < 4; ++i) {
      const BreakpointKind k = debug_registers::kind(dr[7], i);
      if (!debug_registers::enabled(dr[7], i) || (k != BreakpointKind::DataWrite && k != BreakpointKind::DataReadWrite))
        continue;
      d.enabled |= 1u << i;
      if (k == BreakpointKind::DataWrite) d.writes_only |= 1u << i;
      d.length[i] = debug_registers::length(dr[7], i);
      d.first[i] = static_cast<std::uint32_t>(dr[i]) & ~(d.length[i] - 1);
    }
    return d;
  }
  bool any() const { return enabled != 0; }
  // DR6's B0-B3 for an access of `size` bytes at `la`.
  unsigned hits(std::uint32_t la, unsigned size, bool write) const {
    unsigned h = 0;
    for (unsigned i = 0; i < 4; ++i) {
      if (!(enabled >> i & 1) || (!write && (writes_only >> i & 1))) continue;
      const std::uint64_t a = la, b = std::uint64_t{la} + size, c = first[i], d = std::uint64_t{first[i]} + length[i];
      if (a < d && c < b) h |= 1u << i;
    }
    return h;
  }
  // The linear pages the ranges touch (at most 8), for the shadow MMU.
  unsigned pages(std::uint32_t (&out)[8]) const {
    unsigned n = 0;
    auto add = [&](std::uint32_t page) {
      for (unsigned j = 0; j < n; ++j)
        if (out[j] == page) return;
      out[n++] = page;
    };
    for (unsigned i = 0; i < 4; ++i) {
      if (!(enabled >> i & 1)) continue;
      add(first[i] & ~0xfffu);
      add((first[i] + length[i] - 1) & ~0xfffu);
    }
    return n;
  }
  bool operator==(const DataBreakpoints&) const = default;
};

// The enabled instruction breakpoints, as the translator needs them: a
// block ends before an instruction at one of these linear addresses, and a
// block that starts at one is a breakpoint block (its entry leaves for the
// dispatcher, which raises the #DB fault or, with EFLAGS.RF, runs the
// instruction once on its own).
struct CodeBreakpoints {
  std::array<std::uint32_t, 4> address{};
  unsigned enabled = 0;  // bit i: DRi is an enabled instruction breakpoint

  static CodeBreakpoints from(const std::array<std::uint64_t, 8>& dr) {
    CodeBreakpoints c;
    for (unsigned i = 0; i < 4; ++i) {
      if (!debug_registers::enabled(dr[7], i) || debug_registers::kind(dr[7], i) != BreakpointKind::Instruction)
        continue;
      c.enabled |= 1u << i;
      c.address[i] = static_cast<std::uint32_t>(dr[i]);
    }
    return c;
  }
  bool any() const { return enabled != 0; }
  bool at(std::uint32_t linear) const {
    for (unsigned i = 0; i < 4; ++i)
      if ((enabled >> i & 1) && address[i] == linear) return true;
    return false;
  }
  // DR6's B0-B3 when the instruction at `linear` is reached: every DRn of
  // the instruction kind at that address, enabled or not (the hardware may
  // report those too, QEMU does).
  static unsigned hits(const std::array<std::uint64_t, 8>& dr, std::uint32_t linear) {
    unsigned h = 0;
    for (unsigned i = 0; i < 4; ++i)
      if (debug_registers::kind(dr[7], i) == BreakpointKind::Instruction && static_cast<std::uint32_t>(dr[i]) == linear)
        h |= 1u << i;
    return h;
  }
  bool operator==(const CodeBreakpoints&) const = default;
};

}  // namespace modevisor::bt
