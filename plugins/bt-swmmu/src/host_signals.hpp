// Host-signal glue: the engine's process-wide handlers for faults in
// translated code (SIGSEGV, SIGBUS, SIGFPE, SIGILL) and its tick/kick signal,
// routed to the vCPU running on the signalled thread.  Signals that are not
// the engine's go to whoever had them before.
#pragma once

namespace modevisor::bt {

// An engine's vCPU (BT32's or BT64's) as the signal handlers see it: the
// host signal taken on its thread, true when it was the vCPU's.
class SignalTarget {
 public:
  virtual ~SignalTarget() = default;
  virtual bool handle_signal(int sig, void* info, void* uctx) = 0;
};

// SIGRTMIN+6 on glibc (34+6): the per-thread tick and kick.
inline constexpr int kKickSignal = 40;

// Once per process; the module is never unloaded while they are installed.
void install_host_signal_handlers();

// The vCPU whose run() this thread is in (nullptr outside run()); the
// handlers pass signals to it.
void bind_running_vcpu(SignalTarget* vcpu);
SignalTarget* running_vcpu();

}  // namespace modevisor::bt
