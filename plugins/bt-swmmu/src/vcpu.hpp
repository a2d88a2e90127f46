// One virtual CPU of the BT-swMMU engine: its architectural state, the run
// loop and dispatcher, and the monitor-side emulation of privileged and
// special instructions.  The units it uses are in their own files (see
// DESIGN.md); exit_dispatch.cpp, event_delivery.cpp and
// translated_code_faults.cpp hold member functions of this class.
#pragma once

#include <modevisor/api/monitor.hpp>

#include <array>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <vector>
#include <csetjmp>
#include <cstdint>
#include <memory>
#include <string>

#include "context.hpp"
#include "cpu_identity.hpp"
#include "dirty_page_handoff.hpp"
#include "guest_fault.hpp"
#include "host_signals.hpp"
#include "host_tick.hpp"
#include "monitor_page_walker.hpp"
#include "recent_lookups.hpp"
#include "recent_regions.hpp"
#include "segment_descriptor.hpp"
#include "segment_windows_cache.hpp"
#include "shadow.hpp"
#include "mmio_stage.hpp"
#include "task_state.hpp"
#include "translator.hpp"

namespace modevisor::bt {


struct VcpuCounters {
  std::uint64_t dispatches = 0, cache_hits = 0, special_exits = 0, io_exits = 0, mmio_exits = 0;
  std::uint64_t interrupts = 0, nmis = 0, exceptions = 0, hlt_exits = 0, irq_exits = 0, indirect_misses = 0, irq_window_exits = 0;
  std::uint64_t platform_polls = 0;
  std::uint64_t wrapped_accesses = 0;  // offset sums past 4 GiB caught by a region guard
  // Monitor calls from translated code, and those that went on in translated
  // code without a dispatcher round trip.
  std::uint64_t monitor_calls = 0, monitor_calls_in_cache = 0;
};

class Vcpu final : public SignalTarget {
 public:
  Vcpu(api::GuestMemory& mem, api::Platform& platform, api::Logger& log, unsigned index,
       std::size_t translation_cache_bytes = Translator::kDefaultCacheSize);
  ~Vcpu();

  // The VM's CPU model (api::VmSpec::cpuid): CPUID answers from it, minus
  // the features the engine does not implement, which are returned as
  // "leaf 0x1 ecx bit 28" lines.  Without one, the engine's own P6-class model.
  std::vector<std::string> set_cpu_model(const api::CpuidTable& model);

  api::RunExit run();
  void kick();
  api::VcpuState save() const;
  void load(const api::VcpuState& s);
  void add_counters(api::Counters& out) const;
  // From any thread: pages written since the last call (see ShadowMmu).
  bool collect_dirty_pages(std::vector<std::uint64_t>& bitmap);

  // Test hooks.
  const ShadowMmu& shadow() const { return *shadow_; }
  const Translator& translator() const { return *translator_; }
  std::uint64_t indirect_hits() const { return ctx_->indirect_hits; }

  // Called by the process-wide signal handler.
  bool handle_signal(int sig, void* info, void* uctx) override;

 private:
  // --- state helpers
  std::uint32_t eflags() const;
  void set_eflags(std::uint32_t v);
  std::uint32_t& reg32(unsigned i) { return ctx_->g32[2 * i]; }
  PagingRegs paging() const {
    return PagingRegs{cr0_, cr3_, cr4_, efer_, cpl_ < 3 && (ctx_->sysflags & kEflagsAc) != 0};
  }
  static constexpr std::uint32_t kEflagsAc = 0x40000, kEflagsVm = 0x20000, kEflagsTf = 0x100;
  bool flat() const;
  unsigned cpl() const { return cpl_; }
  bool real_mode() const { return !(cr0_ & 1); }
  bool v86() const { return (ctx_->sysflags & kEflagsVm) != 0; }
  // Segments that are not flat 32-bit ones: the segmented translation flavour.
  bool segmented() const {
    return real_mode() || v86() || !cs_.db || (!ss_.unusable && !ss_.db) || !flat();
  }
  // Guest-linear address of code at `eip` in the current CS.
  std::uint32_t code_linear(std::uint32_t eip) const { return static_cast<std::uint32_t>(cs_.base) + eip; }

