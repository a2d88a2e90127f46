// The Machine's device access path: timers evaluated when their deadline has
// come (not on every access), flat access counters, the lock-free POST port,
// change_count() for monitors, and device accesses from several threads.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "platform_test_util.hpp"

namespace modevisor::host {
namespace {

using test::TestPc;

constexpr std::uint64_t tick_ns(std::uint64_t ticks) { return (ticks * 1000000000ull + Pit::kHz - 1) / Pit::kHz; }

// Guest time that moves only when told to and counts how often it is read.
class CountingClock final : public TimeSource {
 public:
  std::uint64_t now_ns() const override {
    reads.fetch_add(1);
    return now.load();
  }
  void wait_until(std::unique_lock<std::recursive_mutex>& lock, std::condition_variable_any& cv,
                  std::uint64_t deadline_ns) override {
    if (deadline_ns == UINT64_MAX) cv.wait(lock);
    else if (deadline_ns > now.load()) now.store(deadline_ns);
  }
  mutable std::atomic<std::uint64_t> reads{0};
  std::atomic<std::uint64_t> now{0};
};

void pit_mode2(Machine& m, std::uint16_t count) {
  m.io_out(0, 0x43, 1, 0x34);  // channel 0, lobyte/hibyte, mode 2
  m.io_out(0, 0x40, 1, count & 0xff);
  m.io_out(0, 0x40, 1, count >> 8);
}

void init_pic(Machine& m) {
  for (auto [port, v] : {std::pair{0x20, 0x11}, {0x21, 0x20}, {0x21, 0x04}, {0x21, 0x01}, {0x21, 0x00}})
    m.io_out(0, static_cast<std::uint16_t>(port), 1, static_cast<std::uint32_t>(v));
}

TEST(PlatformAccess, ThePostPortReadsNoClockAndTakesNoTimerWork) {
  auto clock = std::make_shared<CountingClock>();
  Machine machine(clock);
  Pc pc(machine, PcConfig{64ull << 20, 1, test::kRtcEpoch});
  init_pic(machine);
  pit_mode2(machine, 1193);
  machine.next_timer_deadline_ns();
  const std::uint64_t reads = clock->reads.load();
  const std::uint64_t changes = machine.change_count();
  for (int i = 0; i < 100; ++i) {
    machine.io_out(0, 0x80, 1, static_cast<std::uint32_t>(i));
    EXPECT_EQ(machine.io_in(0, 0x80, 1), static_cast<std::uint32_t>(i));
  }
  EXPECT_EQ(clock->reads.load(), reads) << "POST port accesses read the clock";
  EXPECT_EQ(machine.change_count(), changes) << "the POST port changes nothing a monitor looks at";
}

TEST(PlatformAccess, ATimerFiresAtItsDeadlineWithNoDeviceTouched) {
  TestPc t;
  t.init_pics();
  pit_mode2(t.machine, 1193);
  EXPECT_EQ(t.machine.next_timer_deadline_ns(), tick_ns(1193));
  t.clock->set(tick_ns(1193) - 1);
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  t.clock->set(tick_ns(1193));
  // What the VM's timer thread and a monitor's host timer ask at the deadline.
  EXPECT_EQ(t.machine.next_timer_deadline_ns(), tick_ns(2 * 1193)) << "the due period was taken";
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x20);
}

TEST(PlatformAccess, AnUnrelatedDeviceLeavesADueTimerToTheNextPoll) {
  TestPc t;
  t.init_pics();
  pit_mode2(t.machine, 1193);
  t.machine.next_timer_deadline_ns();
  t.clock->set(tick_ns(1193) + 10);
  t.out8(0x20, 0x0a);  // OCW3: read IRR
  EXPECT_EQ(t.in8(0x20) & 1, 0) << "the 8259 is not a timer: its access does not poll";
  EXPECT_TRUE(t.machine.interrupt_pending(0)) << "the next interrupt question does";
  t.out8(0x20, 0x0a);
  EXPECT_EQ(t.in8(0x20) & 1, 1);
}

TEST(PlatformAccess, APitAccessBringsTheTimersUpToNow) {
  TestPc t;
  t.init_pics();
  pit_mode2(t.machine, 1193);
  t.machine.next_timer_deadline_ns();
  t.clock->set(tick_ns(1193) + 10);
  t.in8(0x40);  // a timer device: due timers are raised before it answers
  t.in8(0x40);
  t.out8(0x20, 0x0a);
  EXPECT_EQ(t.in8(0x20) & 1, 1);
}

TEST(PlatformAccess, PitCountReadsStillMove) {
  TestPc t;
  pit_mode2(t.machine, 50000);
  auto latched = [&] {
    t.out8(0x43, 0x00);  // latch channel 0
    const unsigned lo = t.in8(0x40);
    return lo | (unsigned{t.in8(0x40)} << 8);
  };
  const unsigned first = latched();
  t.clock->set(tick_ns(1000));
  const unsigned second = latched();
  t.clock->set(tick_ns(2000));
  const unsigned third = latched();
  EXPECT_EQ(first, 50000u);
  EXPECT_EQ(second, 49000u);
  EXPECT_EQ(third, 48000u);
}

TEST(PlatformAccess, LapicCurrentCountMovesAndAReprogrammedTimerIsSeen) {
  TestPc t;
  t.apic_write(0xf0, 0x1ff);
  t.apic_write(0x3e0, 0xb);  // divide by 1
  t.apic_write(0x320, 0x40);
  t.apic_write(0x380, 100000);
  EXPECT_EQ(t.machine.next_timer_deadline_ns(), 100000u);
  t.advance_ns(30000);
  EXPECT_EQ(t.apic_read(0x390), 70000u);
  const std::uint64_t changes = t.machine.change_count();
  t.apic_write(0x380, 1000);  // sooner: a monitor's host timer must be re-armed
  EXPECT_NE(t.machine.change_count(), changes);
  EXPECT_EQ(t.machine.next_timer_deadline_ns(), 31000u);
  t.advance_ns(1000);
  EXPECT_TRUE(t.machine.interrupt_pending(0));
}

TEST(PlatformAccess, ATprWriteAnnouncesOnlyAVectorItUnmasks) {
  TestPc t;
  std::vector<unsigned> notified;
  t.machine.set_interrupt_notifier([&](unsigned vcpu) { notified.push_back(vcpu); });
  t.apic_write(0xf0, 0x1ff);
  t.apic_write(0x80, 0xf0);
  t.apic_write(0x300, 0x00044041);  // fixed self-IPI, vector 0x41: held off by the TPR
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  notified.clear();
  const std::uint64_t changes = t.machine.change_count();
  t.apic_write(0x80, 0x80);  // still above the vector's class
  t.apic_write(0x80, 0x90);
  EXPECT_TRUE(notified.empty());
  EXPECT_EQ(t.machine.change_count(), changes);
  t.apic_write(0x80, 0x00);  // lets 0x41 through
  EXPECT_EQ(notified, std::vector<unsigned>{0});
  EXPECT_NE(t.machine.change_count(), changes);
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x41);
}

