// The last two views of guest memory activated and their shadow regions: a
// system call flips between the user's and the kernel's view of one address
// space, and building a region key and searching up to ShadowMmu::kMaxRegions
// regions at every CPL switch cost more than the switch.  A view is the
// paging registers, the user bit and SMAP's suspension (EFLAGS.AC below CPL
// 3); a region is destroyed only by an eviction, so an entry lasts while the
// eviction count is what it was.
#pragma once

#include <array>
#include <cstdint>

namespace modevisor::bt {

struct Region;

class RecentRegions {
 public:
  struct View {
    // bit 0: the user view; bit 1: SMAP suspended (one word: two bools
    // compared as one were a store-forwarding stall)
    std::uint32_t bits = 0;
    std::uint64_t cr0 = 0, cr3 = 0, cr4 = 0, efer = 0;
    bool operator==(const View&) const = default;
  };
  static View view(bool user, bool smap_suspended, std::uint64_t cr0, std::uint64_t cr3, std::uint64_t cr4,
                   std::uint64_t efer) {
    return View{(user ? 1u : 0u) | (smap_suspended ? 2u : 0u), cr0, cr3, cr4, efer};
  }

  // The region last activated for `v`, if none was evicted since.
  Region* find(const View& v, std::uint64_t evictions) const {
    for (const Entry& e : entries_)
      if (e.region && e.evictions == evictions && e.view == v) return e.region;
    return nullptr;
  }

  // `r` was activated for `v`; `evictions` is the count after activating it.
  void remember(const View& v, Region* r, std::uint64_t evictions) {
    entries_[next_] = Entry{v, evictions, r};
    next_ ^= 1;
  }

 private:
  struct Entry {
    View view;
    std::uint64_t evictions = 0;
    Region* region = nullptr;
  };
  std::array<Entry, 2> entries_{};
  unsigned next_ = 0;  // the entry the next miss replaces
};

}  // namespace modevisor::bt