  // --- dispatcher
  enum class StepResult { Continue, Stop, Shutdown, Error };
  StepResult step();
  StepResult step_instructions(bool traced_write_step, bool* executed = nullptr);
  StepResult dispatch_exit(std::uint64_t reason, bool stepping);  // exit_dispatch.cpp
  // Looks at the platform (stop, CPU events, interrupt line, timer deadline);
  // true when run() must return Stopped.
  bool poll_platform();

  // --- monitor calls from translated code (monitor_call.cpp)
  static std::uint64_t monitor_call_entry(void* vcpu) noexcept;
  std::uint64_t monitor_call() noexcept;
  std::uint64_t emulate_and_continue();
  bool may_stay_in_cache(bool after_emulation);
  // The translation flavour the guest's mode asks for, without the user bit
  // (that one follows the region view): one rule for the dispatcher and for
  // monitor calls.
  TKey flavour_key() const {
    TKey k = ((cr0_ & 0xc) ? kTKeyFpuTrap : 0) | ((cpl_ == 1 || cpl_ == 2) ? kTKeyRing12 : 0) |
             ((cr4_ & kCr4Smap) ? kTKeySmap : 0) | ((ctx_->sysflags & kEflagsTf) ? kTKeyTrapFlag : 0);
    if (segmented()) {
      k |= kTKeySegmented | (cs_.db ? 0 : kTKeyCode16) | (!ss_.unusable && !ss_.db ? kTKeyStack16 : 0);
      if (v86()) k |= kTKeyV86;
      if (limited()) k |= kTKeyLimits;
    }
    return k;
  }
  std::optional<GuestException> monitor_fault_;  // raised in a monitor call, delivered by the dispatcher
  // What the view (region, flavour) was last set up for in a monitor call;
  // reset by every dispatcher step, which sets the view itself.
  struct CachedView {
    unsigned cpl = ~0u;
    std::uint64_t cr0 = 0, cr3 = 0, cr4 = 0, efer = 0;
    bool smap_suspended = false;  // EFLAGS.AC below CPL 3 (STAC, POPFD): another region view
    const Region* region = nullptr;
    bool operator==(const CachedView&) const = default;
  };
  CachedView view_;
  // The block at `eip` (translated now if need be).  The last lookups are
  // checked here, inline: a monitor call looks up two blocks, and the
  // out-of-line path's frame (a page of code bytes) and saved registers
  // cost more than the check.
  Block* lookup(std::uint32_t eip) {
    if (!(tkey_ & kTKeyLimits) && !single_step_) {
      if (Block* b = recent_lookups_.find(shadow_->block_map_generation(), region_,
                                          static_cast<std::uint32_t>(cs_.base) + eip, eip)) {
        ++counters_.dispatches;
        ++counters_.cache_hits;
        return b;
      }
    }
    return lookup_slow(eip);
  }
  Block* lookup_slow(std::uint32_t eip);
  static bool keeps_view(const Block& b);
  static bool is_port_io(const Block& b);
  void emulate_port_io(const DecodedInsn& d, std::uint32_t eip);
  void activate_region();

  // --- guest memory through the guest's page tables (monitor side)
  std::uint64_t lin_to_phys(std::uint32_t la, bool write, bool user, bool fetch);
  MonitorPageWalker walker_;  // the monitor's walks (those through traced tables last longer)
  void monitor_tlb_flush() { walker_.flush(); }
  void monitor_walks_next_iteration() { walker_.next_iteration(shadow_->pt_release_generation()); }
  std::uint32_t read(std::uint32_t la, unsigned size, bool user, bool fetch = false);
  void write(std::uint32_t la, unsigned size, std::uint32_t v, bool user);
  std::uint64_t read_phys(std::uint64_t pa, unsigned size);
  void write_phys(std::uint64_t pa, unsigned size, std::uint64_t v);
  void note_guest_write(std::uint64_t pa, unsigned size);  // before the monitor writes [pa, pa + size), within a page
  std::uint32_t stack_mask() const { return (ss_.unusable || ss_.db) ? 0xffffffffu : 0xffffu; }
  void push32(std::uint32_t v);
  std::uint32_t pop32();
  // A push or pop of the operand size (2 or 4 bytes) on the 32-bit stack.
  void push(std::uint32_t v, unsigned bytes);
  std::uint32_t pop(unsigned bytes);
  // An event frame's dwords (in push order) / an IRET frame's: as push32 /
  // pop32 one by one, with one walk when they share a page.
  void push_words(const std::uint32_t* words, unsigned n);
  void pop_words(std::uint32_t* words, unsigned n);
  // 8 bytes (descriptors, gates): one walk unless they straddle a page.
  std::uint64_t read_qword(std::uint32_t la, bool user);

