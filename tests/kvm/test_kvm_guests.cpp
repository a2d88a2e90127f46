// KVM integration tests: real guests through the hv plugins and the KVM
// driver bridge.  They skip (with the reason) where /dev/kvm is unusable;
// tests/kvm/run-kvm-tests.sh runs them inside the nested-SVM test host with
// kvm_amd npt=1 (hv-hwmmu) and npt=0 (hv-swmmu).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include <elf.h>

#include "config/vm_config.hpp"
#include "plugins/registry.hpp"
#include "selection/guest_os.hpp"
#include "snapshot/snapshot.hpp"
#include "snapshot/vcpu_codec.hpp"
#include "vm/vm.hpp"
#include "kernel-driver/kvm_hypervisor.hpp"
#include <cpuid.h>
#include <unistd.h>
#include <spdlog/sinks/null_sink.h>
#include "kvm_test_support.hpp"
#include "platform/cpu_reset.hpp"

namespace modevisor::test {
namespace {

using api::ExitKind;

class KvmGuest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!env().skip_reason.empty()) GTEST_SKIP() << env().skip_reason;
    if (!env().error.empty()) FAIL() << env().error;
  }
  static KvmEnvironment& env() { return kvm_environment(); }

  std::unique_ptr<api::VirtualMachine> make_vm(TestRam& ram, TestPlatform& platform, api::Monitor* monitor = nullptr,
                                               unsigned vcpus = 1) {
    api::VmSpec spec;
    spec.name = "kvm-test";
    spec.vcpus = vcpus;
    spec.memory_bytes = ram.size();
    spec.guest_bits = 32;
    spec.guest_os = "other-32";
    return (monitor ? monitor : env().monitor.get())
        ->create_vm(spec, api::VmServices{ram, platform, log_, env().hypervisor.get()});
  }

  // A VM whose vCPU 0 starts at `entry` in flat 32-bit protected mode.
  std::unique_ptr<api::VirtualMachine> make_flat_vm(TestRam& ram, TestPlatform& platform,
                                                    std::uint32_t entry = kCodeBase, bool paging = false) {
    auto vm = make_vm(ram, platform);
    auto s = vm->save_vcpu(0);
    set_flat_protected_mode(s, entry, paging, ram);
    vm->load_vcpu(0, s);
    return vm;
  }

  NullLogger log_;
};

constexpr std::uint64_t kRam = 4 << 20;

TEST_F(KvmGuest, RealModePortIoAndStringIo) {
  TestRam ram(kRam);
  TestPlatform pf;
  ram.load(kCodeBase, blob(g_rm_io_start, g_rm_io_end));
  auto vm = make_vm(ram, pf);
  auto s = vm->save_vcpu(0);
  set_real_mode(s, kCodeBase);
  vm->load_vcpu(0, s);
  const auto exit = vm->run(0);
  EXPECT_EQ(exit.kind, ExitKind::Stopped) << exit.diagnostic;
  EXPECT_EQ(pf.cpu_event_waits, 1) << "the final HLT, with IF=0";
  EXPECT_EQ(pf.values_on(0x10), std::vector<std::uint32_t>{0x5a});
  EXPECT_EQ(pf.values_on(0x12), (std::vector<std::uint32_t>{'h', 'e', 'l', 'l', 'o'}));
  EXPECT_EQ(ram.at<std::uint32_t>(kDataBase), 0xa3a2a1a0u);
  EXPECT_EQ(pf.ins[0x11], 1u);
  EXPECT_EQ(pf.ins[0x13], 4u);
  const auto c = vm->counters();
  EXPECT_EQ(counter(c, "kvm.exit.hlt"), 1u);
  EXPECT_GE(counter(c, "kvm.exit.io_string"), 1u);  // REP OUTSB/INSB come in batches, not byte by byte
  EXPECT_LE(counter(c, "kvm.io_port.0x0012"), 5u);
  const auto after = vm->save_vcpu(0);
  EXPECT_EQ(after.run_state, api::RunState::Halted);
  EXPECT_EQ(after.rip, kCodeBase + (g_rm_io_end - 5 - g_rm_io_start));  // just after the HLT
  EXPECT_EQ(after.gpr[api::gpr::rcx] & 0xffff, 0u);                       // REP INSB ran out
}

TEST_F(KvmGuest, ProtectedModeMmioExitsReachThePlatform) {
  TestRam ram(kRam);
  TestPlatform pf;
  ram.load(kCodeBase, blob(g_pm_mmio_start, g_pm_mmio_end));
  auto vm = make_flat_vm(ram, pf);
  const auto exit = vm->run(0);
  ASSERT_EQ(exit.kind, ExitKind::Stopped) << exit.diagnostic;
  ASSERT_EQ(pf.mmio.size(), 4u);
  EXPECT_TRUE(pf.mmio[0].write);
  EXPECT_EQ(pf.mmio[0].gpa, 0xd0000000u);
  EXPECT_EQ(pf.mmio[0].size, 4u);
  EXPECT_EQ(pf.mmio[0].value, 0x11223344u);
  EXPECT_FALSE(pf.mmio[1].write);
  EXPECT_EQ(pf.mmio[1].gpa, 0xd0000008u);
  EXPECT_EQ(pf.mmio[1].size, 4u);
  EXPECT_EQ(pf.mmio[2].value, 0x55aau);
  EXPECT_EQ(pf.mmio[2].size, 2u);
  EXPECT_EQ(pf.mmio[3].gpa, 0xd0000011u);
  EXPECT_EQ(pf.mmio[3].size, 1u);
  EXPECT_EQ(pf.values_on(0x14), std::vector<std::uint32_t>{0x44332211u});
  EXPECT_EQ(pf.values_on(0x10), std::vector<std::uint32_t>{0x11u});
  const auto c = vm->counters();
  EXPECT_EQ(counter(c, "kvm.exit.mmio_write"), 2u);
  EXPECT_EQ(counter(c, "kvm.exit.mmio_read"), 2u);
}

TEST_F(KvmGuest, PagedGuestSeesItsOwnPageTables) {
  TestRam ram(kRam);
  TestPlatform pf;
  ram.load(kCodeBase, blob(g_paging_start, g_paging_end));
  write_page_tables(ram);
  // Window at virtual 0x200000..+64 pages, mapped in reverse onto physical 0x300000..
  constexpr std::uint32_t kPages = 64, kVirt = 0x200000, kPhys = 0x300000, kSpare = 0x380000;
  auto* pt = &ram.at<std::uint32_t>(kPageTable);
  for (std::uint32_t i = 0; i < kPages; ++i) pt[(kVirt >> 12) + i] = (kPhys + (kPages - 1 - i) * 0x1000) | 3;
  auto vm = make_vm(ram, pf);
  auto s = vm->save_vcpu(0);
  set_flat_protected_mode(s, kCodeBase, true, ram);
  s.gpr[api::gpr::rsi] = kVirt;
  s.gpr[api::gpr::rcx] = kPages;
  s.gpr[api::gpr::rdx] = kPageTable + (kVirt >> 12) * 4;  // PTE of virtual page 0
  s.gpr[api::gpr::rbp] = kSpare | 3;
  vm->load_vcpu(0, s);
  const auto exit = vm->run(0);
  ASSERT_EQ(exit.kind, ExitKind::Stopped) << exit.diagnostic;
  ASSERT_EQ(pf.values_on(0x10).size(), 1u);
  int bad = 0;
  for (std::uint32_t j = 0; j < kPages; ++j) {
    const auto* p = &ram.at<std::uint32_t>(kPhys + j * 0x1000);
    const std::uint32_t want = kPages - 1 - j;
    if (p[0] != want || p[1] != want + 0x100) ++bad;
  }
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(ram.at<std::uint32_t>(kSpare + 8), 0xc0ffeeu);                        // after the remap + INVLPG
  EXPECT_EQ(ram.at<std::uint32_t>(kPhys + (kPages - 1) * 0x1000 + 8), 0u);  // not the old page
}

