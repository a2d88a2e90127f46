// The monitor's own view of guest-linear memory: walks the guest's page
// tables for the accesses the monitor makes on the guest's behalf (exception
// frames, gates, descriptors, IRET frames, emulated operands) and remembers
// each walk so one dispatcher iteration walks a page once.  A remembered walk
// lasts until flush() (the iteration ends, paging registers change, INVLPG)
// or until the monitor writes a table it used (drop_table).
#pragma once

#include <array>
#include <cstdint>

#include "guest_fault.hpp"
#include "shadow.hpp"

namespace modevisor::bt {

class MonitorPageWalker {
 public:
  // The guest-physical address of `la`, or the #PF the access takes (the
  // caller sets CR2).  Accessed/Dirty bits are set like the hardware does.
  Outcome<std::uint64_t> translate(const PhysMem& mem, const PagingRegs& regs, std::uint32_t la, Access acc) {
    Entry& e = entries_[(la >> 12) % entries_.size()];
    const std::uint32_t tag = tag_of(la, acc);
    if (e.gen == gen_ && e.tag == tag) return e.pa_page | (la & 0xfff);
    const WalkResult w = walk(mem, regs, la, acc, true);
    if (!w.ok) return Fault{14, true, w.error};
    // Only 4 KiB granules are remembered, whatever the guest page size.
    e = Entry{tag, gen_, w.pa & ~0xfffull, {w.pt_pages[0], w.pt_pages[1], w.pt_pages[2]}, w.n_pt};
    for (int i = 0; i < w.n_pt; ++i) tables_ |= table_bit(w.pt_pages[i]);
    return w.pa;
  }

  void flush() {
    if (++gen_ == 0) gen_ = 1;
    tables_ = 0;
  }

  // The guest-physical page `pa_page` was written by the monitor: forget the
  // walks that went through it as a page table.
  void drop_table(std::uint64_t pa_page) {
    if (!(tables_ & table_bit(pa_page))) return;  // no remembered walk used it (the usual monitor write)
    for (auto& e : entries_) {
      if (e.gen != gen_) continue;
      for (int i = 0; i < e.n_pt; ++i)
        if (e.pt[i] == pa_page) e.gen = 0;
    }
  }

 private:
  static std::uint32_t tag_of(std::uint32_t la, Access acc) {
    return (la & ~0xfffu) | (acc.fetch ? 4 : 0) | (acc.write ? 2 : 0) | (acc.user ? 1 : 0);
  }
  struct Entry {
    std::uint32_t tag = 0;  // LA page | fetch 4 | write 2 | user 1
    std::uint32_t gen = 0;
    std::uint64_t pa_page = 0;
    std::uint64_t pt[3] = {};
    int n_pt = 0;
  };
  std::array<Entry, 16> entries_{};
  std::uint32_t gen_ = 1;
  // A one-word filter of the table pages the remembered walks used.
  static std::uint64_t table_bit(std::uint64_t pa_page) { return 1ull << ((pa_page >> 12) & 63); }
  std::uint64_t tables_ = 0;
};

}  // namespace modevisor::bt
