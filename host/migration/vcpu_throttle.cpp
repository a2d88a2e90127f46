#include "migration/vcpu_throttle.hpp"

#include <chrono>

#include "migration/sender.hpp"

namespace modevisor::host::migration {

namespace {
constexpr auto kPeriod = std::chrono::milliseconds(50);
}

void VcpuThrottle::set_percent(unsigned percent) {
  percent_ = percent > 99 ? 99 : percent;
  std::lock_guard lock(mutex_);
  if (!thread_.joinable() && percent_ > 0 && !stopping_) thread_ = std::thread([this] { loop(); });
}

void VcpuThrottle::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void VcpuThrottle::loop() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    const auto paused_for = kPeriod * percent_.load() / 100;
    lock.unlock();
    source_.pause();
    lock.lock();
    wake_.wait_for(lock, paused_for, [this] { return stopping_; });
    lock.unlock();
    source_.resume();
    lock.lock();
    wake_.wait_for(lock, kPeriod - paused_for, [this] { return stopping_; });
  }
}

}  // namespace modevisor::host::migration