// Exits each guest operation costs, counted exactly (userspace exits seen by
// the driver bridge); the kernel's own counters are printed alongside.
TEST_F(KvmGuest, ExitCountsPerOperation) {
  constexpr unsigned kReps = 64;
  TestRam ram(kRam);
  TestPlatform pf;
  ram.load(kCodeBase, blob(g_ops_start, g_ops_end));
  write_page_tables(ram, 0x200000, 0x200000 + kReps * 0x1000);
  write_gdt(ram);
  write_idt(ram, {{0, guest_addr(g_ops_start, g_ops_de)},
                  {14, guest_addr(g_ops_start, g_ops_pf)},
                  {0x80, guest_addr(g_ops_start, g_ops_int80)}});
  auto vm = make_vm(ram, pf);
  std::vector<api::Counters> marks;
  pf.on_out = [&](std::uint16_t port, std::uint32_t) {
    if (port == 0xe0) marks.push_back(vm->counters());
  };
  auto s = vm->save_vcpu(0);
  set_flat_protected_mode(s, kCodeBase, true, ram);
  s.gpr[api::gpr::rdi] = kReps;
  vm->load_vcpu(0, s);
  const auto exit = vm->run(0);
  ASSERT_EQ(exit.kind, ExitKind::Stopped) << exit.diagnostic;
  ASSERT_EQ(marks.size(), 8u);
  EXPECT_EQ(pf.values_on(0x14), std::vector<std::uint32_t>{kReps});  // every INT 0x80 reached its handler
  // Each page was made present by the #PF handler; page 0 was rewritten by op 7.
  for (unsigned i = 1; i < kReps; ++i) EXPECT_EQ(ram.at<std::uint32_t>(0x200000 + i * 0x1000), kReps - i) << i;
  EXPECT_EQ(ram.at<std::uint32_t>(0x200000), 1u);

  struct Op {
    const char* name;
    std::uint64_t exits;  // userspace exits expected for kReps repetitions
  };
  const Op ops[7] = {{"in", kReps}, {"tpr-write", kReps}, {"pgfault", 0}, {"int80", 0},
                     {"call/ret", 0}, {"divzero", 0}, {"ptemod", 0}};
  const char* kernel_stats[] = {"exits", "pf_guest", "pf_fixed", "insn_emulation", "io_exits", "mmio_exits"};
  std::printf("[kvm] %s: exits per %u operations (userspace exits exact; kernel stats of KVM itself)\n",
              env().mode_line.c_str(), kReps);
  for (int i = 0; i < 7; ++i) {
    auto delta = [&](const std::string& name) { return counter(marks[i + 1], name) - counter(marks[i], name); };
    // The closing marker's OUT is itself one exit.
    const std::uint64_t user_exits = delta("kvm.exits") - 1;
    EXPECT_EQ(user_exits, ops[i].exits) << ops[i].name;
    std::printf("[kvm]   %-10s userspace=%llu", ops[i].name, static_cast<unsigned long long>(user_exits));
    for (const char* k : kernel_stats) std::printf(" %s=%llu", k, static_cast<unsigned long long>(delta(std::string("kvm.kernel.") + k)));
    std::printf("\n");
  }
  auto delta = [&](int i, const std::string& name) { return counter(marks[i + 1], name) - counter(marks[i], name); };
  EXPECT_EQ(delta(0, "kvm.exit.io_in"), kReps);
  EXPECT_EQ(delta(1, "kvm.exit.apic_tpr_write"), kReps);
  EXPECT_EQ(delta(1, "kvm.exit.mmio_write"), kReps);
  // The MMU technique shows in KVM's own counters (when it has a stats fd):
  // shadow paging intercepts every guest #PF and emulates every write to a
  // write-protected guest page table; nested paging does neither.
  if (counter(marks[0], "kvm.kernel.exits") != 0) {
    const bool nested = env().hypervisor->info().nested_paging;
    const auto guest_pf = delta(2, "kvm.kernel.pf_guest");
    const auto pte_emulated = delta(6, "kvm.kernel.insn_emulation");
    if (nested) {
      EXPECT_EQ(guest_pf, 0u);
      EXPECT_EQ(pte_emulated, 0u);
    } else {
      EXPECT_GE(guest_pf, kReps);
      EXPECT_GE(pte_emulated, kReps);
    }
  }
  std::size_t tpr_writes = 0;
  for (const auto& m : pf.mmio) tpr_writes += m.write && m.gpa == 0xfee00080 && m.value == 0x10;
  EXPECT_EQ(tpr_writes, kReps);
}

// Run a guest to the end in one go; run it again, stop it part way, save the
// vCPU, load the state into a fresh VM's vCPU and let that finish: same result.
TEST_F(KvmGuest, StateRoundTripIntoFreshVcpu) {
  constexpr unsigned kPasses = 40, kStopAfter = 17;
  auto setup = [&](TestRam& ram) {
    ram.load(kCodeBase, blob(g_state_start, g_state_end));
    write_page_tables(ram);
  };
  auto initial = [&](api::VirtualMachine& vm, TestRam& ram) {
    auto s = vm.save_vcpu(0);
    set_flat_protected_mode(s, kCodeBase, true, ram);
    s.gpr[api::gpr::rcx] = kPasses;
    vm.load_vcpu(0, s);
  };
  // Reference run.
  std::vector<std::uint32_t> want14, want15;
  {
    TestRam ram(kRam);
    TestPlatform pf;
    setup(ram);
    auto vm = make_vm(ram, pf);
    initial(*vm, ram);
    const auto e = vm->run(0);
    ASSERT_EQ(e.kind, ExitKind::Stopped) << e.diagnostic;
    want14 = pf.values_on(0x14);
    want15 = pf.values_on(0x15);
    ASSERT_EQ(want14, std::vector<std::uint32_t>{3 * kPasses});
    ASSERT_EQ(pf.ins[0x16], kPasses);
  }
  TestRam ram(kRam);
  setup(ram);
  api::VcpuState saved;
  {
    TestPlatform pf;
    pf.on_in = [&](std::uint16_t port) {
      if (port == 0x16 && pf.ins[0x16] == kStopAfter) pf.stop = true;  // stop right at an IN exit
    };
    auto vm = make_vm(ram, pf);
    initial(*vm, ram);
    const auto e = vm->run(0);
    ASSERT_EQ(e.kind, ExitKind::Stopped) << e.diagnostic;
    saved = vm->save_vcpu(0);  // completes the pending IN first
    EXPECT_EQ(saved.gpr[api::gpr::rax] & 0xff, 7u);
    EXPECT_EQ(saved.gpr[api::gpr::rcx], kPasses - kStopAfter + 1);
    EXPECT_EQ(saved.run_state, api::RunState::Runnable);
    EXPECT_TRUE(saved.msr(0x10).has_value()) << "TSC saved";
  }
  TestPlatform pf;
  auto vm = make_vm(ram, pf);
  vm->load_vcpu(0, saved);
  const auto again = vm->save_vcpu(0);
  EXPECT_EQ(again.gpr, saved.gpr);
  EXPECT_EQ(again.rip, saved.rip);
  EXPECT_EQ(again.cr0, saved.cr0);
  EXPECT_EQ(again.cr3, saved.cr3);
  EXPECT_EQ(again.cr4, saved.cr4);
  EXPECT_EQ(again.cs.selector, saved.cs.selector);
  EXPECT_EQ(again.cs.db, saved.cs.db);
  EXPECT_EQ(again.gdtr.base, saved.gdtr.base);
  EXPECT_TRUE(std::equal(again.fpu.fxsave.begin() + 160, again.fpu.fxsave.begin() + 192,
                         saved.fpu.fxsave.begin() + 160))
      << "XMM0/XMM1";
  const auto e = vm->run(0);
  ASSERT_EQ(e.kind, ExitKind::Stopped) << e.diagnostic;
  EXPECT_EQ(pf.values_on(0x14), want14);
  EXPECT_EQ(pf.values_on(0x15), want15);
  EXPECT_EQ(pf.ins[0x16], kPasses - kStopAfter);
}

