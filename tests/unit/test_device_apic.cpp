// The I/O APIC and the local APICs, programmed through MMIO like a guest.
#include <gtest/gtest.h>

#include "platform_test_util.hpp"

namespace modevisor::host::test {
namespace {

void enable_apic(TestPc& t, unsigned vcpu = 0) {
  t.apic_write(0xf0, 0x1ff, vcpu);  // SVR: enabled, spurious vector 0xff
  t.apic_write(0x350, 0x10000, vcpu);  // LINT0 masked: no PIC
}

void route(TestPc& t, unsigned pin, std::uint8_t vector, std::uint8_t dest, bool level = false, bool logical = false) {
  t.ioapic_write(static_cast<std::uint8_t>(0x11 + 2 * pin), std::uint32_t{dest} << 24);
  t.ioapic_write(static_cast<std::uint8_t>(0x10 + 2 * pin),
                 vector | (level ? 1u << 15 : 0) | (logical ? 1u << 11 : 0));
}

TEST(IoApicTest, IdVersionAndMaskedReset) {
  TestPc t;
  EXPECT_EQ(t.ioapic_read(1), 0x00170020u) << "24 pins, version 0x20 (QEMU's)";
  t.ioapic_write(0, 0x0a000000);
  EXPECT_EQ(t.ioapic_read(0), 0x0a000000u);
  for (unsigned pin = 0; pin < 24; ++pin) EXPECT_EQ(t.ioapic_read(0x10 + 2 * pin) & (1u << 16), 1u << 16) << pin;
  EXPECT_EQ(t.machine.mmio_read(0, 0xfec00000, 4), 0x3eu) << "IOREGSEL reads back";
}

TEST(IoApicTest, RedirectionReadOnlyBits) {
  TestPc t;
  enable_apic(t);
  route(t, 3, 0x40, 0, true);
  t.pc.ioapic().set_irq(3, true);
  ASSERT_TRUE(t.ioapic_read(0x16) & (1u << 14));
  t.ioapic_write(0x16, 0x41 | (1u << 15));  // rewrite: Remote IRR must survive
  EXPECT_EQ(t.ioapic_read(0x16), 0x41u | (1u << 15) | (1u << 14));
  t.ioapic_write(0x17, 0xffffffff);
  EXPECT_EQ(t.ioapic_read(0x17), 0xff000000u) << "only the destination field";
}

TEST(IoApicTest, EdgeInterruptReachesTheLapic) {
  TestPc t;
  enable_apic(t);
  route(t, 4, 0x34, 0);
  t.pc.pic().set_irq(4, false);
  ASSERT_FALSE(t.machine.interrupt_pending(0));
  t.pc.com1().push_input("x");  // IRQ4 via the router (IER off: nothing)
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  t.out8(0x3f9, 0x01);  // IER rx: IRQ4 rises
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.apic_read(0x200 + 0x10), 1u << (0x34 - 32)) << "IRR";
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x34);
  EXPECT_EQ(t.apic_read(0x100 + 0x10), 1u << (0x34 - 32)) << "ISR";
  EXPECT_EQ(t.apic_read(0x200 + 0x10), 0u);
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  t.apic_write(0xb0, 0);
  EXPECT_EQ(t.apic_read(0x100 + 0x10), 0u);
}

TEST(IoApicTest, PitIrq0ArrivesOnPin2) {
  TestPc t;
  enable_apic(t);
  route(t, 2, 0x30, 0);
  t.out8(0x43, 0x34);  // channel 0, lo/hi, mode 2
  t.out8(0x40, 0x9c);
  t.out8(0x40, 0x2e);  // 11932: ~10 ms
  t.advance_ns(10'000'000);
  EXPECT_FALSE(t.machine.interrupt_pending(0)) << "11932 ticks are 10.00015 ms";
  t.advance_ns(200);
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x30);
}