TEST(PlatformAccess, CountersCountEveryAccess) {
  TestPc t;
  for (int i = 0; i < 5; ++i) t.in8(0x80);
  for (int i = 0; i < 3; ++i) t.out8(0x80, 1);
  t.machine.io_in(1, 0x80, 1);    // another vCPU's table
  t.machine.io_in(300, 0x80, 1);  // beyond the per-vCPU tables: the shared one
  t.in8(0x2f8);  // unclaimed (COM2)
  t.apic_read(0x30);
  t.apic_write(0x80, 0);
  t.machine.mmio_read(0, 0xe0000000, 4);  // unclaimed
  const auto ports = t.machine.port_accesses();
  EXPECT_EQ(ports.at(0x80), 10u);
  EXPECT_EQ(ports.at(0x2f8), 1u);
  EXPECT_EQ(ports.count(0x81), 0u) << "ports never accessed are left out";
  const auto mmio = t.machine.mmio_accesses();
  EXPECT_EQ(mmio.at("lapic"), 2u);
  EXPECT_EQ(mmio.at("unclaimed"), 1u);
  EXPECT_EQ(mmio.count("ioapic"), 0u);
  bool listed = false;
  for (const auto& [name, count] : t.pc.counters())
    if (name == "io 0x0080") listed = count == 10;
  EXPECT_TRUE(listed) << "run --stats names ports as before";
}

// Two vCPU threads at once on the lock-free POST port, the locked PIT and
// their own local APICs' TPR, while a third polls timers.
TEST(PlatformAccess, TwoVcpuThreadsAccessDevicesAtOnce) {
  TestPc t(2);
  t.apic_write(0xf0, 0x1ff, 0);
  t.apic_write(0xf0, 0x1ff, 1);
  pit_mode2(t.machine, 1000);
  constexpr int kRounds = 20000;
  std::atomic<bool> go{false};
  auto vcpu = [&](unsigned index) {
    while (!go.load()) std::this_thread::yield();
    for (int i = 0; i < kRounds; ++i) {
      t.machine.io_out(index, 0x80, 1, index);
      t.machine.io_in(index, 0x80, 1);
      t.machine.io_in(index, 0x40, 1);
      t.machine.mmio_write(index, 0xfee00080, 4, (i & 1) ? 0x10 : 0);
      if (i % 64 == 0) t.advance_ns(1000);
    }
  };
  std::atomic<bool> done{false};
  std::thread poller([&] {
    while (!done.load()) {
      t.machine.next_timer_deadline_ns();
      if (t.machine.interrupt_pending(0)) t.machine.acknowledge_interrupt(0);
    }
  });
  std::thread a(vcpu, 0), b(vcpu, 1);
  go = true;
  a.join();
  b.join();
  done = true;
  poller.join();
  const auto ports = t.machine.port_accesses();
  EXPECT_EQ(ports.at(0x80), 4u * kRounds);
  EXPECT_EQ(ports.at(0x40), 2u * kRounds + 2);  // and the two programming writes
  EXPECT_EQ(t.machine.mmio_accesses().at("lapic"), 2u * kRounds + 2);
  EXPECT_LE(t.machine.io_in(0, 0x80, 1), 1u);
}

}  // namespace
}  // namespace modevisor::host
