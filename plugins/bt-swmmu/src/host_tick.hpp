// The vCPU thread's host timers: a 1 ms periodic tick that bounds how long
// translated code runs without the dispatcher looking at device timers,
// interrupts and stop requests, and a one-shot for platform timer deadlines
// closer than the tick.  Both signal the vCPU thread with kKickSignal.
#pragma once

#include <modevisor/api/monitor.hpp>

#include <cstdint>

namespace modevisor::bt {

class HostTick {
 public:
  HostTick() = default;
  HostTick(const HostTick&) = delete;
  HostTick& operator=(const HostTick&) = delete;
  ~HostTick() { stop(); }

  // Starts the tick aimed at the calling thread (kept if already aimed there).
  void start_on_this_thread();
  // Arms the one-shot for the platform's next timer deadline when that is
  // sooner than the next tick.
  void arm_deadline(api::Platform& platform);
  // Stops and deletes both timers.
  void stop();

 private:
  void* tick_ = nullptr;      // timer_t
  void* deadline_ = nullptr;  // timer_t
  std::uint64_t armed_deadline_ = ~0ull;
  int tid_ = 0;
};

}  // namespace modevisor::bt