// 82093AA: "Edge-sensitive interrupts signaled on a masked interrupt pin are
// ignored (i.e., not delivered or held pending)."
TEST(IoApicTest, MaskedEdgeIsIgnoredNotHeldPending) {
  TestPc t;
  enable_apic(t);
  t.ioapic_write(0x11 + 2 * 5, 0);
  t.ioapic_write(0x10 + 2 * 5, 0x45 | (1u << 16));
  t.pc.ioapic().set_irq(5, true);
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  t.ioapic_write(0x10 + 2 * 5, 0x45);
  EXPECT_FALSE(t.machine.interrupt_pending(0)) << "the edge came while masked";
  // The next edge after unmasking is delivered.
  t.pc.ioapic().set_irq(5, false);
  t.pc.ioapic().set_irq(5, true);
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x45);
}

TEST(IoApicTest, LevelTriggeredRemoteIrrAndEoi) {
  TestPc t;
  enable_apic(t);
  route(t, 10, 0x50, 0, true);
  t.pc.ioapic().set_irq(10, true);
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_TRUE(t.ioapic_read(0x10 + 20) & (1u << 14)) << "Remote IRR";
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x50);
  EXPECT_EQ(t.apic_read(0x180 + 0x20), 1u << (0x50 - 64)) << "TMR marks level";
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  t.apic_write(0xb0, 0);  // EOI with the line still high: delivered again
  EXPECT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x50);
  t.pc.ioapic().set_irq(10, false);
  t.apic_write(0xb0, 0);
  EXPECT_FALSE(t.ioapic_read(0x10 + 20) & (1u << 14));
  EXPECT_FALSE(t.machine.interrupt_pending(0));
}

TEST(IoApicTest, DirectedEoiRegister) {
  TestPc t;
  enable_apic(t);
  route(t, 11, 0x58, 0, true);
  t.pc.ioapic().set_irq(11, true);
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x58);
  EXPECT_TRUE(t.ioapic_read(0x10 + 22) & (1u << 14));
  t.pc.ioapic().set_irq(11, false);
  t.machine.mmio_write(0, 0xfec00040, 4, 0x58);
  EXPECT_FALSE(t.ioapic_read(0x10 + 22) & (1u << 14)) << "the I/O APIC's own EOI register";
}

TEST(IoApicTest, PhysicalAndLogicalDestinations) {
  TestPc t(2);
  enable_apic(t, 0);
  enable_apic(t, 1);
  EXPECT_EQ(t.apic_read(0x20, 1), 1u << 24) << "APIC ID = vCPU index";
  route(t, 7, 0x61, 1);
  t.pc.ioapic().set_irq(7, true);
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  ASSERT_TRUE(t.machine.interrupt_pending(1));
  EXPECT_EQ(t.machine.acknowledge_interrupt(1), 0x61);
  // Flat logical: vCPU 0 has LDR bit 0, vCPU 1 bit 1.
  t.apic_write(0xd0, 0x01000000, 0);
  t.apic_write(0xd0, 0x02000000, 1);
  route(t, 9, 0x62, 0x01, false, true);
  t.pc.ioapic().set_irq(9, true);
  EXPECT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_FALSE(t.machine.interrupt_pending(1));
}

TEST(LapicTest, ResetValues) {
  TestPc t;
  EXPECT_EQ(t.apic_read(0x20), 0u);
  EXPECT_EQ(t.apic_read(0x30), 0x00050014u);
  EXPECT_EQ(t.apic_read(0xe0), 0xffffffffu);
  EXPECT_EQ(t.apic_read(0xf0), 0xffu);
  EXPECT_EQ(t.apic_read(0x320), 0x10000u);
  EXPECT_EQ(t.apic_read(0x350), 0x700u) << "BSP LINT0: ExtINT (virtual wire)";
  EXPECT_EQ(t.pc.apic_base(0), 0xfee00900u);
}

TEST(LapicTest, TprAndPprGateDelivery) {
  TestPc t;
  enable_apic(t);
  t.apic_write(0x80, 0x50);
  EXPECT_EQ(t.apic_read(0x80), 0x50u);
  EXPECT_EQ(t.apic_read(0xa0), 0x50u) << "PPR = TPR with nothing in service";
  t.pc.lapic(0).accept(0x45, false);
  EXPECT_FALSE(t.machine.interrupt_pending(0)) << "class 4 <= TPR class 5";
  t.pc.lapic(0).accept(0x61, false);
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x61);
  EXPECT_EQ(t.apic_read(0xa0), 0x60u) << "PPR follows the in-service class";
  t.apic_write(0xb0, 0);
  t.apic_write(0x80, 0);
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x45);
}

