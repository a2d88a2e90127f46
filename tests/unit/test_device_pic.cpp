// The 8259 pair, programmed through its ports like a guest would.
#include <gtest/gtest.h>

#include "platform_test_util.hpp"

namespace modevisor::host::test {
namespace {

TEST(PicTest, NothingPendingAfterReset) {
  TestPc t;
  t.init_pics();
  EXPECT_FALSE(t.machine.interrupt_pending(0));
}

TEST(PicTest, EdgeIrqGoesIrrThenIsrThenEoi) {
  TestPc t;
  t.init_pics();
  t.pc.pic().set_irq(1, true);
  t.out8(0x20, 0x0a);  // OCW3: read IRR
  EXPECT_EQ(t.in8(0x20), 0x02);
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x21);
  EXPECT_EQ(t.in8(0x20), 0x00) << "edge request consumed by INTA";
  t.out8(0x20, 0x0b);  // OCW3: read ISR
  EXPECT_EQ(t.in8(0x20), 0x02);
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  t.out8(0x20, 0x20);  // non-specific EOI
  EXPECT_EQ(t.in8(0x20), 0x00);
  // Still high: no new edge, no new request.
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  t.pc.pic().set_irq(1, false);
  t.pc.pic().set_irq(1, true);
  EXPECT_TRUE(t.machine.interrupt_pending(0));
}

TEST(PicTest, ImrMasksAndReadsBack) {
  TestPc t;
  t.init_pics();
  t.out8(0x21, 0xff);
  EXPECT_EQ(t.in8(0x21), 0xff);
  t.pc.pic().set_irq(3, true);
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  t.out8(0x21, 0xf7);
  EXPECT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x23);
}

TEST(PicTest, SlaveCascadesThroughIrq2) {
  TestPc t;
  t.init_pics(0x08, 0x70);
  t.pc.pic().set_irq(12, true);
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x74);
  t.out8(0xa0, 0x0b);
  EXPECT_EQ(t.in8(0xa0), 0x10) << "slave ISR bit 4";
  t.out8(0x20, 0x0b);
  EXPECT_EQ(t.in8(0x20), 0x04) << "master ISR bit 2 (cascade)";
  t.out8(0xa0, 0x20);
  t.out8(0x20, 0x20);
  EXPECT_EQ(t.in8(0xa0), 0x00);
  EXPECT_EQ(t.in8(0x20), 0x00);
}

TEST(PicTest, PriorityAndNesting) {
  TestPc t;
  t.init_pics();
  t.pc.pic().set_irq(5, true);
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x25);
  t.pc.pic().set_irq(6, true);
  EXPECT_FALSE(t.machine.interrupt_pending(0)) << "IRQ6 is lower priority than IRQ5 in service";
  t.pc.pic().set_irq(3, true);
  ASSERT_TRUE(t.machine.interrupt_pending(0)) << "IRQ3 preempts";
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x23);
  t.out8(0x20, 0x20);  // EOI IRQ3 (highest in service)
  t.out8(0x20, 0x0b);
  EXPECT_EQ(t.in8(0x20), 0x20);
  t.out8(0x20, 0x65);  // specific EOI IRQ5
  EXPECT_EQ(t.in8(0x20), 0x00);
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x26);
}

TEST(PicTest, AutoEoiLeavesIsrClear) {
  TestPc t;
  t.init_pics(0x20, 0x28, true);
  t.pc.pic().set_irq(4, true);
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x24);
  t.out8(0x20, 0x0b);
  EXPECT_EQ(t.in8(0x20), 0x00);
}

TEST(PicTest, SpuriousIrq7WhenRequestVanishes) {
  TestPc t;
  t.init_pics();
  t.out8(0x4d0, 0x20);  // IRQ5 level triggered
  t.pc.pic().set_irq(5, true);
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  t.pc.pic().set_irq(5, false);
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x27);
  t.out8(0x20, 0x0b);
  EXPECT_EQ(t.in8(0x20), 0x00) << "a spurious IRQ7 sets no ISR bit";
}

TEST(PicTest, SpuriousIrq15FromSlave) {
  TestPc t;
  t.init_pics();
  t.out8(0x4d1, 0x02);  // IRQ9 level
  t.pc.pic().set_irq(9, true);
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  // Master sees the cascade; the slave's request drops just before INTA.
  auto state = t.pc.pic().save();
  state.chips[1].irr = 0;  // request vanished, master IRR2 still latched
  t.pc.pic().restore(state);
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x2f);
}