  // --- events
  void raise(std::uint8_t vector, bool has_error = false, std::uint32_t error = 0) {
    throw GuestException{vector, has_error, error};
  }
  // A failed check unwinds the emulation like a raise.
  static void require(const Check& c) {
    if (c) throw *c;
  }
  bool deliver_exception(const GuestException& ex);  // false: triple fault
  void deliver(std::uint8_t vector, bool has_error, std::uint32_t error, bool software, std::uint32_t return_eip);

  // --- real mode and virtual-8086 mode (real_and_v86_mode.cpp)
  // A segment register load where selectors are paragraphs: base = sel << 4.
  // Real mode keeps the hidden limit and attributes (as the CPU and QEMU
  // do); virtual-8086 mode sets them (limit 64 KiB, DPL 3).
  void load_segment_real(int sreg, std::uint16_t sel);
  void far_transfer_real(std::uint16_t sel, std::uint32_t off, bool call, std::uint32_t ret_eip, unsigned opsize);
  void far_return_real(unsigned opsize, std::uint32_t release);
  // Real mode: through the IVT (4-byte vectors at IDTR.base), FLAGS/CS/IP words.
  void deliver_real_mode(std::uint8_t vector, std::uint32_t return_eip);
  // IRET in real mode, and in virtual-8086 mode with IOPL 3.
  void iret_real_mode(unsigned opsize);
  // IRET at CPL 0 to a frame with EFLAGS.VM: EIP, CS, EFLAGS, ESP, SS, ES, DS, FS, GS.
  void iret_to_v86(std::uint32_t new_eip, std::uint16_t new_cs, std::uint32_t new_eflags);
  // An interrupt or exception leaving virtual-8086 mode for ring 0 through an
  // IDT gate: the ring-0 stack from the TSS, GS FS DS ES then the usual
  // frame pushed there, the data segments nulled.
  void deliver_from_v86(const api::Segment& target, std::uint16_t sel, std::uint32_t offset,
                        const std::array<std::uint32_t, 6>& frame_words, unsigned frame_count,
                        std::uint32_t new_eflags);
  // LAR/LSL/VERR/VERW of selector `sel`, ARPL (descriptor_queries.cpp).
  void descriptor_query(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops, std::uint16_t sel);
  void arpl(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops);
  // An event through a 16-bit (286) interrupt or trap gate (interrupt_gate16.cpp).
  void deliver_through_16bit_gate(const GateDescriptor& gate, std::uint32_t gate_error, bool has_error,
                                  std::uint32_t error, bool software, std::uint32_t return_eip);
  // A task switch into a task whose EFLAGS has VM: its segments as paragraphs.
  void load_v86_task_segments(const std::array<std::uint16_t, 6>& selectors);

