#include "dirty_page_handoff.hpp"

namespace modevisor::bt {

void DirtyPageHandoff::collect(std::vector<std::uint64_t>& bitmap) {
  std::unique_lock<std::mutex> lk(mu_);
  if (!running_ || parked_) {
    collect_(bitmap);
    return;
  }
  requested_ = true;
  done_ = false;
  wake_vcpu_();
  cv_.wait(lk, [&] { return done_ || !running_ || parked_; });
  if (!done_) {  // the vCPU stopped or parked first: do it here
    requested_ = false;
    collect_(bitmap);
    return;
  }
  bitmap = std::move(out_);
}

void DirtyPageHandoff::enter_run() {
  std::lock_guard<std::mutex> lk(mu_);
  running_ = true;
}

void DirtyPageHandoff::leave_run() {
  std::lock_guard<std::mutex> lk(mu_);
  running_ = false;
  cv_.notify_all();
}

void DirtyPageHandoff::serve() {
  std::lock_guard<std::mutex> lk(mu_);
  serve_locked();
}

void DirtyPageHandoff::park() {
  std::lock_guard<std::mutex> lk(mu_);
  serve_locked();
  parked_ = true;
  cv_.notify_all();
}

void DirtyPageHandoff::unpark() {
  std::lock_guard<std::mutex> lk(mu_);
  parked_ = false;
}

void DirtyPageHandoff::serve_locked() {
  if (!requested_) return;
  requested_ = false;
  collect_(out_);
  done_ = true;
  cv_.notify_all();
}

}  // namespace modevisor::bt
