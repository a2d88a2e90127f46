// PIT, RTC and local APIC timer against an injected clock, plus the
// Machine's timer deadline and wait_for_interrupt.
#include <gtest/gtest.h>

#include <thread>

#include "platform_test_util.hpp"

namespace modevisor::host::test {
namespace {

constexpr std::uint64_t tick_ns(std::uint64_t ticks) { return (ticks * 1000000000ull + Pit::kHz - 1) / Pit::kHz; }

void pit_program(TestPc& t, unsigned channel, unsigned mode, std::uint16_t count) {
  t.out8(0x43, static_cast<std::uint8_t>((channel << 6) | 0x30 | (mode << 1)));
  t.out8(static_cast<std::uint16_t>(0x40 + channel), count & 0xff);
  t.out8(static_cast<std::uint16_t>(0x40 + channel), count >> 8);
}

std::uint16_t pit_latch_read(TestPc& t, unsigned channel) {
  t.out8(0x43, static_cast<std::uint8_t>(channel << 6));  // counter latch
  const std::uint8_t lo = t.in8(static_cast<std::uint16_t>(0x40 + channel));
  const std::uint8_t hi = t.in8(static_cast<std::uint16_t>(0x40 + channel));
  return static_cast<std::uint16_t>(lo | hi << 8);
}

// --- PIT ------------------------------------------------------------------------

TEST(PitTest, Mode2RateGeneratorPeriodsOnIrq0) {
  TestPc t;
  t.init_pics();
  pit_program(t, 0, 2, 1193);  // ~1 kHz
  EXPECT_EQ(t.machine.next_timer_deadline_ns(), tick_ns(1193));
  int irqs = 0;
  for (int period = 1; period <= 5; ++period) {
    t.clock->set(tick_ns(1193ull * period) - 1);
    EXPECT_FALSE(t.machine.interrupt_pending(0)) << "period " << period;
    t.clock->set(tick_ns(1193ull * period));
    ASSERT_TRUE(t.machine.interrupt_pending(0)) << "period " << period;
    EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x20);
    t.out8(0x20, 0x20);
    ++irqs;
  }
  EXPECT_EQ(irqs, 5);
  EXPECT_EQ(t.machine.next_timer_deadline_ns(), tick_ns(1193ull * 6));
}

TEST(PitTest, NewCountInMode2TakesEffectAtThePeriodEnd) {
  TestPc t;
  t.init_pics();
  pit_program(t, 0, 2, 1000);
  t.clock->set(tick_ns(300));
  t.out8(0x40, 500 & 0xff);  // new count without a mode command
  t.out8(0x40, 500 >> 8);
  EXPECT_EQ(pit_latch_read(t, 0), 700) << "the old period continues";
  t.clock->set(tick_ns(1000));
  ASSERT_TRUE(t.machine.interrupt_pending(0)) << "the old period's end";
  t.machine.acknowledge_interrupt(0);
  t.out8(0x20, 0x20);
  t.clock->set(tick_ns(1100));
  EXPECT_EQ(pit_latch_read(t, 0), 400) << "now counting the new period";
  EXPECT_EQ(t.machine.next_timer_deadline_ns(), tick_ns(1500));
  t.clock->set(tick_ns(1500));
  EXPECT_TRUE(t.machine.interrupt_pending(0));
}

TEST(PitTest, MissedPeriodsAreCoalesced) {
  TestPc t;
  t.init_pics();
  pit_program(t, 0, 2, 1000);
  t.clock->set(tick_ns(10500));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x20);
  t.out8(0x20, 0x20);
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.next_timer_deadline_ns(), tick_ns(11000));
}

TEST(PitTest, CountReadsDownAndLatchHoldsIt) {
  TestPc t;
  pit_program(t, 0, 2, 10000);
  t.clock->set(tick_ns(2500));
  EXPECT_EQ(pit_latch_read(t, 0), 7500);
  t.out8(0x43, 0x00);  // latch
  t.clock->set(tick_ns(4000));
  EXPECT_EQ(t.in8(0x40), 7500 & 0xff) << "latched value, not the live count";
  EXPECT_EQ(t.in8(0x40), 7500 >> 8);
  EXPECT_EQ(pit_latch_read(t, 0), 6000);
  t.clock->set(tick_ns(10000 + 100));
  EXPECT_EQ(pit_latch_read(t, 0), 9900) << "mode 2 reloads";
}

