// Guest time sources for the Machine.  Device timers are evaluated lazily
// against Machine::now_ns(), so the clock is the only notion of time a device
// sees; tests inject a ManualClock and advance it deterministically.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace modevisor::host {

class TimeSource {
 public:
  virtual ~TimeSource() = default;
  // Nanoseconds since this source was created; monotonic.
  virtual std::uint64_t now_ns() const = 0;
  // Called with `lock` held: release it and block until `deadline_ns` (in
  // this source's time; UINT64_MAX: no deadline) or until `cv` is notified.
  virtual void wait_until(std::unique_lock<std::recursive_mutex>& lock, std::condition_variable_any& cv,
                          std::uint64_t deadline_ns) = 0;
};

// The host's monotonic clock; waits really sleep.
class HostClock final : public TimeSource {
 public:
  HostClock() : origin_(std::chrono::steady_clock::now()) {}
  std::uint64_t now_ns() const override {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - origin_).count());
  }
  void wait_until(std::unique_lock<std::recursive_mutex>& lock, std::condition_variable_any& cv,
                  std::uint64_t deadline_ns) override {
    if (deadline_ns == UINT64_MAX)
      cv.wait(lock);
    else
      cv.wait_until(lock, origin_ + std::chrono::nanoseconds(deadline_ns));
  }

 private:
  std::chrono::steady_clock::time_point origin_;
};

// Time that only moves when told to.  A wait with a deadline jumps the clock
// to that deadline (the guest "slept" until its timer), so HLT-driven guests
// run deterministically and instantly in tests; a wait without a deadline
// blocks until notified.
class ManualClock final : public TimeSource {
 public:
  explicit ManualClock(std::uint64_t start_ns = 0) : now_(start_ns) {}
  std::uint64_t now_ns() const override { return now_.load(std::memory_order_acquire); }
  void advance(std::uint64_t ns) { now_.fetch_add(ns, std::memory_order_acq_rel); }
  void set(std::uint64_t ns) { now_.store(ns, std::memory_order_release); }
  void wait_until(std::unique_lock<std::recursive_mutex>& lock, std::condition_variable_any& cv,
                  std::uint64_t deadline_ns) override {
    if (deadline_ns == UINT64_MAX) {
      cv.wait(lock);
      return;
    }
    if (deadline_ns > now_ns()) set(deadline_ns);
  }

 private:
  std::atomic<std::uint64_t> now_;
};

}  // namespace modevisor::host
