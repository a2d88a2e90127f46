// BT64's per-vCPU block of memory that translated 64-bit code reaches
// through r15: the context (guest registers at exits, exit reason), the poll
// page, the indirect-branch table and the slot table that confines every
// guest memory access (DESIGN.md, "BT64: guest memory").
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace modevisor::bt::bt64 {

enum ExitReason64 : std::uint64_t {
  kExit64Dispatch = 0,  // continue at next_rip (patch_site != 0: a chainable jump)
  kExit64Indirect = 1,  // the indirect-branch table missed: continue at next_rip
  kExit64Special = 2,   // next_rip is an instruction translated code does not run: the monitor's
  kExit64Fault = 3,     // set by the fault handler
  kExit64Interrupt = 4, // the poll page was revoked: look at the platform at a block boundary
};

// Guest registers by encoding: RAX RCX RDX RBX RSP RBP RSI RDI R8-R15.
// While translated code runs, RAX..R11 (but RSP) are in the same host
// registers, RSP in host r14, and R12-R15 stay here (host r12/r13 are the
// engine's scratch, r15 this block); at an exit all sixteen are here.
struct alignas(64) Context64 {
  std::uint64_t gpr[16];        // 0x00
  std::uint64_t rflags;         // 0x80 host RFLAGS image: guest arithmetic flags + DF
  std::uint64_t host_rsp;       // 0x88
  std::uint64_t next_rip;       // 0x90
  std::uint64_t patch_site;     // 0x98 the rel32 to patch for a chainable exit, else 0
  std::uint64_t exit_reason;    // 0xa0
  std::uint64_t indirect_hits;  // 0xa8
  std::uint64_t seg_base[2];    // 0xb0 FS, GS bases (added to FS:/GS: operands at run time)
  std::uint64_t spill;          // 0xc0 translated code's one spill slot (an indirect call's target)
  std::uint64_t rcx_spill;      // 0xc8 guest RCX while the indirect lookup borrows it
  // The guest's RFLAGS beyond the arithmetic flags and DF: IF alone (0 or
  // 0x200; CLI at CPL 0 clears it in translated code), and the rest (IOPL,
  // AC, ID, ..., bit 1), which PUSHFQ merges into the image it pushes.
  std::uint64_t vif;            // 0xd0
  std::uint64_t sysflags;       // 0xd8
  std::uint64_t host_saved[4];  // 0xe0 unused by code; keeps the layout open
  // The guest's x87/MMX/SSE state.  It is loaded into the host FPU lazily:
  // a block's first FPU/SSE instruction is preceded by `call [r15 +
  // fpu_load]`, which runs FXRSTOR64 once per entry and then points at a bare
  // RET; leaving translated code saves it back (FXSAVE64) only if loaded.
  std::uint64_t fpu_load;       // 0x100
  std::uint64_t fpu_live;       // 0x108 nonzero: the guest's state is in the host FPU
  std::uint32_t host_mxcsr;     // 0x110 the host's MXCSR and x87 control word, given back at exits
  std::uint16_t host_fcw;       // 0x114
  alignas(64) std::uint8_t guest_fx[512];  // 0x140 FXSAVE image (the VCPU's owner while it runs)
};
static_assert(offsetof(Context64, fpu_load) == 0x100);
static_assert(offsetof(Context64, guest_fx) % 16 == 0);
static_assert(offsetof(Context64, rflags) == 0x80);
static_assert(offsetof(Context64, seg_base) == 0xb0);
static_assert(sizeof(Context64) <= 4096);

// The layout behind r15.
inline constexpr std::int32_t kPollOffset64 = 4096;   // one page; PROT_NONE makes blocks exit
inline constexpr std::int32_t kFastOffset64 = 8192;   // indirect-branch table: 65536 x {-(rip+1), host}
inline constexpr std::size_t kFastEntries64 = 65536;
inline constexpr std::int32_t kSlotTableOffset = kFastOffset64 + static_cast<std::int32_t>(kFastEntries64 * 16);

// Guest memory is confined by a table with one entry per 1 GiB of the 64-bit
// address space (index = address >> 30, 2^34 entries: every address a guest
// can form, non-canonical ones included, has its own entry).  An entry holds
// the bias that turns a guest-linear address into the host address of the
// shadow page that maps it (host = bias + guest).  Entries of slots that are
// not mapped hold kGuardBias, which makes the host address non-canonical for
// every guest address (the host's #GP: the engine emulates or raises the
// guest's fault); pages of the table that hold no mapped slot are never
// accessible (the load of the entry faults instead).  128 GiB of address
// space are reserved for it, a page is backed only once a slot in it is set.
inline constexpr unsigned kSlotShift = 30;
inline constexpr std::uint64_t kSlotBytes = 1ull << kSlotShift;
inline constexpr std::uint64_t kSlotEntries = 1ull << (64 - kSlotShift);
inline constexpr std::uint64_t kGuardBias = 1ull << 63;

struct FastEntry64 {
  std::int64_t neg_rip;  // -(rip + 1): an all-zero entry never hits
  std::uint64_t host;
};

class ContextBlock {
 public:
  ContextBlock();
  ~ContextBlock();
  ContextBlock(const ContextBlock&) = delete;
  ContextBlock& operator=(const ContextBlock&) = delete;

  Context64* ctx() const { return reinterpret_cast<Context64*>(base_); }
  std::uint8_t* base() const { return base_; }

  // Guest slot `slot` (addresses [slot << 30, (slot + 1) << 30)) maps to host
  // address bias + guest address.  The host must guard the bytes after the
  // slot's last page (an access that crosses into the next slot), unless the
  // next slot has the same bias.
  void set_slot(std::uint64_t slot, std::uint64_t bias);
  void clear_slot(std::uint64_t slot);
  std::uint64_t slot_bias(std::uint64_t slot) const;
  void clear_all_slots();

  // Whether a host fault address is a load of an unbacked table page, and the
  // guest slot it was for.
  bool is_table_miss(std::uintptr_t fault_address, std::uint64_t* slot) const;

  void set_fast(std::uint64_t rip, const void* host);
  void clear_fast();
  // Revoke / restore the poll page (translated code exits at the next block).
  void revoke_poll();
  void restore_poll();

 private:
  std::uint64_t* table() const { return reinterpret_cast<std::uint64_t*>(base_ + kSlotTableOffset); }
  void back_table_page(std::uint64_t slot);
  std::uint8_t* base_ = nullptr;
  std::size_t size_ = 0;
  // Fast-table entries set since the last clear_fast (overflow: too many to list).
  std::vector<std::uint32_t> fast_used_;
  bool fast_overflow_ = false;
  // Table pages backed so far (bit per 4 KiB page of the table: 2^34 * 8 / 4096 = 2^25 pages).
  std::uint64_t* backed_ = nullptr;
};

}  // namespace modevisor::bt::bt64