TEST(PitTest, Mode0InterruptOnTerminalCountOnce) {
  TestPc t;
  t.init_pics();
  pit_program(t, 0, 0, 500);
  t.clock->set(tick_ns(499));
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  t.clock->set(tick_ns(500));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x20);
  t.out8(0x20, 0x20);
  t.clock->set(tick_ns(500 + 65536 * 2));
  EXPECT_FALSE(t.machine.interrupt_pending(0)) << "mode 0 is one-shot";
  EXPECT_EQ(t.machine.next_timer_deadline_ns(), UINT64_MAX);
}

TEST(PitTest, Mode3SquareWaveOutputAndReadBackStatus) {
  TestPc t;
  pit_program(t, 0, 3, 100);
  t.clock->set(tick_ns(10));
  t.out8(0x43, 0xe2);  // read-back: status only, channel 0
  EXPECT_EQ(t.in8(0x40), 0x80 | 0x30 | 0x06) << "output high, lo/hi, mode 3";
  t.clock->set(tick_ns(60));
  t.out8(0x43, 0xe2);
  EXPECT_EQ(t.in8(0x40) & 0x80, 0x00) << "second half: output low";
  t.clock->set(tick_ns(110));
  EXPECT_TRUE(t.pc.pit().output(0));
}

TEST(PitTest, ReadBackCountAndStatusTogether) {
  TestPc t;
  t.out8(0x43, 0x34);  // mode 2, lo/hi
  t.out8(0x43, 0xc2);  // read-back count+status channel 0, before any count
  EXPECT_EQ(t.in8(0x40) & 0x40, 0x40) << "null count";
}

TEST(PitTest, LobyteAndHibyteAccess) {
  TestPc t;
  t.out8(0x43, 0x14);  // channel 0, lobyte only, mode 2
  t.out8(0x40, 200);
  t.clock->set(tick_ns(50));
  EXPECT_EQ(t.in8(0x40), 150);
  t.out8(0x43, 0x24);  // hibyte only, mode 2
  t.out8(0x40, 0x10);  // count 0x1000
  t.clock->set(tick_ns(50) + tick_ns(0x100));
  EXPECT_EQ(t.in8(0x40), 0x0f);
}

TEST(PitTest, Channel2GateAndOutputOnPort61) {
  TestPc t;
  // Linux-style TSC calibration: gate on, mode 0, poll bit 5 of port 0x61.
  t.out8(0x61, (t.in8(0x61) & ~0x02) | 0x01);
  t.out8(0x43, 0xb0);  // channel 2, lo/hi, mode 0
  t.out8(0x42, 0xe8);
  t.out8(0x42, 0x03);  // 1000
  EXPECT_EQ(t.in8(0x61) & 0x20, 0);
  t.clock->set(tick_ns(1000));
  EXPECT_EQ(t.in8(0x61) & 0x20, 0x20) << "terminal count";
  EXPECT_EQ(t.in8(0x61) & 0x03, 0x01);
  // Gate low freezes a mode 0 count.
  t.out8(0x43, 0xb0);
  t.out8(0x42, 0x10);
  t.out8(0x42, 0x27);  // 10000
  t.clock->advance(tick_ns(1000));
  t.out8(0x61, 0x00);
  const std::uint16_t frozen = pit_latch_read(t, 2);
  t.clock->advance(tick_ns(5000));
  EXPECT_EQ(pit_latch_read(t, 2), frozen);
}

// --- RTC ------------------------------------------------------------------------

std::uint8_t cmos(TestPc& t, std::uint8_t index) {
  t.out8(0x70, index);
  return t.in8(0x71);
}
void cmos_write(TestPc& t, std::uint8_t index, std::uint8_t v) {
  t.out8(0x70, index);
  t.out8(0x71, v);
}

