// What the KVM integration tests share: a scripted test Platform, guest setup
// helpers (flat segments, page tables, IDT) and the KVM/plugin environment.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <condition_variable>
#include <map>
#include <mutex>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <modevisor/api/hypervisor.hpp>
#include <modevisor/api/monitor.hpp>

#include "guest_blobs.hpp"

namespace modevisor::test {

struct MmioAccess {
  bool write;
  std::uint64_t gpa;
  unsigned size;
  std::uint64_t value;
};

class TestPlatform : public api::Platform {
 public:
  std::vector<std::pair<std::uint16_t, std::uint32_t>> outs;  // port, value
  std::map<unsigned, std::vector<std::uint32_t>> outs_by_vcpu;  // values written to port 0x15, by vCPU
  int vcpus_to_halt = 1;  // the run ends once this many vCPUs wait in HLT with nothing to raise
  std::map<std::uint16_t, unsigned> ins;                      // port -> count
  std::vector<MmioAccess> mmio;
  std::function<void(std::uint16_t, std::uint32_t)> on_out;   // called after recording
  std::function<void(std::uint16_t)> on_in;
  std::uint8_t port13_next = 0xa0;
  std::uint64_t mmio_read_value = 0x8877665544332211ull;
  int halts = 0;
  int cpu_event_waits = 0;     // HLTs with IF=0 (wait_for_cpu_event)
  int interrupts_to_raise = 0;   // raised one by one from wait_for_interrupt
  int nmis_to_raise = 0;         // likewise, NMIs (before any interrupt)
  std::uint8_t vector = 0x30;
  std::uint64_t deadline_ns = UINT64_MAX;  // a device timer: raises `vector` once due
  int acks = 0;
  std::atomic<bool> stop{false};
  std::atomic<bool> nmi{false};   // an NMI is pending (the monitor takes it)
  std::atomic<bool> init{false};  // an INIT is pending (the run loop must return)
  std::atomic<int> nmis_taken{0};

  std::uint32_t io_in(unsigned, std::uint16_t port, unsigned size) override {
    std::lock_guard lock(mutex_);
    ++ins[port];
    if (on_in) on_in(port);
    switch (port) {
      case 0x11: return 0x5a;
      case 0x13: return port13_next++;
      case 0x16: return 7;
      default: return size == 4 ? 0xffffffffu : (1u << (size * 8)) - 1;
    }
  }
  void io_out(unsigned vcpu, std::uint16_t port, unsigned, std::uint32_t value) override {
    std::lock_guard lock(mutex_);
    outs.emplace_back(port, value);
    if (port == 0x15) outs_by_vcpu[vcpu].push_back(value);
    if (on_out) on_out(port, value);
  }
  std::uint64_t mmio_read(unsigned, std::uint64_t gpa, unsigned size) override {
    const std::uint64_t v = size == 8 ? mmio_read_value : mmio_read_value & ((1ull << (size * 8)) - 1);
    mmio.push_back({false, gpa, size, v});
    return v;
  }
  void mmio_write(unsigned, std::uint64_t gpa, unsigned size, std::uint64_t value) override {
    mmio.push_back({true, gpa, size, value});
  }
  bool interrupt_pending(unsigned) override {
    if (deadline_ns != UINT64_MAX && now_ns() >= deadline_ns) {
      deadline_ns = UINT64_MAX;
      raised_ = true;
    }
    return raised_;
  }
  std::uint8_t acknowledge_interrupt(unsigned) override {
    raised_ = false;
    ++acks;
    return vector;
  }
  void wait_for_interrupt(unsigned) override {
    std::unique_lock lock(mutex_);
    ++halts;
    if (nmis_to_raise > 0) {
      --nmis_to_raise;
      nmi = true;
    } else if (interrupts_to_raise > 0) {
      --interrupts_to_raise;
      raised_ = true;
    } else if (++idle_ >= vcpus_to_halt) {
      stop = true;  // nothing will ever wake the guest: end the run
      idle_cv_.notify_all();
    } else {
      idle_cv_.wait(lock, [&] { return stop.load(); });
    }
  }
  // HLT with IF=0: raises a pending NMI if the test asked for one, else
  // nothing can wake the vCPU and, like the host's Machine, ends the run.
  void wait_for_cpu_event(unsigned) override {
    std::unique_lock lock(mutex_);
    ++cpu_event_waits;
    if (nmis_to_raise > 0) {
      --nmis_to_raise;
      nmi = true;
    } else if (++idle_ >= vcpus_to_halt) {
      stop = true;
      idle_cv_.notify_all();
    } else {
      idle_cv_.wait(lock, [&] { return stop.load(); });
    }
  }
  api::CpuEvents cpu_events(unsigned) override {
    api::CpuEvents e;
    e.nmi = nmi.load();
    e.init = init.load();
    return e;
  }
  std::uint64_t apic_base(unsigned vcpu) override {
    std::lock_guard lock(mutex_);
    auto it = apic_bases.find(vcpu);
    return it != apic_bases.end() ? it->second : 0xfee00000u | (vcpu == 0 ? 0x900u : 0x800u);
  }
  void set_apic_base(unsigned vcpu, std::uint64_t value) override {
    std::lock_guard lock(mutex_);
    apic_bases[vcpu] = value;
  }
  std::map<unsigned, std::uint64_t> apic_bases;  // IA32_APIC_BASE by vCPU, once set

