// Guest page-table walker and shadow address spaces (the software MMU).
//
// A shadow address space ("region") is a 4 GiB PROT_NONE reservation of host
// address space.  Guest linear page LA mapped by the guest's tables to guest
// physical page P is an mmap(MAP_FIXED|MAP_SHARED) of the guest-RAM memfd at
// offset P into region_base + LA, with the protection the guest's tables
// allow for the region's privilege view.  Translated code reaches guest memory
// as [r12 + LA] with r12 = region base (Context::region_base), so the host MMU
// does the work.  Guards of 2 GiB on either side, never mapped, catch a
// register + displacement whose 32-bit sum would wrap (the host adds in 64
// bits): the fault handler has the monitor emulate that instruction.
// A long-mode guest's linear space has one region per 4 GiB-aligned range it
// uses (RegionKey::la_high), which maps linear address (la_high << 32) + LA
// at region_base + LA; BT64 points its confinement table there.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "context.hpp"

namespace modevisor::bt {

// Control registers relevant to translation.
struct PagingRegs {
  std::uint64_t cr0 = 0x60000010, cr3 = 0, cr4 = 0, efer = 0;
  // EFLAGS.AC at CPL < 3: supervisor accesses may reach user pages under
  // SMAP.  (QEMU's rule, for implicit supervisor accesses too; at CPL 3 every
  // supervisor access is implicit and checked.)
  bool smap_suspended = false;
  // CPU-model facts the 4-level walk needs (CPUID 0x80000001 EDX.Page1GB and
  // 0x80000008 EAX[7:0]).  52 is the width the PAE walk's address masks
  // assume (bits 51:12); the long-mode walk treats entry bits 51:max_phys_bits
  // as reserved, so a model with fewer bits must say so.
  bool pages_1g = false;
  unsigned max_phys_bits = 52;
  bool paging() const { return (cr0 & 0x80000001u) == 0x80000001u; }
  // IA-32e paging: 4-level tables, 64-bit linear addresses.
  bool long_mode() const { return paging() && ((efer >> 10) & 1); }
  bool pae() const { return (cr4 >> 5) & 1; }
  bool pse() const { return (cr4 >> 4) & 1; }
  bool wp() const { return (cr0 >> 16) & 1; }
  bool nxe() const { return (efer >> 11) & 1; }
  bool smep() const { return (cr4 >> 20) & 1; }
  bool smap() const { return (cr4 >> 21) & 1; }
  // Supervisor data accesses to user pages fault.
  bool smap_enforced() const { return smap() && !smap_suspended; }
};

struct Access {
  bool write = false;
  bool user = false;   // CPL 3 access
  bool fetch = false;
};

// #PF error-code bits.
inline constexpr std::uint32_t kPfP = 1, kPfW = 2, kPfU = 4, kPfRsvd = 8, kPfI = 16;

struct WalkResult {
  bool ok = false;
  std::uint32_t error = 0;      // #PF error code when !ok
  std::uint64_t pa = 0;         // guest-physical address of the byte
  bool user = true;             // page reachable from CPL 3
  bool writable = true;         // guest entries allow writes (R/W chain)
  bool dirty = true;            // final entry has D set (after this walk)
  bool accessed = true;         // every entry used had A set before this walk
  bool large = false;           // a 4 MiB, 2 MiB or 1 GiB page
  bool global = false;          // the final entry's G bit (takes effect only under CR4.PGE)
  bool nx = false;              // execute-disable somewhere on the chain (under EFER.NXE)
  std::uint64_t pt_pages[4] = {};  // guest-physical pages of the tables used, root first
  int n_pt = 0;
};

// Guest physical memory as the walker sees it.
struct PhysMem {
  std::uint8_t* base = nullptr;
  std::uint64_t size = 0;
  std::uint64_t read64(std::uint64_t pa) const;   // 0 outside RAM
  std::uint32_t read32(std::uint64_t pa) const;
  void or32(std::uint64_t pa, std::uint32_t bits);  // atomic, ignored outside RAM
  // Told about every page or32 really changed (A/D bits in guest tables are
  // guest-visible RAM writes: dirty logging must see them).
  void (*on_write)(void* ctx, std::uint64_t gpa_page) = nullptr;
  void* on_write_ctx = nullptr;
};

// Walk the guest tables for `la`; with set_ad, set Accessed (and Dirty on a
// write) in the guest entries like the hardware does, once the walk succeeds.
// Outside long mode a linear address has 32 bits: the upper half of `la` is
// ignored.  In long mode bits 63:48 are ignored too: a non-canonical address
// is #GP or #SS, never #PF, so the caller checks it first (canonical48).
WalkResult walk(const PhysMem& mem, const PagingRegs& regs, std::uint64_t la, Access acc, bool set_ad);

// Bits 63:47 all equal (4-level paging's 48-bit linear addresses).
inline bool canonical48(std::uint64_t la) {
  return static_cast<std::uint64_t>(static_cast<std::int64_t>(la << 16) >> 16) == la;
}

// Region key: page-table root plus everything that changes the meaning of
// the tables or the view, and which 4 GiB of the linear space it maps.
struct RegionKey {
  std::uint64_t cr3 = 0;
  // bit0 paging, bit1 PAE, bit2 PSE, bit3 WP, bit4 NXE, bit5 user view,
  // bit6 SMEP and bit7 SMAP enforced (supervisor view with paging only),
  // bit8 long mode (4-level tables: never the same view as a 32-bit one)
  std::uint32_t mode = 0;
  // Bits 63:32 of the linear addresses the region maps (BT64 gives each
  // 4 GiB-aligned range of the 64-bit space it uses a region of its own).
  // Always 0 outside long mode.
  std::uint32_t la_high = 0;
  bool operator==(const RegionKey&) const = default;
};
inline constexpr std::uint32_t kModeLong = 1u << 8;
// la_high counts only in long mode (a 32-bit view has no other range).  In
// long mode it must name a canonical range: the walk ignores bits 63:48, so
// a region for a non-canonical range would alias a canonical one (those
// addresses are #GP or #SS, which the caller raises before any fill).
RegionKey make_region_key(const PagingRegs& regs, bool user_view, std::uint32_t la_high = 0);

struct Region {
  RegionKey key;
  std::uint8_t* base = nullptr;
  FastEntry* fast = nullptr;
  std::uint64_t last_use = 0;
  struct Map {
    std::uint64_t gpa_page;
    bool guest_writable;  // the guest's tables (incl. D) allow writes now
    int prot = -1;        // the host protection it has (set_prot_all skips an unchanged one)
  };
  // Keyed by the low 32 bits of the linear address (the offset from `base`;
  // the whole address where la_high is 0): linear() gives the rest.
  std::unordered_map<std::uint32_t, Map> maps;             // LA page -> mapping
  std::unordered_map<std::uint32_t, void*> blocks;          // guest EIP -> Block* (dispatcher)
  std::unordered_set<std::uint32_t> code_pages;             // LA pages with entries in `blocks`
  bool user_view() const { return (key.mode >> 5) & 1; }
  bool long_mode() const { return (key.mode & kModeLong) != 0; }
  // The guest linear address at offset `la32` of the region.
  std::uint64_t linear(std::uint32_t la32) const { return (std::uint64_t{key.la_high} << 32) | la32; }
};

enum class FillResult { Mapped, GuestFault, Mmio, ProtectedWrite, Repeat };

struct ShadowStats {
  std::uint64_t hidden_faults = 0, true_faults = 0, pt_writes = 0;
  std::uint64_t switches = 0, switch_hits = 0, rebuilds = 0, evictions = 0, map_resets = 0, dirty_log_faults = 0;
  std::uint64_t prefilled = 0;  // pages mapped ahead of a hidden fault
};

class ShadowMmu {
 public:
  static constexpr std::size_t kMaxRegions = 64;
  static constexpr std::uint64_t kRegionSize = 1ull << 32;
  // Never mapped: [region base + 32-bit register + disp32] lands in them when the guest's sum wraps.
  static constexpr std::uint64_t kGuardBelow = 1ull << 31;
  static constexpr std::uint64_t kGuardAbove = (1ull << 31) + (1ull << 16);  // + the widest access
  static constexpr std::uint64_t kReservation = kGuardBelow + kRegionSize + kGuardAbove;