  // --- segments
  std::uint64_t read_descriptor(std::uint16_t sel, std::uint32_t error);
  void load_segment(int sreg, std::uint16_t sel);  // 0 ES 1 CS 2 SS 3 DS 4 FS 5 GS
  void load_cs(std::uint16_t sel, unsigned new_cpl);
  void load_cs_descriptor(std::uint16_t sel, std::uint64_t raw, unsigned new_cpl);  // raw: already read
  // After a return to an outer ring (IRET, RETF): ES, DS, FS, GS the new CPL may not use become null.
  void null_inaccessible_data_segments();
  api::Segment& seg(int i);
  void sync_seg_bases();
  // The Context's segment windows for the segment registers as they are now
  // (sync_seg_bases marks them stale; translated code and the monitor's
  // limit checks read them), and whether they limit any offset (kTKeyLimits).
  void refresh_windows() const;
  void replace_code_and_stack(const api::Segment& cs, const api::Segment& ss);
  // A segment register is about to hold `next` (its type with `type_set`
  // set as it is loaded): the windows are looked up again only when its
  // shape changes.  Event delivery, IRET, SYSENTER and SYSEXIT load the same
  // few shapes again and again, and looking the set up reads back segments
  // just written (a store-forwarding stall per word).
  void note_segment_shape(const api::Segment& current, const api::Segment& next, std::uint8_t type_set = 0) {
    if (!SegmentWindowsCache::same_shape(current, next, type_set)) windows_stale_ = true;
  }
  void write_seg_bases();
  void replace_segment(api::Segment& reg, const api::Segment& value);
  bool limited() const {
    refresh_windows();
    return windows_in_context_->limited;
  }
  DecodedDescriptors decoded_;  // CS/SS descriptors of event delivery, IRET and segment loads

  // --- emulation
  // One instruction, and the data-breakpoint #DB trap its accesses hit.
  void emulate(std::uint32_t eip, bool mmio, Block* block = nullptr);
  void emulate_instruction(std::uint32_t eip, bool mmio, Block* block);
  void emulate_divide(const ZydisDecodedInstruction& insn, std::uint32_t divisor);
  // Adaptive translation: which instructions the monitor runs (see AdaptiveSites).
  AdaptiveSites sites_;
  bool monitor_needed_ = false;  // the last monitor-site execution touched MMIO or a traced page
  void note_fault_site(std::uint32_t eip, AdaptiveSites::Fault kind);
  StepResult run_monitor_site(Block* b);
  std::optional<GuestException> monitor_site_fault(const DecodedInsn& d);
  bool divide_faults(const ZydisDecodedInstruction& insn, std::uint32_t divisor) const;
  // An exception found without a throw: delivered through the IDT (Shutdown on a triple fault).
  StepResult deliver_fault(const GuestException& ex);
  void drop_translations_of(std::uint64_t pa_page);
  std::vector<DroppedBlock> dropped_;  // scratch for drop_translations_of
  const DecodedInsn& fetch_decoded(std::uint32_t eip, Block* block, DecodedInsn& scratch);
  // `block`: the special block of the instruction, if any; it keeps the
  // staged translation, so a monitor site is translated for the stage once.
  bool emulate_mmio_native(std::uint32_t eip, const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops,
                           Block* block = nullptr);
  // Instructions whose memory access is not just their operand, when that
  // memory is MMIO or unassigned: emulated here, never run on the stage.
  bool emulate_bit_string_access(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops,
                             std::uint32_t next);
  bool emulate_mmio_stack_or_branch(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops,
                                    std::uint32_t next);
  // Moves `size` bytes between guest-linear `la` (RAM or device, split at
  // pages and into device-sized pieces) and `bytes`.
  void read_linear(std::uint32_t la, std::uint8_t* bytes, unsigned size, bool user);
  void write_linear(std::uint32_t la, const std::uint8_t* bytes, unsigned size, bool user);
  MmioStage mmio_stage_;
  // The linear address of a memory operand: segment base + offset, the
  // offset formed with the instruction's address size (16-bit: wraps at 64 KiB).
  std::uint32_t ea(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand& op);
  // The same without the segment's limit and rights (INVLPG names an address, it does not access it).
  std::uint32_t linear_unchecked(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand& op);
  // #GP(0) (#SS(0) for SS) when segment `sreg` (0-5) refuses a `size`-byte
  // access at `offset` (segment_limits.hpp); only while a segment limits
  // offsets (kTKeyLimits), the rule translated code follows.
  void check_segment_access(int sreg, std::uint32_t offset, unsigned size, bool write);
  // #SS(0) when SS refuses a `size`-byte stack access at `offset`.
  void check_stack_access(std::uint32_t offset, unsigned size, bool write);
  std::uint32_t effective_offset(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand& op);
  std::uint32_t get_reg(int zreg) const;
  void set_reg(int zreg, std::uint32_t v);
  void do_iret(unsigned opsize, std::uint32_t next_eip);
  void do_cpuid();
  void do_rdtscp();
  void do_rdpid(const ZydisDecodedOperand& dest);
  void do_stac_clac(bool set);
  // UMIP: SGDT/SIDT/SLDT/STR/SMSW at CPL > 0 raise #GP(0).
  void check_umip() const;
  // IN/OUT/INS/OUTS: #GP(0) unless CPL <= IOPL or the TSS I/O bitmap allows the ports.
  void check_io_permission(std::uint16_t port, unsigned size);
  void do_rdmsr();
  void do_wrmsr();
  void write_cr(unsigned n, std::uint32_t v);
  // --- debug registers (debug_registers.hpp)
  unsigned debug_register_index(ZydisRegister reg);
  void write_dr(unsigned n, std::uint32_t v);
  void debug_registers_changed();
  bool io_breakpoint(std::uint16_t port, unsigned size, std::uint32_t next);
  std::optional<StepResult> code_breakpoint();
  void raise_task_trap(const Tss32& next);
  CodeBreakpoints code_breakpoints_;
  DataBreakpoints data_breakpoints_;
  unsigned data_hits_ = 0;  // DR6's B0-B3 of the instruction being emulated
  // The monitor's accesses to guest-linear memory on an instruction's behalf.
  void note_data_access(std::uint32_t la, unsigned size, bool write) {
    if (data_breakpoints_.enabled) data_hits_ |= data_breakpoints_.hits(la, size, write);
  }
  bool breakpoints_flush_pending_ = false;
  bool ss_load_shadow_ = false;  // the instruction just emulated loaded SS (MOV/POP): no single-step trap after it  // translations made before a breakpoint change
  void string_op(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops);
  void far_transfer(std::uint16_t sel, std::uint32_t off, bool call, std::uint32_t ret_eip, unsigned opsize);

