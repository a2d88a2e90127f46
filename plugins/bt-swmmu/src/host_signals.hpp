// Host-signal glue: the engine's process-wide handlers for faults in
// translated code (SIGSEGV, SIGBUS, SIGFPE, SIGILL) and its tick/kick signal,
// routed to the vCPU running on the signalled thread.  Signals that are not
// the engine's go to whoever had them before.
#pragma once

namespace modevisor::bt {

class Vcpu;

// SIGRTMIN+6 on glibc (34+6): the per-thread tick and kick.
inline constexpr int kKickSignal = 40;

// Once per process; the module is never unloaded while they are installed.
void install_host_signal_handlers();

// The vCPU whose run() this thread is in (nullptr outside run()); the
// handlers pass signals to it.
void bind_running_vcpu(Vcpu* vcpu);
Vcpu* running_vcpu();

}  // namespace modevisor::bt