  ShadowMmu(std::uint8_t* ram, std::uint64_t ram_size, int fd);
  ~ShadowMmu();
  ShadowMmu(const ShadowMmu&) = delete;
  ShadowMmu& operator=(const ShadowMmu&) = delete;

  const PhysMem& phys() const { return phys_; }

  // Find or create the region for the key (counts switches/rebuilds).
  Region* activate(const RegionKey& key);
  // Makes `r` (found by its key earlier, and not evicted since: see
  // stats.evictions) the active region again, as activate would.
  void reactivate(Region* r) {
    r->last_use = ++clock_;
    if (active_ == r) return;
    ++stats.switches;
    ++stats.switch_hits;
    active_ = r;
  }
  Region* active() const { return active_; }
  // The region whose 4 GiB hold `host_addr`; `la` = the offset in it (the
  // low half of the linear address: r->linear(*la) is all of it).
  bool contains(const void* host_addr, Region** region, std::uint32_t* la) const;
  // Whether `host_addr` is in a guard of `r`; `la` = the guest linear address
  // it wraps to: the 32-bit sum the guest formed (BT32's meaning, for any region).
  static bool in_guard(const Region* r, const void* host_addr, std::uint32_t* la);
  // The same with all of the address: in a long-mode region, the range's
  // start plus the (signed) offset from `base`, as 64-bit addresses do not
  // wrap at 4 GiB (an access that crossed the end of its range reached the
  // next one); in a 32-bit region the 32-bit sum, zero-extended.
  static bool in_guard(const Region* r, const void* host_addr, std::uint64_t* la);

