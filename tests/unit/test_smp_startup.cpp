// SMP start-up on the platform: NMI, INIT and STARTUP through the local
// APICs' ICR (and the I/O APIC), the processors' wait-for-SIPI state, and the
// architectural state INIT and STARTUP give a vCPU (platform/cpu_reset.hpp).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "platform/cpu_reset.hpp"
#include "platform_test_util.hpp"

namespace modevisor::host::test {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::Not;
using ::testing::Pair;

// ICR low dword: delivery mode, level/trigger, shorthand.
constexpr std::uint32_t kNmi = 4u << 8, kInit = 5u << 8, kStartup = 6u << 8;
constexpr std::uint32_t kAssert = 1u << 14, kLevel = 1u << 15, kLogical = 1u << 11;
constexpr std::uint32_t kSelf = 1u << 18, kAllIncludingSelf = 2u << 18, kAllExcludingSelf = 3u << 18;

void send_ipi(TestPc& t, unsigned from, std::uint32_t low, std::uint8_t destination = 0) {
  t.apic_write(0x310, std::uint32_t{destination} << 24, from);
  t.apic_write(0x300, low, from);
}
// What an OS sends (Intel MP spec, Linux's wakeup_secondary_cpu_via_init).
void init_assert(TestPc& t, unsigned from, std::uint8_t to) { send_ipi(t, from, kInit | kLevel | kAssert, to); }
void init_deassert(TestPc& t, unsigned from, std::uint8_t to) { send_ipi(t, from, kInit | kLevel, to); }
void startup(TestPc& t, unsigned from, std::uint8_t to, std::uint8_t vector) {
  send_ipi(t, from, kStartup | vector, to);
}

std::uint64_t counter(const Pc& pc, const std::string& name) {
  for (const auto& [n, v] : pc.counters())
    if (n == name) return v;
  return 0;
}

TEST(SmpStartup, ApplicationProcessorsPowerOnWaitingForSipiTheBspDoesNot) {
  TestPc t(3);
  EXPECT_FALSE(t.pc.lapic(0).waiting_for_sipi());
  EXPECT_TRUE(t.pc.lapic(1).waiting_for_sipi());
  EXPECT_TRUE(t.pc.lapic(2).waiting_for_sipi());
  EXPECT_TRUE(t.pc.lapic(0).bsp());
  EXPECT_FALSE(t.pc.lapic(1).bsp());
  for (unsigned i = 0; i < 3; ++i) {
    EXPECT_FALSE(t.machine.cpu_events(i).any()) << i;
    EXPECT_FALSE(t.machine.take_startup(i).any()) << i;
  }
}

TEST(SmpStartup, StartupToAWaitingProcessorIsTakenOnceWithItsVector) {
  TestPc t(2);
  startup(t, 0, 1, 0x9a);
  EXPECT_TRUE(t.machine.cpu_events(1).startup);
  EXPECT_FALSE(t.machine.cpu_events(1).init);
  EXPECT_FALSE(t.pc.lapic(1).waiting_for_sipi()) << "the processor has left wait-for-SIPI";
  EXPECT_FALSE(t.machine.cpu_events(0).any()) << "only the destination";
  const StartupEvents e = t.machine.take_startup(1);
  EXPECT_FALSE(e.init);
  EXPECT_EQ(e.sipi_vector, std::optional<std::uint8_t>(0x9a));
  EXPECT_FALSE(t.machine.take_startup(1).any()) << "taken";
  EXPECT_EQ(t.apic_read(0x280, 0), 0u) << "no send error: STARTUP vectors are not checked like fixed ones";
  EXPECT_EQ(t.apic_read(0x300, 0) & (1u << 12), 0u) << "delivery status idle";
}

TEST(SmpStartup, ASecondStartupIsIgnoredOnceTheProcessorRuns) {
  TestPc t(2);
  init_assert(t, 0, 1);
  init_deassert(t, 0, 1);
  startup(t, 0, 1, 0x10);
  startup(t, 0, 1, 0x20);  // the MP spec's second SIPI: the AP already left wait-for-SIPI
  const StartupEvents e = t.machine.take_startup(1);
  EXPECT_TRUE(e.init);
  EXPECT_EQ(e.sipi_vector, std::optional<std::uint8_t>(0x10));
  startup(t, 0, 1, 0x30);  // after it was applied: still running, still ignored
  EXPECT_FALSE(t.machine.cpu_events(1).startup);
  EXPECT_EQ(counter(t.pc, "ipi startup"), 3u);
  EXPECT_EQ(counter(t.pc, "ipi init"), 1u);
  EXPECT_EQ(counter(t.pc, "ipi init de-assert"), 1u);
}

TEST(SmpStartup, StartupToTheBspOrARunningApIsIgnored) {
  TestPc t(2);
  startup(t, 1, 0, 0x10);
  EXPECT_FALSE(t.machine.cpu_events(0).any());
  startup(t, 0, 1, 0x10);
  t.machine.take_startup(1);
  startup(t, 0, 1, 0x11);
  EXPECT_FALSE(t.machine.take_startup(1).any());
}

TEST(SmpStartup, InitResetsTheApicKeepsItsIdAndWaitsForSipi) {
  TestPc t(2);
  startup(t, 0, 1, 0x10);
  t.machine.take_startup(1);  // vCPU 1 runs
  // vCPU 1 programs its APIC.
  t.apic_write(0xf0, 0x1ff, 1);
  t.apic_write(0xd0, 0x02000000, 1);
  t.apic_write(0x80, 0x20, 1);
  t.apic_write(0x3e0, 0xb, 1);
  t.apic_write(0x320, 0x40, 1);
  t.apic_write(0x380, 1000000, 1);
  send_ipi(t, 0, 0x41, 1);  // a fixed IPI waits in IRR
  ASSERT_TRUE(t.machine.interrupt_pending(1));
  const std::uint64_t base = t.pc.apic_base(1);

  init_assert(t, 0, 1);
  EXPECT_TRUE(t.pc.lapic(1).waiting_for_sipi());
  EXPECT_TRUE(t.machine.cpu_events(1).init);
  EXPECT_EQ(t.apic_read(0x20, 1), 1u << 24) << "APIC ID kept";
  EXPECT_EQ(t.pc.apic_base(1), base) << "base MSR kept";
  EXPECT_EQ(t.apic_read(0xf0, 1), 0xffu) << "software disabled again";
  EXPECT_EQ(t.apic_read(0xd0, 1), 0u);
  EXPECT_EQ(t.apic_read(0x80, 1), 0u);
  EXPECT_EQ(t.apic_read(0x320, 1), 0x10000u) << "LVT masked";
  EXPECT_EQ(t.apic_read(0x390, 1), 0u) << "timer stopped";
  EXPECT_EQ(t.apic_read(0x200 + 0x20, 1), 0u) << "IRR cleared";
  EXPECT_FALSE(t.machine.interrupt_pending(1));
  EXPECT_EQ(t.machine.take_startup(1).init, true);
  EXPECT_FALSE(t.machine.cpu_events(1).init) << "taken";
}

TEST(SmpStartup, InitLevelDeassertDoesNothing) {
  TestPc t(2);
  startup(t, 0, 1, 0x10);
  t.machine.take_startup(1);
  init_deassert(t, 0, 1);
  EXPECT_FALSE(t.machine.cpu_events(1).any());
  EXPECT_FALSE(t.pc.lapic(1).waiting_for_sipi());
  EXPECT_EQ(counter(t.pc, "ipi init"), 0u);
  EXPECT_EQ(counter(t.pc, "ipi init de-assert"), 1u);
  // An edge-triggered INIT (the MP spec's 0x4500 form) is an INIT.
  send_ipi(t, 0, kInit | kAssert, 1);
  EXPECT_TRUE(t.machine.cpu_events(1).init);
  send_ipi(t, 0, kInit, 1);  // edge without assert: still INIT (the level bit only matters with level trigger)
  EXPECT_EQ(counter(t.pc, "ipi init"), 2u);
}

TEST(SmpStartup, InitSupersedesAStartupNotYetApplied) {
  TestPc t(2);
  init_assert(t, 0, 1);
  startup(t, 0, 1, 0x10);
  init_assert(t, 0, 1);
  startup(t, 0, 1, 0x20);
  const StartupEvents e = t.machine.take_startup(1);
  EXPECT_TRUE(e.init);
  EXPECT_EQ(e.sipi_vector, std::optional<std::uint8_t>(0x20));
  init_assert(t, 0, 1);
  startup(t, 0, 1, 0x30);
  init_assert(t, 0, 1);
  const StartupEvents last = t.machine.take_startup(1);
  EXPECT_TRUE(last.init);
  EXPECT_FALSE(last.sipi_vector) << "the last INIT came after the STARTUP: wait for another";
  EXPECT_TRUE(t.pc.lapic(1).waiting_for_sipi());
}

TEST(SmpStartup, InitToTheBspRestartsItRatherThanWaitingForSipi) {
  TestPc t(2);
  startup(t, 0, 1, 0x10);
  t.machine.take_startup(1);
  init_assert(t, 1, 0);
  EXPECT_TRUE(t.machine.cpu_events(0).init);
  EXPECT_FALSE(t.pc.lapic(0).waiting_for_sipi());
  EXPECT_EQ(t.apic_read(0x350, 0), 0x700u) << "the BSP's APIC is back in virtual wire mode";
}

TEST(SmpStartup, ShorthandsReachTheRightProcessors) {
  TestPc t(4);
  send_ipi(t, 1, kInit | kLevel | kAssert | kAllExcludingSelf);
  EXPECT_TRUE(t.machine.cpu_events(0).init);
  EXPECT_FALSE(t.machine.cpu_events(1).init);
  EXPECT_TRUE(t.machine.cpu_events(2).init);
  EXPECT_TRUE(t.machine.cpu_events(3).init);
  for (unsigned i = 0; i < 4; ++i) t.machine.take_startup(i);
  send_ipi(t, 0, kStartup | 0x50 | kAllExcludingSelf);  // the BSP starts every AP at once
  EXPECT_FALSE(t.machine.cpu_events(0).startup) << "the BSP did not wait for SIPI";
  for (unsigned i = 1; i < 4; ++i) EXPECT_EQ(t.machine.take_startup(i).sipi_vector, std::optional<std::uint8_t>(0x50));

  send_ipi(t, 2, kNmi | kSelf);
  EXPECT_TRUE(t.machine.cpu_events(2).nmi);
  EXPECT_FALSE(t.machine.cpu_events(1).nmi);
  send_ipi(t, 0, kNmi | kAllIncludingSelf);
  for (unsigned i = 0; i < 4; ++i) EXPECT_TRUE(t.machine.cpu_events(i).nmi) << i;
}

TEST(SmpStartup, PhysicalBroadcastAndLogicalDestinations) {
  TestPc t(3);
  startup(t, 0, 0xff, 0x60);  // physical broadcast
  EXPECT_EQ(t.machine.take_startup(1).sipi_vector, std::optional<std::uint8_t>(0x60));
  EXPECT_EQ(t.machine.take_startup(2).sipi_vector, std::optional<std::uint8_t>(0x60));
  // Flat logical: vCPU 2 has LDR bit 2; an NMI to logical 0x04 reaches it alone.
  t.apic_write(0xd0, 0x04000000, 2);
  t.apic_write(0xd0, 0x02000000, 1);
  send_ipi(t, 0, kNmi | kLogical, 0x04);
  EXPECT_FALSE(t.machine.cpu_events(1).nmi);
  EXPECT_TRUE(t.machine.cpu_events(2).nmi);
  send_ipi(t, 0, kInit | kLevel | kAssert | kLogical, 0x06);
  EXPECT_TRUE(t.machine.cpu_events(1).init);
  EXPECT_TRUE(t.machine.cpu_events(2).init);
  EXPECT_FALSE(t.machine.cpu_events(0).init);
}

TEST(SmpStartup, NmiIsPendingUntilTakenOnceAndIgnoredWhileWaitingForSipi) {
  TestPc t(2);
  send_ipi(t, 0, kNmi, 1);
  EXPECT_FALSE(t.machine.cpu_events(1).nmi) << "vCPU 1 waits for SIPI";
  startup(t, 0, 1, 0x10);
  t.machine.take_startup(1);
  send_ipi(t, 0, kNmi, 1);
  send_ipi(t, 0, kNmi, 1);  // merged with the pending one
  EXPECT_TRUE(t.machine.cpu_events(1).nmi);
  EXPECT_FALSE(t.machine.interrupt_pending(1)) << "an NMI is not a vectored interrupt";
  EXPECT_TRUE(t.machine.acknowledge_nmi(1));
  EXPECT_FALSE(t.machine.acknowledge_nmi(1));
  EXPECT_FALSE(t.machine.cpu_events(1).nmi);
  EXPECT_EQ(counter(t.pc, "ipi nmi"), 3u);
  send_ipi(t, 0, kNmi, 1);
  init_assert(t, 0, 1);
  EXPECT_FALSE(t.machine.cpu_events(1).nmi) << "INIT drops a pending NMI";
}

TEST(SmpStartup, IoApicNmiAndInitDeliveryModes) {
  TestPc t(2);
  startup(t, 0, 1, 0x10);
  t.machine.take_startup(1);
  // Pin 5 -> NMI to APIC 1, pin 6 -> INIT to APIC 1.
  t.ioapic_write(0x11 + 2 * 5, 1u << 24);
  t.ioapic_write(0x10 + 2 * 5, 4u << 8);
  t.ioapic_write(0x11 + 2 * 6, 1u << 24);
  t.ioapic_write(0x10 + 2 * 6, 5u << 8);
  t.pc.ioapic().set_irq(5, true);
  EXPECT_TRUE(t.machine.cpu_events(1).nmi);
  EXPECT_FALSE(t.machine.cpu_events(0).nmi);
  t.pc.ioapic().set_irq(6, true);
  EXPECT_TRUE(t.machine.cpu_events(1).init);
}

TEST(SmpStartup, EventsWakeTheirVcpuAndCallTheNotifierWithItsIndex) {
  TestPc t(2);
  std::vector<unsigned> notified;
  t.machine.set_interrupt_notifier([&](unsigned vcpu) { notified.push_back(vcpu); });
  startup(t, 0, 1, 0x10);
  EXPECT_THAT(notified, Contains(1u));
  t.machine.take_startup(1);
  notified.clear();
  send_ipi(t, 0, kNmi, 1);
  EXPECT_THAT(notified, Contains(1u));
  EXPECT_THAT(notified, Not(Contains(0u)));
  t.machine.set_interrupt_notifier(nullptr);

  // HLT on vCPU 1 ends when vCPU 0 sends it an NMI or an INIT.
  t.machine.acknowledge_nmi(1);
  for (std::uint32_t low : {kNmi, kInit | kLevel | kAssert}) {
    std::atomic<bool> returned{false};
    std::thread halted([&] {
      t.machine.wait_for_interrupt(1);
      returned = true;
    });
    while (!returned) {  // repeat: the first IPI may come before the wait begins
      send_ipi(t, 0, low, 1);
      std::this_thread::yield();
    }
    halted.join();
    t.machine.acknowledge_nmi(1);
    t.machine.take_startup(1);
    startup(t, 0, 1, 0x10);
    t.machine.take_startup(1);
  }
}

TEST(SmpStartup, WaitForStartupReturnsOnStartupOrStop) {
  TestPc t(3);
  std::thread waiter([&] { t.machine.wait_for_startup(1); });
  startup(t, 0, 1, 0x10);
  waiter.join();
  EXPECT_TRUE(t.machine.cpu_events(1).startup);
  std::thread stopped([&] { t.machine.wait_for_startup(2); });
  t.machine.request_stop("test");
  stopped.join();
  EXPECT_FALSE(t.machine.cpu_events(2).any());
}

TEST(SmpStartup, ProcessorStateTravelsWithTheDeviceState) {
  TestPc t(3);
  init_assert(t, 0, 1);
  startup(t, 0, 1, 0x77);  // pending, not applied
  startup(t, 0, 2, 0x10);
  t.machine.take_startup(2);
  send_ipi(t, 0, kNmi, 2);
  const auto saved = t.pc.save_state();
  TestPc u(3);
  u.pc.restore_state(saved);
  EXPECT_TRUE(u.machine.cpu_events(1).init);
  EXPECT_TRUE(u.machine.cpu_events(2).nmi);
  EXPECT_FALSE(u.pc.lapic(2).waiting_for_sipi());
  const StartupEvents e = u.machine.take_startup(1);
  EXPECT_TRUE(e.init);
  EXPECT_EQ(e.sipi_vector, std::optional<std::uint8_t>(0x77));
  // A state saved before SMP (no processor fields) loads as running processors.
  auto old = saved;
  for (auto& l : old["lapic"])
    for (const char* key : {"wait_for_sipi", "init_pending", "sipi_vector", "nmi_pending"}) l.erase(key);
  TestPc v(3);
  v.pc.restore_state(old);
  EXPECT_FALSE(v.pc.lapic(1).waiting_for_sipi());
  EXPECT_FALSE(v.machine.cpu_events(1).any());
}

TEST(SmpStartup, UniprocessorCountersListNoIpis) {
  TestPc t(1);
  for (const auto& [name, value] : t.pc.counters()) EXPECT_NE(name.rfind("ipi ", 0), 0u) << name;
  send_ipi(t, 0, 0x40 | kSelf);
  EXPECT_EQ(counter(t.pc, "ipi fixed"), 1u);
}

// --- The architectural state INIT and STARTUP give a vCPU ------------------------

api::VcpuState busy_protected_mode_state() {
  api::VcpuState s;
  s.gpr.fill(0x1234);
  s.rip = 0x100000;
  s.rflags = 0x246;
  s.cs.selector = 0x08;
  s.cs.limit = 0xffffffff;
  s.cs.db = s.cs.g = true;
  s.cr0 = 0xe0000011;  // PG, CD, NW, ET, PE
  s.cr3 = 0x9000;
  s.cr4 = 0x20;
  s.efer = 0x800;
  s.gdtr = {0x5000, 0x27};
  s.dr[7] = 0x401;
  s.fpu.fxsave[0] = 0x7b;  // FCW changed by the guest
  s.fpu.xcr0 = 7;
  s.set_msr(0x174, 0x08);
  s.set_msr(0x10, 123456);
  s.events.interrupt = 0x30;
  s.events.nmi_pending = true;
  return s;
}

TEST(CpuReset, InitGivesTheResetRegistersAndKeepsFpuAndMsrs) {
  const api::VcpuState before = busy_protected_mode_state();
  const api::VcpuState s = state_after_init(before, /*bsp=*/false);
  EXPECT_EQ(s.run_state, api::RunState::WaitForSipi);
  EXPECT_EQ(s.rip, 0xfff0u);
  EXPECT_EQ(s.cs.selector, 0xf000);
  EXPECT_EQ(s.cs.base, 0xffff0000u);
  EXPECT_EQ(s.cs.limit, 0xffffu);
  EXPECT_EQ(s.cs.type, 0xb);
  EXPECT_TRUE(s.cs.present);
  EXPECT_FALSE(s.cs.db);
  for (const api::Segment* seg : {&s.ds, &s.es, &s.fs, &s.gs, &s.ss}) {
    EXPECT_EQ(seg->selector, 0);
    EXPECT_EQ(seg->base, 0u);
    EXPECT_EQ(seg->limit, 0xffffu);
    EXPECT_EQ(seg->type, 3);
    EXPECT_TRUE(seg->present);
  }
  EXPECT_EQ(s.rflags, 0x2u);
  EXPECT_EQ(s.cr0, 0x60000010u) << "CD and NW kept, PG/PE cleared";
  EXPECT_EQ(s.cr3, 0u);
  EXPECT_EQ(s.cr4, 0u);
  EXPECT_EQ(s.efer, 0u);
  EXPECT_EQ(s.gdtr.base, 0u);
  EXPECT_EQ(s.gdtr.limit, 0xffff);
  EXPECT_EQ(s.idtr.limit, 0xffff);
  EXPECT_EQ(s.dr[6], 0xffff0ff0u);
  EXPECT_EQ(s.dr[7], 0x400u);
  EXPECT_EQ(s.gpr[api::gpr::rdx], 0x600u);
  EXPECT_EQ(s.gpr[api::gpr::rax], 0u);
  EXPECT_EQ(s.gpr[api::gpr::rsp], 0u);
  EXPECT_FALSE(s.events.interrupt);
  EXPECT_FALSE(s.events.nmi_pending);
  EXPECT_EQ(s.fpu.fxsave, before.fpu.fxsave) << "INIT keeps the x87/SSE state";
  EXPECT_EQ(s.fpu.xcr0, 7u);
  EXPECT_EQ(s.msr(0x174), std::optional<std::uint64_t>(0x08));
  EXPECT_EQ(s.msr(0x10), std::optional<std::uint64_t>(123456));
  EXPECT_EQ(state_after_init(before, /*bsp=*/true).run_state, api::RunState::Runnable)
      << "the BSP runs from the reset vector";
}

TEST(CpuReset, StartupEntersRealModeAtTheVectorsPage) {
  const api::VcpuState waiting = state_after_init(busy_protected_mode_state(), false);
  const api::VcpuState s = state_after_startup(waiting, 0x9f);
  EXPECT_EQ(s.run_state, api::RunState::Runnable);
  EXPECT_EQ(s.cs.selector, 0x9f00);
  EXPECT_EQ(s.cs.base, 0x9f000u);
  EXPECT_EQ(s.cs.limit, 0xffffu);
  EXPECT_EQ(s.rip, 0u);
  EXPECT_EQ(s.cr0 & 1, 0u) << "real mode";
  EXPECT_EQ(s.ds.base, 0u);
  EXPECT_EQ(state_after_startup(waiting, 0x01).cs.base, 0x1000u);
}

}  // namespace
}  // namespace modevisor::host::test

