#include "kvm_test_support.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <system_error>

#include "capabilities/probe.hpp"
#include "kernel-driver/kvm_hypervisor.hpp"
#include "plugins/registry.hpp"

namespace modevisor::test {

std::uint64_t TestPlatform::now_ns() const {
  static const auto t0 = std::chrono::steady_clock::now();
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count());
}

TestRam::TestRam(std::uint64_t bytes) : size_(bytes) {
  fd_ = ::memfd_create("modevisor-test-ram", MFD_CLOEXEC);
  if (fd_ < 0 || ::ftruncate(fd_, static_cast<off_t>(bytes)) < 0) throw std::system_error(errno, std::generic_category(), "memfd");
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap");
  base_ = static_cast<std::uint8_t*>(p);
}

TestRam::~TestRam() {
  if (base_) ::munmap(base_, size_);
  if (fd_ >= 0) ::close(fd_);
}

namespace {
api::Segment flat(std::uint16_t selector, std::uint8_t type, bool code32) {
  api::Segment s;
  s.selector = selector;
  s.base = 0;
  s.limit = 0xffffffff;
  s.type = type;
  s.s = true;
  s.present = true;
  s.db = code32;
  s.g = true;
  return s;
}
api::Segment real(std::uint8_t type) {
  api::Segment s;
  s.limit = 0xffff;
  s.type = type;
  s.s = true;
  s.present = true;
  return s;
}
}  // namespace

void set_real_mode(api::VcpuState& s, std::uint64_t rip) {
  s.cs = real(0xb);
  s.ds = s.es = s.fs = s.gs = s.ss = real(0x3);
  s.rip = rip;
  s.gpr[api::gpr::rsp] = 0x8000;
  s.rflags = 0x2;
}

void write_gdt(TestRam& ram) {
  auto* gdt = &ram.at<std::uint64_t>(kGdtBase);
  gdt[0] = 0;
  gdt[1] = 0x00cf9b000000ffffull;  // 0x08 code, ring 0
  gdt[2] = 0x00cf93000000ffffull;  // 0x10 data, ring 0
}

void write_idt(TestRam& ram, const std::vector<std::pair<unsigned, std::uint32_t>>& gates) {
  auto* idt = &ram.at<std::uint32_t>(kIdtBase);
  std::memset(idt, 0, 256 * 8);
  for (const auto& [vector, handler] : gates) {
    idt[vector * 2] = (0x08u << 16) | (handler & 0xffff);
    idt[vector * 2 + 1] = (handler & 0xffff0000u) | 0x8e00;  // present, DPL 0, 32-bit interrupt gate
  }
}

void write_page_tables(TestRam& ram, std::uint64_t absent_from, std::uint64_t absent_to) {
  auto* pd = &ram.at<std::uint32_t>(kPageDir);
  auto* pt = &ram.at<std::uint32_t>(kPageTable);
  std::memset(pd, 0, 4096);
  pd[0] = static_cast<std::uint32_t>(kPageTable) | 0x3;
  pd[0xfec00000u >> 22] = 0xfec00000u | 0x83 | 0x10;  // PSE, RW, present, PCD
  for (std::uint32_t i = 0; i < 1024; ++i) {
    const std::uint64_t addr = std::uint64_t{i} << 12;
    pt[i] = static_cast<std::uint32_t>(addr) | ((addr >= absent_from && addr < absent_to) ? 0x2 : 0x3);
  }
}

void set_flat_protected_mode(api::VcpuState& s, std::uint64_t rip, bool paging, TestRam& ram) {
  write_gdt(ram);
  s.cs = flat(0x08, 0xb, true);
  s.ds = s.es = s.fs = s.gs = s.ss = flat(0x10, 0x3, true);
  s.gdtr = {kGdtBase, 3 * 8 - 1};
  s.idtr = {kIdtBase, 256 * 8 - 1};
  s.cr0 = 0x33;          // PE | MP | ET | NE
  s.cr4 = 0x600 | 0x10;  // OSFXSR | OSXMMEXCPT | PSE
  if (paging) {
    s.cr0 |= 0x80000000u;
    s.cr3 = kPageDir;
  }
  s.efer = 0;
  s.rip = rip;
  s.gpr[api::gpr::rsp] = kStackTop;
  s.rflags = 0x2;
}

std::uint64_t counter(const api::Counters& c, const std::string& name) {
  for (const auto& [n, v] : c)
    if (n == name) return v;
  return 0;
}

KvmEnvironment& kvm_environment() {
  static KvmEnvironment env = [] {
    KvmEnvironment e;
    const api::HostCapabilities caps = host::probe_host();
    if (!caps.driver.usable) {
      e.skip_reason = "no usable KVM on this host (" + caps.driver.name + "): " + caps.driver.detail;
      return e;
    }
    try {
      e.hypervisor = kvm::KvmHypervisor::open();
    } catch (const api::HypervisorError& x) {
      e.error = std::string("the probe calls KVM usable, but opening it failed: ") + x.what();
      return e;
    }
    const auto info = e.hypervisor->info();
    e.plugin_name = info.nested_paging ? "hv-hwmmu" : "hv-swmmu";
    e.other_plugin = info.nested_paging ? "hv-swmmu" : "hv-hwmmu";
    static host::PluginRegistry registry({MODEVISOR_PLUGIN_DIR});
    registry.rescan();
    const auto* p = registry.find(e.plugin_name);
    const auto* o = registry.find(e.other_plugin);
    if (!p || !o) {
      e.error = "plugins " + e.plugin_name + "/" + e.other_plugin + " not found in " MODEVISOR_PLUGIN_DIR;
      return e;
    }
    e.monitor = p->monitor;
    e.other_monitor = o->monitor;
    e.mode_line = "KVM driver " + info.driver + ", " + info.mmu_parameter + "=" + (info.nested_paging ? "1" : "0") +
                  " -> plugin " + e.plugin_name;
    std::printf("[kvm] %s\n", e.mode_line.c_str());
    return e;
  }();
  static const bool required = [] {
    // Set where KVM must work (the test host): a skip would hide a failure.
    if (std::getenv("MODEVISOR_KVM_REQUIRED") && !env.skip_reason.empty()) {
      env.error = "MODEVISOR_KVM_REQUIRED is set but " + env.skip_reason;
      env.skip_reason.clear();
    }
    return true;
  }();
  (void)required;
  return env;
}

}  // namespace modevisor::test
