#include "shadow.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>

namespace modevisor::bt {

namespace {
// Derivation lists sorted this way put a region's pages together, in order
// (runs for one PROT_NONE mmap each; duplicates next to each other).
bool by_region_then_page(const std::pair<Region*, std::uint32_t>& a, const std::pair<Region*, std::uint32_t>& b) {
  return std::less<Region*>{}(a.first, b.first) || (a.first == b.first && a.second < b.second);
}
constexpr std::uint64_t kPageMask = ~0xfffull;
constexpr std::uint64_t kPaeAddr = 0x000ffffffffff000ull;
}  // namespace

std::uint64_t PhysMem::read64(std::uint64_t pa) const {
  if (pa + 8 > size) return 0;
  std::uint64_t v;
  std::memcpy(&v, base + pa, 8);
  return v;
}
std::uint32_t PhysMem::read32(std::uint64_t pa) const {
  if (pa + 4 > size) return 0;
  std::uint32_t v;
  std::memcpy(&v, base + pa, 4);
  return v;
}
void PhysMem::or32(std::uint64_t pa, std::uint32_t bits) {
  if (pa + 4 > size || (pa & 3)) return;
  auto* p = reinterpret_cast<std::uint32_t*>(base + pa);
  if ((__atomic_load_n(p, __ATOMIC_RELAXED) & bits) == bits) return;
  __atomic_fetch_or(p, bits, __ATOMIC_RELAXED);
  if (on_write) on_write(on_write_ctx, pa & ~0xfffull);
}

WalkResult walk(const PhysMem& mem_in, const PagingRegs& regs, std::uint64_t la, Access acc, bool set_ad) {
  PhysMem& mem = const_cast<PhysMem&>(mem_in);
  WalkResult r;
  if (!regs.long_mode()) la = static_cast<std::uint32_t>(la);
  if (!regs.paging()) {
    r.ok = true;
    r.pa = la;
    return r;
  }
  const std::uint32_t ubit = acc.user ? kPfU : 0;
  const std::uint32_t wbit = acc.write ? kPfW : 0;
  // I/D is reported for fetches when NX or SMEP can make a fetch fault.
  const std::uint32_t ibit = (acc.fetch && ((regs.nxe() && regs.pae()) || regs.smep())) ? kPfI : 0;
  auto fault = [&](bool present) {
    r.ok = false;
    r.error = (present ? kPfP : 0) | ubit | wbit | ibit;
    return r;
  };
  auto reserved_bit_fault = [&] {
    r.ok = false;
    r.error = kPfP | kPfRsvd | ubit | wbit | ibit;
    return r;
  };
  bool user = true, writable = true, nx = false;
  // Entries to mark accessed / dirty once the walk succeeds (address of the low dword).
  std::uint64_t a_addrs[4];
  int n_a = 0;
  std::uint64_t final_addr = 0;
  std::uint64_t pa_page = 0, page_offset_mask = 0xfff;
  bool final_dirty = false, global = false;

  if (regs.long_mode()) {
    // PML4 -> PDPT -> PD -> PT, 9 bits of `la` each (SDM vol. 3 4.5).
    // Reserved in every entry: address bits from MAXPHYADDR up to 51, and XD
    // without EFER.NXE.  Bits 62:52 are ignored (or protection keys, not offered).
    const std::uint64_t above_max_phys =
        regs.max_phys_bits >= 52 ? 0 : kPaeAddr & ~((1ull << regs.max_phys_bits) - 1);
    const std::uint64_t reserved_always = above_max_phys | (regs.nxe() ? 0 : 1ull << 63);
    std::uint64_t table = regs.cr3 & kPaeAddr;  // bits 11:0 are PCD/PWT or the PCID
    for (int level = 4; level >= 1; --level) {
      r.pt_pages[r.n_pt++] = table;
      const unsigned shift = 12 + 9 * (level - 1);
      const std::uint64_t entry_addr = table + (((la >> shift) & 0x1ff) << 3);
      const std::uint64_t entry = mem.read64(entry_addr);
      if (!(entry & 1)) return fault(false);
      const bool ps = (entry >> 7) & 1;
      // PS maps a page from a PDE, from a PDPTE only where 1 GiB pages are
      // offered; elsewhere above the PT it is reserved (in a PTE it is PAT).
      const bool ps_reserved = level == 4 || (level == 3 && !regs.pages_1g);
      const bool leaf = level == 1 || (ps && !ps_reserved);
      std::uint64_t reserved = reserved_always | (ps_reserved ? 0x80 : 0);
      // A large page's frame is aligned: the bits between PAT (12) and it are reserved.
      if (leaf && level > 1) reserved |= ((1ull << shift) - 1) & ~0x1fffull;
      if (entry & reserved) return reserved_bit_fault();
      r.accessed &= (entry >> 5) & 1;
      user &= (entry >> 2) & 1;
      writable &= (entry >> 1) & 1;
      nx |= regs.nxe() && (entry >> 63);
      a_addrs[n_a++] = entry_addr;
      if (leaf) {
        page_offset_mask = (1ull << shift) - 1;
        pa_page = entry & kPaeAddr & ~page_offset_mask;
        final_addr = entry_addr;
        final_dirty = (entry >> 6) & 1;
        global = (entry >> 8) & 1;
        break;
      }
      table = entry & kPaeAddr;
    }
  } else if (!regs.pae()) {
    const std::uint64_t pd = regs.cr3 & 0xfffff000u;
    r.pt_pages[r.n_pt++] = pd;
    const std::uint64_t pde_addr = pd + ((la >> 22) << 2);
    const std::uint32_t pde = mem.read32(pde_addr);
    if (!(pde & 1)) return fault(false);
    r.accessed &= (pde >> 5) & 1;
    user &= (pde >> 2) & 1;
    writable &= (pde >> 1) & 1;
    a_addrs[n_a++] = pde_addr;
    if ((pde & 0x80) && regs.pse()) {
      pa_page = (pde & 0xffc00000u) | (static_cast<std::uint64_t>((pde >> 13) & 0xff) << 32);
      page_offset_mask = 0x3fffff;
      final_addr = pde_addr;
      final_dirty = (pde >> 6) & 1;
      global = (pde >> 8) & 1;
    } else {
      const std::uint64_t pt = pde & 0xfffff000u;
      r.pt_pages[r.n_pt++] = pt;
      const std::uint64_t pte_addr = pt + (((la >> 12) & 0x3ff) << 2);
      const std::uint32_t pte = mem.read32(pte_addr);
      if (!(pte & 1)) return fault(false);
      r.accessed &= (pte >> 5) & 1;
      user &= (pte >> 2) & 1;
      writable &= (pte >> 1) & 1;
      a_addrs[n_a++] = pte_addr;
      pa_page = pte & 0xfffff000u;
      final_addr = pte_addr;
      final_dirty = (pte >> 6) & 1;
      global = (pte >> 8) & 1;
    }
  } else {
    const std::uint64_t pdpt = regs.cr3 & 0xffffffe0u;
    r.pt_pages[r.n_pt++] = pdpt & kPageMask;
    const std::uint64_t pdpte = mem.read64(pdpt + ((la >> 30) << 3));
    if (!(pdpte & 1)) return fault(false);
    if (pdpte & 0x1e6) return reserved_bit_fault();
    const std::uint64_t pd = pdpte & kPaeAddr;
    r.pt_pages[r.n_pt++] = pd;
    const std::uint64_t pde_addr = pd + (((la >> 21) & 0x1ff) << 3);
    const std::uint64_t pde = mem.read64(pde_addr);
    if (!(pde & 1)) return fault(false);
    if (!regs.nxe() && (pde >> 63)) return reserved_bit_fault();
    r.accessed &= (pde >> 5) & 1;
    user &= (pde >> 2) & 1;
    writable &= (pde >> 1) & 1;
    nx |= regs.nxe() && (pde >> 63);
    a_addrs[n_a++] = pde_addr;
    if (pde & 0x80) {
      pa_page = pde & 0x000fffffffe00000ull;
      page_offset_mask = 0x1fffff;
      final_addr = pde_addr;
      final_dirty = (pde >> 6) & 1;
      global = (pde >> 8) & 1;
    } else {
      const std::uint64_t pt = pde & kPaeAddr;
      r.pt_pages[r.n_pt++] = pt;
      const std::uint64_t pte_addr = pt + (((la >> 12) & 0x1ff) << 3);
      const std::uint64_t pte = mem.read64(pte_addr);
      if (!(pte & 1)) return fault(false);
      if (!regs.nxe() && (pte >> 63)) return reserved_bit_fault();
      r.accessed &= (pte >> 5) & 1;
      user &= (pte >> 2) & 1;
      writable &= (pte >> 1) & 1;
      nx |= regs.nxe() && (pte >> 63);
      a_addrs[n_a++] = pte_addr;
      pa_page = pte & kPaeAddr;
      final_addr = pte_addr;
      final_dirty = (pte >> 6) & 1;
      global = (pte >> 8) & 1;
    }
  }
  // Permission checks.
  if (acc.user && !user) return fault(true);
  // SMEP: no supervisor fetch from a user page; SMAP: no supervisor data access to one.
  if (!acc.user && user && (acc.fetch ? regs.smep() : regs.smap_enforced())) return fault(true);
  if (acc.write && !writable && (acc.user || regs.wp())) return fault(true);
  if (acc.fetch && nx) return fault(true);
  if (set_ad) {
    for (int i = 0; i < n_a; ++i) mem.or32(a_addrs[i], 0x20);
    if (acc.write) {
      mem.or32(final_addr, 0x40);
      final_dirty = true;
    }
  }
  r.ok = true;
  r.large = page_offset_mask != 0xfff;
  r.user = user;
  r.writable = writable;
  r.dirty = final_dirty;
  r.global = global;
  r.nx = nx;
  r.pa = pa_page + (la & page_offset_mask);
  return r;
}

RegionKey make_region_key(const PagingRegs& regs, bool user_view, std::uint32_t la_high) {
  RegionKey k;
  if (regs.long_mode()) {
    // The PML4's frame (bits 11:0 are PCD/PWT or the PCID); PSE means nothing here.
    k.cr3 = regs.cr3 & kPaeAddr;
    k.mode = 1 | 2 | kModeLong | (regs.wp() ? 8 : 0) | (regs.nxe() ? 16 : 0);
    k.la_high = la_high;
  } else if (regs.paging()) {
    k.cr3 = regs.pae() ? (regs.cr3 & 0xffffffe0u) : (regs.cr3 & 0xfffff000u);
    k.mode = 1 | (regs.pae() ? 2 : 0) | (regs.pse() ? 4 : 0) | (regs.wp() ? 8 : 0) | (regs.nxe() ? 16 : 0);
  }
  if (user_view) k.mode |= 32;
  else if (regs.paging()) k.mode |= (regs.smep() ? 64 : 0) | (regs.smap_enforced() ? 128 : 0);
  return k;
}

ShadowMmu::ShadowMmu(std::uint8_t* ram, std::uint64_t ram_size, int fd) : fd_(fd) {
  phys_.base = ram;
  phys_.size = ram_size;
  traced_.assign(ram_size / 4096, 0);
  phys_.on_write_ctx = this;
  phys_.on_write = [](void* self, std::uint64_t gpa_page) {
    auto* mmu = static_cast<ShadowMmu*>(self);
    if (mmu->dirty_logging_) mmu->mark_dirty(gpa_page);
  };
}

ShadowMmu::~ShadowMmu() {
  for (auto& r : regions_) {
    munmap(r->base - kGuardBelow, kReservation);
    munmap(r->fast, kFastTableBytes);
  }
}

Region* ShadowMmu::activate(const RegionKey& key) {
  ++clock_;
  if (active_ && active_->key == key) {
    active_->last_use = clock_;
    return active_;
  }
  ++stats.switches;
  for (auto& r : regions_) {
    if (r->key == key) {
      ++stats.switch_hits;
      r->last_use = clock_;
      active_ = r.get();
      return active_;
    }
  }
  ++stats.rebuilds;
  if (regions_.size() >= kMaxRegions) {
    auto victim = std::min_element(regions_.begin(), regions_.end(), [&](auto& a, auto& b) {
      if (a.get() == active_) return false;
      if (b.get() == active_) return true;
      return a->last_use < b->last_use;
    });
    ++stats.evictions;
    destroy(victim->get());
    regions_.erase(victim);
  }
  auto r = std::make_unique<Region>();
  r->key = key;
  void* base = mmap(nullptr, kReservation, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) throw std::runtime_error("bt-swmmu: cannot reserve a 4 GiB shadow region and its guards");
  void* fast = mmap(nullptr, kFastTableBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (fast == MAP_FAILED) {
    munmap(base, kReservation);
    throw std::runtime_error("bt-swmmu: cannot allocate a lookup table");
  }
  r->base = static_cast<std::uint8_t*>(base) + kGuardBelow;
  r->fast = static_cast<FastEntry*>(fast);
  r->last_use = clock_;
  active_ = r.get();
  regions_.push_back(std::move(r));
  return active_;
}

bool ShadowMmu::contains(const void* host_addr, Region** region, std::uint32_t* la) const {
  auto a = reinterpret_cast<std::uintptr_t>(host_addr);
  for (auto& r : regions_) {
    auto b = reinterpret_cast<std::uintptr_t>(r->base);
    if (a >= b && a - b < kRegionSize) {
      *region = r.get();
      *la = static_cast<std::uint32_t>(a - b);
      return true;
    }
  }
  return false;
}

bool ShadowMmu::in_guard(const Region* r, const void* host_addr, std::uint32_t* la) {
  const auto a = reinterpret_cast<std::uintptr_t>(host_addr);
  const auto b = reinterpret_cast<std::uintptr_t>(r->base);
  const bool below = a < b && b - a <= kGuardBelow;
  const bool above = a >= b + kRegionSize && a - b < kRegionSize + kGuardAbove;
  if (!below && !above) return false;
  *la = static_cast<std::uint32_t>(a - b);  // the 32-bit sum the guest formed
  return true;
}

bool ShadowMmu::in_guard(const Region* r, const void* host_addr, std::uint64_t* la) {
  std::uint32_t la32 = 0;
  if (!in_guard(r, host_addr, &la32)) return false;
  if (!r->long_mode()) {
    *la = la32;
    return true;
  }
  const auto offset = reinterpret_cast<std::uintptr_t>(host_addr) - reinterpret_cast<std::uintptr_t>(r->base);
  *la = r->linear(0) + offset;  // modulo 2^64: below the base it is the range before
  return true;
}

void ShadowMmu::destroy(Region* r) {
  note_block_maps_changed();
  for (auto& [la, m] : r->maps) {
    auto& v = rmap_[m.gpa_page];
    v.erase(std::remove(v.begin(), v.end(), std::make_pair(r, la)), v.end());
  }
  for (auto& [pt, d] : derived_)
    d.list.erase(std::remove_if(d.list.begin(), d.list.end(), [&](auto& e) { return e.first == r; }), d.list.end());
  munmap(r->base - kGuardBelow, kReservation);
  munmap(r->fast, kFastTableBytes);
  if (active_ == r) active_ = nullptr;
}

int ShadowMmu::prot_for(const Region::Map& m) const {
  bool traced = m.gpa_page != wt_page_ && (is_code_page(m.gpa_page) || is_pt_page(m.gpa_page));
  const bool logged_clean = dirty_logging_ && !is_dirty(m.gpa_page);
  return PROT_READ | ((m.guest_writable && !traced && !logged_clean) ? PROT_WRITE : 0);
}

bool ShadowMmu::map_page(Region* r, std::uint32_t la_page, std::uint64_t gpa_page, int prot) {
  void* p = mmap(r->base + la_page, 4096, prot, MAP_SHARED | MAP_FIXED, fd_, static_cast<off_t>(gpa_page));
  return p != MAP_FAILED;
}

bool ShadowMmu::forget(Region* r, std::uint32_t la_page) {
  auto it = r->maps.find(la_page);
  if (it == r->maps.end()) return false;
  auto& v = rmap_[it->second.gpa_page];
  v.erase(std::remove(v.begin(), v.end(), std::make_pair(r, la_page)), v.end());
  if (v.empty()) rmap_.erase(it->second.gpa_page);
  r->maps.erase(it);
  return true;
}

void ShadowMmu::unmap(Region* r, std::uint32_t la_page) {
  if (forget(r, la_page))
    mmap(r->base + la_page, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
}

void ShadowMmu::drop_region_code_page(Region* r, std::uint32_t la_page) {
  if (!r->code_pages.erase(la_page)) return;
  note_block_maps_changed();
  for (std::uint32_t eip = la_page; eip < la_page + 4096; ++eip) r->blocks.erase(eip);
  // Fast-table slots for this page: index = low 16 bits of the linear
  // address, which is the low half of the key (fast_key) under any CS base.
  for (std::uint32_t i = 0; i < 4096; ++i) {
    FastEntry& e = r->fast[(la_page + i) & 0xffff];
    if (static_cast<std::uint32_t>(~e.neg_eip) == la_page + i) e = FastEntry{0, 0};
  }
  if (on_code_page_dropped) on_code_page_dropped(r, la_page);
}

FillResult ShadowMmu::fill(Region* r, const PagingRegs& regs, std::uint32_t la, bool write, std::uint64_t* out) {
  const std::uint32_t la_page = la & ~0xfffu;
  Access acc;
  acc.write = write;
  acc.user = r->user_view();
  WalkResult w = walk(phys_, regs, r->linear(la), acc, true);
  if (!w.ok) {
    ++stats.true_faults;
    *out = w.error;
    return FillResult::GuestFault;
  }
  const std::uint64_t gpa_page = w.pa & kPageMask;
  if (gpa_page >= phys_.size) {
    *out = w.pa;
    return FillResult::Mmio;
  }
  if (n_watched_ && watched(r->linear(la_page))) {  // a data breakpoint's page: the monitor runs the access
    *out = w.pa;
    return FillResult::Mmio;
  }
  if (write && gpa_page != wt_page_ && (is_code_page(gpa_page) || is_pt_page(gpa_page))) {
    *out = gpa_page;
    return FillResult::ProtectedWrite;
  }
  Region::Map m{gpa_page, (w.writable || (!acc.user && !regs.wp())) && w.dirty};
  auto it = r->maps.find(la_page);
  if (write && dirty_logging_ && !is_dirty(gpa_page)) {
    mark_dirty(gpa_page);  // first write since the last collection: unprotects every mapping of it
    if (it != r->maps.end() && it->second.gpa_page == gpa_page && it->second.guest_writable && m.guest_writable) {
      ++stats.dirty_log_faults;
      return FillResult::Mapped;
    }
  }
  if (it != r->maps.end() && it->second.gpa_page == m.gpa_page && it->second.guest_writable == m.guest_writable) {
    if (!write || m.guest_writable) return FillResult::Repeat;
  }
  if (it != r->maps.end() && it->second.gpa_page == gpa_page) {
    // The same frame, now writable (a first write set D): a protection
    // change, not a new mapping (its tables still trace it: a write to one
    // would have dropped it).
    trace_tables(r, la_page, w);
    m.prot = prot_for(m);
    if (m.prot != it->second.prot) mprotect(r->base + la_page, 4096, m.prot);
    it->second = m;
    ++stats.hidden_faults;
    return FillResult::Mapped;
  }
  if (it != r->maps.end()) unmap(r, la_page);
  // Trace the tables this mapping was derived from.
  trace_tables(r, la_page, w);
  if (!map_page(r, la_page, gpa_page, prot_for(m))) {
    // Probably out of VMAs (vm.max_map_count): start over with empty regions.
    ++stats.map_resets;
    drop_all();
    for (int i = 0; i < w.n_pt; ++i) {
      derived_[w.pt_pages[i]].list.emplace_back(r, la_page);
      set_traced(w.pt_pages[i], kTracedTable, true);
    }
    if (!map_page(r, la_page, gpa_page, prot_for(m))) throw std::runtime_error("bt-swmmu: mmap into a shadow region failed");
  }
  m.prot = prot_for(m);
  r->maps[la_page] = m;
  rmap_[gpa_page].emplace_back(r, la_page);
  ++stats.hidden_faults;
  if (!dirty_logging_) {
    if (!regs.paging()) fill_ahead_unpaged(r, la_page);  // never in long mode (paging is on there)
    else fill_ahead_paged(r, regs, la_page);
  }
  return FillResult::Mapped;
}

void ShadowMmu::weed(Derivations& d) {
  auto& v = d.list;
  std::sort(v.begin(), v.end(), by_region_then_page);
  v.erase(std::unique(v.begin(), v.end()), v.end());
  v.erase(std::remove_if(v.begin(), v.end(),
                         [](const auto& e) { return !e.first->maps.count(e.second) && !e.first->code_pages.count(e.second); }),
          v.end());
  d.weed_at = std::max<std::size_t>(64, 2 * v.size());
}

void ShadowMmu::trace_tables(Region* r, std::uint32_t la_page, const WalkResult& w) {
  for (int i = 0; i < w.n_pt; ++i) {
    auto [dit, fresh] = derived_.try_emplace(w.pt_pages[i]);
    Derivations& d = dit->second;
    d.list.emplace_back(r, la_page);
    if (d.list.size() >= d.weed_at) weed(d);
    if (fresh) {
      set_traced(w.pt_pages[i], kTracedTable, true);
      set_prot_all(w.pt_pages[i]);
    }
  }
}

// Paging on: the faulting page's aligned 64 KiB neighbours whose
// translations the guest has used before (every entry's A bit already set,
// so mapping them early changes nothing the guest can see; a page with A
// clear must fault so that its walk sets A), one mmap per run of contiguous
// guest-physical pages.  A page is writable only if its D bit is set
// already; the first write to a clean page still faults and sets D.  A
// process's first touches of its kernel's and its own pages then cost one
// hidden fault per run instead of one each (forkwait: 18 -> 10 per fork).
// Left to their own faults: code and page-table pages (read-only, they
// would break runs) and large pages (a kernel's direct map of RAM: its
// frames become and stop being page tables, and every extra mapping of one
// is another mprotect when they do; measured, more kernel entries per fork
// with them than without).
void ShadowMmu::fill_ahead_paged(Region* r, const PagingRegs& regs, std::uint32_t la_page) {
  constexpr std::uint32_t kSpan = 16 * 4096;
  const std::uint32_t start = la_page & ~(kSpan - 1);
  Access acc;
  acc.user = r->user_view();
  struct Page {
    std::uint32_t la;
    Region::Map m;
    WalkResult w;
  };
  Page run[kSpan / 4096];
  unsigned n = 0;
  auto map_run = [&] {
    if (n == 0) return;
    void* p = mmap(r->base + run[0].la, std::size_t{n} * 4096, run[0].m.prot, MAP_SHARED | MAP_FIXED, fd_,
                   static_cast<off_t>(run[0].m.gpa_page));
    if (p != MAP_FAILED) {
      for (unsigned i = 0; i < n; ++i) {
        trace_tables(r, run[i].la, run[i].w);
        r->maps[run[i].la] = run[i].m;
        rmap_[run[i].m.gpa_page].emplace_back(r, run[i].la);
      }
      stats.prefilled += n;
    }
    n = 0;
  };
  for (std::uint32_t la = start; la - start < kSpan; la += 4096) {
    if (la == la_page || r->maps.count(la) || (n_watched_ && watched(r->linear(la)))) {
      map_run();
      continue;
    }
    const WalkResult w = walk(phys_, regs, r->linear(la), acc, false);
    const std::uint64_t gpa = w.pa & kPageMask;
    if (!w.ok || !w.accessed || w.large || gpa >= phys_.size || is_code_page(gpa) || is_pt_page(gpa)) {
      map_run();
      continue;
    }
    Region::Map m{gpa, (w.writable || (!acc.user && !regs.wp())) && w.dirty};
    m.prot = prot_for(m);
    if (n && (m.prot != run[0].m.prot || gpa != run[n - 1].m.gpa_page + 4096)) map_run();
    run[n++] = Page{la, m, w};
  }
  map_run();
}

// Paging off: linear = physical, and there are no accessed/dirty bits a
// prefetch could set early.  Map the rest of the faulting page's aligned
// 256 KiB of RAM too, one mmap per run of unmapped pages, so that a guest
// walking through memory takes one hidden fault per 64 pages, not per page.
// Traced pages (code) keep their own protection.
void ShadowMmu::fill_ahead_unpaged(Region* r, std::uint32_t la_page) {
  if (r->key.la_high != 0) return;  // linear = physical only in the low 4 GiB
  constexpr std::uint32_t kSpan = 64 * 4096;
  const std::uint32_t start = la_page & ~(kSpan - 1);
  std::uint32_t run_start = 0, n = 0;
  auto map_run = [&] {
    if (n == 0) return;
    void* p = mmap(r->base + run_start, std::size_t{n} * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd_,
                   static_cast<off_t>(run_start));
    if (p != MAP_FAILED) {
      for (std::uint32_t i = 0; i < n; ++i) {
        const std::uint32_t la = run_start + i * 4096;
        Region::Map m{la, true};
        m.prot = prot_for(m);
        r->maps[la] = m;
        rmap_[la].emplace_back(r, la);
        if (m.prot != (PROT_READ | PROT_WRITE)) mprotect(r->base + la, 4096, m.prot);
      }
      stats.prefilled += n;
    }
    n = 0;
  };
  for (std::uint64_t la = start; la < std::uint64_t{start} + kSpan; la += 4096) {
    const bool fill = la + 4096 <= phys_.size && !r->maps.count(static_cast<std::uint32_t>(la)) &&
                      !watched(static_cast<std::uint32_t>(la));
    if (!fill) {
      map_run();
      continue;
    }
    if (n++ == 0) run_start = static_cast<std::uint32_t>(la);
  }
  map_run();
}

void ShadowMmu::set_prot_all(std::uint64_t gpa_page) {
  auto it = rmap_.find(gpa_page);
  if (it == rmap_.end()) return;
  for (auto& [r, la] : it->second) {
    Region::Map& m = r->maps[la];
    const int prot = prot_for(m);
    if (prot == m.prot) continue;
    mprotect(r->base + la, 4096, prot);
    m.prot = prot;
  }
}

void ShadowMmu::protect_code_page(std::uint64_t gpa_page) {
  if (code_pages_.insert(gpa_page).second) {
    set_traced(gpa_page, kTracedCode, true);
    set_prot_all(gpa_page);
  }
}

void ShadowMmu::release_code_page(std::uint64_t gpa_page) {
  if (code_pages_.erase(gpa_page)) {
    set_traced(gpa_page, kTracedCode, false);
    set_prot_all(gpa_page);
  }
}

void ShadowMmu::end_write_through() {
  const std::uint64_t p = wt_page_;
  wt_page_ = ~0ull;
  if (p == ~0ull) return;
  release_pt_page(p, false);
  set_prot_all(p);
}

void ShadowMmu::release_pt_page(std::uint64_t gpa_page, bool count) {
  auto it = derived_.find(gpa_page);
  if (it == derived_.end()) return;
  if (count) ++stats.pt_writes;
  auto list = std::move(it->second.list);
  derived_.erase(it);
  set_traced(gpa_page, kTracedTable, false);
  ++pt_release_gen_;
  drop_derived(list);
  set_prot_all(gpa_page);
}

// Drops the shadow mappings `list` names (and the translations keyed by
// them), one PROT_NONE mmap per run of neighbouring pages of a region (the
// mappings fill-ahead made come in runs).
void ShadowMmu::drop_derived(std::vector<Derivation>& list) {
  std::sort(list.begin(), list.end(), by_region_then_page);
  std::size_t i = 0;
  while (i < list.size()) {
    Region* r = list[i].first;
    std::uint64_t run_start = 0, run_end = 0;  // [start, end) of the run being collected
    auto close_run = [&] {
      if (run_end != run_start)
        mmap(r->base + run_start, run_end - run_start, PROT_NONE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
      run_start = run_end = 0;
    };
    for (; i < list.size() && list[i].first == r; ++i) {
      const std::uint32_t la = list[i].second;
      if (forget(r, la)) {
        if (run_end == run_start || la != run_end) {
          close_run();
          run_start = la;
        }
        run_end = std::uint64_t{la} + 4096;
      }
      drop_region_code_page(r, la);
    }
    close_run();
  }
}

// Whether the shadow mapping of `la` in `r`, derived (among others) from the
// table on `gpa_page`, used an entry in bytes [lo, hi) of that page.  Classic
// 32-bit paging: the page is r's directory (entry la >> 22; a directory can
// double as a table, so both entries count) or la's table (entry la >> 12).
// 4-level paging: which level the page served is not recorded (one page can
// serve at several), so the entry of the whole linear address at any of the
// four levels counts.  PAE tables are not told apart here: every mapping counts.
bool ShadowMmu::derived_from_entries(const Region& r, std::uint32_t la, std::uint64_t gpa_page, std::uint32_t lo,
                                     std::uint32_t hi) {
  auto hits = [&](std::uint32_t entry, std::uint32_t size) { return entry < hi && lo < entry + size; };
  if (r.long_mode()) {
    const std::uint64_t linear = r.linear(la);
    for (unsigned shift = 12; shift <= 39; shift += 9)
      if (hits(static_cast<std::uint32_t>((linear >> shift) & 0x1ff) * 8, 8)) return true;
    return false;
  }
  if ((r.key.mode & 1) == 0 || (r.key.mode & 2) != 0) return true;
  const bool directory = (r.key.cr3 & ~0xfffull) == gpa_page;
  return hits(((la >> 12) & 1023) * 4, 4) || (directory && hits((la >> 22) * 4, 4));
}

void ShadowMmu::pt_entries_written(std::uint64_t gpa_page, std::uint32_t offset, unsigned size) {
  auto it = derived_.find(gpa_page);
  if (it == derived_.end()) return;
  auto& list = it->second.list;
  const std::uint32_t hi = offset + size;
  const auto kept = std::partition(list.begin(), list.end(), [&](const auto& d) {
    return !derived_from_entries(*d.first, d.second, gpa_page, offset, hi);
  });
  if (kept == list.begin()) {  // every mapping used the entries written
    release_pt_page(gpa_page);
    return;
  }
  ++stats.pt_writes;
  ++pt_release_gen_;  // the monitor's remembered walks through this table
  std::vector<Derivation> dropped(kept, list.end());
  list.erase(kept, list.end());
  drop_derived(dropped);
}

void ShadowMmu::note_code_derivation(Region* r, std::uint32_t la, const WalkResult& w) {
  const std::uint32_t la_page = la & ~0xfffu;
  r->code_pages.insert(la_page);
  trace_tables(r, la_page, w);
}

void ShadowMmu::invlpg(std::uint64_t la) {
  const auto la_high = static_cast<std::uint32_t>(la >> 32);
  const std::uint32_t la_page = static_cast<std::uint32_t>(la) & ~0xfffu;
  for (auto& r : regions_) {
    if (r->key.la_high != la_high) continue;
    unmap(r.get(), la_page);
    drop_region_code_page(r.get(), la_page);
  }
}

void ShadowMmu::set_watched_pages(const std::uint64_t* pages, unsigned n) {
  for (unsigned i = 0; i < n_watched_; ++i) invlpg(watched_[i]);  // mapped again on their next access
  n_watched_ = std::min(n, 8u);
  for (unsigned i = 0; i < n_watched_; ++i) {
    watched_[i] = pages[i] & kPageMask;
    invlpg(watched_[i]);
  }
}

void ShadowMmu::drop_all() {
  note_block_maps_changed();
  for (auto& r : regions_) {
    mmap(r->base, kRegionSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    r->maps.clear();
    r->blocks.clear();
    r->code_pages.clear();
    madvise(r->fast, kFastTableBytes, MADV_DONTNEED);
  }
  rmap_.clear();
  for (const auto& d : derived_) set_traced(d.first, kTracedTable, false);
  derived_.clear();
  ++pt_release_gen_;
}

void ShadowMmu::collect_dirty(std::vector<std::uint64_t>& bitmap) {
  const std::size_t words = (phys_.size / 4096 + 63) / 64;
  if (!dirty_logging_) {
    dirty_logging_ = true;
    dirty_.assign(words, 0);
    bitmap.assign(words, ~0ull);  // everything may have been written before logging began
    if (const std::uint64_t pages = phys_.size / 4096; pages % 64) bitmap.back() = (1ull << (pages % 64)) - 1;
    for (auto& [gpa, v] : rmap_) set_prot_all(gpa);
    return;
  }
  bitmap = dirty_;
  std::fill(dirty_.begin(), dirty_.end(), 0);
  for (std::size_t w = 0; w < words; ++w) {
    for (std::uint64_t bits = bitmap[w]; bits; bits &= bits - 1) {
      const std::uint64_t gpa = (w * 64 + static_cast<std::uint64_t>(__builtin_ctzll(bits))) << 12;
      set_prot_all(gpa);
    }
  }
}

void ShadowMmu::forget_blocks(const std::vector<DroppedBlock>& dropped) {
  note_block_maps_changed();
  for (auto& r : regions_) {
    if (r->blocks.empty()) continue;
    for (const DroppedBlock& d : dropped) {
      auto it = r->blocks.find(d.eip);
      if (it != r->blocks.end() && it->second == d.block) r->blocks.erase(it);
      FastEntry& f = r->fast[d.eip & 0xffff];
      if (static_cast<std::uint32_t>(~f.neg_eip) == d.eip && f.host == d.entry) f = FastEntry{};
    }
  }
}

void ShadowMmu::clear_block_maps() {
  note_block_maps_changed();
  for (auto& r : regions_) {
    r->blocks.clear();
    r->code_pages.clear();
    madvise(r->fast, kFastTableBytes, MADV_DONTNEED);
  }
}

}  // namespace modevisor::bt
