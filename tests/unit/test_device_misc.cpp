// COM1, debug-exit, fw_cfg, PCI mechanism #1, POST/port 0x92 and unclaimed
// ports, driven through the Machine like a guest.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "platform_test_util.hpp"

namespace modevisor::host::test {
namespace {

struct CollectSink : ConsoleSink {
  void write(std::uint8_t b) override { text.push_back(static_cast<char>(b)); }
  std::string text;
};

// --- UART ---------------------------------------------------------------------

TEST(UartTest, OutputGoesToTheConsole) {
  TestPc t;
  CollectSink sink;
  t.pc.set_console(&sink);
  for (char c : std::string("hi\n")) t.out8(0x3f8, static_cast<std::uint8_t>(c));
  EXPECT_EQ(sink.text, "hi\n");
  EXPECT_EQ(t.pc.console_output(), "hi\n");
  EXPECT_EQ(t.in8(0x3fd) & 0x60, 0x60) << "THRE and TEMT always set";
}

TEST(UartTest, DivisorLatchAndScratch) {
  TestPc t;
  t.out8(0x3fb, 0x80);  // DLAB
  t.out8(0x3f8, 0x01);
  t.out8(0x3f9, 0x00);
  EXPECT_EQ(t.in8(0x3f8), 0x01);
  EXPECT_EQ(t.in8(0x3f9), 0x00);
  t.out8(0x3fb, 0x03);  // 8N1
  EXPECT_EQ(t.in8(0x3fb), 0x03);
  t.out8(0x3ff, 0x5a);
  EXPECT_EQ(t.in8(0x3ff), 0x5a);
  EXPECT_EQ(t.pc.console_output(), "") << "divisor writes are not output";
}

TEST(UartTest, InputRaisesDataReadyAndReceiveInterrupt) {
  TestPc t;
  t.init_pics();
  t.out8(0x3f9, 0x01);  // IER: received data
  EXPECT_EQ(t.in8(0x3fa) & 0x0f, 0x01) << "no interrupt yet";
  EXPECT_FALSE(t.machine.interrupt_pending(0));
  t.pc.push_console_input("ab");
  EXPECT_EQ(t.in8(0x3fd) & 0x01, 0x01) << "DR";
  EXPECT_EQ(t.in8(0x3fa) & 0x0f, 0x04) << "received data available";
  ASSERT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x24) << "IRQ4";
  EXPECT_EQ(t.in8(0x3f8), 'a');
  EXPECT_EQ(t.in8(0x3f8), 'b');
  EXPECT_EQ(t.in8(0x3fd) & 0x01, 0x00);
  EXPECT_EQ(t.in8(0x3fa) & 0x0f, 0x01);
  t.out8(0x20, 0x20);
  EXPECT_FALSE(t.machine.interrupt_pending(0));
}

TEST(UartTest, FifoBitsTriggerLevelAndTimeout) {
  TestPc t;
  t.out8(0x3fa, 0xc7);  // FIFO on, clear, trigger 14
  EXPECT_EQ(t.in8(0x3fa) & 0xc0, 0xc0);
  t.out8(0x3f9, 0x01);
  t.pc.push_console_input("0123456789");
  EXPECT_EQ(t.in8(0x3fa) & 0x0f, 0x0c) << "below the trigger level: character timeout";
  t.pc.push_console_input("abcdefghij");
  EXPECT_EQ(t.in8(0x3fa) & 0x0f, 0x04) << "16 in the FIFO >= 14";
  std::string got;
  while (t.in8(0x3fd) & 1) got.push_back(static_cast<char>(t.in8(0x3f8)));
  EXPECT_EQ(got, "0123456789abcdefghij") << "host input is never lost";
}

TEST(UartTest, ThreInterrupt) {
  TestPc t;
  t.init_pics();
  t.out8(0x3f9, 0x02);  // IER: THRE
  EXPECT_EQ(t.in8(0x3fa) & 0x0f, 0x02) << "enabling THRE with THR empty raises it";
  EXPECT_EQ(t.in8(0x3fa) & 0x0f, 0x01) << "reading IIR acknowledged it";
  t.out8(0x3f8, 'x');
  EXPECT_TRUE(t.machine.interrupt_pending(0));
  EXPECT_EQ(t.machine.acknowledge_interrupt(0), 0x24);
  EXPECT_EQ(t.in8(0x3fa) & 0x0f, 0x02);
  EXPECT_EQ(t.in8(0x3fa) & 0x0f, 0x01);
  t.out8(0x20, 0x20);
  EXPECT_FALSE(t.machine.interrupt_pending(0)) << "IRQ4 went low when IIR was read: no new edge";
}

TEST(UartTest, LoopbackTurnsOutputIntoInput) {
  TestPc t;
  t.out8(0x3fc, 0x10 | 0x0b);  // loopback, OUT2, RTS, DTR
  EXPECT_EQ(t.in8(0x3fe) & 0xf0, 0x80 | 0x20 | 0x10) << "DCD<-OUT2, DSR<-DTR, CTS<-RTS";
  t.out8(0x3f8, 0x42);
  EXPECT_EQ(t.pc.console_output(), "") << "loopback output does not leave the UART";
  EXPECT_EQ(t.in8(0x3fd) & 1, 1);
  EXPECT_EQ(t.in8(0x3f8), 0x42);
  t.out8(0x3f8, 1);
  t.out8(0x3f8, 2);  // overrun (no FIFO: one holding register)
  EXPECT_EQ(t.in8(0x3fd) & 0x02, 0x02) << "OE";
  EXPECT_EQ(t.in8(0x3fd) & 0x02, 0x00) << "cleared by reading LSR";
}

TEST(UartTest, ModemStatusWithoutLoopback) {
  TestPc t;
  EXPECT_EQ(t.in8(0x3fe), 0xb0);
}

TEST(UartTest, AbsentComPortsReadAllOnes) {
  TestPc t;
  for (std::uint16_t base : {0x2f8, 0x3e8, 0x2e8}) {
    EXPECT_EQ(t.in8(base + 5), 0xff) << std::hex << base;
    EXPECT_EQ(t.in8(base), 0xff);
  }
}

// --- debug-exit -----------------------------------------------------------------

TEST(DebugExitTest, WriteEndsTheVmWithStatusVShiftedOrOne) {
  TestPc t;
  EXPECT_FALSE(t.machine.stop_requested());
  t.out8(0xf4, 0x10);
  EXPECT_TRUE(t.machine.stop_requested());
  EXPECT_EQ(t.pc.exit_status(), 0x21);
  EXPECT_EQ(t.pc.stop_reason(), "debug-exit");
  t.out8(0xf4, 0x00);  // the first reason wins
  EXPECT_EQ(t.pc.exit_status(), 0x21);
}

TEST(DebugExitTest, ZeroGivesOne) {
  TestPc t;
  t.machine.io_out(0, 0xf4, 4, 0);
  EXPECT_EQ(t.pc.exit_status(), 1);
}

// --- fw_cfg ---------------------------------------------------------------------

std::vector<std::uint8_t> fw_read(TestPc& t, std::uint16_t key, std::size_t n) {
  t.machine.io_out(0, 0x510, 2, key);
  std::vector<std::uint8_t> out;
  for (std::size_t i = 0; i < n; ++i) out.push_back(t.in8(0x511));
  return out;
}

TEST(FwCfgTest, SignatureIdCpusRam) {
  TestPc t(3, 128ull << 20);
  EXPECT_EQ(fw_read(t, 0x0000, 4), (std::vector<std::uint8_t>{'Q', 'E', 'M', 'U'}));
  EXPECT_EQ(fw_read(t, 0x0001, 4), (std::vector<std::uint8_t>{1, 0, 0, 0}));
  EXPECT_EQ(fw_read(t, 0x0005, 2), (std::vector<std::uint8_t>{3, 0}));
  EXPECT_EQ(fw_read(t, 0x000f, 2), (std::vector<std::uint8_t>{3, 0}));
  EXPECT_EQ(fw_read(t, 0x0003, 8), (std::vector<std::uint8_t>{0, 0, 0, 8, 0, 0, 0, 0}));
  EXPECT_EQ(fw_read(t, 0x0019, 4), (std::vector<std::uint8_t>{0, 0, 0, 0})) << "empty file directory";
  EXPECT_EQ(fw_read(t, 0x1234, 4), (std::vector<std::uint8_t>{0, 0, 0, 0})) << "unknown key";
  EXPECT_EQ(fw_read(t, 0x0005, 4), (std::vector<std::uint8_t>{3, 0, 0, 0})) << "past the end reads 0";
}

TEST(FwCfgTest, WideDataReadsAreInStringOrder) {
  TestPc t;
  t.machine.io_out(0, 0x510, 2, 0);
  EXPECT_EQ(t.machine.io_in(0, 0x511, 2), 0x5145u) << "'Q' 'E' as a big-endian value";
  EXPECT_EQ(t.in8(0x511), 'M');
}

TEST(FwCfgTest, SelectorResetsTheOffset) {
  TestPc t;
  t.machine.io_out(0, 0x510, 2, 0);
  EXPECT_EQ(t.in8(0x511), 'Q');
  EXPECT_EQ(t.in8(0x511), 'E');
  t.machine.io_out(0, 0x510, 2, 0);
  EXPECT_EQ(t.in8(0x511), 'Q');
}

// --- PCI, POST, port 0x92, unclaimed ----------------------------------------------

TEST(PciTest, NoDevices) {
  TestPc t;
  t.machine.io_out(0, 0xcf8, 4, 0x80000000);  // bus 0 dev 0 fn 0 reg 0
  EXPECT_EQ(t.machine.io_in(0, 0xcf8, 4), 0x80000000u);
  EXPECT_EQ(t.machine.io_in(0, 0xcfc, 4), 0xffffffffu);
  EXPECT_EQ(t.machine.io_in(0, 0xcfc, 2), 0xffffu) << "vendor 0xffff";
  EXPECT_EQ(t.machine.io_in(0, 0xcfe, 2), 0xffffu);
  t.machine.io_out(0, 0xcf8, 4, 0x80001800);
  t.machine.io_out(0, 0xcfc, 4, 0x12345678);
  EXPECT_EQ(t.machine.io_in(0, 0xcfc, 4), 0xffffffffu);
  EXPECT_FALSE(t.machine.stop_requested());
}

TEST(PciTest, Cf9ResetStopsTheVm) {
  TestPc t;
  t.out8(0xcf9, 0x06);
  EXPECT_TRUE(t.machine.stop_requested());
  EXPECT_EQ(t.pc.stop_reason(), "reset");
}

TEST(SystemPortsTest, PostIsSwallowedAndPort92Resets) {
  TestPc t;
  t.out8(0x80, 0x55);
  EXPECT_FALSE(t.machine.stop_requested());
  EXPECT_EQ(t.in8(0x92) & 0x02, 0x02) << "A20 on";
  t.out8(0x92, 0x00);
  EXPECT_EQ(t.in8(0x92), 0x00);
  EXPECT_FALSE(t.machine.stop_requested());
  t.out8(0x92, 0x03);
  EXPECT_TRUE(t.machine.stop_requested());
  EXPECT_EQ(t.pc.stop_reason(), "reset");
  EXPECT_FALSE(t.pc.exit_status().has_value());
}

TEST(SystemPortsTest, KeyboardControllerResetPulseResets) {
  TestPc t;
  EXPECT_EQ(t.in8(0x64), 0xff) << "no 8042: reads as unclaimed";
  t.out8(0x64, 0xad);  // other commands do nothing
  EXPECT_FALSE(t.machine.stop_requested());
  t.out8(0x64, 0xfe);
  EXPECT_TRUE(t.machine.stop_requested());
  EXPECT_EQ(t.pc.stop_reason(), "reset");
}

TEST(MachineTest, UnclaimedPortsAndMmioReadAllOnes) {
  TestPc t;
  EXPECT_EQ(t.machine.io_in(0, 0x1234, 1), 0xffu);
  EXPECT_EQ(t.machine.io_in(0, 0x1234, 2), 0xffffu);
  EXPECT_EQ(t.machine.io_in(0, 0x1234, 4), 0xffffffffu);
  EXPECT_EQ(t.machine.mmio_read(0, 0xd0000000, 8), ~0ull);
  EXPECT_EQ(t.machine.mmio_read(0, 0xd0000000, 2), 0xffffull);
}

TEST(MachineTest, CountsExitsByPortAndMmioDevice) {
  TestPc t;
  t.out8(0x3f8, 'a');
  t.out8(0x3f8, 'b');
  t.in8(0x80);
  t.apic_read(0x30);
  t.machine.mmio_read(0, 0xd0000000, 4);
  const auto counters = t.pc.counters();
  auto find = [&](const std::string& name) -> std::uint64_t {
    for (const auto& [n, v] : counters)
      if (n == name) return v;
    return 0;
  };
  EXPECT_EQ(find("io 0x03f8"), 2u);
  EXPECT_EQ(find("io 0x0080"), 1u);
  EXPECT_EQ(find("mmio lapic"), 1u);
  EXPECT_EQ(find("mmio unclaimed"), 1u);
}

TEST(MachineTest, OverlappingDevicesAreRefused) {
  TestPc t;
  SystemPorts extra(t.machine);
  EXPECT_THROW(t.machine.attach_ports(0x3f8, 1, extra), std::logic_error);
}

}  // namespace
}  // namespace modevisor::host::test
