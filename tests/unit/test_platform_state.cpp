// Device state capture and restore: a PC is stopped mid-operation, its state
// goes through JSON text into a fresh PC (whose host clock reads something
// else entirely), and both must then behave identically.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "platform_test_util.hpp"

namespace modevisor::host::test {
namespace {

using ::testing::HasSubstr;

// Put every device somewhere interesting.
void busy_pc(TestPc& t) {
  t.init_pics();
  t.out8(0x4d1, 0x04);  // IRQ10 level
  // PIT channel 0 mode 2 with a half-read latch; channel 2 gated mode 0.
  t.out8(0x43, 0x34);
  t.out8(0x40, 0x00);
  t.out8(0x40, 0x10);  // 4096
  t.out8(0x61, 0x01);
  t.out8(0x43, 0xb0);
  t.out8(0x42, 0x00);
  t.out8(0x42, 0x40);
  t.clock->advance(1'234'567);
  t.out8(0x43, 0x00);
  (void)t.in8(0x40);  // low byte of the latch read; the high byte is still due
  // PIC: IRQ1 in service, IRQ3 requested, IRQ10 level asserted.
  t.pc.pic().set_irq(1, true);
  (void)t.machine.acknowledge_interrupt(0);  // IRQ0 from the PIT came first
  t.out8(0x20, 0x20);
  t.pc.pic().set_irq(3, true);
  // UART: FIFO on, rx interrupts, more input queued than the FIFO holds.
  t.out8(0x3fa, 0x81);
  t.out8(0x3f9, 0x01);
  t.out8(0x3ff, 0x77);
  t.pc.push_console_input("the quick brown fox jumps over");
  t.pc.push_console_input(std::string("\xff\x00\x80", 3));  // not UTF-8: JSON must still carry it
  // I/O APIC: level pin 10 with Remote IRR; local APIC timer armed, TPR set.
  t.apic_write(0xf0, 0x1ff);
  t.apic_write(0x80, 0x10);
  t.ioapic_write(0x10 + 20, 0x80 | (1u << 15));
  t.ioapic_write(0x11 + 20, 0);
  t.pc.ioapic().set_irq(10, true);
  t.apic_write(0x3e0, 0x1);
  t.apic_write(0x320, 0x20050);
  t.apic_write(0x380, 77777);
  // RTC: binary mode, periodic interrupts at 8 Hz, time set.
  t.out8(0x70, 0x0b);
  t.out8(0x71, 0x86);
  t.out8(0x70, 0x04);
  t.out8(0x71, 7);
  t.out8(0x70, 0x0b);
  t.out8(0x71, 0x46);
  t.out8(0x70, 0x0a);
  t.out8(0x71, 0x26);  // 1024 Hz periodic interrupts: several during the script
  t.out8(0x70, 0x0c);  // leave the index on C
  // fw_cfg halfway through the signature; PCI address latched.
  t.machine.io_out(0, 0x510, 2, 0);
  (void)t.in8(0x511);
  t.machine.io_out(0, 0xcf8, 4, 0x80000810);
  t.out8(0x80, 0x42);
  t.clock->advance(55'555);
}

// The same guest activity on a PC; everything it observes goes into the log.
std::vector<std::uint64_t> script(TestPc& t) {
  std::vector<std::uint64_t> log;
  auto rd = [&](std::uint16_t port) { log.push_back(t.in8(port)); };
  rd(0x40);  // the latch's high byte
  for (int step = 0; step < 40; ++step) {
    t.clock->advance(37'013 * (step % 7 + 1));
    log.push_back(t.machine.now_ns());
    log.push_back(t.machine.next_timer_deadline_ns());
    while (t.machine.interrupt_pending(0)) {
      const std::uint8_t v = t.machine.acknowledge_interrupt(0);
      log.push_back(0x1000 | v);
      if (v == 0x80) {
        t.pc.ioapic().set_irq(10, step < 20);
        t.apic_write(0xb0, 0);
      } else if (v == 0x50) {
        t.apic_write(0xb0, 0);
      } else if (v < 0x30) {
        if (v >= 0x28) t.out8(0xa0, 0x20);
        t.out8(0x20, 0x20);
      }
      if (v == 0x24) rd(0x3f8);
      if (v == 0x28) rd(0x71);  // register C
      if (log.size() > 10000) break;
    }
    t.out8(0x43, 0x00);
    rd(0x40);
    rd(0x40);
    t.out8(0x43, 0x80);
    rd(0x42);
    rd(0x42);
    rd(0x61);
    rd(0x3fd);
    rd(0x3fa);
    rd(0x511);
    log.push_back(t.apic_read(0x390));
    log.push_back(t.apic_read(0xa0));
    t.out8(0x70, 0x04);
    rd(0x71);
    t.out8(0x70, 0x0c);
  }
  t.out8(0x20, 0x0b);
  rd(0x20);
  t.out8(0x20, 0x0a);
  rd(0x20);
  rd(0x21);
  log.push_back(t.machine.io_in(0, 0xcf8, 4));
  rd(0x3ff);
  rd(0x80);
  return log;
}

TEST(PlatformStateTest, RoundTripContinuesIdentically) {
  TestPc original;
  busy_pc(original);
  const nlohmann::json saved = original.pc.save_state();
  const std::string text = saved.dump();

  TestPc restored;
  restored.clock->set(987'654'321'000);  // a different host clock entirely
  restored.pc.restore_state(nlohmann::json::parse(text));
  EXPECT_EQ(restored.machine.now_ns(), original.machine.now_ns()) << "guest time continues";
  EXPECT_EQ(restored.pc.save_state(), saved) << "restore then save is the identity";

  const auto a = script(original);
  const auto b = script(restored);
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << "diverged at log entry " << i;
  EXPECT_GT(a.size(), 400u);
  // Sanity: the script did see interrupts from several sources.
  auto saw = [&](std::uint64_t v) { return std::find(a.begin(), a.end(), 0x1000 | v) != a.end(); };
  EXPECT_TRUE(saw(0x50)) << "local APIC timer";
  EXPECT_TRUE(saw(0x80)) << "I/O APIC level pin";
  EXPECT_TRUE(saw(0x20)) << "PIT";
  EXPECT_TRUE(saw(0x24)) << "UART";
  EXPECT_TRUE(saw(0x28)) << "RTC";
}

TEST(PlatformStateTest, ManyVcpus) {
  TestPc a(4);
  a.apic_write(0xf0, 0x1ff, 3);
  a.apic_write(0x80, 0x30, 3);
  const auto saved = a.pc.save_state();
  EXPECT_EQ(saved.at("lapic").size(), 4u);
  TestPc b(4);
  b.pc.restore_state(saved);
  EXPECT_EQ(b.apic_read(0x80, 3), 0x30u);
  TestPc two(2);
  try {
    two.pc.restore_state(saved);
    FAIL() << "vCPU count mismatch accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("4 local APICs"));
  }
}

TEST(PlatformStateTest, BadStateIsRejectedWithoutDamage) {
  TestPc t;
  t.out8(0x3ff, 0x12);
  auto state = t.pc.save_state();
  state["format"] = "something-else";
  EXPECT_THROW(t.pc.restore_state(state), std::invalid_argument);
  state = t.pc.save_state();
  state["pit"].erase("channels");
  state["com1"]["scr"] = 0x99;
  EXPECT_THROW(t.pc.restore_state(state), std::invalid_argument);
  EXPECT_EQ(t.in8(0x3ff), 0x12) << "nothing was half restored";
  state = t.pc.save_state();
  state["lapic"][0]["registers"] = "zz";
  EXPECT_THROW(t.pc.restore_state(state), std::invalid_argument);
}

TEST(PlatformStateTest, StateIsReadableJson) {
  TestPc t;
  const auto s = t.pc.save_state();
  EXPECT_EQ(s.at("format"), "modevisor-pc-1");
  for (const char* key : {"pic", "ioapic", "lapic", "pit", "rtc", "com1", "fw_cfg", "pci", "system", "guest_time_ns"})
    EXPECT_TRUE(s.contains(key)) << key;
  EXPECT_EQ(s.at("lapic").at(0).at("registers").get<std::string>().size(), 2048u);
}

}  // namespace
}  // namespace modevisor::host::test