TEST(RtcTest, TimeInBcdAndBinary) {
  TestPc t;  // 2023-11-14 22:13:20 UTC, Tuesday
  EXPECT_EQ(cmos(t, 0x0b) & 0x06, 0x02) << "BCD, 24 hour";
  EXPECT_EQ(cmos(t, 0x00), 0x20);
  EXPECT_EQ(cmos(t, 0x02), 0x13);
  EXPECT_EQ(cmos(t, 0x04), 0x22);
  EXPECT_EQ(cmos(t, 0x06), 0x03) << "Tuesday";
  EXPECT_EQ(cmos(t, 0x07), 0x14);
  EXPECT_EQ(cmos(t, 0x08), 0x11);
  EXPECT_EQ(cmos(t, 0x09), 0x23);
  EXPECT_EQ(cmos(t, 0x32), 0x20);
  cmos_write(t, 0x0b, 0x06);  // binary, 24 hour
  EXPECT_EQ(cmos(t, 0x00), 20);
  EXPECT_EQ(cmos(t, 0x04), 22);
  EXPECT_EQ(cmos(t, 0x09), 23);
  t.advance_ns(3'000'000'000);
  EXPECT_EQ(cmos(t, 0x00), 23) << "the clock runs with guest time";
  cmos_write(t, 0x0b, 0x00);  // BCD, 12 hour
  EXPECT_EQ(cmos(t, 0x04), 0x80 | 0x10) << "10 PM";
}

TEST(RtcTest, SetBitFreezesAndSetsTheTime) {
  TestPc t;
  cmos_write(t, 0x0b, 0x82);  // SET, 24h, BCD
  cmos_write(t, 0x04, 0x08);
  cmos_write(t, 0x02, 0x30);
  cmos_write(t, 0x00, 0x00);
  t.advance_ns(5'000'000'000);
  EXPECT_EQ(cmos(t, 0x00), 0x00) << "frozen while SET";
  cmos_write(t, 0x0b, 0x02);
  t.advance_ns(2'000'000'000);
  EXPECT_EQ(cmos(t, 0x04), 0x08);
  EXPECT_EQ(cmos(t, 0x02), 0x30);
  EXPECT_EQ(cmos(t, 0x00), 0x02);
  EXPECT_EQ(cmos(t, 0x07), 0x14) << "date untouched";
}

TEST(RtcTest, TwelveHourWrites) {
  TestPc t;
  cmos_write(t, 0x0b, 0x84);  // SET, binary, 12 hour
  cmos_write(t, 0x04, 0x80 | 12);  // 12 PM = noon
  cmos_write(t, 0x0b, 0x06);  // run, binary, 24 hour
  EXPECT_EQ(cmos(t, 0x04), 12);
  cmos_write(t, 0x0b, 0x84);
  cmos_write(t, 0x04, 12);  // 12 AM = midnight
  cmos_write(t, 0x0b, 0x06);
  EXPECT_EQ(cmos(t, 0x04), 0);
}

TEST(RtcTest, RegistersAtoD) {
  TestPc t;
  EXPECT_EQ(cmos(t, 0x0a), 0x26);
  EXPECT_EQ(cmos(t, 0x0d), 0x80);
  t.clock->set(999'900'000);  // inside the update window
  EXPECT_EQ(cmos(t, 0x0a) & 0x80, 0x80) << "UIP";
  t.clock->set(1'000'000'001);
  EXPECT_EQ(cmos(t, 0x0a) & 0x80, 0x00);
  EXPECT_EQ(cmos(t, 0x0c) & 0x10, 0x10) << "update-ended flag";
  EXPECT_EQ(cmos(t, 0x0c), 0x00) << "C clears on read";
  EXPECT_EQ(t.in8(0x70), 0xff) << "index register is write-only";
  t.out8(0x70, 0x80 | 0x0d);  // NMI mask bit ignored
  EXPECT_EQ(t.in8(0x71), 0x80);
}

TEST(RtcTest, PeriodicInterruptOnIrq8) {
  TestPc t;
  t.init_pics();
  cmos_write(t, 0x0a, 0x26);  // 1024 Hz
  cmos_write(t, 0x0b, 0x42);  // PIE
  const std::uint64_t period = 976'562;  // 1/1024 s, truncated
  EXPECT_EQ(t.machine.next_timer_deadline_ns(), period + 1);
  t.clock->set(period);
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  t.clock->set(period + 1);
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x28) << "IRQ8 on the slave";
  EXPECT_EQ(cmos(t, 0x0c), 0x80 | 0x40) << "IRQF | PF";
  t.out8(0xa0, 0x20);
  t.out8(0x20, 0x20);
  t.clock->set(1'953'124);  // 2/1024 s is exactly 1953125 ns
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  t.clock->set(1'953'125);
  EXPECT_TRUE(t.machine.interrupt_pending(0)) << "the next period, after C was read";
}

TEST(RtcTest, UpdateEndedAndAlarmInterrupts) {
  TestPc t;
  t.init_pics();
  cmos_write(t, 0x0b, 0x06 | 0x20);  // binary, AIE
  cmos_write(t, 0x01, 25);           // alarm at hh:mm:25, any hour/minute
  cmos_write(t, 0x03, 0xff);
  cmos_write(t, 0x05, 0xff);
  t.clock->set(4'000'000'000);  // 22:13:24
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  t.clock->set(5'000'000'000);  // 22:13:25
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(cmos(t, 0x0c) & 0xa0, 0xa0) << "IRQF | AF";
  t.machine.acknowledge_interrupt(0);
  t.out8(0xa0, 0x20);
  t.out8(0x20, 0x20);
  cmos_write(t, 0x0b, 0x06 | 0x10);  // UIE
  EXPECT_EQ(t.machine.next_timer_deadline_ns(), 6'000'000'000u);
  t.clock->set(6'000'000'000);
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(cmos(t, 0x0c) & 0x90, 0x90);
}

TEST(RtcTest, CmosMemorySizeFields) {
  TestPc t(1, 256ull << 20);
  EXPECT_EQ(cmos(t, 0x15) | cmos(t, 0x16) << 8, 640);
  EXPECT_EQ(cmos(t, 0x17) | cmos(t, 0x18) << 8, 0xffff) << "extended KiB, capped";
  EXPECT_EQ(cmos(t, 0x30) | cmos(t, 0x31) << 8, 0xffff);
  EXPECT_EQ(cmos(t, 0x34) | cmos(t, 0x35) << 8, (240 << 20) >> 16) << "64 KiB units above 16 MiB";
  TestPc small(1, 8ull << 20);
  EXPECT_EQ(cmos(small, 0x17) | cmos(small, 0x18) << 8, 7 * 1024);
  EXPECT_EQ(cmos(small, 0x34) | cmos(small, 0x35) << 8, 0);
  cmos_write(small, 0x40, 0x5a);
  EXPECT_EQ(cmos(small, 0x40), 0x5a) << "general CMOS RAM";
}

// --- local APIC timer -----------------------------------------------------------

TEST(LapicTimerTest, OneShotAndPeriodicWithDivider) {
  TestPc t;
  t.apic_write(0xf0, 0x1ff);
  t.apic_write(0x3e0, 0x0);       // divide by 2
  t.apic_write(0x320, 0x00040);   // one-shot, vector 0x40
  t.apic_write(0x380, 500);       // 1000 ns
  EXPECT_EQ(t.machine.next_timer_deadline_ns(), 1000u);
  t.advance_ns(400);
  EXPECT_EQ(t.apic_read(0x390), 300u);
  t.advance_ns(599);
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  t.advance_ns(1);
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x40);
  t.apic_write(0xb0, 0);
  EXPECT_EQ(t.apic_read(0x390), 0u);
  t.advance_ns(100000);
  EXPECT_FALSE(t.machine.interrupt_pending(0)) << "one-shot";

  t.apic_write(0x3e0, 0xb);       // divide by 1
  t.apic_write(0x320, 0x20041);   // periodic
  t.apic_write(0x380, 2000);
  for (int i = 0; i < 3; ++i) {
    t.advance_ns(2000);
    ASSERT_TRUE(t.machine.interrupt_pending(0)) << i;
    EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x41);
    t.apic_write(0xb0, 0);
  }
  t.apic_write(0x320, 0x30041);   // masked: counts, no interrupt
  t.advance_ns(2000);
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  t.apic_write(0x380, 0);         // stop
  EXPECT_EQ(t.machine.next_timer_deadline_ns(), UINT64_MAX);
}

// --- Machine: deadlines and HLT -------------------------------------------------

TEST(MachineTimeTest, DeadlineIsTheEarliestTimer) {
  TestPc t;
  EXPECT_EQ(t.machine.next_timer_deadline_ns(), UINT64_MAX) << "nothing armed at power-on";
  t.apic_write(0xf0, 0x1ff);
  t.apic_write(0x3e0, 0xb);
  t.apic_write(0x320, 0x40);
  t.apic_write(0x380, 50000);
  pit_program(t, 0, 2, 11932);
  EXPECT_EQ(t.machine.next_timer_deadline_ns(), 50000u);
  t.apic_write(0x380, 0);
  EXPECT_EQ(t.machine.next_timer_deadline_ns(), tick_ns(11932));
}

TEST(MachineTimeTest, WaitForInterruptSleepsUntilTheTimer) {
  TestPc t;
  t.init_pics();
  pit_program(t, 0, 2, 11932);
  t.machine.wait_for_interrupt(0);  // the manual clock jumps to the deadline
  EXPECT_EQ(t.machine.now_ns(), tick_ns(11932));
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x20);
}

TEST(MachineTimeTest, WaitForInterruptReturnsOnStopAndKick) {
  TestPc t;
  std::thread stopper([&] { t.machine.wake(0); });
  t.machine.wait_for_interrupt(0);  // nothing armed: only the kick ends it
  stopper.join();
  std::thread operator_stop([&] { t.machine.request_stop("operator"); });
  t.machine.wait_for_interrupt(0);
  operator_stop.join();
  EXPECT_TRUE(t.machine.stop_requested());
  EXPECT_EQ(t.pc.stop_reason(), "operator");
}

TEST(MachineTimeTest, HostInputWakesAHaltedVcpu) {
  TestPc t;
  t.init_pics();
  t.out8(0x3f9, 0x01);
  std::thread typist([&] { t.pc.push_console_input("k"); });
  t.machine.wait_for_interrupt(0);
  typist.join();
  EXPECT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x24);
}

// The vCPU is kicked when a timer interrupt becomes deliverable, not each
// time a periodic timer falls due while its last tick is still pending or in
// service (a kick costs a guest exit, which can take longer than the period).
TEST(LapicTimerTest, PeriodicTicksAreAnnouncedOnlyWhenDeliverable) {
  TestPc t;
  t.apic_write(0xf0, 0x1ff);
  t.apic_write(0x350, 0x10000);  // LINT0 masked: no PIC
  int kicks = 0;
  t.machine.set_interrupt_notifier([&](unsigned) { ++kicks; });
  t.apic_write(0x3e0, 0xb);       // divide by 1: 1 ns per count
  t.apic_write(0x320, 0x20040);   // periodic, vector 0x40
  t.apic_write(0x380, 1000);      // 1 us period
  const auto irr40 = [&] { return (t.apic_read(0x200 + 0x20) & 1u) != 0; };

  t.advance_ns(1000);
  t.machine.next_timer_deadline_ns();
  EXPECT_EQ(kicks, 1) << "the first tick is deliverable";
  ASSERT_TRUE(irr40());
  t.advance_ns(1000);
  t.machine.next_timer_deadline_ns();
  EXPECT_EQ(kicks, 1) << "the next tick coalesces into the pending one";

  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x40);
  t.advance_ns(1000);
  t.machine.next_timer_deadline_ns();
  EXPECT_TRUE(irr40()) << "a tick during the handler is requested";
  EXPECT_EQ(kicks, 1) << "but not announced: its own class is in service";
  t.apic_write(0xb0, 0);  // EOI releases it
  EXPECT_EQ(kicks, 2);
  EXPECT_TRUE(t.machine.interrupt_pending(0));

  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x40);
  t.apic_write(0xb0, 0);  // nothing left to deliver
  EXPECT_EQ(kicks, 2);
  EXPECT_FALSE(t.machine.interrupt_pending(0));
}

TEST(MachineTimeTest, HostClockWaitEndsOnStop) {
  Machine machine;  // real clock; no timing assertion
  std::thread stopper([&] { machine.request_stop("test", 3); });
  machine.wait_for_interrupt(0);
  stopper.join();
  EXPECT_EQ(machine.exit_status(), 3);
}

TEST(MachineTimeTest, NotifierSeesRaisedInterrupts) {
  TestPc t;
  t.init_pics();
  std::vector<unsigned> kicked;
  t.machine.set_interrupt_notifier([&](unsigned vcpu) { kicked.push_back(vcpu); });
  pit_program(t, 0, 2, 100);
  t.clock->set(tick_ns(100));
  t.machine.next_timer_deadline_ns();
  ASSERT_FALSE(kicked.empty());
  EXPECT_EQ(kicked.back(), 0u);
}

}  // namespace
}  // namespace modevisor::host::test
