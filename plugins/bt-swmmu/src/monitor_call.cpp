// Monitor calls: translated code that reaches an instruction the monitor
// emulates (int n, iret, sysenter/sysexit, in/out, the TPR write and other
// adaptive sites, ...) calls in here through Context::monitor_fn instead of
// leaving the translation cache.  The instruction is emulated as the
// dispatcher would (decoded once, kept with its block), and when nothing
// needs the dispatcher (no kick, tick, stop, pending event, interrupt that
// can be taken, view change the block maps cannot follow) execution goes on
// at the next block's translation: an exception or software interrupt lands
// in the handler's code without a dispatcher round trip.  Guest exceptions
// raised while emulating are handed to the dispatcher as a value: nothing
// unwinds through translated code.
#include <atomic>
#include <exception>

#include "vcpu.hpp"

namespace modevisor::bt {

namespace {
constexpr std::uint32_t kIF = 0x200;
constexpr std::uint32_t kRF = 0x10000;
// Emulated instructions back to back in one call (a handler that is one
// special instruction after another), before the dispatcher gets a turn.
constexpr unsigned kMaxEmulatedPerCall = 16;
// emulate_and_continue's answer for a triple fault (no host code is at 1).
constexpr std::uint64_t kShutdown = 1;
}  // namespace

std::uint64_t Vcpu::monitor_call_entry(void* vcpu) noexcept { return static_cast<Vcpu*>(vcpu)->monitor_call(); }

std::uint64_t Vcpu::monitor_call() noexcept {
  // Monitor code from here: a kick from this thread (a device the emulation
  // touches) is a flag; a host tick sets poll_needed_ only.
  in_guest_ = false;
  ++counters_.monitor_calls;
  eip_ = static_cast<std::uint32_t>(ctx_->next_eip);
  const std::uint64_t host_rsp = ctx_->host_rsp;  // a monitor site enters translated code itself
  std::uint64_t target = 0;
  std::uint64_t reason = kExitDispatch;
  try {
    target = emulate_and_continue();
    if (target == kShutdown) {
      target = 0;
      reason = kExitTripleFault;
    }
  } catch (const GuestException& ge) {
    monitor_fault_ = ge;
    reason = kExitMonitorFault;
  } catch (const std::exception& e) {
    bug_message_ = e.what();
    reason = kExitMonitorError;
  } catch (...) {
    bug_message_ = "bt-swmmu: unexpected exception in a monitor call";
    reason = kExitMonitorError;
  }
  ctx_->host_rsp = host_rsp;
  if (target) {
    refresh_windows();
    // Back to translated code: from now on a tick blocks the poll page (the
    // next block entry leaves); one that came before is seen here.
    in_guest_ = true;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (!poll_needed_.load(std::memory_order_acquire)) {
      ++counters_.monitor_calls_in_cache;
      return target;
    }
    in_guest_ = false;
  }
  ctx_->next_eip = eip_;
  ctx_->patch_site = 0;
  ctx_->exit_reason = reason;
  return 0;
}

// Emulates the special instruction at eip_ and what follows while it is
// special; returns the host code of the first translated block, 0 to leave
// for the dispatcher (eip_ not yet executed), kShutdown for a triple fault.
std::uint64_t Vcpu::emulate_and_continue() {
  // On entry the guest has run only translated code since the view was set
  // up (segment loads, CPL and paging-register changes are special
  // instructions), and the dispatcher or a block entry's poll looked at
  // everything else just before: the instruction is emulated at once.  What
  // other threads or the host tick did meanwhile is seen after it, as at the
  // next block boundary (an interrupt is taken one instruction later).  No
  // event or interrupt shadow is pending here: the dispatcher clears the
  // shadow before it enters translated code, and each emulation that sets
  // one (or an event) is followed by the check below, which leaves.
  for (unsigned n = 0; n < kMaxEmulatedPerCall; ++n) {
    monitor_walks_next_iteration();  // guest code or the last emulation may have changed page tables
    Block* b = lookup(eip_);
    if (b->breakpoint) return 0;  // the dispatcher's (code_breakpoint)
    ctx_->sysflags &= ~kRF;        // (an IRET may have set it: it lasts one instruction)
    if (!b->special) return reinterpret_cast<std::uint64_t>(b->entry);
    ++counters_.special_exits;
    // An event delivered (a #DE or #PF of a monitor site, an I/O
    // breakpoint's #DB) may change anything.
    const auto delivered_before = deliveries_;
    if (b->monitor_site) {
      if (run_monitor_site(b) == StepResult::Shutdown) return kShutdown;
    } else if (is_port_io(*b) && !data_breakpoints_.any()) {
      emulate_port_io(*b->decoded, eip_);
    } else {
      emulate(eip_, false, b);
    }
    const bool view_may_have_changed = deliveries_ != delivered_before || !keeps_view(*b);
    if (!may_stay_in_cache(view_may_have_changed)) return 0;
  }
  return 0;
}

// IN and OUT at `eip`: the I/O permission checks, the platform, the port's
// breakpoints.  The commonest monitor call of device drivers comes here
// straight (decoded once, kept with its block), not through the emulator's
// switch, whose IN/OUT cases come here too.
bool Vcpu::is_port_io(const Block& b) {
  return b.decoded && (b.decoded->insn.mnemonic == ZYDIS_MNEMONIC_IN || b.decoded->insn.mnemonic == ZYDIS_MNEMONIC_OUT);
}

void Vcpu::emulate_port_io(const DecodedInsn& d, std::uint32_t eip) {
  const bool in = d.insn.mnemonic == ZYDIS_MNEMONIC_IN;
  const ZydisDecodedOperand& port_operand = d.ops[in ? 1 : 0];
  const ZydisDecodedOperand& data = d.ops[in ? 0 : 1];
  const auto port = static_cast<std::uint16_t>(port_operand.type == ZYDIS_OPERAND_TYPE_IMMEDIATE
                                                   ? port_operand.imm.value.u
                                                   : get_reg(port_operand.reg.value));
  const unsigned size = data.size / 8;
  check_io_permission(port, size);
  ++counters_.io_exits;
  if (in)
    set_reg(data.reg.value, platform_read().io_in(index_, port, size));
  else
    platform_write().io_out(index_, port, size, get_reg(data.reg.value));
  const std::uint32_t next = eip + d.insn.length;
  if (io_breakpoint(port, size, next)) return;
  eip_ = next;
}

// Whether the block's instruction, emulated without delivering an event,
// left the segments, CPL, EFLAGS' system bits, paging registers and
// flavour as they were (the checks after it can be skipped).  Special
// instructions: port I/O and the reads of CPU state.  Monitor sites (plain
// instructions that kept faulting: MMIO, traced writes, #DE, #PF): the data
// instructions among them; a MOV there is never one to a control or segment
// register, which are special instructions.
bool Vcpu::keeps_view(const Block& b) {
  if (!b.decoded) return false;
  const ZydisMnemonic m = b.decoded->insn.mnemonic;
  switch (m) {
    case ZYDIS_MNEMONIC_IN: case ZYDIS_MNEMONIC_OUT: case ZYDIS_MNEMONIC_RDTSC: case ZYDIS_MNEMONIC_RDTSCP:
    case ZYDIS_MNEMONIC_CPUID: case ZYDIS_MNEMONIC_RDMSR: case ZYDIS_MNEMONIC_RDPMC:
      return true;
    default:
      break;
  }
  if (!b.monitor_site) return false;
  switch (m) {
    case ZYDIS_MNEMONIC_MOV: case ZYDIS_MNEMONIC_MOVZX: case ZYDIS_MNEMONIC_MOVSX: case ZYDIS_MNEMONIC_ADD:
    case ZYDIS_MNEMONIC_ADC: case ZYDIS_MNEMONIC_SUB: case ZYDIS_MNEMONIC_SBB: case ZYDIS_MNEMONIC_AND:
    case ZYDIS_MNEMONIC_OR: case ZYDIS_MNEMONIC_XOR: case ZYDIS_MNEMONIC_CMP: case ZYDIS_MNEMONIC_TEST:
    case ZYDIS_MNEMONIC_INC: case ZYDIS_MNEMONIC_DEC: case ZYDIS_MNEMONIC_NEG: case ZYDIS_MNEMONIC_NOT:
    case ZYDIS_MNEMONIC_XCHG: case ZYDIS_MNEMONIC_CMPXCHG: case ZYDIS_MNEMONIC_XADD: case ZYDIS_MNEMONIC_DIV:
    case ZYDIS_MNEMONIC_IDIV: case ZYDIS_MNEMONIC_MUL: case ZYDIS_MNEMONIC_IMUL:
      return true;
    default:
      return false;
  }
}

// What run() checks before it runs guest code, for a monitor call: true
// when the next block may run right away (the view is set up for it).
bool Vcpu::may_stay_in_cache(bool after_emulation) {
  if (single_step_ || kicked_.load(std::memory_order_relaxed) || poll_blocked_.load(std::memory_order_relaxed) ||
      dirty_.requested() || !long_mode_entered_.empty() || breakpoints_flush_pending_)
    return false;
  if (platform_read_) {
    if (platform_.stop_requested()) return false;
    platform_read_ = false;
  }
  // A device write that changed something (the platform's change_count), a
  // kick from this thread (the local APIC) or the host tick: look at the
  // platform here, as run() would.
  const bool poll = (poll_needed_.load(std::memory_order_acquire) &&
                     poll_needed_.exchange(false, std::memory_order_acq_rel)) |
                    written_platform_changed() | platform_called_;
  platform_called_ = false;
  if (poll && poll_platform()) {
    poll_needed_.store(true, std::memory_order_release);  // run() looks again and stops
    return false;
  }
  if (pending_exception_ || (nmi_pending_ && !nmi_masked_) || interrupt_shadow_ ||
      run_state_ != api::RunState::Runnable)
    return false;
  const bool irq_waits = pending_interrupt_ || irq_line_;
  if ((ctx_->sysflags & kIF) && irq_waits) return false;
  ctx_->irq_hint = irq_waits;  // IF is clear here
  if (!after_emulation) return true;
  write_seg_bases();  // (every segment load marked the windows stale; a CR0.PE write did not)
  // The translation flavour follows the segments too (a far jump between
  // 16- and 32-bit code, a segment load): the block maps hold one flavour.
  const TKey tk = flavour_key();
  if (tk != (tkey_ & ~kTKeyUser)) return false;
  // The view (region) follows CPL and the paging registers: unchanged since
  // the last look, nothing to do.
  const CachedView view{cpl_, cr0_, cr3_, cr4_, efer_, paging().smap_suspended, region_};
  if (view == view_) return true;
  tkey_ = tk | (cpl_ == 3 ? kTKeyUser : 0);
  activate_region();
  view_ = CachedView{cpl_, cr0_, cr3_, cr4_, efer_, paging().smap_suspended, region_};
  return true;
}

}  // namespace modevisor::bt