// A byte stream of a VcpuState for the cross-MMU hand-off below (same binary
// on both ends, so plain fields are copied as they lie).
class StateFile {
 public:
  // The vCPU through the production codec (host/snapshot/vcpu_codec), then the RAM.
  static void write(const std::filesystem::path& file, const api::VcpuState& st, TestRam& ram) {
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    const std::vector<std::uint8_t> vcpu = host::encode_vcpu_state(st);
    const std::uint64_t size = vcpu.size();
    out.write(reinterpret_cast<const char*>(&size), sizeof size);
    out.write(reinterpret_cast<const char*>(vcpu.data()), static_cast<std::streamsize>(vcpu.size()));
    out.write(reinterpret_cast<const char*>(ram.host_base()), static_cast<std::streamsize>(ram.size()));
    if (!out) throw std::runtime_error("cannot write " + file.string());
  }
  static api::VcpuState read(const std::filesystem::path& file, TestRam& ram) {
    std::ifstream in(file, std::ios::binary);
    std::uint64_t size = 0;
    in.read(reinterpret_cast<char*>(&size), sizeof size);
    if (!in || size > (1u << 20)) throw std::runtime_error("bad state file " + file.string());
    std::vector<std::uint8_t> vcpu(size);
    in.read(reinterpret_cast<char*>(vcpu.data()), static_cast<std::streamsize>(size));
    in.read(reinterpret_cast<char*>(ram.host_base()), static_cast<std::streamsize>(ram.size()));
    if (!in) throw std::runtime_error("cannot read " + file.string());
    return host::decode_vcpu_state(vcpu);
  }
};

// The mode switch across MMUs: in the test host's npt=1 boot (hv-hwmmu) the
// guest is stopped part way and its vCPU state and RAM are written to the
// shared work dir; the npt=0 run (hv-swmmu) loads them into a fresh VM and
// finishes: the result equals an uninterrupted run.
TEST_F(KvmGuest, CrossMmuResumeFromNestedToShadowPaging) {
  const char* dir = std::getenv("MODEVISOR_KVM_HANDOFF_DIR");
  if (!dir) GTEST_SKIP() << "needs MODEVISOR_KVM_HANDOFF_DIR (set by run-kvm-tests.sh in the test host, which runs npt=1 then npt=0)";
  const std::filesystem::path file = std::filesystem::path(dir) / "cross-mmu-state.bin";
  constexpr unsigned kPasses = 40, kStopAfter = 23;
  const bool nested = env().hypervisor->info().nested_paging;
  TestRam ram(kRam);
  if (nested) {
    std::filesystem::remove(file);
    ram.load(kCodeBase, blob(g_state_start, g_state_end));
    write_page_tables(ram);
    TestPlatform pf;
    pf.on_in = [&](std::uint16_t port) {
      if (port == 0x16 && pf.ins[0x16] == kStopAfter) pf.stop = true;
    };
    auto vm = make_vm(ram, pf);
    auto s = vm->save_vcpu(0);
    set_flat_protected_mode(s, kCodeBase, true, ram);
    s.gpr[api::gpr::rcx] = kPasses;
    vm->load_vcpu(0, s);
    const auto e = vm->run(0);
    ASSERT_EQ(e.kind, ExitKind::Stopped) << e.diagnostic;
    StateFile::write(file, vm->save_vcpu(0), ram);
    std::printf("[kvm] %s: stopped after %u of %u passes, state and RAM handed off in %s\n", env().plugin_name.c_str(),
                kStopAfter, kPasses, file.c_str());
    return;
  }
  if (!std::filesystem::exists(file)) GTEST_SKIP() << "no " << file << " from an npt=1 run before this one";
  // Reference: the same guest uninterrupted, here.
  std::vector<std::uint32_t> want14, want15;
  {
    TestRam ref(kRam);
    ref.load(kCodeBase, blob(g_state_start, g_state_end));
    write_page_tables(ref);
    TestPlatform pf;
    auto vm = make_vm(ref, pf);
    auto s = vm->save_vcpu(0);
    set_flat_protected_mode(s, kCodeBase, true, ref);
    s.gpr[api::gpr::rcx] = kPasses;
    vm->load_vcpu(0, s);
    ASSERT_EQ(vm->run(0).kind, ExitKind::Stopped);
    want14 = pf.values_on(0x14);
    want15 = pf.values_on(0x15);
  }
  const api::VcpuState st = StateFile::read(file, ram);
  std::filesystem::remove(file);
  TestPlatform pf;
  auto vm = make_vm(ram, pf);
  vm->load_vcpu(0, st);
  const auto e = vm->run(0);
  ASSERT_EQ(e.kind, ExitKind::Stopped) << e.diagnostic;
  EXPECT_EQ(pf.ins[0x16], kPasses - kStopAfter);
  EXPECT_EQ(pf.values_on(0x14), want14);
  EXPECT_EQ(pf.values_on(0x15), want15);
  std::printf("[kvm] %s: resumed the hv-hwmmu vCPU (npt=1) and finished: results match\n", env().plugin_name.c_str());
}

TEST_F(KvmGuest, TripleFaultIsShutdownWithRegisterDump) {
  TestRam ram(kRam);
  TestPlatform pf;
  ram.load(kCodeBase, blob(g_triple_start, g_triple_end));
  auto vm = make_vm(ram, pf);
  auto s = vm->save_vcpu(0);
  set_flat_protected_mode(s, kCodeBase, false, ram);
  s.idtr = {kIdtBase, 0};  // no usable vector: #UD -> #GP -> #DF -> shutdown
  vm->load_vcpu(0, s);
  const auto exit = vm->run(0);
  EXPECT_EQ(exit.kind, ExitKind::Shutdown);
  EXPECT_NE(exit.diagnostic.find("triple"), std::string::npos) << exit.diagnostic;
  EXPECT_NE(exit.diagnostic.find("RIP="), std::string::npos) << exit.diagnostic;
  // VT-x keeps the faulting state; on AMD KVM reinitialises the VMCB after a
  // shutdown intercept, and the diagnostic says the dump is the reset state.
  EXPECT_TRUE(exit.diagnostic.find("RAX=000000000000dead") != std::string::npos ||
              exit.diagnostic.find("reset state") != std::string::npos)
      << exit.diagnostic;
  EXPECT_EQ(counter(vm->counters(), "kvm.exit.shutdown"), 1u);
}