  // Handle an access fault at offset `la` of `r` (linear address
  // r->linear(la)).  On GuestFault, *out is the #PF error code; on
  // Mmio/ProtectedWrite, *out is the guest-physical address.
  FillResult fill(Region* r, const PagingRegs& regs, std::uint32_t la, bool write, std::uint64_t* out);

  // Translated code lives on this guest-physical page: write-protect it.
  void protect_code_page(std::uint64_t gpa_page);
  bool is_code_page(std::uint64_t gpa_page) const {
    const std::uint64_t pfn = gpa_page >> 12;
    return pfn < traced_.size() ? (traced_[pfn] & kTracedCode) != 0 : code_pages_.count(gpa_page) != 0;
  }
  bool is_pt_page(std::uint64_t gpa_page) const {
    const std::uint64_t pfn = gpa_page >> 12;
    return pfn < traced_.size() ? (traced_[pfn] & kTracedTable) != 0 : derived_.count(gpa_page) != 0;
  }
  // The guest writes a traced page-table page: drop every shadow mapping
  // derived from it and stop tracing it (re-traced on the next walk through it).
  void release_pt_page(std::uint64_t gpa_page, bool count = true);
  // The monitor wrote `size` bytes at `offset` of the traced page-table page
  // `gpa_page` on the guest's behalf: drop only the shadow mappings derived
  // from the entries written; the table stays traced for the others (a
  // kernel filling in one PTE no longer unmaps every page of its table).
  void pt_entries_written(std::uint64_t gpa_page, std::uint32_t offset, unsigned size);
  // How many (region, LA page) derivations the table page lists (stale ones included).
  std::size_t derivations(std::uint64_t gpa_page) const {
    auto it = derived_.find(gpa_page);
    return it == derived_.end() ? 0 : it->second.list.size();
  }
  // Changes whenever a page stops being traced as a page table (a guest or
  // monitor write released it, or every shadow was dropped): a walk whose
  // tables were all traced is still exact while this stays the same.
  std::uint64_t pt_release_generation() const { return pt_release_gen_; }
  // Changes whenever an entry leaves a region's block map or a region goes
  // (an entry added, too: the caller says so), so a lookup remembered
  // beside the maps is exact while this stays the same.
  std::uint64_t block_map_generation() const { return block_map_gen_; }
  void note_block_maps_changed() { ++block_map_gen_; }
  // Let one guest instruction write a traced page (it may map itself); then
  // end_write_through() drops whatever was derived from it meanwhile and
  // restores the protection.
  void set_write_through(std::uint64_t gpa_page) { wt_page_ = gpa_page; set_prot_all(gpa_page); }
  void end_write_through();
  // Self-modifying code: the code page is no longer protected.
  void release_code_page(std::uint64_t gpa_page);
  // A code fetch walk through these tables produced translations at offset
  // `la` of `r` (the walk was for r->linear(la)).
  void note_code_derivation(Region* r, std::uint32_t la, const WalkResult& w);

  // INVLPG: drop linear address `la` in every region that maps it (those
  // whose la_high is its upper half: a 32-bit address reaches only la_high 0
  // regions, as before).  Drop everything: drop_all().
  void invlpg(std::uint64_t la);
  // Linear pages no region maps (data breakpoints: every access to them
  // faults and the monitor emulates it); at most 8 (4 ranges x 2 pages).
  // Whole linear addresses: a page watches only the regions of its range,
  // so 32-bit pages watch the la_high 0 regions as before.
  void set_watched_pages(const std::uint64_t* pages, unsigned n);
  void set_watched_pages(const std::uint32_t* pages, unsigned n) {
    std::uint64_t wide[8];
    n = std::min(n, 8u);
    for (unsigned i = 0; i < n; ++i) wide[i] = pages[i];
    set_watched_pages(wide, n);
  }
  bool watched(std::uint64_t la_page) const {
    for (unsigned i = 0; i < n_watched_; ++i)
      if (watched_[i] == la_page) return true;
    return false;
  }
  void drop_all();
  // Forget dispatcher entries (translations were invalidated).
  void clear_block_maps();
  // Forget these translations in every region's block map and lookup table
  // (entries that name another translation stay).
  void forget_blocks(const std::vector<DroppedBlock>& dropped);

