// Whole-platform scenarios, written the way the project's test guests
// (tests/guests/exceptions.c) drive a PC: program the controllers, then
// `sti; hlt` in a loop, taking each interrupt through INTA and EOI.  The
// manual clock makes every HLT jump straight to the next timer deadline.
#include <gtest/gtest.h>

#include "platform_test_util.hpp"

namespace modevisor::host::test {
namespace {

// One `sti; hlt` and the interrupt it ends with (what a monitor does).
std::uint8_t hlt_and_take(TestPc& t) {
  t.machine.wait_for_interrupt(0);
  EXPECT_TRUE(t.machine.interrupt_pending(0));
  return t.machine.acknowledge_interrupt(0);
}

TEST(PcScenarioTest, PitThroughPicTwentyTicks) {
  TestPc t;
  t.init_pics();
  t.out8(0x21, 0xfe);  // only IRQ0
  t.out8(0xa1, 0xff);
  t.out8(0x43, 0x34);
  t.out8(0x40, (1193182 / 1000) & 0xff);
  t.out8(0x40, (1193182 / 1000) >> 8);
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(hlt_and_take(t), 0x20) << i;
    t.out8(0x20, 0x0b);
    EXPECT_EQ(t.in8(0x20) & 1, 1) << "ISR bit set before EOI";
    t.out8(0x20, 0x20);
    EXPECT_EQ(t.in8(0x20) & 1, 0) << "and clear after";
  }
  EXPECT_NEAR(static_cast<double>(t.machine.now_ns()), 20 * 1193.0 * 1e9 / 1193182, 1000.0);
}

TEST(PcScenarioTest, RtcPeriodicThroughTheCascade) {
  TestPc t;
  t.init_pics();
  t.out8(0x21, 0xfb);  // cascade only
  t.out8(0xa1, 0xfe);  // IRQ8
  t.out8(0x70, 0x0a);
  t.out8(0x71, 0x26);
  t.out8(0x70, 0x0b);
  const std::uint8_t b = t.in8(0x71);
  t.out8(0x70, 0x0b);
  t.out8(0x71, b | 0x40);
  t.out8(0x70, 0x0c);
  (void)t.in8(0x71);
  for (int i = 0; i < 8; ++i) {
    ASSERT_EQ(hlt_and_take(t), 0x28) << i;
    t.out8(0x70, 0x0c);
    EXPECT_EQ(t.in8(0x71) & 0x40, 0x40) << "PF set in the handler";
    t.out8(0xa0, 0x20);
    t.out8(0x20, 0x20);
  }
}

TEST(PcScenarioTest, LapicTimerAndSelfIpiBlockedByTpr) {
  TestPc t;
  t.init_pics();
  t.out8(0x21, 0xff);
  t.out8(0xa1, 0xff);
  t.pc.set_apic_base(0, t.pc.apic_base(0) | (1u << 11));  // what the guest's WRMSR 0x1b does
  t.apic_write(0xf0, 0x1ff);
  t.apic_write(0x80, 0);
  t.apic_write(0x3e0, 0x3);
  t.apic_write(0x320, 0x40 | (1u << 17));
  t.apic_write(0x380, 20000);
  for (int i = 0; i < 10; ++i) {
    ASSERT_EQ(hlt_and_take(t), 0x40) << i;
    EXPECT_TRUE(t.apic_read(0x100 + 0x20) & 1u) << "ISR bit for 0x40 in the handler";
    t.apic_write(0xb0, 0);
  }
  EXPECT_EQ(t.machine.now_ns(), 10u * 20000 * 16);
  t.apic_write(0x320, 0x40 | (1u << 16));
  t.apic_write(0x380, 0);
  t.apic_write(0x80, 0x50);
  t.apic_write(0x310, 0);
  t.apic_write(0x300, 0x41 | (1u << 18));
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  EXPECT_TRUE(t.apic_read(0x200 + 0x20) & (1u << 1)) << "IRR holds 0x41";
  t.apic_write(0x80, 0);
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x41);
  t.apic_write(0xb0, 0);
  EXPECT_FALSE(t.machine.interrupt_pending(0)) << "delivered once";
  EXPECT_FALSE(t.apic_read(0x200 + 0x20) & (1u << 1));
}

TEST(PcScenarioTest, RtcThroughIoApicEntry8) {
  TestPc t;
  t.init_pics();
  t.out8(0x21, 0xff);
  t.out8(0xa1, 0xff);
  t.apic_write(0xf0, 0x1ff);
  const std::uint32_t apic_id = t.apic_read(0x20) >> 24;
  EXPECT_EQ(t.ioapic_read(1) & 0xff, 0x20u);
  EXPECT_EQ(((t.ioapic_read(1) >> 16) & 0xff) + 1, 24u);
  t.ioapic_write(0x10 + 2 * 8 + 1, apic_id << 24);
  t.ioapic_write(0x10 + 2 * 8, 0x48);
  EXPECT_EQ(t.ioapic_read(0x10 + 2 * 8) & 0x1ffff, 0x48u);
  t.out8(0x70, 0x0b);
  t.out8(0x71, 0x42);
  t.out8(0x70, 0x0c);
  (void)t.in8(0x71);
  for (int i = 0; i < 8; ++i) {
    ASSERT_EQ(hlt_and_take(t), 0x48) << i;
    t.out8(0x70, 0x0c);
    EXPECT_EQ(t.in8(0x71) & 0x40, 0x40);
    t.apic_write(0xb0, 0);
  }
}

TEST(PcScenarioTest, DebugExitEndsTheHlt) {
  TestPc t;
  t.out8(0xf4, 3);
  t.machine.wait_for_interrupt(0);  // returns at once: the VM is stopping
  EXPECT_EQ(t.pc.exit_status(), 7);
}

TEST(PcScenarioTest, SerialTranscript) {
  TestPc t;
  for (char c : std::string("RESULT: PASS\n")) {
    while (!(t.in8(0x3fd) & 0x20)) {
    }
    t.out8(0x3f8, static_cast<std::uint8_t>(c));
  }
  EXPECT_EQ(t.pc.console_output(), "RESULT: PASS\n");
}

}  // namespace
}  // namespace modevisor::host::test
