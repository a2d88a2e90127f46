#include "host_tick.hpp"

#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cstring>

#include "host_signals.hpp"

namespace modevisor::bt {

void HostTick::start_on_this_thread() {
  const int tid = static_cast<int>(syscall(SYS_gettid));
  if (tick_ && tid == tid_) return;
  if (tick_) timer_delete(static_cast<timer_t>(tick_));
  tid_ = tid;
  struct sigevent sev;
  std::memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = kKickSignal;
  sev._sigev_un._tid = tid;
  timer_t t;
  if (timer_create(CLOCK_MONOTONIC, &sev, &t) != 0) {
    tick_ = nullptr;
    return;
  }
  tick_ = t;
  timer_t d;
  deadline_ = timer_create(CLOCK_MONOTONIC, &sev, &d) == 0 ? d : nullptr;
  armed_deadline_ = ~0ull;
  struct itimerspec its{{0, 1000000}, {0, 1000000}};
  timer_settime(t, 0, &its, nullptr);
}

// Device timers are evaluated when the platform is called; make translated
// code come back by the next deadline when that is sooner than the tick.
void HostTick::arm_deadline(api::Platform& platform) {
  if (!deadline_) return;
  const std::uint64_t dl = platform.next_timer_deadline_ns();
  if (dl == ~0ull || dl == armed_deadline_) return;
  const std::uint64_t now = platform.now_ns();
  if (dl <= now || dl - now >= 1000000) return;  // due now (seen at the next exit) or the tick covers it
  const std::uint64_t delta = dl - now;
  struct itimerspec its{{0, 0}, {0, static_cast<long>(delta)}};
  timer_settime(static_cast<timer_t>(deadline_), 0, &its, nullptr);
  armed_deadline_ = dl;
}

void HostTick::stop() {
  for (void** t : {&tick_, &deadline_}) {
    if (!*t) continue;
    struct itimerspec off{};
    timer_settime(static_cast<timer_t>(*t), 0, &off, nullptr);
    timer_delete(static_cast<timer_t>(*t));
    *t = nullptr;
  }
}

}  // namespace modevisor::bt