// --- HLT with interrupts off: the VM stops once nothing can wake it ---------

namespace modevisor::host::test {
namespace {

TEST(HaltedForGood, AUniprocessorHaltedWithInterruptsOffStopsTheVm) {
  TestPc t(1);
  t.machine.wait_for_cpu_event(0);
  EXPECT_TRUE(t.machine.stop_requested());
  EXPECT_THAT(t.machine.stop_reason(), ::testing::StartsWith("halted: "));
  EXPECT_FALSE(t.machine.exit_status().has_value());
}

TEST(HaltedForGood, AnNmiWakesTheHaltedVcpuInstead) {
  TestPc t(2);
  startup(t, 0, 1, 0x10);
  t.machine.take_startup(1);
  std::thread halted([&] { t.machine.wait_for_cpu_event(1); });
  send_ipi(t, 0, kNmi, 1);
  halted.join();
  EXPECT_FALSE(t.machine.stop_requested());
  EXPECT_TRUE(t.machine.acknowledge_nmi(1));
}

TEST(HaltedForGood, TheVmStopsOnlyOnceEveryVcpuIsStuck) {
  TestPc t(2);
  std::atomic<bool> returned{false};
  std::thread bsp([&] {
    t.machine.wait_for_cpu_event(0);
    returned = true;
  });
  // vCPU 1 has not reached a wait yet: it could still send an IPI.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(returned.load());
  EXPECT_FALSE(t.machine.stop_requested());
  t.machine.wait_for_startup(1);  // the AP waits for a STARTUP nobody will send
  bsp.join();
  EXPECT_TRUE(t.machine.stop_requested());
  EXPECT_THAT(t.machine.stop_reason(), ::testing::HasSubstr("every vCPU is halted"));
}

}  // namespace
}  // namespace modevisor::host::test