// Code fetched from outside guest RAM (an MMIO address) cannot be emulated:
// KVM reports an internal error, the VM stops with that diagnostic, and the
// next VM on the same KVM runs normally.
TEST_F(KvmGuest, InternalErrorStopsTheVmWithADiagnosticAndTheHostGoesOn) {
  {
    TestRam ram(kRam);
    TestPlatform pf;
    auto vm = make_vm(ram, pf);
    auto s = vm->save_vcpu(0);
    set_flat_protected_mode(s, kCodeBase, false, ram);
    s.rip = 0xd0000000;  // no memory slot there
    vm->load_vcpu(0, s);
    const auto exit = vm->run(0);
    EXPECT_EQ(exit.kind, ExitKind::Error) << exit.diagnostic;
    EXPECT_NE(exit.diagnostic.find("KVM_EXIT_INTERNAL_ERROR"), std::string::npos) << exit.diagnostic;
    EXPECT_NE(exit.diagnostic.find("RIP="), std::string::npos) << exit.diagnostic;
    EXPECT_EQ(counter(vm->counters(), "kvm.exit.internal_error"), 1u);
  }
  TestRam ram(kRam);
  TestPlatform pf;
  ram.load(kCodeBase, blob(g_pm_mmio_start, g_pm_mmio_end));
  auto vm = make_flat_vm(ram, pf);
  const auto exit = vm->run(0);
  EXPECT_EQ(exit.kind, ExitKind::Stopped) << exit.diagnostic;
  EXPECT_EQ(pf.mmio.size(), 4u);
}

TEST_F(KvmGuest, InterruptsWakeAHaltedGuest) {
  TestRam ram(kRam);
  TestPlatform pf;
  pf.interrupts_to_raise = 3;
  ram.load(kCodeBase, blob(g_irq_start, g_irq_end));
  auto vm = make_vm(ram, pf);
  auto s = vm->save_vcpu(0);
  set_flat_protected_mode(s, kCodeBase, false, ram);
  write_idt(ram, {{0x30, guest_addr(g_irq_start, g_irq_handler)}});
  vm->load_vcpu(0, s);
  const auto exit = vm->run(0);
  ASSERT_EQ(exit.kind, ExitKind::Stopped) << exit.diagnostic;
  EXPECT_EQ(pf.values_on(0x13).size(), 3u);
  EXPECT_EQ(pf.acks, 3);
  EXPECT_EQ(pf.halts, 4);
  EXPECT_EQ(counter(vm->counters(), "kvm.interrupts_injected"), 3u);
}

// A vCPU saved while halted in HLT resumes halted in a fresh VM and wakes on
// the platform's next interrupt.
TEST_F(KvmGuest, HaltedStateRoundTrip) {
  TestRam ram(kRam);
  api::VcpuState saved;
  {
    TestPlatform pf;  // no interrupts: the first HLT ends the run
    ram.load(kCodeBase, blob(g_irq_start, g_irq_end));
    write_idt(ram, {{0x30, guest_addr(g_irq_start, g_irq_handler)}});
    auto vm = make_vm(ram, pf);
    auto s = vm->save_vcpu(0);
    set_flat_protected_mode(s, kCodeBase, false, ram);
    vm->load_vcpu(0, s);
    const auto e = vm->run(0);
    ASSERT_EQ(e.kind, ExitKind::Stopped) << e.diagnostic;
    saved = vm->save_vcpu(0);
    ASSERT_EQ(saved.run_state, api::RunState::Halted);
    EXPECT_EQ(saved.rip, kCodeBase + 2u);  // after STI; HLT
  }
  TestPlatform pf;
  pf.interrupts_to_raise = 1;
  auto vm = make_vm(ram, pf);
  vm->load_vcpu(0, saved);
  EXPECT_EQ(vm->save_vcpu(0).run_state, api::RunState::Halted);
  const auto e = vm->run(0);
  ASSERT_EQ(e.kind, ExitKind::Stopped) << e.diagnostic;
  EXPECT_EQ(pf.values_on(0x13).size(), 1u);  // woke, took the interrupt, halted again
  EXPECT_EQ(pf.halts, 2);
}

// An interrupt raised while the guest has IF=0 waits for the window KVM
// reports when the guest can take it (after STI and its shadow).
TEST_F(KvmGuest, MaskedInterruptWaitsForTheInterruptWindow) {
  TestRam ram(kRam);
  TestPlatform pf;
  ram.load(kCodeBase, blob(g_irq_start, g_irq_end));
  write_idt(ram, {{0x30, guest_addr(g_irq_start, g_irq_handler)}});
  auto vm = make_vm(ram, pf);
  auto s = vm->save_vcpu(0);
  set_flat_protected_mode(s, guest_addr(g_irq_start, g_irq_window), false, ram);
  vm->load_vcpu(0, s);
  pf.on_out = [&](std::uint16_t port, std::uint32_t) {
    if (port == 0x10) pf.raise();
    if (port == 0x13) pf.stop = true;
  };
  const auto exit = vm->run(0);
  ASSERT_EQ(exit.kind, ExitKind::Stopped) << exit.diagnostic;
  std::vector<std::uint16_t> order;
  for (const auto& [port, value] : pf.outs) order.push_back(port);
  EXPECT_EQ(order, (std::vector<std::uint16_t>{0x10, 0x12, 0x13}));
  const auto c = vm->counters();
  EXPECT_EQ(counter(c, "kvm.exit.irq_window_open"), 1u);
  EXPECT_EQ(counter(c, "kvm.interrupts_injected"), 1u);
}

TEST_F(KvmGuest, DeviceTimerDeadlineInterruptsASpinningGuest) {
  TestRam ram(kRam);
  TestPlatform pf;
  ram.load(kCodeBase, blob(g_irq_start, g_irq_end));
  auto vm = make_vm(ram, pf);
  auto s = vm->save_vcpu(0);
  set_flat_protected_mode(s, guest_addr(g_irq_start, g_irq_spin), false, ram);
  write_idt(ram, {{0x30, guest_addr(g_irq_start, g_irq_handler)}});
  vm->load_vcpu(0, s);
  pf.on_out = [&](std::uint16_t port, std::uint32_t) {
    if (port == 0x13) pf.stop = true;
  };
  pf.deadline_ns = pf.now_ns() + 20'000'000;  // 20 ms from now; the guest never exits on its own
  const auto t0 = std::chrono::steady_clock::now();
  const auto exit = vm->run(0);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(exit.kind, ExitKind::Stopped) << exit.diagnostic;
  EXPECT_EQ(pf.values_on(0x13).size(), 1u);
  EXPECT_EQ(pf.acks, 1);
  EXPECT_GE(ms, 15);
  EXPECT_LT(ms, 5000);
}

// An interrupt that is pending again whenever the guest returns from its
// handler (a periodic timer whose period is shorter than the handler's exits
// take, as on a loaded nested host) must not starve the interrupted code:
// between two interrupts it runs to its next exit.  Without that, IRET lands
// in the next interrupt every time and port 0x14 is written once at most.
TEST_F(KvmGuest, AnInterruptStormLetsTheInterruptedCodeProgress) {
  TestRam ram(kRam);
  TestPlatform pf;
  pf.storm = true;
  pf.raise();
  ram.load(kCodeBase, blob(g_irq_start, g_irq_end));
  write_idt(ram, {{0x30, guest_addr(g_irq_start, g_irq_handler)}});
  auto vm = make_vm(ram, pf);
  auto s = vm->save_vcpu(0);
  set_flat_protected_mode(s, guest_addr(g_irq_start, g_irq_progress), false, ram);
  vm->load_vcpu(0, s);
  constexpr std::size_t kInterrupts = 20;
  std::size_t handled = 0;
  pf.on_out = [&](std::uint16_t port, std::uint32_t) {
    if (port == 0x13 && ++handled == kInterrupts) pf.stop = true;
  };
  const auto exit = vm->run(0);
  ASSERT_EQ(exit.kind, ExitKind::Stopped) << exit.diagnostic;
  EXPECT_EQ(handled, kInterrupts);
  // One step per interrupt; a held-back interrupt whose slice ended before
  // the guest ran (a descheduled test host) costs one step, so half is the bar.
  EXPECT_GE(pf.values_on(0x14).size(), kInterrupts / 2);
  EXPECT_GE(counter(vm->counters(), "kvm.interrupts_held"), kInterrupts / 2);
}