TEST(LapicTest, SoftwareDisabledDeliversNothingAndMasksLvts) {
  TestPc t;
  t.pc.lapic(0).accept(0x40, false);
  t.apic_write(0x350, 0x10000);
  EXPECT_FALSE(t.machine.interrupt_pending(0)) << "SVR bit 8 clear at reset";
  t.apic_write(0x320, 0x20);
  EXPECT_EQ(t.apic_read(0x320), 0x10020u) << "LVT writes stay masked";
  t.apic_write(0xf0, 0x1ff);
  EXPECT_TRUE(t.machine.interrupt_pending(0));
}

TEST(LapicTest, SelfIpiAndAllExcludingSelf) {
  TestPc t(3);
  for (unsigned i = 0; i < 3; ++i) enable_apic(t, i);
  t.apic_write(0x300, 0x40000 | 0x55);  // self
  EXPECT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_FALSE(t.machine.interrupt_pending(1));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x55);
  t.apic_write(0x300, 0xc0000 | 0x66, 1);  // all excluding self, from vCPU 1
  EXPECT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_FALSE(t.machine.interrupt_pending(1));
  EXPECT_TRUE(t.machine.interrupt_pending(2));
  t.apic_write(0x310, 0x02000000);  // physical destination 2
  t.apic_write(0x300, 0x77);
  EXPECT_EQ(t.machine.acknowledge_interrupt(2), 0x77);
  EXPECT_EQ(t.apic_read(0x300) & (1u << 12), 0u) << "delivery status idle";
}

TEST(LapicTest, IllegalVectorSetsEsr) {
  TestPc t;
  enable_apic(t);
  t.apic_write(0x300, 0x40000 | 0x05);
  t.apic_write(0x280, 0);
  EXPECT_EQ(t.apic_read(0x280), 0u) << "a write clears ESR";
  t.apic_write(0x300, 0x40000 | 0x05);
  EXPECT_EQ(t.apic_read(0x280) & 0x20, 0x20u) << "send illegal vector";
  EXPECT_FALSE(t.machine.interrupt_pending(0));
}

TEST(LapicTest, SpuriousVectorWhenNothingPending) {
  TestPc t;
  enable_apic(t);
  t.apic_write(0xf0, 0x1ef);
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0xef);
}

TEST(LapicTest, PicThroughVirtualWire) {
  TestPc t;
  t.init_pics();
  t.apic_write(0xf0, 0x1ff);
  t.pc.pic().set_irq(3, true);
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x23);
  // An APIC interrupt is taken before the PIC's.
  t.pc.pic().set_irq(4, true);
  t.out8(0x20, 0x20);
  t.pc.lapic(0).accept(0x90, false);
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x90);
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x24);
}

TEST(LapicTest, ArchStateRoundTrip) {
  TestPc t;
  enable_apic(t);
  t.apic_write(0x80, 0x20);
  t.apic_write(0x3e0, 0x3);       // divide by 16
  t.apic_write(0x320, 0x20031);   // periodic, vector 0x31
  t.apic_write(0x380, 1000);      // 16 us period
  t.advance_ns(4000);
  const LapicState saved = t.pc.save_lapic(0);
  EXPECT_EQ(saved.timer_remaining_ns, 12000u);
  std::uint32_t current;
  std::memcpy(&current, &saved.registers[0x390], 4);
  EXPECT_EQ(current, 750u);

  TestPc other;
  other.advance_ns(123456789);
  other.pc.load_lapic(0, saved);
  EXPECT_EQ(other.apic_read(0x80), 0x20u);
  EXPECT_EQ(other.apic_read(0x390), 750u);
  other.advance_ns(11999);
  EXPECT_FALSE(other.machine.interrupt_pending(0));
  other.advance_ns(1);
  ASSERT_TRUE(other.machine.interrupt_pending(0));
  EXPECT_EQ(other.machine.acknowledge_interrupt(0), 0x31);
}

}  // namespace
}  // namespace modevisor::host::test
