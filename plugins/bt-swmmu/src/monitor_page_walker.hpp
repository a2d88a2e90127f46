// The monitor's own view of guest-linear memory: walks the guest's page
// tables for the accesses the monitor makes on the guest's behalf (exception
// frames, gates, descriptors, IRET frames, emulated operands) and remembers
// each walk.  A walk whose page tables are all traced by the shadow MMU
// (write-protected everywhere, so no guest write to them goes unseen) lasts
// until the paging registers change, flush() (CR writes, INVLPG, task
// switches), a traced table is released (ShadowMmu::pt_release_generation)
// or the monitor writes a table it used (drop_table); any other walk lasts
// one dispatcher iteration or monitor call (next_iteration).  So the IDT,
// GDT, TSS and kernel stack pages of a system call are walked once, not at
// every call.
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
  // `traced(pa_page)` says whether a table page is traced (a guest write to
  // it is seen and releases it); by default none is, and every walk lasts
  // one iteration.
  template <class IsTraced>
  Outcome<std::uint64_t> translate(const PhysMem& mem, const PagingRegs& regs, std::uint64_t la, Access acc,
                                   IsTraced&& traced) {
    if (!same_regs(regs)) {
      flush();
      regs_ = regs;
    }
    Entry& e = entries_[(la >> 12) % entries_.size()];
    const std::uint64_t tag = tag_of(la, acc);
    const std::uint8_t need = rights_of(acc);
    const bool known = e.tag == tag && e.gen == gen_ && (e.lasting || e.iteration == iteration_);
    if (known && (e.rights & need) == need) return e.pa_page | (la & 0xfff);
    const WalkResult w = walk(mem, regs, la, acc, true);
    if (!w.ok) return Fault{14, true, w.error};
    remember(e, known, la, acc, w, traced);
    return w.pa;
  }

  // A successful walk made without setting Accessed/Dirty (a check before
  // the access): remembered when it found them set already, so that the
  // access's own translate, which would change nothing, is not another walk.
  template <class IsTraced>
  void note_check(const PagingRegs& regs, std::uint64_t la, Access acc, const WalkResult& w, IsTraced&& traced) {
    if (!w.ok || !w.accessed || (acc.write && !w.dirty)) return;
    if (!same_regs(regs)) {
      flush();
      regs_ = regs;
    }
    Entry& e = entries_[(la >> 12) % entries_.size()];
    const bool known = e.tag == tag_of(la, acc) && e.gen == gen_ && (e.lasting || e.iteration == iteration_);
    remember(e, known, la, acc, w, traced);
  }

  // Whether a remembered walk already proves that `acc` to `la` passes (no
  // walk, nothing changed: a check before the access itself).
  bool allows(const PagingRegs& regs, std::uint64_t la, Access acc) const {
    if (!same_regs(regs)) return false;
    const Entry& e = entries_[(la >> 12) % entries_.size()];
    const std::uint8_t need = rights_of(acc);
    return e.tag == tag_of(la, acc) && e.gen == gen_ && (e.lasting || e.iteration == iteration_) &&
           (e.rights & need) == need;
  }

  Outcome<std::uint64_t> translate(const PhysMem& mem, const PagingRegs& regs, std::uint64_t la, Access acc) {
    return translate(mem, regs, la, acc, [](std::uint64_t) { return false; });
  }

  // Forget every walk.
  void flush() {
    if (++gen_ == 0) gen_ = 1;
    tables_ = 0;
  }

  // A new dispatcher iteration or monitor call: the guest ran in between, so
  // only walks through traced tables are still known to be exact, and only
  // while no traced table was released.
  void next_iteration(std::uint64_t pt_release_generation) {
    if (pt_release_generation != release_gen_) {
      flush();
      release_gen_ = pt_release_generation;
      return;
    }
    if (++iteration_ == 0) flush();
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
  static std::uint64_t tag_of(std::uint64_t la, Access acc) { return (la & ~0xfffull) | (acc.user ? 1 : 0); }
  // What a successful walk proves: a write walk, that a read passes too (and
  // that A and D are set); a fetch walk is its own (NX, SMEP against SMAP).
  static constexpr std::uint8_t kRead = 1, kWrite = 2, kFetch = 4;
  static std::uint8_t rights_of(Access acc) {
    if (acc.fetch) return kFetch;
    return acc.write ? kRead | kWrite : kRead;
  }
  bool same_regs(const PagingRegs& r) const {
    return r.cr0 == regs_.cr0 && r.cr3 == regs_.cr3 && r.cr4 == regs_.cr4 && r.efer == regs_.efer &&
           r.smap_suspended == regs_.smap_suspended && r.pages_1g == regs_.pages_1g &&
           r.max_phys_bits == regs_.max_phys_bits;
  }
  struct Entry {
    std::uint64_t tag = 0;  // LA page | user 1
    std::uint32_t gen = 0;
    std::uint32_t iteration = 0;
    bool lasting = false;  // every table of the walk was traced
    std::uint8_t rights = 0;  // kRead, kWrite, kFetch: the accesses a walk allowed
    std::uint64_t pa_page = 0;
    std::uint64_t pt[4] = {};
    int n_pt = 0;
  };
  static_assert(sizeof(Entry::pt) == sizeof(WalkResult::pt_pages), "an entry keeps every table of a walk");
  template <class IsTraced>
  void remember(Entry& e, bool known, std::uint64_t la, Access acc, const WalkResult& w, IsTraced&& traced) {
    // Only 4 KiB granules are remembered, whatever the guest page size.
    bool lasting = true;
    for (int i = 0; i < w.n_pt; ++i) lasting = lasting && traced(w.pt_pages[i]);
    // The same page read and written (a stack: pushes, then IRET's pops)
    // keeps one entry that knows both.
    const std::uint8_t rights = static_cast<std::uint8_t>((known ? e.rights : 0) | rights_of(acc));
    e = Entry{tag_of(la, acc), gen_, iteration_, lasting, rights, w.pa & ~0xfffull,
              {w.pt_pages[0], w.pt_pages[1], w.pt_pages[2], w.pt_pages[3]}, w.n_pt};
    for (int i = 0; i < w.n_pt; ++i) tables_ |= table_bit(w.pt_pages[i]);
  }
  std::array<Entry, 16> entries_{};
  std::uint32_t gen_ = 1;
  std::uint32_t iteration_ = 0;
  std::uint64_t release_gen_ = ~0ull;
  PagingRegs regs_{};
  // A one-word filter of the table pages the remembered walks used.
  static std::uint64_t table_bit(std::uint64_t pa_page) { return 1ull << ((pa_page >> 12) & 63); }
  std::uint64_t tables_ = 0;
};

}  // namespace modevisor::bt