// A guest spinning in place (no exits) where the storm interrupted it is
// held back for one bounded slice per interrupt, not forever.
TEST_F(KvmGuest, AHeldBackInterruptStillReachesASpinningGuest) {
  TestRam ram(kRam);
  TestPlatform pf;
  pf.storm = true;
  pf.raise();
  ram.load(kCodeBase, blob(g_irq_start, g_irq_end));
  write_idt(ram, {{0x30, guest_addr(g_irq_start, g_irq_handler)}});
  auto vm = make_vm(ram, pf);
  auto s = vm->save_vcpu(0);
  set_flat_protected_mode(s, guest_addr(g_irq_start, g_irq_spin), false, ram);
  vm->load_vcpu(0, s);
  std::size_t handled = 0;
  pf.on_out = [&](std::uint16_t port, std::uint32_t) {
    if (port == 0x13 && ++handled == 5) pf.stop = true;
  };
  const auto exit = vm->run(0);
  ASSERT_EQ(exit.kind, ExitKind::Stopped) << exit.diagnostic;
  EXPECT_EQ(handled, 5u);
  EXPECT_GE(counter(vm->counters(), "kvm.interrupts_held"), 1u);
}

TEST_F(KvmGuest, KickStopsASpinningGuest) {
  TestRam ram(kRam);
  TestPlatform pf;
  ram.load(kCodeBase, blob(g_irq_start, g_irq_end));
  auto vm = make_vm(ram, pf);
  auto s = vm->save_vcpu(0);
  set_flat_protected_mode(s, guest_addr(g_irq_start, g_irq_spin), false, ram);
  vm->load_vcpu(0, s);
  std::thread kicker([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    vm->kick(0);
  });
  const auto exit = vm->run(0);
  kicker.join();
  EXPECT_EQ(exit.kind, ExitKind::Stopped) << exit.diagnostic;
  const auto st = vm->save_vcpu(0);
  EXPECT_EQ(st.rip, guest_addr(g_irq_start, g_irq_spin) + 1);  // spinning on "jmp ." after STI
}

TEST_F(KvmGuest, DirtyPagesAreTracked) {
  TestRam ram(kRam);
  TestPlatform pf;
  ram.load(kCodeBase, blob(g_dirty_start, g_dirty_end));
  auto vm = make_vm(ram, pf);
  std::vector<std::uint64_t> bitmap;
  ASSERT_TRUE(vm->collect_dirty_pages(bitmap));  // first call: everything
  ASSERT_EQ(bitmap.size(), kRam / 4096 / 64);
  EXPECT_EQ(bitmap[0], ~0ull);
  ASSERT_TRUE(vm->collect_dirty_pages(bitmap));
  for (auto w : bitmap) EXPECT_EQ(w, 0u);
  auto s = vm->save_vcpu(0);
  set_flat_protected_mode(s, kCodeBase, false, ram);
  vm->load_vcpu(0, s);
  const auto exit = vm->run(0);
  ASSERT_EQ(exit.kind, ExitKind::Stopped) << exit.diagnostic;
  ASSERT_TRUE(vm->collect_dirty_pages(bitmap));
  auto dirty = [&](std::uint64_t gpa) { return (bitmap[gpa / 4096 / 64] >> (gpa / 4096 % 64)) & 1; };
  for (std::uint64_t p = 0x300000; p < 0x305000; p += 0x1000) EXPECT_TRUE(dirty(p)) << std::hex << p;
  EXPECT_FALSE(dirty(0x305000));
  EXPECT_FALSE(dirty(0x200000));
}

TEST_F(KvmGuest, LongModeGuestUsesItsSyscallMsrs) {
  TestRam ram(kRam);
  TestPlatform pf;
  ram.load(kCodeBase, blob(g_lm_start, g_lm_end));
  // 4-level paging: PML4 0x20000 -> PDPT 0x21000 -> 4 PDs (0x22000..) of 2 MiB pages, identity for 4 GiB.
  auto* pml4 = &ram.at<std::uint64_t>(0x20000);
  auto* pdpt = &ram.at<std::uint64_t>(0x21000);
  pml4[0] = 0x21000 | 3;
  for (std::uint64_t i = 0; i < 4; ++i) {
    pdpt[i] = (0x22000 + i * 0x1000) | 3;
    auto* pd = &ram.at<std::uint64_t>(0x22000 + i * 0x1000);
    for (std::uint64_t j = 0; j < 512; ++j) pd[j] = (i << 30) + (j << 21) + 0x83;
  }
  auto vm = make_vm(ram, pf);
  auto s = vm->save_vcpu(0);
  set_flat_protected_mode(s, kCodeBase, true, ram);
  ram.at<std::uint64_t>(kGdtBase + 8) = 0x00af9b000000ffffull;  // 64-bit code
  s.cs.l = true;
  s.cs.db = false;
  s.cr3 = 0x20000;
  s.cr4 = 0x620;       // PAE | OSFXSR | OSXMMEXCPT
  s.efer = 0x501;      // SCE | LME | LMA
  s.rflags = 0x202;    // IF, to see SFMASK clear it
  s.set_msr(0xc0000081, 0x0010000800000000ull);                        // STAR: SYSCALL CS 0x08
  s.set_msr(0xc0000082, guest_addr(g_lm_start, g_lm_syscall));         // LSTAR
  s.set_msr(0xc0000084, 0x200);                                        // SFMASK: IF
  s.set_msr(0xc0000102, 0xffff800012345000ull);                        // KERNEL_GS_BASE
  vm->load_vcpu(0, s);
  const auto back = vm->save_vcpu(0);
  EXPECT_EQ(back.msr(0xc0000082), s.msr(0xc0000082));
  EXPECT_EQ(back.msr(0xc0000102), s.msr(0xc0000102));
  EXPECT_EQ(back.efer & 0x501, 0x501u);
  EXPECT_TRUE(back.cs.l);
  const auto exit = vm->run(0);
  ASSERT_EQ(exit.kind, ExitKind::Stopped) << exit.diagnostic;
  ASSERT_EQ(pf.mmio.size(), 2u);
  EXPECT_EQ(pf.mmio[0].size, 8u);
  EXPECT_EQ(pf.mmio[0].value, 0x1122334455667788ull);
  EXPECT_EQ(pf.mmio[1].size, 8u);
  EXPECT_EQ(ram.at<std::uint64_t>(0x3000), pf.mmio_read_value);
  const auto v = pf.values_on(0x15);
  ASSERT_EQ(v.size(), 3u);
  EXPECT_EQ(v[0], guest_addr(g_lm_start, g_lm_after_syscall));
  EXPECT_EQ(v[1] & 0x200, 0x200u);  // R11: RFLAGS before, IF set
  EXPECT_EQ(v[2] & 0x200, 0u);      // IF masked in the handler
}

