// A stand-in guest for protocol tests until host/vm's Vm lands: real guest
// RAM (GuestRam, a memfd) written by a thread the way QEMU's migration test
// guest does (one byte incremented in every page of a region, over and over),
// printing "tick N" lines as its serial output, with its own dirty tracking.
// It is a MigrationSource on the source and an ArrivedVm on the destination,
// continuing from the state the source saved.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "migration/byte_codec.hpp"
#include "migration/receiver.hpp"
#include "migration/sender.hpp"
#include "platform/guest_ram.hpp"

namespace modevisor::test {

using namespace modevisor::host;
using namespace modevisor::host::migration;
using TestClock = std::chrono::steady_clock;

struct RunInterval {
  std::string host;
  TestClock::time_point from, to;
};

// Every interval any copy of a test guest ran, on any "host" of the test.
class RunLog {
 public:
  void add(RunInterval i) {
    std::lock_guard lock(mutex_);
    intervals_.push_back(std::move(i));
  }
  std::vector<RunInterval> intervals() const {
    std::lock_guard lock(mutex_);
    return intervals_;
  }
  // True when intervals of two different hosts overlap.
  bool two_hosts_ran_at_once() const {
    auto all = intervals();
    for (std::size_t i = 0; i < all.size(); ++i)
      for (std::size_t j = i + 1; j < all.size(); ++j)
        if (all[i].host != all[j].host && all[i].from < all[j].to && all[j].from < all[i].to) return true;
    return false;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<RunInterval> intervals_;
};

struct GuestState {
  std::uint64_t ticks = 0;        // "tick N" lines printed so far
  std::uint64_t next_page = 0;    // where the incrementer goes next
  std::uint64_t stamp_pages = 0;  // size of the incremented region

  std::vector<std::uint8_t> encode() const {
    migration::ByteWriter w;
    w.u32(0x54534554);  // "TEST"
    w.u64(ticks);
    w.u64(next_page);
    w.u64(stamp_pages);
    return w.take();
  }
  static GuestState decode(std::span<const std::uint8_t> bytes) {
    migration::ByteReader r(bytes, "test guest state");
    if (r.u32("magic") != 0x54534554) throw std::runtime_error("not a test guest state");
    GuestState s;
    s.ticks = r.u64("ticks");
    s.next_page = r.u64("next_page");
    s.stamp_pages = r.u64("stamp_pages");
    r.expect_end();
    return s;
  }
};

class TestGuest final : public MigrationSource, public ArrivedVm {
 public:
  // pages_per_ms: the incrementer's speed (0: as fast as it goes).
  TestGuest(std::string host, std::unique_ptr<GuestRam> ram, GuestState state, double pages_per_ms, RunLog* log)
      : host_(std::move(host)), ram_(std::move(ram)), state_(state), pages_per_ms_(pages_per_ms), log_(log) {
    dirty_ = std::vector<std::atomic<std::uint64_t>>((ram_->size() / 4096 + 63) / 64);
    thread_ = std::thread([this] { loop(); });
  }
  ~TestGuest() override {
    {
      std::lock_guard lock(mutex_);
      quit_ = true;
      running_ = false;
    }
    cv_.notify_all();
    thread_.join();
  }

  // A fresh guest: `random_fraction` of RAM filled with incompressible bytes, the rest zero.
  static std::unique_ptr<TestGuest> boot(std::string host, std::uint64_t ram_bytes, std::uint64_t stamp_pages,
                                         double pages_per_ms, double random_fraction, RunLog* log) {
    auto ram = std::make_unique<GuestRam>(ram_bytes);
    std::mt19937_64 rng(42);
    const std::uint64_t random_pages = static_cast<std::uint64_t>(ram_bytes / 4096 * random_fraction);
    auto* words = reinterpret_cast<std::uint64_t*>(ram->host_base() + ram_bytes - random_pages * 4096);
    for (std::uint64_t i = 0; i < random_pages * 512; ++i) words[i] = rng();
    GuestState s;
    s.stamp_pages = stamp_pages;
    auto g = std::make_unique<TestGuest>(std::move(host), std::move(ram), s, pages_per_ms, log);
    g->resume();
    return g;
  }

