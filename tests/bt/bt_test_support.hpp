// Test doubles for the BT engine: guest RAM in a memfd, a platform that
// records port I/O, and helpers to build flat 32-bit protected-mode state.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <stdexcept>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <modevisor/api/arch_state.hpp>
#include <modevisor/api/guest_memory.hpp>
#include <modevisor/api/platform.hpp>

namespace bttest {

using namespace modevisor::api;

class MemfdMemory final : public GuestMemory {
 public:
  explicit MemfdMemory(std::uint64_t size) : size_(size) {
    fd_ = memfd_create("bt-test-ram", MFD_CLOEXEC);
    if (fd_ < 0 || ftruncate(fd_, static_cast<off_t>(size)) != 0) throw std::runtime_error("memfd");
    base_ = static_cast<std::uint8_t*>(mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0));
    if (base_ == MAP_FAILED) throw std::runtime_error("mmap");
  }
  ~MemfdMemory() override {
    munmap(base_, size_);
    close(fd_);
  }
  std::uint8_t* host_base() override { return base_; }
  std::uint64_t size() const override { return size_; }
  int fd() const override { return fd_; }
  void mark_dirty(std::uint64_t, std::uint64_t) override {}

  void load(std::uint64_t gpa, const void* data, std::size_t n) { std::memcpy(base_ + gpa, data, n); }
  std::uint32_t r32(std::uint64_t gpa) const {
    std::uint32_t v;
    std::memcpy(&v, base_ + gpa, 4);
    return v;
  }
  void w32(std::uint64_t gpa, std::uint32_t v) { std::memcpy(base_ + gpa, &v, 4); }

 private:
  std::uint64_t size_;
  int fd_ = -1;
  std::uint8_t* base_ = nullptr;
};

class NullLogger final : public Logger {
 public:
  void log(LogLevel, std::string_view m) override {
    lines.emplace_back(m);
    if (std::getenv("MODEVISOR_BT_TRACE")) std::fprintf(stderr, "[bt] %.*s\n", int(m.size()), m.data());
  }
  std::vector<std::string> lines;
};

// Port 0x3f8: bytes appended to `serial`.  Port 0xf4: exit (stop requested).
// Port 0x80: values recorded in `post`.  Port 0x81: raise an interrupt (the
// value is its vector); port 0x82: raise an NMI.  MMIO: a 4 KiB scratch device at 0xf0000000.
class FakePlatform final : public Platform {
 public:
  std::string serial;
  std::vector<std::uint32_t> post;
  std::vector<std::pair<std::uint16_t, std::uint32_t>> outs;
  std::uint32_t in_value = 0x12345678;
  bool stop = false;
  int exit_code = -1;
  std::deque<std::uint8_t> irqs;
  std::uint32_t mmio[1024] = {};
  std::vector<std::pair<std::uint64_t, std::uint64_t>> mmio_writes;
  std::function<void()> on_wait;
  void* crash_target = nullptr;

