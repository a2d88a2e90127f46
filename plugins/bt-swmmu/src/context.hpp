// The per-vCPU context block that translated code addresses through r15.
// Field offsets are baked into emitted code: keep this a standard-layout POD.
#pragma once

#include <cstddef>
#include <cstdint>

#include "segment_limits.hpp"

namespace modevisor::bt {

enum ExitReason : std::uint64_t {
  kExitDispatch = 0,   // continue at next_eip (patch_site != 0: chainable jump)
  kExitInterrupt = 1,  // go flag was cleared at a block entry
  kExitSpecial = 2,    // next_eip holds an instruction the monitor emulates
  kExitFault = 3,      // set by the signal handler (see fault_* fields)
  kExitIndirectMiss = 4,  // inline lookup missed: continue at next_eip
  kExitStiWindow = 5,     // inline STI/POPF opened IF while an interrupt waits (STI: with shadow)
  // Set by a monitor call (Context::monitor_fn) that did not continue in translated code:
  kExitMonitorFault = 6,  // an emulated instruction raised a guest exception: deliver it
  kExitMonitorError = 7,  // the monitor cannot go on (the vCPU's bug message says why)
  kExitTripleFault = 8,   // delivering an exception from a monitor call shut the vCPU down
};

enum class FaultKind : std::uint32_t {
  None,
  PageFault,       // true guest #PF: fault_error, fault_addr
  Mmio,            // access outside RAM: emulate the instruction
  ProtectedWrite,  // write to a traced page-table or code page: fault_addr = gpa
  Exception,       // other guest exception: fault_vector
  Wrapped,         // an offset that wraps past 4 GiB reached a region guard: emulate the instruction
};

struct alignas(64) Context {
  union {                      // 0x00 guest EAX..EDI (ESP lives in host r14 while running)
    std::uint64_t gpr[8];
    std::uint32_t g32[16];     // g32[2*i]: low half of gpr[i] (GCC union punning)
  };
  std::uint64_t rflags;        // 0x40 host RFLAGS image: guest arithmetic flags + DF
  std::uint64_t host_rsp;      // 0x48
  std::uint64_t go;            // 0x50 unused (see kPollOffset)
  std::uint64_t next_eip;      // 0x58
  std::uint64_t patch_site;    // 0x60 address of the rel32 to patch, 0 if none
  std::uint64_t exit_reason;   // 0x68
  std::uint64_t fast_table;    // 0x70 current region's guest EIP -> host code table
  std::uint64_t seg_base[6];   // 0x78 ES CS SS DS FS GS bases (runtime-added for FS/GS)
  std::uint64_t indirect_hits; // 0xa8
  std::uint32_t host_mxcsr;    // 0xb0
  std::uint16_t host_fcw;      // 0xb4
  std::uint16_t pad0;
  std::uint32_t sysflags;      // 0xb8 EFLAGS bits other than CF PF AF ZF SF OF DF (IF, IOPL, ...)
  std::uint32_t irq_hint;      // 0xbc nonzero: an interrupt waited for IF at the last dispatch
  std::uint64_t fpu_load;      // 0xc0 called before a block's first FPU/SSE instruction (a bare RET once loaded)
  std::uint64_t fpu_live;      // 0xc8 nonzero: the guest's FPU/SSE state is in the host FPU
  // Monitor calls: translated code that reaches an instruction the monitor
  // emulates calls monitor_fn(monitor_obj) without leaving the translation
  // cache; it returns the host code to continue at, or 0 to leave (with
  // exit_reason and next_eip set).  No monitor_fn: a kExitSpecial exit.
  std::uint64_t monitor_fn;    // 0xd0 std::uint64_t (*)(void*) noexcept
  std::uint64_t monitor_obj;   // 0xd8
  // The active shadow region's base (guest linear 0), held in host r12 by
  // translated code: a CPL switch changes this word, not a kernel setting.
  std::uint64_t region_base;   // 0xe0
  // FS, GS: 0, or 2^47 while the register holds a null selector in protected
  // mode.  Translated code adds it to an FS/GS access's host address, which
  // then is non-canonical: the host's #GP becomes the guest's #GP(0).
  std::uint64_t null_fs_gs_bias[2];  // 0xe8
  std::uint64_t pad1[1];
  alignas(16) std::uint8_t guest_fx[512];  // 0x100