  // MigrationSource / ArrivedVm
  void pause() override {
    std::unique_lock lock(mutex_);
    running_ = false;
    cv_.notify_all();
    cv_.wait(lock, [this] { return !in_run_; });
  }
  void resume() override {
    std::lock_guard lock(mutex_);
    if (discarded_) {
      resumed_after_discard_ = true;
      return;
    }
    running_ = true;
    ++resumes_;
    cv_.notify_all();
  }
  std::vector<std::uint8_t> save_state() override {
    std::lock_guard lock(mutex_);
    if (running_ || in_run_) throw std::logic_error("save_state while running");
    return state_.encode();
  }
  api::GuestMemory& ram() override { return *ram_; }
  void start_dirty_tracking() override {
    for (auto& w : dirty_) w.store(0);
    tracking_ = true;
  }
  bool collect_dirty_pages(std::vector<std::uint64_t>& bitmap) override {
    if (!tracking_) return false;
    bitmap.resize(dirty_.size());
    for (std::size_t i = 0; i < dirty_.size(); ++i) bitmap[i] |= dirty_[i].exchange(0);
    return true;
  }
  void discard(const std::string& reason) override {
    std::unique_lock lock(mutex_);
    running_ = false;
    discarded_ = true;
    discard_reason_ = reason;
    cv_.notify_all();
    cv_.wait(lock, [this] { return !in_run_; });
  }

  bool running() const {
    std::lock_guard lock(mutex_);
    return running_;
  }
  bool discarded() const {
    std::lock_guard lock(mutex_);
    return discarded_;
  }
  bool resumed_after_discard() const {
    std::lock_guard lock(mutex_);
    return resumed_after_discard_;
  }
  unsigned resumes() const {
    std::lock_guard lock(mutex_);
    return resumes_;
  }
  std::string output() const {
    std::lock_guard lock(mutex_);
    return output_;
  }
  GuestState state() const {
    std::lock_guard lock(mutex_);
    return state_;
  }
  GuestRam& guest_ram() { return *ram_; }
  // Waits until the guest has printed at least `ticks` lines in total.
  bool wait_ticks(std::uint64_t ticks, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return state_.ticks >= ticks; });
  }

 private:
  void loop() {
    std::unique_lock lock(mutex_);
    for (;;) {
      cv_.wait(lock, [this] { return quit_ || running_; });
      if (quit_) return;
      in_run_ = true;
      const auto from = TestClock::now();
      while (running_ && !quit_) {
        lock.unlock();
        step_slice();
        lock.lock();
      }
      in_run_ = false;
      if (log_) log_->add({host_, from, TestClock::now()});
      cv_.notify_all();
    }
  }

  // About one millisecond of guest work, outside the lock except for the state update.
  void step_slice() {
    const std::uint64_t pages = pages_per_ms_ > 0 ? std::max<std::uint64_t>(1, static_cast<std::uint64_t>(pages_per_ms_))
                                                  : 4096;
    const auto slice_start = TestClock::now();
    std::uint64_t next = state_.next_page;
    for (std::uint64_t i = 0; i < pages; ++i) {
      ram_->host_base()[next * 4096] += 1;
      if (tracking_) dirty_[next / 64].fetch_or(1ull << (next % 64));
      next = (next + 1) % state_.stamp_pages;
    }
    {
      std::lock_guard lock(mutex_);
      state_.next_page = next;
      output_ += "tick " + std::to_string(state_.ticks) + "\n";
      ++state_.ticks;
    }
    cv_.notify_all();
    if (pages_per_ms_ > 0) std::this_thread::sleep_until(slice_start + std::chrono::milliseconds(1));
  }

