// Unit tests of the KVM driver bridge that need no /dev/kvm: the exit handler
// fed made-up kvm_run exits, the state conversions, the CPUID filter, the
// capability check and the HV plugins' MMU refusal.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

#include "hv_vm.hpp"
#include "kernel-driver/kvm_abi.hpp"
#include "kernel-driver/kvm_exit.hpp"
#include "kernel-driver/kvm_hypervisor.hpp"
#include "kernel-driver/kvm_state.hpp"
#include "kvm_test_support.hpp"

namespace modevisor::test {
namespace {

using kvm::ExitContext;
using kvm::ExitCounters;
using kvm::ExitOutcome;
using kvm::handle_exit;

// A kvm_run page with room for string I/O data after it.
struct FakeRun {
  alignas(8) std::uint8_t page[4096] = {};
  kvm_run& run() { return *reinterpret_cast<kvm_run*>(page); }
  static constexpr std::uint64_t kDataOffset = 2048;
  std::uint8_t* data() { return page + kDataOffset; }

  void io(std::uint8_t direction, std::uint16_t port, std::uint8_t size, std::uint32_t count) {
    run().exit_reason = KVM_EXIT_IO;
    run().io.direction = direction;
    run().io.port = port;
    run().io.size = size;
    run().io.count = count;
    run().io.data_offset = kDataOffset;
  }
};

struct Harness {
  TestPlatform platform;
  ExitCounters counters;
  ExitContext cx{platform, 0, 0xfee00000, counters, {}};
  FakeRun fake;
  ExitOutcome handle() { return handle_exit(fake.run(), cx); }
};

TEST(KvmExitHandler, PortOutReachesThePlatformAndIsCountedByPort) {
  Harness h;
  h.fake.io(KVM_EXIT_IO_OUT, 0x3f8, 1, 1);
  h.fake.data()[0] = 'A';
  EXPECT_EQ(h.handle(), ExitOutcome::Continue);
  ASSERT_EQ(h.platform.outs.size(), 1u);
  EXPECT_EQ(h.platform.outs[0], (std::pair<std::uint16_t, std::uint32_t>{0x3f8, 'A'}));
  EXPECT_EQ(h.counters.io_out, 1u);
  EXPECT_EQ(h.counters.io_ports.at(0x3f8), 1u);
  EXPECT_EQ(kvm::ExitCounters(h.counters).exits(), 1u);
}

TEST(KvmExitHandler, PortInWritesTheValueForKvmToComplete) {
  Harness h;
  h.fake.io(KVM_EXIT_IO_IN, 0x11, 2, 1);
  EXPECT_EQ(h.handle(), ExitOutcome::Continue);
  std::uint16_t v = 0;
  std::memcpy(&v, h.fake.data(), 2);
  EXPECT_EQ(v, 0x5a);
  EXPECT_EQ(h.counters.io_in, 1u);
}

TEST(KvmExitHandler, StringOutputWithCountAboveOneIsEveryIteration) {
  Harness h;
  h.fake.io(KVM_EXIT_IO_OUT, 0x12, 2, 3);
  const std::uint16_t words[3] = {0x1111, 0x2222, 0x3333};
  std::memcpy(h.fake.data(), words, sizeof words);
  EXPECT_EQ(h.handle(), ExitOutcome::Continue);
  EXPECT_EQ(h.platform.values_on(0x12), (std::vector<std::uint32_t>{0x1111, 0x2222, 0x3333}));
  EXPECT_EQ(h.counters.io_string, 1u);
  EXPECT_EQ(h.counters.io_out, 1u);  // one exit
}

TEST(KvmExitHandler, StringInputFillsEveryIteration) {
  Harness h;
  h.fake.io(KVM_EXIT_IO_IN, 0x13, 1, 4);
  EXPECT_EQ(h.handle(), ExitOutcome::Continue);
  EXPECT_EQ(h.fake.data()[0], 0xa0);
  EXPECT_EQ(h.fake.data()[3], 0xa3);
  EXPECT_EQ(h.platform.ins[0x13], 4u);
}

TEST(KvmExitHandler, BadIoSizeIsAnError) {
  Harness h;
  h.fake.io(KVM_EXIT_IO_OUT, 0x10, 3, 1);
  EXPECT_EQ(h.handle(), ExitOutcome::Error);
  EXPECT_NE(h.cx.reason.find("size 3"), std::string::npos);
}

TEST(KvmExitHandler, MmioReadAndWrite) {
  Harness h;
  auto& r = h.fake.run();
  r.exit_reason = KVM_EXIT_MMIO;
  r.mmio.phys_addr = 0xd0000000;
  r.mmio.len = 4;
  r.mmio.is_write = 0;
  std::memset(r.mmio.data, 0xee, 8);
  EXPECT_EQ(h.handle(), ExitOutcome::Continue);
  std::uint64_t v = 0;
  std::memcpy(&v, r.mmio.data, 8);
  EXPECT_EQ(v, 0x44332211u);  // only len bytes, the rest cleared
  r.mmio.is_write = 1;
  r.mmio.len = 8;
  const std::uint64_t w = 0x0102030405060708ull;
  std::memcpy(r.mmio.data, &w, 8);
  EXPECT_EQ(h.handle(), ExitOutcome::Continue);
  ASSERT_EQ(h.platform.mmio.size(), 2u);
  EXPECT_TRUE(h.platform.mmio[1].write);
  EXPECT_EQ(h.platform.mmio[1].value, w);
  EXPECT_EQ(h.platform.mmio[1].size, 8u);
  EXPECT_EQ(h.counters.mmio_read, 1u);
  EXPECT_EQ(h.counters.mmio_write, 1u);
  EXPECT_EQ(h.counters.apic_mmio, 0u);
}

TEST(KvmExitHandler, TprWritesThroughTheMmioApicAreCounted) {
  Harness h;
  auto& r = h.fake.run();
  r.exit_reason = KVM_EXIT_MMIO;
  r.mmio.phys_addr = 0xfee00080;
  r.mmio.len = 4;
  r.mmio.is_write = 1;
  for (int i = 0; i < 5; ++i) EXPECT_EQ(h.handle(), ExitOutcome::Continue);
  r.mmio.phys_addr = 0xfee000b0;  // EOI: APIC but not TPR
  EXPECT_EQ(h.handle(), ExitOutcome::Continue);
  EXPECT_EQ(h.counters.apic_tpr_write, 5u);
  EXPECT_EQ(h.counters.apic_mmio, 6u);
  const auto c = h.counters.to_counters();
  EXPECT_EQ(counter(c, "kvm.exit.apic_tpr_write"), 5u);
  EXPECT_EQ(counter(c, "kvm.exits"), 6u);
}

TEST(KvmExitHandler, HltIrqWindowShutdownAndErrors) {
  Harness h;
  auto& r = h.fake.run();
  r.exit_reason = KVM_EXIT_HLT;
  EXPECT_EQ(h.handle(), ExitOutcome::Halt);
  r.exit_reason = KVM_EXIT_IRQ_WINDOW_OPEN;
  EXPECT_EQ(h.handle(), ExitOutcome::Continue);
  r.exit_reason = KVM_EXIT_SHUTDOWN;
  EXPECT_EQ(h.handle(), ExitOutcome::Shutdown);
  EXPECT_NE(h.cx.reason.find("triple"), std::string::npos);
  r.exit_reason = KVM_EXIT_INTERNAL_ERROR;
  r.internal.suberror = KVM_INTERNAL_ERROR_EMULATION;
  r.internal.ndata = 2;
  r.internal.data[0] = 0xabc;
  r.internal.data[1] = 0x1;
  EXPECT_EQ(h.handle(), ExitOutcome::Error);
  EXPECT_NE(h.cx.reason.find("suberror 1 (instruction emulation failed); data 0xabc 0x1"), std::string::npos)
      << h.cx.reason;
  r.exit_reason = KVM_EXIT_FAIL_ENTRY;
  r.fail_entry.hardware_entry_failure_reason = 0x21;
  r.fail_entry.cpu = 3;
  EXPECT_EQ(h.handle(), ExitOutcome::Error);
  EXPECT_NE(h.cx.reason.find("0x21 on host cpu 3"), std::string::npos) << h.cx.reason;
  r.exit_reason = 999;
  EXPECT_EQ(h.handle(), ExitOutcome::Error);
  EXPECT_NE(h.cx.reason.find("unhandled KVM exit 999"), std::string::npos);
  EXPECT_EQ(h.counters.hlt, 1u);
  EXPECT_EQ(h.counters.irq_window_open, 1u);
  EXPECT_EQ(h.counters.shutdown, 1u);
  EXPECT_EQ(h.counters.internal_error, 1u);
  EXPECT_EQ(h.counters.fail_entry, 1u);
  EXPECT_EQ(h.counters.runs, 6u);
}

// The numbers a C program gets from <linux/kvm.h> (C++ gets others for these
// flexible-array structs; see kvm_abi.hpp).
TEST(KvmAbi, FlexibleArrayIoctlsUseTheCLayout) {
  EXPECT_EQ(kvm::abi::kGetMsrIndexList, 0xc004ae02ul);
  EXPECT_EQ(kvm::abi::kGetSupportedCpuid, 0xc008ae05ul);
  EXPECT_EQ(kvm::abi::kGetMsrs, 0xc008ae88ul);
  EXPECT_EQ(kvm::abi::kSetMsrs, 0x4008ae89ul);
  EXPECT_EQ(kvm::abi::kSetCpuid2, 0x4008ae90ul);
  EXPECT_EQ(kvm::abi::kSetSignalMask, 0x4004ae8bul);
  EXPECT_EQ(kvm::abi::kGetXsave, 0x9000aea4ul);
  EXPECT_EQ(kvm::abi::kSetXsave, 0x5000aea5ul);
  static_assert(sizeof(kvm_msr_entry) == 16 && sizeof(kvm_cpuid_entry2) == 40);
}

TEST(KvmState, RegistersMapByArchitecturalEncoding) {
  api::VcpuState s;
  for (unsigned i = 0; i < 16; ++i) s.gpr[i] = 0x100 + i;
  s.rip = 0x1234;
  s.rflags = 0x200;
  const kvm_regs r = kvm::regs_from_state(s);
  EXPECT_EQ(r.rax, 0x100u);
  EXPECT_EQ(r.rcx, 0x101u);
  EXPECT_EQ(r.rdx, 0x102u);
  EXPECT_EQ(r.rbx, 0x103u);
  EXPECT_EQ(r.rsp, 0x104u);
  EXPECT_EQ(r.rdi, 0x107u);
  EXPECT_EQ(r.r15, 0x10fu);
  EXPECT_EQ(r.rflags, 0x202u);
  api::VcpuState back;
  kvm::regs_to_state(r, back);
  EXPECT_EQ(back.gpr, s.gpr);
  EXPECT_EQ(back.rip, 0x1234u);
}

TEST(KvmState, SregsKeepHiddenSegmentParts) {
  api::VcpuState s;
  s.cs = {0x08, 0x12340000, 0xfffff, 0xb, true, 3, true, true, false, true, true, false};
  s.tr = {0x28, 0x5000, 0x67, 0xb, false, 0, true, false, false, false, false, false};
  s.ldtr.unusable = true;
  s.gdtr = {0x800, 0x27};
  s.idtr = {0x1000, 0x7ff};
  s.cr0 = 0x80000033;
  s.cr2 = 0xdeadb000;
  s.cr3 = 0x10000;
  s.cr4 = 0x610;
  s.cr8 = 5;
  s.efer = 0x500;
  const kvm_sregs k = kvm::sregs_from_state(s, 0xfee00900);
  EXPECT_EQ(k.apic_base, 0xfee00900u) << "the platform's APIC base, given apart from the vCPU state";
  for (auto w : k.interrupt_bitmap) EXPECT_EQ(w, 0u);
  EXPECT_EQ(k.cs.base, 0x12340000u);
  EXPECT_EQ(k.cs.dpl, 3);
  api::VcpuState back;
  kvm::sregs_to_state(k, back);
  EXPECT_EQ(back.cs.base, s.cs.base);
  EXPECT_EQ(back.cs.limit, s.cs.limit);
  EXPECT_EQ(back.cs.type, s.cs.type);
  EXPECT_EQ(back.cs.avl, true);
  EXPECT_EQ(back.cs.g, true);
  EXPECT_EQ(back.tr.s, false);
  EXPECT_TRUE(back.ldtr.unusable);
  EXPECT_EQ(back.idtr.limit, 0x7ff);
  EXPECT_EQ(back.cr2, s.cr2);
  EXPECT_EQ(back.cr8, 5u);
  EXPECT_EQ(back.efer, 0x500u);
}

TEST(KvmState, FpuAndXsaveRoundTripTheFxsaveImage) {
  api::FpuState f;
  for (std::size_t i = 0; i < f.fxsave.size(); ++i) f.fxsave[i] = static_cast<std::uint8_t>(i * 7);
  // kvm_fpu has no MXCSR_MASK and reserved bytes: only architectural fields survive.
  const kvm_fpu k = kvm::fpu_from_state(f);
  api::FpuState back;
  kvm::fpu_to_state(k, back);
  EXPECT_TRUE(std::equal(f.fxsave.begin(), f.fxsave.begin() + 4, back.fxsave.begin()));  // FCW FSW
  EXPECT_TRUE(std::equal(f.fxsave.begin() + 8, f.fxsave.begin() + 28, back.fxsave.begin() + 8));  // FIP FDP MXCSR
  EXPECT_TRUE(std::equal(f.fxsave.begin() + 32, f.fxsave.begin() + 416, back.fxsave.begin() + 32));  // ST, XMM

  f.xcr0 = 0x7;
  f.xsave_extended.assign(256, 0x5a);  // YMM_Hi128 of 16 registers
  auto xs = std::make_unique<kvm_xsave>(kvm::xsave_from_state(f, 0x7));
  std::uint64_t bv = 0;
  std::memcpy(&bv, reinterpret_cast<std::uint8_t*>(xs->region) + 512, 8);
  EXPECT_EQ(bv, 0x7u);
  api::FpuState x;
  kvm::xsave_to_state(*xs, 0x7, x);
  EXPECT_EQ(x.fxsave, f.fxsave);
  EXPECT_EQ(x.xcr0, 0x7u);
  EXPECT_EQ(x.xsave_extended.size(), f.xsave_extended.size());
  EXPECT_EQ(x.xsave_extended, f.xsave_extended);
  api::FpuState legacy_only;
  auto xs2 = std::make_unique<kvm_xsave>(kvm::xsave_from_state(legacy_only, 0x7));
  std::memcpy(&bv, reinterpret_cast<std::uint8_t*>(xs2->region) + 512, 8);
  EXPECT_EQ(bv, 0x3u);
}

TEST(KvmState, EventsRoundTrip) {
  api::PendingEvents e;
  e.exception = api::PendingException{14, true, 2, true};
  e.interrupt = 0x30;
  e.nmi_pending = true;
  e.nmi_masked = true;
  e.interrupt_shadow = true;
  const kvm_vcpu_events k = kvm::events_from_state(e);
  EXPECT_EQ(k.flags & KVM_VCPUEVENT_VALID_SHADOW, KVM_VCPUEVENT_VALID_SHADOW);
  api::PendingEvents back;
  kvm::events_to_state(k, back);
  ASSERT_TRUE(back.exception);
  EXPECT_EQ(back.exception->vector, 14);
  EXPECT_EQ(back.exception->error_code, 2u);
  EXPECT_EQ(back.interrupt, std::optional<std::uint8_t>(0x30));
  EXPECT_TRUE(back.nmi_pending);
  EXPECT_TRUE(back.nmi_masked);
  EXPECT_TRUE(back.interrupt_shadow);
}

TEST(KvmState, DumpNamesRegisters) {
  api::VcpuState s;
  s.gpr[api::gpr::rax] = 0xdead;
  s.rip = 0x4005;
  const std::string d = kvm::format_state(s);
  EXPECT_NE(d.find("RAX=000000000000dead"), std::string::npos) << d;
  EXPECT_NE(d.find("RIP=0000000000004005"), std::string::npos) << d;
  EXPECT_NE(d.find("CR0="), std::string::npos);
}

TEST(KvmCpuid, FilterHidesX2apicTscDeadlineNestingAndSetsHypervisorBit) {
  std::vector<kvm_cpuid_entry2> in(6);
  in[0].function = 1;
  in[0].ecx = (1u << 21) | (1u << 24) | (1u << 5) | 1u;
  in[0].ebx = 0xff000800;
  in[1].function = 0x40000000;
  in[1].eax = 0x40000010;
  in[2].function = 0x40000001;
  in[2].eax = 0x01007afb;  // clock, PV EOI, PV IPIs, async PF, steal time, ...
  in[2].edx = 1;
  in[3].function = 0x40000010;
  in[4].function = 0x80000001;
  in[4].ecx = 0x4 | 0x1;
  in[5].function = 0xb;
  const auto out = kvm::filter_cpuid(in, 2);
  ASSERT_EQ(out.size(), 5u);  // leaves above 0x40000001 removed
  EXPECT_EQ(out[0].ecx, (1u << 31) | 1u);
  EXPECT_EQ(out[0].ebx, 0x02000800u);
  EXPECT_EQ(out[1].eax, 0x40000001u);
  EXPECT_EQ(out[2].eax, 0x0100000bu);  // kvmclock (both MSR sets), stable bit, no-op io delay
  EXPECT_EQ(out[2].edx, 0u);
  EXPECT_EQ(out[3].ecx, 0x1u);
  EXPECT_EQ(out[4].edx, 2u);
}

TEST(KvmHypervisorOpen, RefusesKvmPvmWithoutOpeningIt) {
  const auto dir = std::filesystem::temp_directory_path() / ("modevisor-kvm-pvm-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir / "sys/kvm_pvm");
  std::ofstream(dir / "kvm").put('\n');
  try {
    kvm::KvmHypervisor::open(dir / "kvm", dir / "sys");
    FAIL() << "kvm_pvm accepted";
  } catch (const api::HypervisorError& e) {
    EXPECT_NE(std::string(e.what()).find("kvm_pvm"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

TEST(KvmHypervisorOpen, NamesAMissingDevice) {
  try {
    kvm::KvmHypervisor::open("/nonexistent/kvm", "/nonexistent/sys");
    FAIL();
  } catch (const api::HypervisorError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/kvm"), std::string::npos) << e.what();
  }
}

class FakeHypervisor : public api::Hypervisor {
 public:
  api::HypervisorInfo info_;
  api::HypervisorInfo info() const override { return info_; }
  std::unique_ptr<api::Vm> create_vm(api::GuestMemory&, unsigned, const api::CpuidTable&) override {
    throw api::HypervisorError("fake: KVM_CREATE_VM: out of memory");
  }
};

TEST(HvPlugins, RefuseTheOtherMmuNamingTheModuleParameter) {
  FakeHypervisor hv;
  hv.info_ = {"kvm_amd", false, api::MmuSelection::HostWide, "kvm_amd npt"};
  const std::string hw = hv::mmu_mismatch({"hv-hwmmu", "0.1.0", true}, hv.info_);
  EXPECT_NE(hw.find("kvm_amd npt=0"), std::string::npos) << hw;
  EXPECT_NE(hw.find("kvm_amd npt=1"), std::string::npos) << hw;
  EXPECT_TRUE(hv::mmu_mismatch({"hv-swmmu", "0.1.0", false}, hv.info_).empty());
  hv.info_.nested_paging = true;
  hv.info_.driver = "kvm_intel";
  hv.info_.mmu_parameter = "kvm_intel ept";
  const std::string sw = hv::mmu_mismatch({"hv-swmmu", "0.1.0", false}, hv.info_);
  EXPECT_NE(sw.find("kvm_intel ept=1"), std::string::npos) << sw;
  EXPECT_NE(sw.find("kvm_intel ept=0"), std::string::npos) << sw;
}

TEST(HvPlugins, CreateVmRefusalsAreMonitorErrors) {
  TestRam ram(1 << 20);
  TestPlatform pf;
  NullLogger log;
  api::VmSpec spec;
  spec.name = "t";
  try {
    hv::create_hv_vm({"hv-hwmmu", "0.1.0", true}, spec, api::VmServices{ram, pf, log});
    FAIL();
  } catch (const api::MonitorError& e) {
    EXPECT_NE(std::string(e.what()).find("no usable /dev/kvm"), std::string::npos) << e.what();
  }
  FakeHypervisor hv;
  hv.info_ = {"kvm_amd", true, api::MmuSelection::HostWide, "kvm_amd npt"};
  try {
    hv::create_hv_vm({"hv-hwmmu", "0.1.0", true}, spec, api::VmServices{ram, pf, log, &hv});
    FAIL();
  } catch (const api::MonitorError& e) {
    EXPECT_NE(std::string(e.what()).find("KVM_CREATE_VM: out of memory"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace modevisor::test

namespace modevisor::test {
namespace {

TEST(KvmCpuid, AModelIsPresentedAsWrittenWithOnlySupportedFeatures) {
  std::vector<kvm_cpuid_entry2> supported(2);
  supported[0].function = 1;
  supported[0].ecx = 1u << 0;                 // SSE3 only, no AVX
  supported[0].edx = 0xffffffff;
  supported[1].function = 0x80000001;
  supported[1].edx = 1u << 20;
  api::CpuidLeaf vendor;  // leaf 0: copied as written
  vendor.eax = 1;
  vendor.ebx = 0x756e6547;
  api::CpuidLeaf basic;
  basic.function = 1;
  basic.eax = 0x6f1;
  basic.ebx = 0x00010800;
  basic.ecx = (1u << 0) | (1u << 28) | (1u << 31);  // SSE3, AVX, hypervisor
  basic.edx = 0x0781ab79;
  api::CpuidLeaf ext;
  ext.function = 0x80000001;
  ext.edx = (1u << 20) | (1u << 29);  // NX, LM
  const api::CpuidTable model{vendor, basic, ext};
  const auto out = kvm::model_cpuid(supported, model, 3);
  ASSERT_EQ(out.size(), 3u) << "exactly the model's leaves";
  EXPECT_EQ(out[0].eax, 1u);
  EXPECT_EQ(out[0].ebx, 0x756e6547u);
  EXPECT_EQ(out[1].eax, 0x6f1u);
  EXPECT_EQ(out[1].ebx, 0x03010800u) << "APIC ID of vCPU 3";
  EXPECT_EQ(out[1].ecx, (1u << 0) | (1u << 31)) << "AVX hidden, hypervisor bit kept";
  EXPECT_EQ(out[1].edx, 0x0781ab79u);
  EXPECT_EQ(out[2].edx, 1u << 20) << "LM hidden";
  EXPECT_EQ(kvm::cpuid_model_gaps(supported, model),
            (std::vector<std::string>{"leaf 0x1 ecx bit 28", "leaf 0x80000001 edx bit 29"}));
}

}  // namespace
}  // namespace modevisor::test