  // Set by the fault handler (monitor side only).
  FaultKind fault_kind;
  std::uint32_t fault_error;
  std::uint64_t fault_addr;
  std::uint32_t fault_vector;
  std::uint32_t fault_eip;

  // The limits flavour's windows (segment_limits.hpp), ES CS SS DS FS GS:
  // [0] for reads, [1] for writes; kept with the bases by sync_seg_bases().
  OffsetWindow seg_window[2][6];
  OffsetWindow code_window;       // CS's limit for near-branch targets (#GP(0) at the branch)
  std::int64_t limit_scratch[2];  // translated code's window check spills here
};

static_assert(offsetof(Context, rflags) == 0x40);
static_assert(offsetof(Context, go) == 0x50);
static_assert(offsetof(Context, fast_table) == 0x70);
static_assert(offsetof(Context, seg_base) == 0x78);
static_assert(offsetof(Context, indirect_hits) == 0xa8);
static_assert(offsetof(Context, sysflags) == 0xb8);
static_assert(offsetof(Context, fpu_load) == 0xc0);
static_assert(offsetof(Context, monitor_fn) == 0xd0);
static_assert(offsetof(Context, region_base) == 0xe0);
static_assert(offsetof(Context, null_fs_gs_bias) == 0xe8);
inline constexpr std::uint64_t kNullSegmentBias = 1ull << 47;
static_assert(offsetof(Context, guest_fx) == 0x100);

// Every block starts with a load from the poll page at r15 + kPollOffset.
// To make translated code return to the dispatcher, the page is made
// PROT_NONE (kick, host timer tick); the load faults at a block boundary and
// the fault handler exits with kExitInterrupt.  One load, no flags, no branch.
inline constexpr std::int32_t kPollOffset = 4096;
// A refused segment-limit check loads from r15 + kLimitTrapOffset + vector, a
// page that is never accessible: the fault handler raises that vector (#GP(0)
// or #SS(0)) at the instruction, with the state the page-fault path restores.
inline constexpr std::int32_t kLimitTrapOffset = 8192;
inline constexpr std::size_t kContextAlloc = 12288;  // context page + poll page + limit-trap page
static_assert(sizeof(Context) <= 4096);

// Fast lookup table: 65536 entries indexed by the low 16 bits of the guest
// EIP.  neg_eip holds -(eip+1) so that neg_eip + eip + 1 == 0 on a hit; an
// all-zero entry never hits.
struct FastEntry {
  std::int64_t neg_eip;
  std::uint64_t host;
};
// A translation dropped because its code page was written: what the region
// block maps and lookup tables must forget (only if they still name it).
struct DroppedBlock {
  std::uint32_t eip;  // linear start (CS base + EIP)
  const void* block;
  std::uint64_t entry;  // host entry (0: none)
};
// The lookup key of code at CS base `cs_base`, offset `eip`: its low 32 bits
// are the linear address (so the table index and page drops work on linear
// addresses), the high half tells apart aliases of one linear address under
// different CS bases.  Flat code (base 0): the key is the EIP.  Translated
// code forms it as a 64-bit add of the zero-extended EIP and cs_base * (2^32 + 1).
inline std::uint64_t fast_key(std::uint32_t cs_base, std::uint32_t eip) {
  return std::uint64_t{eip} + std::uint64_t{cs_base} + (std::uint64_t{cs_base} << 32);
}
inline constexpr std::size_t kFastEntries = 65536;
inline constexpr std::size_t kFastTableBytes = kFastEntries * sizeof(FastEntry);

}  // namespace modevisor::bt
