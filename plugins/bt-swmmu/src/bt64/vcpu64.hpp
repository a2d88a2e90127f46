// BT64's virtual CPU: a long-mode guest (64-bit and compatibility-mode code)
// run by the BT64 translator, its memory confined by the slot table and
// backed by the shadow MMU's regions (one per 4 GiB range of the 64-bit
// linear space a view uses), the instructions translated code leaves to the
// monitor emulated by Emulator64, events delivered by long_mode_events.
// The architectural state has one owner, `state_` (api::VcpuState), except
// the general registers and arithmetic flags, which live in the context
// while translated code runs and are synced at each monitor step.
#pragma once

#include <modevisor/api/monitor.hpp>

#include <array>
#include <atomic>
#include <csetjmp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bt64/context_block.hpp"
#include "bt64/long_mode_events.hpp"
#include "bt64/translator64.hpp"
#include "cpu_identity.hpp"
#include "host_signals.hpp"
#include "host_tick.hpp"
#include "shadow.hpp"

namespace modevisor::bt::bt64 {

struct Vcpu64Counters {
  std::uint64_t dispatches = 0, cache_hits = 0, monitor_steps = 0, table_misses = 0, guard_faults = 0;
  std::uint64_t shadow_fills = 0, guest_page_faults = 0, events = 0, interrupts = 0, code_flushes = 0;
  std::uint64_t unchains = 0, code_page_writes = 0, remapped_code = 0;
};

class Vcpu64 final : public SignalTarget {
 public:
  Vcpu64(api::GuestMemory& mem, api::Platform& platform, api::Logger& log, unsigned index, const CpuidModel& cpuid);
  ~Vcpu64() override;
  Vcpu64(const Vcpu64&) = delete;
  Vcpu64& operator=(const Vcpu64&) = delete;

  api::RunExit run();
  void kick();
  api::VcpuState save() const;
  void load(const api::VcpuState& s);
  void add_counters(api::Counters& out) const;
  bool handle_signal(int sig, void* info, void* uctx) override;

  const Vcpu64Counters& counters() const { return counters_; }

 private:
  class Monitor;  // the monitor's view of guest memory and devices (LinearMemory, Emulator64Env)
  friend class Monitor;

  enum class Step { Continue, Stop, Shutdown, Error };
  // What the fault handler found in translated code (see handle_signal).
  enum class FaultKind : std::uint8_t { None, PageFault, Emulate, Interrupt, DivideError, FpuError };

  unsigned cpl() const { return state_.cs.selector & 3u; }
  bool compat() const { return !state_.cs.l; }
  // RIP as a linear address (EIP in compatibility mode: CS is flat there).
  std::uint64_t linear_rip() const { return compat() ? static_cast<std::uint32_t>(state_.rip) : state_.rip; }
  // The instruction at `bytes` in the current flavour (64-bit or compatibility mode).
  bool decode(const std::uint8_t* bytes, std::size_t size, ZydisDecodedInstruction* insn,
              ZydisDecodedOperand* ops) const;
  PagingRegs paging() const;

  // The context <-> state_ (general registers, RFLAGS, FS/GS bases).
  void state_to_context();
  void context_to_state();

  // Slot table for the current view: ranges are mapped on demand and all
  // forgotten when the view (paging registers, CPL) changes.
  void check_view();
  void forget_ranges();
  // The 4 GiB range `high` (bits 63:32) of the current view: its region's
  // shadow pages behind the range's four slots.  False: not canonical.
  bool map_range(std::uint32_t high);

  Step step();
  Step run_block(Block64* b);
  Step monitor_step();  // the instruction at RIP, emulated
  // A plain instruction run alone by translated code with its memory operand
  // on stage_ (handled = false: not such an instruction).
  // An FPU/SIMD instruction at the monitor: the fault CR0/CR4 or the CPU
  // model give it (handled = false: not one, or one that runs).
  Step fpu_step(const std::uint8_t* bytes, std::size_t size, bool* handled);
  // An unmasked x87/SIMD exception in translated code (host SIGFPE): #MF, #XM or #UD.
  Step fpu_exception();
  // The guest's FXSAVE image into the context (RESET's state if empty).
  void load_fpu_image(const std::array<std::uint8_t, 512>& fxsave);
  Step run_staged(const std::uint8_t* bytes, std::size_t size, bool* handled);
  // As large as the largest operand a plain instruction has (FXSAVE64's 512 bytes).
  alignas(64) std::uint8_t stage_[512] = {};
  Step deliver(std::uint8_t vector, bool has_error, std::uint32_t error, EventKind kind);
  Step deliver_fault(const Fault& f, std::uint64_t cr2);
  // The same from the dispatcher, where the registers are in the context.
  Step deliver_with_context(const Fault& f, std::uint64_t cr2);
  Step take_interrupt_if_any();
  Block64* block_at_rip(Step* failed);
  // Every translation dropped and its pages released (a full cache, the
  // FPU gate changed, a new state loaded).
  void flush_translations();
  // A new mapping: chains and the indirect-branch table undone (blocks stay,
  // checked against their code pages when found).
  void unchain_translations();
  // A code page written: its blocks dropped, the page released.
  void code_page_written(std::uint64_t page);
  void protect_code_page(std::uint64_t page);
  std::vector<std::uint64_t> code_pages_;

  api::GuestMemory& mem_;
  api::Platform& platform_;
  api::Logger& log_;
  unsigned index_;
  const CpuidModel& cpuid_;
  std::unique_ptr<ShadowMmu> shadow_;
  std::unique_ptr<ContextBlock> block_;
  std::unique_ptr<Translator64> translator_;
  std::unique_ptr<Monitor> monitor_;

  Vendor vendor_ = Vendor::Intel;
  unsigned max_phys_bits_ = 36;
  bool pages_1g_ = false;
  api::VcpuState state_;
  bool halted_ = false;
  bool trace_ = false;
  bool interrupt_shadow_ = false;
  // The view the slot table was filled for, and the ranges filled.
  // The regions depend on the user/supervisor view and, below CPL 3, on
  // EFLAGS.AC (SMAP suspended: STAC/CLAC, POPF); a change forgets the ranges.
  struct View {
    std::uint64_t cr0 = 0, cr3 = 0, cr4 = 0, efer = 0;
    unsigned cpl = 0;
    bool smap_suspended = false;
    bool operator==(const View&) const = default;
  };
  View current_view() const;
  View view_{~0ull};
  std::vector<std::uint32_t> mapped_ranges_;
  std::uint64_t evictions_seen_ = 0;
  bool last_compat_ = false;  // the flavour the indirect-branch table was filled for

  std::uint64_t pending_patch_ = 0;
  std::uint64_t pending_patch_rip_ = 0;
  FaultKind fault_kind_ = FaultKind::None;
  std::uint64_t fault_address_ = 0;
  std::uint32_t fault_error_ = 0;

  std::atomic<bool> kicked_{false};
  std::atomic<bool> poll_needed_{true};
  bool in_run_ = false;
  bool in_guest_ = false;
  HostTick tick_;
  sigjmp_buf bug_jmp_;
  std::string bug_message_;
  Vcpu64Counters counters_;
};

}  // namespace modevisor::bt::bt64
