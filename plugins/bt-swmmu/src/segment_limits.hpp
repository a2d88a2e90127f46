// Segment limits and access rights for data accesses (SDM Vol. 3 3.4.5,
// 5.3, 5.5): which offsets of a segment a read or a write may use.  Pure
// rules of the hidden segment register; the translator checks them inline
// (from the windows in the Context) and the monitor's emulation calls them.
#pragma once

#include <modevisor/api/arch_state.hpp>

#include <cstdint>

namespace modevisor::bt {

// The offsets [first, end) an access may touch, kept in the form translated
// code checks without touching the guest's flags: `neg_first` = -first,
// `end` one past the last valid byte (64-bit, so nothing wraps).  first > end
// is an empty window (a null selector, a write to a code segment).
struct OffsetWindow {
  std::int64_t neg_first = 0;
  std::uint64_t end = 0;

  bool allows(std::uint32_t offset, unsigned size) const {
    const std::int64_t from = static_cast<std::int64_t>(offset) + neg_first;
    return from >= 0 && std::uint64_t{offset} + size <= end;
  }
  // Every offset of the 4 GiB space, an access wrapping past its top included.
  bool unrestricted() const { return neg_first == 0 && end >= kWrapEnd; }

  // One past 0xffffffff plus the widest access (fxsave's 512 bytes): an
  // unlimited segment never refuses an access that wraps at 4 GiB.
  static constexpr std::uint64_t kWrapEnd = (std::uint64_t{1} << 32) + 512;
  static constexpr OffsetWindow range(std::uint64_t first, std::uint64_t end) {
    return OffsetWindow{-static_cast<std::int64_t>(first), end};
  }
  static constexpr OffsetWindow empty() { return range(1, 0); }
};

struct SegmentWindows {
  OffsetWindow read, write;
};

// The windows of a segment register.  Protected mode: a null selector allows
// nothing; expand-down data segments allow the offsets above the limit, up
// to 0xffff or 0xffffffff by the B bit; code segments are never writable and
// readable only with the R bit; read-only data segments refuse writes.  Real
// and virtual-8086 mode check the (hidden) limit only.
inline SegmentWindows segment_windows(const api::Segment& s, bool protected_mode) {
  const bool full = s.limit == 0xffffffffu;
  const OffsetWindow up = full ? OffsetWindow::range(0, OffsetWindow::kWrapEnd)
                               : OffsetWindow::range(0, std::uint64_t{s.limit} + 1);
  if (!protected_mode) return {up, up};
  if (s.unusable || !s.s) return {OffsetWindow::empty(), OffsetWindow::empty()};
  const bool code = (s.type & 8) != 0;
  if (code) return {(s.type & 2) ? up : OffsetWindow::empty(), OffsetWindow::empty()};
  const bool expand_down = (s.type & 4) != 0;
  OffsetWindow w = up;
  if (expand_down) {
    const std::uint64_t top = s.db ? 0xffffffffu : 0xffffu;
    w = OffsetWindow::range(std::uint64_t{s.limit} + 1, top + 1);
  }
  return {w, (s.type & 2) ? w : OffsetWindow::empty()};
}

// #SS for the stack segment, #GP for the others (error code 0 for both).
inline std::uint8_t limit_fault_vector(int sreg) { return sreg == 2 ? 12 : 13; }

}  // namespace modevisor::bt
