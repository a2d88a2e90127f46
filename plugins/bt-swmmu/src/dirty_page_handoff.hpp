// Dirty-page collection asked from another thread (migration, snapshots).
// Only the vCPU thread touches the shadow MMU while it runs, so a collector
// collects directly only while the vCPU is outside run() or parked in a wait
// for an interrupt; otherwise it posts a request, wakes the vCPU, and the
// vCPU thread collects at its next dispatcher iteration and hands the bitmap
// over.  Not on a hot path: a mutex and a condition variable.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

namespace modevisor::bt {

class DirtyPageHandoff {
 public:
  using Collect = std::function<void(std::vector<std::uint64_t>&)>;
  // `collect` reads and clears the dirty log; `wake_vcpu` makes translated
  // code come back to the dispatcher soon.
  DirtyPageHandoff(Collect collect, std::function<void()> wake_vcpu)
      : collect_(std::move(collect)), wake_vcpu_(std::move(wake_vcpu)) {}

  // Any thread: the pages written since the last collection.
  void collect(std::vector<std::uint64_t>& bitmap);

  // The vCPU thread.
  void enter_run();
  void leave_run();  // a waiting collector collects itself now
  bool requested() const { return requested_; }
  void serve();      // answers a posted request
  void park();       // serves, then lets collectors collect directly
  void unpark();

 private:
  void serve_locked();
  Collect collect_;
  std::function<void()> wake_vcpu_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool running_ = false, parked_ = false, done_ = false;
  std::atomic<bool> requested_{false};
  std::vector<std::uint64_t> out_;
};

}  // namespace modevisor::bt
