// The cross-thread dirty-page handoff with a real vCPU-like thread: who
// collects (the caller or the vCPU thread) in each state, and that a waiting
// collector never hangs when the vCPU stops or parks instead of answering.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "dirty_page_handoff.hpp"

namespace modevisor::bt {
namespace {

struct Log {
  std::atomic<int> collections{0};
  std::thread::id last_collector;
};

DirtyPageHandoff make(Log& log, std::atomic<int>& wakes) {
  return DirtyPageHandoff(
      [&log](std::vector<std::uint64_t>& bitmap) {
        log.last_collector = std::this_thread::get_id();
        bitmap = {static_cast<std::uint64_t>(++log.collections)};
      },
      [&wakes] { ++wakes; });
}

TEST(BtDirtyPageHandoff, OutsideRunTheCallerCollects) {
  Log log;
  std::atomic<int> wakes{0};
  DirtyPageHandoff h = make(log, wakes);
  std::vector<std::uint64_t> bitmap;
  h.collect(bitmap);
  EXPECT_EQ(bitmap, std::vector<std::uint64_t>{1});
  EXPECT_EQ(log.last_collector, std::this_thread::get_id());
  EXPECT_EQ(wakes, 0);
}

TEST(BtDirtyPageHandoff, WhileRunningTheVcpuThreadCollectsAndHandsOver) {
  Log log;
  std::atomic<int> wakes{0};
  DirtyPageHandoff h = make(log, wakes);
  h.enter_run();
  std::atomic<bool> stop{false};
  std::thread vcpu([&] {
    while (!stop) {
      if (h.requested()) h.serve();
      std::this_thread::yield();
    }
  });
  const std::thread::id vcpu_id = vcpu.get_id();
  for (std::uint64_t i = 1; i <= 3; ++i) {
    std::vector<std::uint64_t> bitmap;
    h.collect(bitmap);
    EXPECT_EQ(bitmap, std::vector<std::uint64_t>{i});
    EXPECT_EQ(log.last_collector, vcpu_id);
  }
  EXPECT_EQ(wakes, 3);
  stop = true;
  vcpu.join();
  h.leave_run();
}

TEST(BtDirtyPageHandoff, ParkedVcpuLetsTheCallerCollect) {
  Log log;
  std::atomic<int> wakes{0};
  DirtyPageHandoff h = make(log, wakes);
  h.enter_run();
  h.park();
  std::vector<std::uint64_t> bitmap;
  h.collect(bitmap);
  EXPECT_EQ(log.last_collector, std::this_thread::get_id());
  EXPECT_EQ(wakes, 0);
  h.unpark();
  h.leave_run();
}

TEST(BtDirtyPageHandoff, ACollectorWaitingOnAVcpuThatLeavesCollectsItself) {
  Log log;
  std::atomic<int> wakes{0};
  DirtyPageHandoff h = make(log, wakes);
  h.enter_run();
  std::thread collector_thread;
  std::vector<std::uint64_t> bitmap;
  std::thread::id collector_id;
  collector_thread = std::thread([&] {
    collector_id = std::this_thread::get_id();
    h.collect(bitmap);
  });
  // The vCPU never serves: it sees the request, then leaves run().
  while (!h.requested()) std::this_thread::yield();
  h.leave_run();
  collector_thread.join();
  EXPECT_EQ(bitmap, std::vector<std::uint64_t>{1});
  EXPECT_EQ(log.last_collector, collector_id);
  EXPECT_FALSE(h.requested());
}

TEST(BtDirtyPageHandoff, ParkingAnswersAPendingRequest) {
  Log log;
  std::atomic<int> wakes{0};
  DirtyPageHandoff h = make(log, wakes);
  h.enter_run();
  std::vector<std::uint64_t> bitmap;
  std::thread collector_thread([&] { h.collect(bitmap); });
  while (!h.requested()) std::this_thread::yield();
  const std::thread::id vcpu_id = std::this_thread::get_id();
  h.park();  // a vCPU about to wait for an interrupt serves first
  collector_thread.join();
  EXPECT_EQ(bitmap, std::vector<std::uint64_t>{1});
  EXPECT_EQ(log.last_collector, vcpu_id);
  h.unpark();
  h.leave_run();
}

}  // namespace
}  // namespace modevisor::bt