// Two vCPUs of one VM, each on its own thread (own kick signal target and
// timer), run the same code on their own registers and stacks.
TEST_F(KvmGuest, TwoVcpusRunOnTheirOwnThreads) {
  constexpr unsigned kPasses0 = 30, kPasses1 = 50;
  TestRam ram(kRam);
  TestPlatform pf;
  pf.vcpus_to_halt = 2;
  ram.load(kCodeBase, blob(g_state_start, g_state_end));
  write_page_tables(ram);
  auto vm = make_vm(ram, pf, nullptr, 2);
  for (unsigned i = 0; i < 2; ++i) {
    auto s = vm->save_vcpu(i);
    set_flat_protected_mode(s, kCodeBase, true, ram);
    s.gpr[api::gpr::rcx] = i == 0 ? kPasses0 : kPasses1;
    s.gpr[api::gpr::rsp] = kStackTop - i * 0x400;
    vm->load_vcpu(i, s);
  }
  api::RunExit exits[2];
  std::thread t0([&] { exits[0] = vm->run(0); });
  std::thread t1([&] { exits[1] = vm->run(1); });
  t0.join();
  t1.join();
  for (const auto& e : exits) ASSERT_EQ(e.kind, ExitKind::Stopped) << e.diagnostic;
  ASSERT_EQ(pf.outs_by_vcpu[0].size(), 1u);
  ASSERT_EQ(pf.outs_by_vcpu[1].size(), 1u);
  EXPECT_NE(pf.outs_by_vcpu[0][0], pf.outs_by_vcpu[1][0]);  // different pass counts, different sums
  EXPECT_EQ(pf.ins[0x16], kPasses0 + kPasses1);
  EXPECT_EQ(counter(vm->counters(), "kvm.exit.io_in"), kPasses0 + kPasses1);
  EXPECT_EQ(counter(vm->counters(), "kvm.exit.hlt"), 2u);
}

// NMIs from the platform go in with KVM_NMI: taken even with IF=0, not nested
// (the second, raised inside the handler, waits for its IRET).
TEST_F(KvmGuest, PlatformNmisAreInjectedAndDoNotNest) {
  TestRam ram(kRam);
  TestPlatform pf;
  pf.on_out = [&](std::uint16_t port, std::uint32_t) {
    if (port == 0x10 || port == 0x14) pf.nmi = true;
  };
  ram.load(kCodeBase, blob(g_nmi_start, g_nmi_end));
  write_idt(ram, {{2, guest_addr(g_nmi_start, g_nmi_handler)}});
  auto vm = make_flat_vm(ram, pf);
  const auto exit = vm->run(0);
  ASSERT_EQ(exit.kind, ExitKind::Stopped) << exit.diagnostic;
  EXPECT_EQ(pf.values_on(0x13), (std::vector<std::uint32_t>{1, 2})) << "the second NMI came after the first IRET";
  std::vector<std::uint16_t> order;
  for (const auto& [port, value] : pf.outs)
    if (port == 0x13 || port == 0x12) order.push_back(port);
  EXPECT_EQ(order, (std::vector<std::uint16_t>{0x13, 0x13, 0x12})) << "delivered before the next instruction";
  EXPECT_EQ(ram.at<std::uint32_t>(kDataBase), 2u);
  EXPECT_EQ(pf.nmis_taken, 2);
  EXPECT_EQ(counter(vm->counters(), "kvm.nmis_injected"), 2u);
}

TEST_F(KvmGuest, AnNmiEndsHltWithInterruptsDisabled) {
  TestRam ram(kRam);
  TestPlatform pf;
  pf.nmis_to_raise = 1;
  ram.load(kCodeBase, blob(g_nmi_start, g_nmi_end));
  write_idt(ram, {{2, guest_addr(g_nmi_start, g_nmi_handler)}});
  auto vm = make_vm(ram, pf);
  auto s = vm->save_vcpu(0);
  set_flat_protected_mode(s, guest_addr(g_nmi_start, g_nmi_hlt), false, ram);
  vm->load_vcpu(0, s);
  const auto exit = vm->run(0);
  ASSERT_EQ(exit.kind, ExitKind::Stopped) << exit.diagnostic;
  EXPECT_EQ(pf.values_on(0x13), std::vector<std::uint32_t>{1});
  EXPECT_EQ(pf.values_on(0x12).size(), 1u) << "resumed after the HLT";
  EXPECT_EQ(pf.cpu_event_waits, 2) << "both HLTs wait for a processor event (IF=0)";
  EXPECT_EQ(pf.halts, 0) << "not for an interrupt";
}

// INIT and STARTUP are the host's to apply: the run loop leaves before the
// next instruction; a vCPU loaded waiting for SIPI runs nothing and says so;
// the STARTUP state (platform/cpu_reset.hpp) runs in real mode at the
// vector's page from IP 0.
TEST_F(KvmGuest, InitLeavesTheRunLoopAndStartupStartsRealModeAtTheVector) {
  TestRam ram(kRam);
  TestPlatform pf;
  pf.on_out = [&](std::uint16_t port, std::uint32_t) {
    if (port == 0x10) pf.init = true;
  };
  ram.load(kCodeBase, blob(g_nmi_start, g_nmi_end));
  auto vm = make_vm(ram, pf);
  auto s = vm->save_vcpu(0);
  set_flat_protected_mode(s, guest_addr(g_nmi_start, g_nmi_init), false, ram);
  vm->load_vcpu(0, s);
  auto exit = vm->run(0);
  ASSERT_EQ(exit.kind, ExitKind::Stopped) << exit.diagnostic;
  EXPECT_TRUE(pf.values_on(0x12).empty()) << "no guest instruction after the INIT arrived";

  // What the host then does: the INIT state (an AP: waiting for SIPI) ...
  pf.init = false;
  pf.on_out = nullptr;
  vm->load_vcpu(0, host::state_after_init(vm->save_vcpu(0), /*bsp=*/false));
  EXPECT_EQ(vm->save_vcpu(0).run_state, api::RunState::WaitForSipi);
  const std::size_t outs = pf.outs.size();
  exit = vm->run(0);
  EXPECT_EQ(exit.kind, ExitKind::Stopped);
  EXPECT_EQ(pf.outs.size(), outs) << "waiting for SIPI: nothing ran";
  EXPECT_EQ(vm->save_vcpu(0).run_state, api::RunState::WaitForSipi);

  // ... and STARTUP vector 0x08: CS 0x0800, base 0x8000, IP 0.
  pf.outs.clear();
  ram.load(0x8000, blob(g_sipi_start, g_sipi_end));
  vm->load_vcpu(0, host::state_after_startup(vm->save_vcpu(0), 0x08));
  exit = vm->run(0);
  ASSERT_EQ(exit.kind, ExitKind::Stopped) << exit.diagnostic;
  EXPECT_EQ(pf.values_on(0x10), (std::vector<std::uint32_t>{0x0800}));
  EXPECT_EQ(pf.values_on(0x12), (std::vector<std::uint32_t>{7}));
  EXPECT_EQ(vm->save_vcpu(0).run_state, api::RunState::Halted);
}

TEST_F(KvmGuest, TheOtherHvPluginRefusesNamingTheModuleParameter) {
  TestRam ram(kRam);
  TestPlatform pf;
  try {
    make_vm(ram, pf, env().other_monitor.get());
    FAIL() << env().other_plugin << " accepted a VM under the other MMU";
  } catch (const api::MonitorError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(env().other_plugin), std::string::npos) << msg;
    EXPECT_TRUE(msg.find("npt") != std::string::npos || msg.find("ept") != std::string::npos) << msg;
  }
}

