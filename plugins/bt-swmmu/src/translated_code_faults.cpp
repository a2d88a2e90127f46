// Host signals in translated code, turned into exits: a fault on a shadow
// page (filled here when the guest's tables allow it, else a guest #PF, an
// MMIO access or a write to a traced page), a region guard (an offset sum
// that wraps past 4 GiB, emulated), the poll page (a kick or the
// tick), and #DE/#UD/#GP-class traps.  Runs in signal context: no
// allocation on the paths that return to the guest.
#include <signal.h>
#include <ucontext.h>

#include <cstdio>

#include "host_signals.hpp"
#include "vcpu.hpp"

namespace modevisor::bt {

bool Vcpu::handle_signal(int sig, void* info, void* uctx) {
  if (!in_run_) return false;
  if (sig == kKickSignal) {  // host timer tick
    poll_needed_.store(true, std::memory_order_release);
    if (in_guest_) block_poll();
    return true;
  }
  auto* si = static_cast<siginfo_t*>(info);
  auto* uc = static_cast<ucontext_t*>(uctx);
  greg_t* g = uc->uc_mcontext.gregs;
  const auto pc = static_cast<std::uintptr_t>(g[REG_RIP]);
  Block* b = in_guest_ && translator_->in_cache(pc) ? translator_->block_at(pc) : nullptr;
  if (!b) {
    char msg[160];
    std::snprintf(msg, sizeof msg, "bt-swmmu: host signal %d in monitor code at %#lx (fault address %p)", sig,
                  static_cast<unsigned long>(pc), si->si_addr);
    bug_message_ = msg;
    siglongjmp(bug_jmp_, 1);
  }
  const std::uint32_t geip = translator_->guest_eip_at(b, pc);
  auto leave = [&](FaultKind kind, std::uint64_t addr, std::uint32_t error, std::uint32_t vector) {
    ctx_->gpr[0] = static_cast<std::uint32_t>(g[REG_RAX]);
    ctx_->gpr[1] = static_cast<std::uint32_t>(g[REG_RCX]);
    ctx_->gpr[2] = static_cast<std::uint32_t>(g[REG_RDX]);
    ctx_->gpr[3] = static_cast<std::uint32_t>(g[REG_RBX]);
    ctx_->gpr[4] = static_cast<std::uint32_t>(g[REG_R14]);
    ctx_->gpr[5] = static_cast<std::uint32_t>(g[REG_RBP]);
    ctx_->gpr[6] = static_cast<std::uint32_t>(g[REG_RSI]);
    ctx_->gpr[7] = static_cast<std::uint32_t>(g[REG_RDI]);
    ctx_->rflags = static_cast<std::uint64_t>(g[REG_EFL]);
    const auto off = static_cast<std::uint32_t>(pc - reinterpret_cast<std::uintptr_t>(b->host));
    for (const auto& sw : b->swaps) {
      if (off >= sw.begin && off < sw.end) {  // guest ESP is in the borrowed register
        static const int host_reg[8] = {REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP, REG_RSI, REG_RDI};
        if (sw.esp) ctx_->gpr[4] = static_cast<std::uint32_t>(g[host_reg[sw.reg]]);
        ctx_->gpr[sw.reg] = static_cast<std::uint32_t>(g[REG_R11]);
      }
    }
    ctx_->fault_kind = kind;
    ctx_->fault_addr = addr;
    ctx_->fault_error = error;
    ctx_->fault_vector = vector;
    ctx_->fault_eip = geip;
    ctx_->exit_reason = kExitFault;
    g[REG_R15] = reinterpret_cast<greg_t>(ctx_);
    g[REG_RIP] = static_cast<greg_t>(translator_->exit_from_signal_routine());
    return true;
  };
  switch (sig) {
    case SIGSEGV: {
      if (si->si_addr >= static_cast<void*>(poll_page()) && si->si_addr < static_cast<void*>(poll_page() + 4096)) {
        // A block entry polled a blocked page: leave at this block boundary.
        leave(FaultKind::None, 0, 0, 0);
        ctx_->exit_reason = kExitInterrupt;
        ctx_->next_eip = geip;
        return true;
      }
      const auto* trap = reinterpret_cast<const std::uint8_t*>(ctx_) + kLimitTrapOffset;
      if (si->si_addr >= static_cast<const void*>(trap) && si->si_addr < static_cast<const void*>(trap + 4096)) {
        // A segment-limit check refused an access: #GP(0) or #SS(0) (the offset in the page).
        return leave(FaultKind::Exception, 0, 0,
                     static_cast<std::uint32_t>(static_cast<const std::uint8_t*>(si->si_addr) - trap));
      }
      Region* r = nullptr;
      std::uint32_t la = 0;
      if (shadow_->contains(si->si_addr, &r, &la) && r == region_) {
        const bool write = (g[REG_ERR] & 2) != 0;
        std::uint64_t out = 0;
        FillResult fr;
        try {
          fr = shadow_->fill(r, paging(), la, write, &out);
        } catch (const std::exception& e) {
          bug_message_ = e.what();
          return leave(FaultKind::Exception, 0, 0, 0x100);
        }
        switch (fr) {
          case FillResult::Mapped: return true;
          case FillResult::GuestFault: return leave(FaultKind::PageFault, la, static_cast<std::uint32_t>(out), 14);
          case FillResult::Mmio: return leave(FaultKind::Mmio, out, write, 0);
          case FillResult::ProtectedWrite: return leave(FaultKind::ProtectedWrite, out, 0, 0);
          case FillResult::Repeat: break;
        }
        char msg[160];
        std::snprintf(msg, sizeof msg, "bt-swmmu: unexplained fault at guest LA %#x (EIP %#x)", la, geip);
        bug_message_ = msg;
        return leave(FaultKind::Exception, 0, 0, 0x100);
      }
      if (region_ != nullptr && ShadowMmu::in_guard(region_, si->si_addr, &la))
        return leave(FaultKind::Wrapped, la, 0, 0);  // a 32-bit offset sum that wraps: the monitor's
      return leave(FaultKind::Exception, 0, 0, 13);
    }
    case SIGFPE: return leave(FaultKind::Exception, 0, 0, 0);
    case SIGILL: return leave(FaultKind::Exception, 0, 0, 6);
    default: return leave(FaultKind::Exception, 0, 0, 13);
  }
}

}  // namespace modevisor::bt
