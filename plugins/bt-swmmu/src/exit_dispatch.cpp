// The exit dispatcher: what translated code's exit reason asks of the
// monitor, one case per reason (kvmtool style).  Faults in translated code
// arrive as kExitFault with the kind the host-signal handler found.
#include "vcpu.hpp"

namespace modevisor::bt {

Vcpu::StepResult Vcpu::dispatch_exit(std::uint64_t reason, bool stepping) {
  switch (reason) {
    case kExitDispatch:
      eip_ = static_cast<std::uint32_t>(ctx_->next_eip);
      if (ctx_->patch_site && !stepping) {
        pending_patch_ = ctx_->patch_site;
        pending_patch_target_ = eip_;
        pending_patch_cs_base_ = static_cast<std::uint32_t>(cs_.base);
      }
      break;
    case kExitStiWindow:
      ++counters_.irq_window_exits;
      eip_ = static_cast<std::uint32_t>(ctx_->next_eip);
      break;
    case kExitIndirectMiss:
      ++counters_.indirect_misses;
      eip_ = static_cast<std::uint32_t>(ctx_->next_eip);
      break;
    case kExitInterrupt:
      ++counters_.irq_exits;
      eip_ = static_cast<std::uint32_t>(ctx_->next_eip);
      break;
    case kExitSpecial:
      eip_ = static_cast<std::uint32_t>(ctx_->next_eip);
      break;
    case kExitMonitorFault: {  // eip_ is where the emulated instruction faulted
      const GuestException fault = *monitor_fault_;
      monitor_fault_.reset();
      return deliver_fault(fault);
    }
    case kExitMonitorError:
      return StepResult::Error;
    case kExitTripleFault:
      return StepResult::Shutdown;
    case kExitFault: {
      eip_ = ctx_->fault_eip;
      switch (ctx_->fault_kind) {
        case FaultKind::PageFault:
          note_fault_site(eip_, AdaptiveSites::Fault::PageFault);
          cr2_ = ctx_->fault_addr;
          return deliver_fault(GuestException{14, true, ctx_->fault_error});
        case FaultKind::Mmio:
          ++counters_.mmio_exits;
          note_fault_site(eip_, AdaptiveSites::Fault::Mmio);
          emulate(eip_, true);
          break;
        case FaultKind::Wrapped:
          // The host summed register and displacement in 64 bits; the
          // monitor's emulation wraps at 4 GiB as the guest's CPU does.  A
          // site that wraps again is handed to the monitor (adaptive).
          ++counters_.wrapped_accesses;
          note_fault_site(eip_, AdaptiveSites::Fault::PageFault);
          emulate(eip_, true);
          break;
        case FaultKind::ProtectedWrite: {
          // Drop what was derived from the page, then let the writing
          // instruction run alone with the page writable.
          const std::uint64_t pa = ctx_->fault_addr;
          if (shadow_->is_pt_page(pa)) shadow_->release_pt_page(pa);
          if (shadow_->is_code_page(pa)) {
            drop_translations_of(pa);
            shadow_->release_code_page(pa);
          }
          shadow_->set_write_through(pa);
          single_step_ = true;
          note_fault_site(eip_, AdaptiveSites::Fault::TracedWrite);
          break;
        }
        case FaultKind::Exception:
          if (ctx_->fault_vector == 0x100) return StepResult::Error;
          if (ctx_->fault_vector == 0) note_fault_site(eip_, AdaptiveSites::Fault::Divide);
          return deliver_fault(GuestException{static_cast<std::uint8_t>(ctx_->fault_vector),
                                              ctx_->fault_vector == 13 || ctx_->fault_vector == 12, 0});
        case FaultKind::None:
          break;
      }
      break;
    }
    default:
      bug_message_ = "bt-swmmu: bad exit reason from translated code";
      return StepResult::Error;
  }
  return StepResult::Continue;
}

}  // namespace modevisor::bt