// The project's own multiboot compute guests (tests/guests), loaded from their
// ELF and run to their isa-debug-exit; the serial output must equal what the
// QEMU oracle prints (tests/guests/expected).  Only the devices they touch
// without interrupts are needed: the UART's data and line status ports.
class KvmMultibootGuest : public KvmGuest, public ::testing::WithParamInterface<const char*> {};

std::vector<char> read_all(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST_P(KvmMultibootGuest, SerialOutputMatchesTheOracle) {
  const std::string name = GetParam();
  const auto elf = read_all(std::filesystem::path(MODEVISOR_GUEST_DIR) / (name + ".elf"));
  const auto expected = read_all(std::filesystem::path(MODEVISOR_SOURCE_DIR) / "tests/guests/expected" / (name + ".out"));
  ASSERT_GT(elf.size(), sizeof(Elf32_Ehdr)) << name << ".elf missing";
  ASSERT_FALSE(expected.empty());
  constexpr std::uint64_t kGuestRam = 128 << 20;  // as the oracle's -m 128
  TestRam ram(kGuestRam);
  Elf32_Ehdr eh;
  std::memcpy(&eh, elf.data(), sizeof eh);
  ASSERT_EQ(std::memcmp(eh.e_ident, ELFMAG, SELFMAG), 0);
  ASSERT_EQ(eh.e_machine, EM_386);
  for (unsigned i = 0; i < eh.e_phnum; ++i) {
    Elf32_Phdr ph;
    std::memcpy(&ph, elf.data() + eh.e_phoff + i * eh.e_phentsize, sizeof ph);
    if (ph.p_type != PT_LOAD) continue;
    ASSERT_LE(std::uint64_t{ph.p_paddr} + ph.p_memsz, kGuestRam);
    std::memcpy(ram.host_base() + ph.p_paddr, elf.data() + ph.p_offset, ph.p_filesz);
  }
  // Multiboot information: memory sizes and the command line ("<name>.elf", as
  // QEMU passes the kernel's file name first).
  constexpr std::uint32_t kMbi = 0x9000, kCmdline = 0x9100;
  auto* mbi = &ram.at<std::uint32_t>(kMbi);
  mbi[0] = (1u << 0) | (1u << 2);
  mbi[1] = 639;
  mbi[2] = static_cast<std::uint32_t>((kGuestRam >> 10) - 1024);
  mbi[4] = kCmdline;
  const std::string cmdline = name + ".elf ";
  std::memcpy(ram.host_base() + kCmdline, cmdline.c_str(), cmdline.size() + 1);

  TestPlatform pf;
  std::string serial;
  bool dlab = false;
  std::optional<std::uint32_t> exit_code;
  pf.on_out = [&](std::uint16_t port, std::uint32_t value) {
    if (port == 0x3fb) dlab = value & 0x80;
    if (port == 0x3f8 && !dlab) serial += static_cast<char>(value);
    if (port == 0xf4) {
      exit_code = value & 0xff;
      pf.stop = true;
    }
  };
  auto vm = make_vm(ram, pf);
  auto s = vm->save_vcpu(0);
  set_flat_protected_mode(s, eh.e_entry, false, ram);
  s.cr0 = 0x11;  // PE | ET, as a multiboot loader leaves it
  s.cr4 = 0;
  s.gpr[api::gpr::rax] = 0x2badb002;
  s.gpr[api::gpr::rbx] = kMbi;
  vm->load_vcpu(0, s);
  const auto t0 = std::chrono::steady_clock::now();
  const auto exit = vm->run(0);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(exit.kind, ExitKind::Stopped) << exit.diagnostic << "\nserial so far:\n" << serial;
  EXPECT_EQ(exit_code, std::optional<std::uint32_t>(0)) << serial;
  EXPECT_EQ(serial, std::string(expected.begin(), expected.end()));
  const auto c = vm->counters();
  std::printf("[kvm] %s under %s: %.2fs, %llu exits (%llu port 0x3f8, %llu LSR polls), kernel exits %llu\n",
              name.c_str(), env().plugin_name.c_str(), secs, static_cast<unsigned long long>(counter(c, "kvm.exits")),
              static_cast<unsigned long long>(counter(c, "kvm.io_port.0x03f8")),
              static_cast<unsigned long long>(counter(c, "kvm.io_port.0x03fd")),
              static_cast<unsigned long long>(counter(c, "kvm.kernel.exits")));
}

INSTANTIATE_TEST_SUITE_P(ComputeGuests, KvmMultibootGuest,
                         ::testing::Values("sieve", "crc32", "sha256", "matmul", "sort"),
                         [](const auto& info) { return std::string(info.param); });

// XCR0 and the XSAVE-managed state round trip exactly through the driver
// (KVM_SET/GET_XCRS, KVM_SET/GET_XSAVE), and XCR0 as the guest sets it with
// XSETBV reads back with XGETBV, also after an exit, and is what a save reports.
TEST_F(KvmGuest, Xcr0AndXsaveStateRoundTripAndTheGuestsXsetbvSticks) {
  unsigned a = 0, b = 0, c = 0, d = 0;
  ASSERT_TRUE(__get_cpuid_count(0xd, 0, &a, &b, &c, &d)) << "no CPUID leaf 0xd on this host";
  if (auto* k = dynamic_cast<kvm::KvmHypervisor*>(env().hypervisor.get()))
    std::printf("[kvm] XSAVE %d, XCRS %d, supported XCR0 %#llx\n", k->has_xsave(), k->has_xcrs(),
                static_cast<unsigned long long>(k->supported_xcr0()));
  std::vector<std::uint32_t> wanted{3};
  if ((a & 7) == 7) wanted.push_back(7);  // AVX state where the host has it
  bool xsetbv_lost = false;
  for (std::uint32_t xcr0 : wanted) {
    TestRam ram(kRam);
    TestPlatform pf;
    ram.load(kCodeBase, blob(g_xcr0_start, g_xcr0_end));
    auto vm = make_flat_vm(ram, pf);
    // The driver: what the host loads comes back exactly.
    api::VcpuState s = vm->save_vcpu(0);
    s.cr4 |= 0x40000;  // OSXSAVE
    s.fpu.xcr0 = xcr0;
    if (xcr0 & 4) {  // a recognisable upper half of YMM0 (the AVX component starts the extended area)
      s.fpu.xsave_extended.assign(256, 0);
      for (int i = 0; i < 16; ++i) s.fpu.xsave_extended[i] = static_cast<std::uint8_t>(0xa0 + i);
    }
    vm->load_vcpu(0, s);
    const api::VcpuState back = vm->save_vcpu(0);
    EXPECT_EQ(back.fpu.xcr0, xcr0) << "KVM_SET_XCRS / KVM_GET_XCRS";
    EXPECT_EQ(back.fpu.fxsave, s.fpu.fxsave);
    if (xcr0 & 4) {
      ASSERT_GE(back.fpu.xsave_extended.size(), 16u) << "the AVX state came back empty";
      EXPECT_TRUE(std::equal(s.fpu.xsave_extended.begin(), s.fpu.xsave_extended.begin() + 16,
                             back.fpu.xsave_extended.begin()));
    }
    // The guest: XSETBV from XCR0 1.
    s.fpu.xcr0 = 1;
    s.fpu.xsave_extended.clear();
    s.gpr[api::gpr::rsi] = xcr0;
    vm->load_vcpu(0, s);
    const auto exit = vm->run(0);
    ASSERT_EQ(exit.kind, ExitKind::Stopped) << "XCR0 " << xcr0 << ": " << exit.diagnostic;
    const auto read = pf.values_on(0x14);
    ASSERT_EQ(read.size(), 2u);
    const std::uint64_t saved = vm->save_vcpu(0).fpu.xcr0;
    std::printf("[kvm] guest XSETBV %u: XGETBV %u at once, %u after an exit; saved XCR0 %llu\n", xcr0, read[0],
                read[1], static_cast<unsigned long long>(saved));
    if ((read[0] == xcr0 || read[0] == 1) && read[1] == 1 && saved == 1) {
      // KVM never saw the XSETBV: the (emulated) CPU ran it without the SVM
      // intercept KVM sets, and KVM reloads its own XCR0 on the next entry,
      // which can come before the first XGETBV too (a host interrupt's exit:
      // seen once in a fresh-clone run, XGETBV 1 at once).
      xsetbv_lost = true;
      continue;
    }
    EXPECT_EQ(read[0], xcr0) << "XGETBV right after XSETBV " << xcr0;
    EXPECT_EQ(read[1], xcr0) << "XGETBV after an exit";
    EXPECT_EQ(saved, xcr0) << "the saved XCR0";
  }
  if (xsetbv_lost)
    GTEST_SKIP() << "this CPU did not intercept the guest's XSETBV for KVM (QEMU TCG's nested SVM in the KVM "
                    "test host): the driver round trip above passed, the guest's XSETBV cannot be checked here";
}

// Pending and in-delivery events come back from a load/save round trip as loaded.
TEST_F(KvmGuest, PendingAndInDeliveryEventsSurviveASaveLoadRoundTrip) {
  TestRam ram(kRam);
  TestPlatform pf;
  ram.load(kCodeBase, blob(g_state_start, g_state_end));
  auto vm = make_flat_vm(ram, pf);
  const api::VcpuState base = vm->save_vcpu(0);
  std::vector<api::PendingEvents> cases(4);
  cases[0].exception = api::PendingException{11, true, 0x1a, true};  // #NP in delivery
  cases[1].exception = api::PendingException{14, true, 0x2, true};   // #PF in delivery
  cases[1].nmi_masked = true;
  cases[2].interrupt = 0x31;                                          // an acknowledged interrupt
  cases[2].interrupt_shadow = true;
  cases[3].nmi_pending = true;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    api::VcpuState s = base;
    s.events = cases[i];
    if (cases[i].interrupt_shadow) s.rflags |= 0x200;
    vm->load_vcpu(0, s);
    const api::PendingEvents got = vm->save_vcpu(0).events;
    EXPECT_EQ(got.exception.has_value(), cases[i].exception.has_value()) << i;
    if (got.exception && cases[i].exception) {
      EXPECT_EQ(got.exception->vector, cases[i].exception->vector) << i;
      EXPECT_EQ(got.exception->has_error_code, cases[i].exception->has_error_code) << i;
      EXPECT_EQ(got.exception->error_code, cases[i].exception->error_code) << i;
    }
    EXPECT_EQ(got.interrupt, cases[i].interrupt) << i;
    EXPECT_EQ(got.interrupt_shadow, cases[i].interrupt_shadow) << i;
    EXPECT_EQ(got.nmi_pending, cases[i].nmi_pending) << i;
    EXPECT_EQ(got.nmi_masked, cases[i].nmi_masked) << i;
    // And through the production codec, as a snapshot or migration carries it.
    api::VcpuState coded = host::decode_vcpu_state(host::encode_vcpu_state(vm->save_vcpu(0)));
    EXPECT_EQ(coded.events.exception.has_value(), cases[i].exception.has_value()) << i;
  }
}

