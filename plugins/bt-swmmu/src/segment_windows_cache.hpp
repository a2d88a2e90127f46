// The windows of the six segment registers (segment_limits.hpp), computed
// once per set of registers and remembered: a system call goes through the
// user's set and the kernel's again and again, and working out 12 windows
// and the limits flavour each time would cost more than the call itself.
// Keyed by what shapes the windows (limit, type, S, B, usability, mode), not
// by selectors or bases.
#pragma once

#include <modevisor/api/arch_state.hpp>

#include <array>
#include <cstdint>

#include "segment_limits.hpp"

namespace modevisor::bt {

class SegmentWindowsCache {
 public:
  // ES, CS, SS, DS, FS, GS: [0] for reads, [1] for writes (Context::seg_window's layout).
  struct Set {
    OffsetWindow windows[2][6];
    OffsetWindow code;     // CS's limit for near-branch targets
    bool limited = false;  // some offset of some register is refused: the limits flavour
  };
  static constexpr std::size_t kSets = 4;

  // The set for these registers in this mode; `*fresh` says whether it was
  // computed now (not remembered).
  const Set& lookup(const api::Segment* const (&regs)[6], bool protected_mode, bool* fresh = nullptr) {
    const Key key = key_of(regs, protected_mode);
    if (fresh) *fresh = false;
    if (entries_[current_].valid && entries_[current_].key == key) return entries_[current_].set;
    std::size_t pick = 0;
    while (pick < kSets && !(entries_[pick].valid && entries_[pick].key == key)) ++pick;
    if (pick == kSets) {  // compute it into the least recently used entry
      pick = 0;
      for (std::size_t i = 1; i < kSets; ++i)
        if (entries_[i].last_use < entries_[pick].last_use) pick = i;
      entries_[pick] = Entry{true, key, compute(regs, protected_mode), 0};
      if (fresh) *fresh = true;
    }
    current_ = pick;
    entries_[pick].last_use = ++clock_;
    return entries_[pick].set;
  }

  static Set compute(const api::Segment* const (&regs)[6], bool protected_mode) {
    Set s;
    const api::Segment& cs = *regs[1];
    s.code = cs.limit == 0xffffffffu ? OffsetWindow::range(0, OffsetWindow::kWrapEnd)
                                     : OffsetWindow::range(0, std::uint64_t{cs.limit} + 1);
    for (int i = 0; i < 6; ++i) {
      const api::Segment& seg = *regs[i];
      const SegmentWindows sw = segment_windows(seg, protected_mode);
      s.windows[0][i] = sw.read;
      s.windows[1][i] = sw.write;
      // A null FS/GS keeps the flavour flat (common: its accesses are refused
      // through Context::null_fs_gs_bias instead); a null DS/ES/SS limits.  A
      // code segment's window only matters for CS-override reads.
      if (protected_mode && seg.unusable && i >= 4) continue;
      if (i == 1) s.limited |= !sw.read.unrestricted() && (seg.type & 2);
      else s.limited |= !sw.read.unrestricted() || !sw.write.unrestricted();
    }
    return s;
  }

 private:
  // The windows' inputs packed (api::Segment has padding, which differs
  // between equal segments built in different places).
  struct Key {
    std::uint64_t attrs = 0;
    std::uint32_t limits[6] = {};
    bool operator==(const Key&) const = default;
  };
  static Key key_of(const api::Segment* const (&regs)[6], bool protected_mode) {
    Key k;
    std::uint64_t attrs = std::uint64_t{protected_mode} << 63;
    for (int i = 0; i < 6; ++i) {
      const api::Segment& s = *regs[i];
      k.limits[i] = s.limit;
      attrs |= ((std::uint64_t{s.type} & 0xf) | std::uint64_t{s.s} << 4 | std::uint64_t{s.db} << 5 |
                std::uint64_t{s.unusable} << 6)
               << (7 * i);
    }
    k.attrs = attrs;
    return k;
  }
  struct Entry {
    bool valid = false;
    Key key;
    Set set;
    std::uint64_t last_use = 0;
  };
  std::array<Entry, kSets> entries_{};
  std::size_t current_ = 0;
  std::uint64_t clock_ = 0;
};

}  // namespace modevisor::bt