  // Dirty logging for migration: while on, guest-writable pages are mapped
  // read-only until their first write after each collection.
  bool dirty_logging() const { return dirty_logging_; }
  // The page's first write in this interval (a fill, an emulated store, an
  // A/D bit): every shadow mapping of it, under any linear address or
  // region, may write from now on, so no later write faults unexplained.
  void mark_dirty(std::uint64_t gpa_page) {
    const std::uint64_t pfn = gpa_page >> 12;
    if (pfn >= dirty_.size() * 64) return;
    std::uint64_t& word = dirty_[pfn / 64];
    const std::uint64_t bit = 1ull << (pfn % 64);
    if (word & bit) return;
    word |= bit;
    set_prot_all(gpa_page);
  }
  // Fills `bitmap` with the pages dirtied since the last call (all pages on
  // the first call, which starts logging) and write-protects every shadow
  // mapping of them again.  Only on the vCPU thread or while it does not run
  // (Vcpu::collect_dirty_pages): no guest write can fall between taking a
  // page's bit and protecting it.
  void collect_dirty(std::vector<std::uint64_t>& bitmap);

  ShadowStats stats;
  // `la_page` is an offset in the region, like the keys of its maps.
  std::function<void(Region*, std::uint32_t la_page)> on_code_page_dropped;

 private:
  void unmap(Region* r, std::uint32_t la_page);
  bool forget(Region* r, std::uint32_t la_page);  // unmap's bookkeeping: true if it was mapped
  void drop_region_code_page(Region* r, std::uint32_t la_page);
  bool map_page(Region* r, std::uint32_t la_page, std::uint64_t gpa_page, int prot);
  void fill_ahead_unpaged(Region* r, std::uint32_t la_page);
  void fill_ahead_paged(Region* r, const PagingRegs& regs, std::uint32_t la_page);
  // Traces the guest tables `w` went through: a write to one of them drops
  // `la_page`'s mapping in `r`.
  void trace_tables(Region* r, std::uint32_t la_page, const WalkResult& w);
  void set_prot_all(std::uint64_t gpa_page);
  void destroy(Region* r);
  int prot_for(const Region::Map& m) const;

  PhysMem phys_;
  int fd_;
  std::vector<std::unique_ptr<Region>> regions_;
  Region* active_ = nullptr;
  std::uint64_t clock_ = 0;
  // gpa page -> shadow mappings of it (reverse map)
  std::unordered_map<std::uint64_t, std::vector<std::pair<Region*, std::uint32_t>>> rmap_;
  // Per traced table page, the (region, LA page) mappings derived from it.
  // A mapping dropped through another of its tables stays listed here (a
  // stale entry only drops a mapping early); the list is weeded of those and
  // of duplicates whenever it has doubled since the last weeding, so a table
  // that stays traced while the pages it maps come and go stays small.
  using Derivation = std::pair<Region*, std::uint32_t>;  // (region, LA page)
  struct Derivations {
    std::vector<Derivation> list;
    std::size_t weed_at = 64;
  };
  std::unordered_map<std::uint64_t, Derivations> derived_;
  static void weed(Derivations& d);
  void drop_derived(std::vector<Derivation>& list);
  static bool derived_from_entries(const Region& r, std::uint32_t la, std::uint64_t gpa_page, std::uint32_t lo,
                                   std::uint32_t hi);
  std::unordered_set<std::uint64_t> code_pages_;
  // The same two facts per page of RAM, for the monitor's writes (one load
  // each instead of a hash lookup): kTracedTable = in derived_, kTracedCode =
  // in code_pages_.
  static constexpr std::uint8_t kTracedTable = 1, kTracedCode = 2;
  std::vector<std::uint8_t> traced_;
  std::uint64_t pt_release_gen_ = 0;
  std::uint64_t block_map_gen_ = 0;
  void set_traced(std::uint64_t gpa_page, std::uint8_t what, bool on) {
    const std::uint64_t pfn = gpa_page >> 12;
    if (pfn >= traced_.size()) return;
    traced_[pfn] = static_cast<std::uint8_t>(on ? traced_[pfn] | what : traced_[pfn] & ~what);
  }
  std::uint64_t wt_page_ = ~0ull;
  std::uint64_t watched_[8] = {};
  unsigned n_watched_ = 0;
  bool dirty_logging_ = false;
  std::vector<std::uint64_t> dirty_;  // one bit per 4 KiB page of RAM
  bool is_dirty(std::uint64_t gpa_page) const {
    const std::uint64_t pfn = gpa_page >> 12;
    return pfn < dirty_.size() * 64 && ((dirty_[pfn / 64] >> (pfn % 64)) & 1);
  }
};

}  // namespace modevisor::bt