// The VM lifecycle across modes: a 32-bit guest paused under the HV plugin
// KVM allows, saved to a snapshot file and restored under bt-swmmu (and the
// other way round), prints what an uninterrupted run prints.
class KvmLifecycle : public KvmGuest {
 protected:
  void SetUp() override {
    KvmGuest::SetUp();
    if (IsSkipped()) return;
    registry_ = std::make_unique<host::PluginRegistry>(std::vector<std::filesystem::path>{MODEVISOR_PLUGIN_DIR});
    registry_->rescan();
    guest_os_ = host::GuestOsTable::load(std::filesystem::path(MODEVISOR_SOURCE_DIR) / "configs" / "guest-os.yaml");
    dir_ = std::filesystem::temp_directory_path() / ("modevisor-kvm-lifecycle-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    const std::filesystem::path file = dir_ / "vm.yaml";
    std::ofstream(file) << "name: lifecycle\nguest:\n  os: other-32\n  kernel: " MODEVISOR_GUEST_DIR
                           "/sieve.elf\n  cmdline: n=1000000 r=20\nmemory: 32MiB\n";
    config_ = host::load_vm_config(file, guest_os_);
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  std::shared_ptr<const host::LoadedPlugin> plugin(const std::string& name) {
    const host::LoadedPlugin* p = registry_->find(name);
    if (!p) return nullptr;
    return std::make_shared<const host::LoadedPlugin>(*p);
  }
  static std::shared_ptr<spdlog::logger> log() {
    return std::make_shared<spdlog::logger>("vm", std::make_shared<spdlog::sinks::null_sink_mt>());
  }
  // Paused under `from` after its first line, saved, restored under `to`: the whole output.
  std::string switch_modes(const std::string& from, const std::string& to) {
    auto vm = host::Vm::create(config_, plugin(from), log());
    vm->start();
    while (vm->console_output().find('\n') == std::string::npos && vm->state() == host::VmState::Running)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    vm->pause();
    EXPECT_EQ(vm->state(), host::VmState::Paused) << "the guest ended under " << from << " before the pause";
    if (vm->state() != host::VmState::Paused) return {};
    const std::string before = vm->console_output();
    const auto file = dir_ / "vm.snapshot";
    host::write_snapshot(file, vm->save_state(), vm->ram());
    vm->stop("saved");
    vm->wait();
    auto snapshot = host::read_snapshot(file);
    auto restored = host::Vm::restore(config_, snapshot.state, std::move(snapshot.ram), plugin(to), log());
    restored->resume();
    const auto r = restored->wait();
    EXPECT_EQ(r.kind, host::SessionResult::Kind::GuestExit) << to << ": " << r.reason;
    return before + restored->console_output();
  }

  std::unique_ptr<host::PluginRegistry> registry_;
  host::GuestOsTable guest_os_;
  std::filesystem::path dir_;
  host::VmConfig config_;
};

TEST_F(KvmLifecycle, AGuestSavedUnderHvRestoresUnderBtAndBackWithIdenticalSerialOutput) {
  const std::string hv = env().plugin_name;
  ASSERT_TRUE(plugin(hv) && plugin("bt-swmmu")) << "plugins " << hv << " and bt-swmmu";
  auto reference = host::Vm::create(config_, plugin(hv), log());
  reference->start();
  const auto r = reference->wait();
  ASSERT_EQ(r.kind, host::SessionResult::Kind::GuestExit) << r.reason;
  const std::string expected = reference->console_output();
  ASSERT_NE(expected.find("known answer: checked"), std::string::npos) << expected;
  EXPECT_EQ(switch_modes(hv, "bt-swmmu"), expected) << hv << " -> bt-swmmu";
  EXPECT_EQ(switch_modes("bt-swmmu", hv), expected) << "bt-swmmu -> " << hv;
}

}  // namespace
}  // namespace modevisor::test