  std::string host_;
  std::unique_ptr<GuestRam> ram_;
  GuestState state_;
  double pages_per_ms_;
  RunLog* log_;
  std::vector<std::atomic<std::uint64_t>> dirty_;
  std::atomic<bool> tracking_{false};
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool running_ = false, in_run_ = false, quit_ = false, discarded_ = false, resumed_after_discard_ = false;
  unsigned resumes_ = 0;
  std::string discard_reason_;
  std::string output_;
  std::thread thread_;
};

// The destination's host for tests: a selector callback and a restore that
// builds a TestGuest from the received state and RAM.
class TestDestination final : public DestinationHost {
 public:
  TestDestination(std::string host, RunLog* log) : host_(std::move(host)), log_(log) {}

  std::function<PlacementDecision(const MigrationConfig&)> selector = [](const MigrationConfig&) {
    return PlacementDecision{Placement{"BT", "bt-swmmu 0.1.0"}, {}};
  };
  std::function<void(GuestRam&)> before_restore;  // tests that corrupt RAM after the digest

  PlacementDecision place(const MigrationConfig& config) override {
    std::lock_guard lock(mutex_);
    ++placements_;
    return selector(config);
  }
  std::unique_ptr<ArrivedVm> restore(const MigrationConfig&, const Placement&, std::span<const std::uint8_t> state,
                                     std::unique_ptr<GuestRam> ram) override {
    std::lock_guard lock(mutex_);
    if (before_restore) before_restore(*ram);
    restored_ram_.assign(ram->host_base(), ram->host_base() + ram->size());
    auto guest = std::make_shared<TestGuest>(host_, std::move(ram), GuestState::decode(state), pages_per_ms, log_);
    last_ = guest;
    ++restores_;
    return std::make_unique<Arrival>(std::move(guest));
  }

  double pages_per_ms = 1;
  unsigned placements() const { std::lock_guard lock(mutex_); return placements_; }
  unsigned restores() const { std::lock_guard lock(mutex_); return restores_; }
  // RAM exactly as received and checked, before the guest ran here.
  std::vector<std::uint8_t> restored_ram() const { std::lock_guard lock(mutex_); return restored_ram_; }
  // The last restored guest; it outlives the receiver's handle, so a test can
  // still look at a copy the receiver discarded and dropped.
  std::shared_ptr<TestGuest> last() const { std::lock_guard lock(mutex_); return last_; }

 private:
  // The receiver's handle on an arrived guest: dropping it does not free the
  // guest, which the test may still inspect.
  class Arrival final : public ArrivedVm {
   public:
    explicit Arrival(std::shared_ptr<TestGuest> guest) : guest_(std::move(guest)) {}
    void resume() override { guest_->resume(); }
    void discard(const std::string& reason) override { guest_->discard(reason); }

   private:
    std::shared_ptr<TestGuest> guest_;
  };

  std::string host_;
  RunLog* log_;
  mutable std::mutex mutex_;
  unsigned placements_ = 0, restores_ = 0;
  std::vector<std::uint8_t> restored_ram_;
  std::shared_ptr<TestGuest> last_;
};

inline MigrationConfig test_config(std::uint64_t ram_bytes) {
  MigrationConfig c;
  c.vm_name = "stamper";
  c.vm_file = "tests/migration/stamper.yaml";
  c.vm_yaml = "name: stamper\nmemory: " + std::to_string(ram_bytes >> 20) + "M\n";
  c.cpu_model = "portable-32";
  c.cpuid = {api::CpuidLeaf{0, 0, false, 1, 0x756e6547, 0x6c65746e, 0x49656e69},
             api::CpuidLeaf{1, 0, false, 0x633, 0, 0, 0x0781abfd}};
  c.vcpus = 1;
  c.memory_bytes = ram_bytes;
  c.needs.bitness = 32;
  c.needs.paging = "32-bit";
  c.source_host = "source";
  c.source_mode = "BT";
  c.source_plugin = "bt-swmmu 0.1.0";
  return c;
}

}  // namespace modevisor::test