TEST(PicTest, ElcrLevelTriggeredStaysRequested) {
  TestPc t;
  t.init_pics();
  t.out8(0x4d0, 0xff);
  EXPECT_EQ(t.in8(0x4d0), 0xf8) << "IRQ0-2 can't be level triggered";
  t.out8(0x4d1, 0xff);
  EXPECT_EQ(t.in8(0x4d1), 0xde);
  t.pc.pic().set_irq(10, true);
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x2a);
  t.out8(0xa0, 0x20);
  t.out8(0x20, 0x20);
  EXPECT_TRUE(t.machine.interrupt_pending(0)) << "level still asserted";
  t.pc.pic().set_irq(10, false);
  EXPECT_FALSE(t.machine.interrupt_pending(0));
}

TEST(PicTest, PollCommand) {
  TestPc t;
  t.init_pics();
  t.pc.pic().set_irq(6, true);
  t.out8(0x20, 0x0c);  // OCW3 poll
  EXPECT_EQ(t.in8(0x20), 0x86);
  t.out8(0x20, 0x0b);
  EXPECT_EQ(t.in8(0x20), 0x40) << "poll acknowledges";
}

TEST(PicTest, RotateOnNonSpecificEoi) {
  TestPc t;
  t.init_pics();
  t.pc.pic().set_irq(0, true);
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x20);
  t.out8(0x20, 0xa0);  // rotate on non-specific EOI: IRQ0 becomes lowest
  t.pc.pic().set_irq(0, false);
  t.pc.pic().set_irq(0, true);
  t.pc.pic().set_irq(7, true);
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x27) << "IRQ7 now outranks IRQ0";
}

TEST(PicTest, NoPicDeliveryWhenLint0Masked) {
  TestPc t;
  t.init_pics();
  t.apic_write(0xf0, 0x1ff);      // software enable
  t.apic_write(0x350, 0x10700);   // LINT0 ExtINT, masked
  t.pc.pic().set_irq(1, true);
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  t.apic_write(0x350, 0x00700);
  EXPECT_TRUE(t.machine.interrupt_pending(0));
  // A hardware-disabled APIC hands the CPU straight to the PIC.
  t.apic_write(0x350, 0x10700);
  t.pc.set_apic_base(0, 0xfee00000 | 0x100);
  EXPECT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.mmio_read(0, 0xfee00030, 4), 0xffffffffu) << "disabled APIC window reads all ones";
}

TEST(PicTest, SpecialMaskModeAllowsLowerPriorities) {
  TestPc t;
  t.init_pics();
  t.pc.pic().set_irq(3, true);
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x23);
  t.out8(0x21, 0x08);  // mask IRQ3 (in service)
  t.out8(0x20, 0x68);  // OCW3: set special mask
  t.pc.pic().set_irq(6, true);
  ASSERT_TRUE(t.machine.interrupt_pending(0)) << "IRQ6 below the in-service IRQ3 gets through";
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x26);
  t.out8(0x20, 0x48);  // reset special mask
  t.pc.pic().set_irq(7, true);
  EXPECT_FALSE(t.machine.interrupt_pending(0));
}

TEST(PicTest, SpecialFullyNestedLetsTheSlaveNest) {
  TestPc t;
  t.out8(0x20, 0x11);
  t.out8(0x21, 0x20);
  t.out8(0x21, 0x04);
  t.out8(0x21, 0x11);  // ICW4: SFNM, 8086
  t.out8(0xa0, 0x11);
  t.out8(0xa1, 0x28);
  t.out8(0xa1, 0x02);
  t.out8(0xa1, 0x01);
  t.pc.pic().set_irq(12, true);
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x2c);
  t.pc.pic().set_irq(9, true);  // higher priority on the same slave
  ASSERT_TRUE(t.machine.interrupt_pending(0)) << "SFNM: the cascade in service does not block the slave";
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x29);
}

TEST(PicTest, InitialisationClearsImrAndIsr) {
  TestPc t;
  t.init_pics();
  t.pc.pic().set_irq(1, true);
  t.machine.acknowledge_interrupt(0);
  t.out8(0x21, 0xaa);
  t.init_pics(0x50, 0x58);
  EXPECT_EQ(t.in8(0x21), 0x00);
  t.out8(0x20, 0x0b);
  EXPECT_EQ(t.in8(0x20), 0x00);
  t.pc.pic().set_irq(1, false);
  t.pc.pic().set_irq(1, true);
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x51) << "new vector base";
}

TEST(PicTest, OnlyVcpu0SeesThePic) {
  TestPc t(2);
  t.init_pics();
  t.pc.pic().set_irq(1, true);
  EXPECT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_FALSE(t.machine.interrupt_pending(1));
}

}  // namespace
}  // namespace modevisor::host::test
