#include "host_signals.hpp"

#include <signal.h>

#include <cstring>
#include <mutex>


namespace modevisor::bt {

namespace {

// initial-exec: the handler must not trigger lazy TLS allocation (dlopen'ed module).
__attribute__((tls_model("initial-exec"))) thread_local SignalTarget* t_current = nullptr;
struct sigaction g_old[65];

void on_signal(int sig, siginfo_t* si, void* uc) {
  SignalTarget* v = t_current;
  if (v && v->handle_signal(sig, si, uc)) return;
  if (sig == kKickSignal) return;
  // Not ours: hand it to whoever had it before.
  const struct sigaction& old = g_old[sig];
  if ((old.sa_flags & SA_SIGINFO) && old.sa_sigaction) {
    old.sa_sigaction(sig, si, uc);
  } else if (old.sa_handler == SIG_IGN) {
    return;
  } else if (old.sa_handler == SIG_DFL) {
    signal(sig, SIG_DFL);  // returning re-executes the fault: default action
  } else {
    old.sa_handler(sig);
  }
}

}  // namespace

void install_host_signal_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    for (int s : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, kKickSignal}) sigaction(s, &sa, &g_old[s]);
  });
}

void bind_running_vcpu(SignalTarget* vcpu) { t_current = vcpu; }
SignalTarget* running_vcpu() { return t_current; }

}  // namespace modevisor::bt
