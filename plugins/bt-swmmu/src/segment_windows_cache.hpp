// The windows of the six segment registers (segment_limits.hpp), computed
// once per set of registers and remembered: a system call goes through the
// user's set and the kernel's again and again, and working out 12 windows
// and the limits flavour each time would cost more than the call itself.
// Keyed by what shapes the windows (limit, type, S, B, usability, mode), not
// by selectors or bases.
#pragma once

#include <modevisor/api/arch_state.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

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

  // Whether two segments give the same windows (what the key holds of them);
  // `b_type_set`: type bits b gets when loaded (the accessed bit).
  static bool same_shape(const api::Segment& a, const api::Segment& b, std::uint8_t b_type_set = 0) {
    return a.limit == b.limit && (a.type & 0xf) == ((b.type | b_type_set) & 0xf) && a.s == b.s && a.db == b.db &&
           a.unusable == b.unusable;
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
  // The windows' inputs packed, one word per register: limit, type, S, D/B
  // and "unusable".  Read as two words straight from api::Segment (whose
  // padding differs between equal segments built in different places, so it
  // is masked out): a system call looks its sets up twice, and packing the
  // fields one by one was most of the lookup.
  struct Key {
    std::uint64_t shape[6] = {};
    bool protected_mode = false;
    bool operator==(const Key&) const = default;
  };
  static_assert(offsetof(api::Segment, limit) == 16 && offsetof(api::Segment, type) == 20 &&
                    offsetof(api::Segment, s) == 21 && offsetof(api::Segment, db) == 26 &&
                    offsetof(api::Segment, unusable) == 28 && sizeof(bool) == 1,
                "key_of reads api::Segment's fields as two words");
  static Key key_of(const api::Segment* const (&regs)[6], bool protected_mode) {
    Key k;
    k.protected_mode = protected_mode;
    for (int i = 0; i < 6; ++i) {
      const auto* bytes = reinterpret_cast<const unsigned char*>(regs[i]);
      std::uint64_t lo, hi;
      std::memcpy(&lo, bytes + 16, 8);  // limit, type, s, dpl, present
      std::memcpy(&hi, bytes + 24, 8);  // avl, l, db, g, unusable, padding
      // limit (bits 0-31), type (32-35), S (40-47), D/B (48-55), unusable (56-63)
      k.shape[i] = (lo & 0x0000'ff0f'ffff'ffffull) | ((hi & 0x0000'0000'00ff'0000ull) << 32) |
                   ((hi & 0x0000'00ff'0000'0000ull) << 24);
    }
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