  // --- far CALL/JMP through a call gate (call_gate.cpp)
  void far_transfer_through_call_gate(std::uint16_t gate_sel, bool call, std::uint32_t return_eip);

  // --- hardware task switches (task_switch.cpp)
  void switch_task(std::uint16_t sel, std::uint64_t raw, TaskSwitchKind kind, std::uint32_t return_eip);
  void deliver_through_task_gate(std::uint16_t tss_sel, bool has_error, std::uint32_t error, bool software,
                                 std::uint32_t return_eip);
  void far_transfer_to_task(std::uint16_t sel, const api::Segment& target, bool call, std::uint32_t return_eip);
  void return_to_linked_task(std::uint32_t return_eip);
  void set_tss_busy(std::uint16_t sel, bool busy);
  // The stack of an inner ring from the current TSS (32- or 16-bit layout); #TS beyond its limit.
  std::pair<std::uint32_t, std::uint16_t> stack_from_tss(unsigned cpl);
  std::uint64_t read_gdt_tss_descriptor(std::uint16_t sel, const Fault& beyond_gdt);

  std::string dump() const;

  api::GuestMemory& mem_;
  api::Platform& platform_;
  api::Logger& log_;
  unsigned index_;
  MsrFile msrs_;  // TSC, SYSENTER, PAT, MISC_ENABLE
  CpuidModel cpuid_;
  std::unique_ptr<ShadowMmu> shadow_;
  std::unique_ptr<Translator> translator_;
  Context* ctx_ = nullptr;