  bool acknowledge_nmi(unsigned) override {
    if (!nmi.exchange(false)) return false;
    ++nmis_taken;
    return true;
  }
  bool stop_requested() const override { return stop.load(); }
  std::uint64_t now_ns() const override;
  std::uint64_t next_timer_deadline_ns() override { return deadline_ns; }

  void raise() { raised_ = true; }  // an interrupt controller asserts `vector`

  std::vector<std::uint32_t> values_on(std::uint16_t port) const {
    std::vector<std::uint32_t> v;
    for (const auto& [p, value] : outs)
      if (p == port) v.push_back(value);
    return v;
  }

 private:
  std::atomic<bool> raised_{false};
  int idle_ = 0;
  std::mutex mutex_;
  std::condition_variable idle_cv_;
};

class NullLogger : public api::Logger {
 public:
  void log(api::LogLevel, std::string_view) override {}
};

// Guest RAM for tests: a memfd, like the host's GuestRam.
class TestRam : public api::GuestMemory {
 public:
  explicit TestRam(std::uint64_t bytes);
  ~TestRam() override;
  std::uint8_t* host_base() override { return base_; }
  std::uint64_t size() const override { return size_; }
  int fd() const override { return fd_; }
  void mark_dirty(std::uint64_t, std::uint64_t) override {}

  template <typename T>
  T& at(std::uint64_t gpa) { return *reinterpret_cast<T*>(base_ + gpa); }
  void load(std::uint64_t gpa, std::span<const unsigned char> bytes) { std::memcpy(base_ + gpa, bytes.data(), bytes.size()); }

 private:
  int fd_ = -1;
  std::uint8_t* base_ = nullptr;
  std::uint64_t size_ = 0;
};

// Segment/CR setup on top of a vCPU's reset state.
void set_real_mode(api::VcpuState& s, std::uint64_t rip);
void set_flat_protected_mode(api::VcpuState& s, std::uint64_t rip, bool paging, TestRam& ram);
// GDT at kGdtBase (flat ring-0 code 0x08, data 0x10); IDT at kIdtBase with
// 32-bit interrupt gates for the given (vector, handler) pairs, limit covering 256 vectors.
void write_gdt(TestRam& ram);
void write_idt(TestRam& ram, const std::vector<std::pair<unsigned, std::uint32_t>>& gates);
// Page directory at kPageDir: PDE 0 -> page table at kPageTable, identity map
// of the first 4 MiB (pages in [absent_from, absent_to) not present), plus a
// 4 MiB PSE identity page at 0xfec00000 for the APIC.
void write_page_tables(TestRam& ram, std::uint64_t absent_from = 0, std::uint64_t absent_to = 0);

struct KvmEnvironment {
  std::string skip_reason;  // non-empty: no usable KVM here
  std::string error;        // non-empty: the probe says usable, yet the driver bridge failed
  std::unique_ptr<api::Hypervisor> hypervisor;
  std::string plugin_name;  // hv-hwmmu (nested paging) or hv-swmmu (shadow), by the driver's MMU
  std::string other_plugin;
  std::shared_ptr<api::Monitor> monitor;
  std::shared_ptr<api::Monitor> other_monitor;
  std::string mode_line;  // for the log: which driver, MMU and plugin
};
KvmEnvironment& kvm_environment();

std::uint64_t counter(const api::Counters& c, const std::string& name);

}  // namespace modevisor::test