  std::uint32_t io_in(unsigned, std::uint16_t port, unsigned size) override {
    if (port == 0x3fd) return 0x20;  // UART LSR: transmitter empty
    return size == 4 ? in_value : in_value & ((1u << (8 * size)) - 1);
  }
  void io_out(unsigned, std::uint16_t port, unsigned, std::uint32_t v) override {
    outs.emplace_back(port, v);
    if (port == 0x3f8) serial.push_back(static_cast<char>(v));
    if (port == 0x80) post.push_back(v);
    if (port == 0x81) irqs.push_back(static_cast<std::uint8_t>(v));  // raise an interrupt
    if (port == 0x82) nmi = true;  // raise an NMI
    if (port == 0x99) *static_cast<volatile int*>(crash_target) = 1;  // a "host bug"
    if (port == 0xf4) {
      exit_code = static_cast<int>(v);
      stop = true;
    }
  }
  std::uint64_t mmio_read(unsigned, std::uint64_t gpa, unsigned size) override {
    if (gpa >= 0xf0000000 && gpa + size <= 0xf0001000) {
      std::uint64_t v = 0;
      std::memcpy(&v, reinterpret_cast<std::uint8_t*>(mmio) + (gpa - 0xf0000000), size);
      return v;
    }
    return ~0ull >> (64 - 8 * size);
  }
  void mmio_write(unsigned, std::uint64_t gpa, unsigned size, std::uint64_t v) override {
    mmio_writes.emplace_back(gpa, v);
    if (gpa >= 0xf0000000 && gpa + size <= 0xf0001000)
      std::memcpy(reinterpret_cast<std::uint8_t*>(mmio) + (gpa - 0xf0000000), &v, size);
  }
  std::atomic<int> async_irq{-1};  // raised from another thread
  bool interrupt_pending(unsigned) override { return !irqs.empty() || async_irq.load() >= 0; }
  std::uint8_t acknowledge_interrupt(unsigned) override {
    if (irqs.empty()) return static_cast<std::uint8_t>(async_irq.exchange(-1));
    std::uint8_t v = irqs.front();
    irqs.pop_front();
    return v;
  }
  void wait_for_interrupt(unsigned) override {
    if (on_wait) on_wait();
    if (irqs.empty()) stop = true;  // nothing will ever come: end the test
  }
  int cpu_event_waits = 0;
  void wait_for_cpu_event(unsigned) override {
    ++cpu_event_waits;
    if (on_wait) on_wait();
    if (!nmi) stop = true;  // only an NMI could wake it: end the test
  }
  bool nmi = false;  // an NMI is pending (the monitor takes it)
  int nmis_taken = 0;
  CpuEvents cpu_events(unsigned) override {
    CpuEvents e;
    e.nmi = nmi;
    return e;
  }
  // The local APIC's base MSR is the platform's (api::Platform::apic_base).
  std::uint64_t apic_base(unsigned vcpu) override { return apic_base_msr.value_or(vcpu == 0 ? 0xfee00900u : 0xfee00800u); }
  void set_apic_base(unsigned, std::uint64_t value) override { apic_base_msr = value; }
  std::optional<std::uint64_t> apic_base_msr;
  bool acknowledge_nmi(unsigned) override {
    if (!nmi) return false;
    nmi = false;
    ++nmis_taken;
    return true;
  }
  bool stop_requested() const override { return stop; }
  std::uint64_t now_ns() const override { return 0; }
  std::uint64_t deadline = ~0ull;
  int deadline_queries = 0;
  std::uint64_t next_timer_deadline_ns() override {
    ++deadline_queries;
    return deadline;
  }
};

inline Segment flat_segment(std::uint16_t sel, bool code, unsigned dpl = 0) {
  Segment s;
  s.selector = sel;
  s.base = 0;
  s.limit = 0xffffffff;
  s.type = code ? 0xb : 0x3;
  s.s = true;
  s.dpl = static_cast<std::uint8_t>(dpl);
  s.present = true;
  s.db = true;
  s.g = true;
  return s;
}

// The state the host hands over for a multiboot kernel.
inline VcpuState multiboot_state(std::uint32_t entry) {
  VcpuState s;
  s.rip = entry;
  s.rflags = 0x2;
  s.cs = flat_segment(0x08, true);
  s.ds = s.es = s.fs = s.gs = s.ss = flat_segment(0x10, false);
  s.cr0 = 0x11;
  s.gpr[gpr::rax] = 0x2badb002;
  s.gpr[gpr::rbx] = 0x9000;
  s.gpr[gpr::rsp] = 0x80000;
  s.tr.type = 0xb;
  s.tr.present = true;
  s.tr.limit = 0x67;
  s.ldtr.unusable = true;
  s.gdtr.limit = 0xffff;
  return s;
}

}  // namespace bttest

// Embed a 32-bit guest program assembled by GNU as.  Inside `body`, BASE is
// the guest address the program is loaded at; refer to a label L as
// (BASE + L - NAME_start).
#define BT_GUEST_PROGRAM(name, base, body)                                                        \
  asm(".pushsection .rodata.btguest." #name ",\"a\"\n"                                           \
      ".globl " #name "_start\n" #name "_start:\n"                                                 \
      ".code32\n.intel_syntax noprefix\n.set BASE, " #base "\n" body                               \
      "\n.att_syntax prefix\n.code64\n"                                                           \
      ".globl " #name "_end\n" #name "_end:\n.popsection\n");                                    \
  extern "C" const unsigned char name##_start[], name##_end[];
