// Force-converge: slows a guest that dirties memory faster than it can be
// sent by keeping it paused for a share of every 50 ms period (QEMU's
// auto-converge idea, built on the source's own pause/resume).
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace modevisor::host::migration {

class MigrationSource;

class VcpuThrottle {
 public:
  explicit VcpuThrottle(MigrationSource& source) : source_(source) {}
  ~VcpuThrottle() { stop(); }
  VcpuThrottle(const VcpuThrottle&) = delete;
  VcpuThrottle& operator=(const VcpuThrottle&) = delete;

  // 0 to 99; the first non-zero value starts the throttle thread.
  void set_percent(unsigned percent);
  unsigned percent() const { return percent_.load(); }
  // Ends throttling; returns with the source running (as it was before).
  void stop();

 private:
  void loop();
  MigrationSource& source_;
  std::atomic<unsigned> percent_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace modevisor::host::migration