  // Architectural state not held in ctx_.
  std::uint32_t eip_ = 0;
  unsigned cpl_ = 0;
  api::Segment es_, cs_, ss_, ds_, fs_, gs_, ldtr_, tr_;
  api::DescriptorTable gdtr_, idtr_;
  std::uint64_t cr0_ = 0x60000010, cr2_ = 0, cr3_ = 0, cr4_ = 0, cr8_ = 0, efer_ = 0;
  std::array<std::uint64_t, 8> dr_{0, 0, 0, 0, 0, 0, 0xffff0ff0, 0x400};
  std::vector<std::uint8_t> xsave_extended_;
  std::uint64_t xcr0_ = 1;
  std::optional<api::PendingException> pending_exception_;
  std::optional<std::uint8_t> pending_interrupt_;
  bool nmi_pending_ = false, nmi_masked_ = false;
  bool interrupt_shadow_ = false;
  api::RunState run_state_ = api::RunState::Runnable;

  std::atomic<bool> kicked_{false};
  // Set by a kick, the host tick and run(): look at the platform at the next
  // dispatcher iteration.  platform_called_: this thread called the platform
  // since the last look (a device access may have raised or lowered a line).
  std::atomic<bool> poll_needed_{true};
  bool platform_called_ = false;
  // Device writes and waits go through here, so the next iteration looks at the platform.
  api::Platform& platform_call() {
    platform_called_ = true;
    return platform_;
  }
  // Device reads: a line a read raises reaches us as a kick (the interrupt
  // notifier), one it lowers only makes irq_line_ stale (interrupt_pending is
  // asked again before an interrupt is taken); a stop request is checked.
  bool platform_read_ = false;
  api::Platform& platform_read() {
    platform_read_ = true;
    return platform_;
  }
  // Device writes: the platform's change_count() says whether the write
  // raised or unmasked something, changed a CPU event or moved a timer
  // deadline; if not, there is nothing to look at (a stop request aside).
  bool platform_written_ = false;
  std::uint64_t seen_changes_ = api::Platform::kUnknownChanges;
  api::Platform& platform_write() {
    platform_written_ = true;
    platform_read_ = true;
    return platform_;
  }
  // Whether a device write since the last look needs a look at the platform.
  bool written_platform_changed() {
    if (!platform_written_) return false;
    platform_written_ = false;
    const std::uint64_t now = platform_.change_count();
    return now == api::Platform::kUnknownChanges || now != seen_changes_;
  }
  bool irq_line_ = false;  // the platform's interrupt_pending at the last look
  // Dirty-page collection from another thread (see DirtyPageHandoff).
  DirtyPageHandoff dirty_;
  std::atomic<bool> poll_blocked_{false};
  void block_poll();
  std::uint8_t* poll_page() const { return reinterpret_cast<std::uint8_t*>(ctx_) + kPollOffset; }
  bool in_guest_ = false;
  bool in_run_ = false;
  std::uint64_t deliveries_ = 0;  // events delivered (deliver()): an instruction that raised one did not complete
  bool single_step_ = false;  // run one uncached instruction (after a traced-page write)
  bool trace_ = false;  // MODEVISOR_BT_TRACE set: log exceptions at Trace level
  sigjmp_buf bug_jmp_;
  std::string bug_message_;
  // Set when the guest activated long mode (BT32 cannot run it): run() then
  // returns ExitKind::ModeChange with this as its diagnostic.
  std::string long_mode_entered_;
  std::uint64_t pending_patch_ = 0;
  std::uint32_t pending_patch_target_ = 0;
  std::uint32_t pending_patch_cs_base_ = 0;
  Region* region_ = nullptr;
  RecentLookups recent_lookups_;  // lookup()'s last answers
  RecentRegions recent_regions_;  // activate_region()'s last two views
  TKey tkey_ = 0;
  mutable bool windows_stale_ = true;
  mutable bool windows_protected_mode_ = false;  // the mode the Context's windows were looked up in
  mutable SegmentWindowsCache windows_;
  // The set the Context holds (an entry of windows_, which keeps its sets in
  // place); set by every refresh_windows().
  mutable const SegmentWindowsCache::Set* windows_in_context_ = nullptr;
  std::uint32_t translated_cs_limit_ = 0;  // the largest CS limit a cached kTKeyLimits block was translated under
  HostTick tick_;
  VcpuCounters counters_;
  std::string shutdown_reason_;
};

}  // namespace modevisor::bt
