// The BT-swMMU engine against random guest code and random page tables: one
// VM per input (4 MiB of RAM, one vCPU, a scratch MMIO device), run until the
// guest stops, shuts down, errs or spends its budget.  Checked:
//   - no host crash and no sanitizer report in the monitor;
//   - no "host signal in monitor code" (the engine turns a host fault in its
//     own code into an Error exit; for the fuzzer that is a crash);
//   - no host access outside guest RAM and the engine's own structures: the
//     engine object sits between two 320 MiB untouched reservations (more
//     than a bit-test's +-256 MiB reach from a stand-in buffer), and its slack
//     bytes hold canaries; any page of the reservations that became resident,
//     or a changed canary, is a write (or read) the engine must not make.
//     Guest RAM has guard regions of its own (fuzz::GuardedRam).
//
// Input: a 42-byte header (see Header), code_len bytes of guest code loaded
// at 1 MiB, then page-table patches of 6 bytes each (u16 slot, u32 value)
// written over the identity-mapped tables the header asks for.
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "vcpu.hpp"

using namespace modevisor;
using modevisor::bt::Vcpu;

namespace {

constexpr std::uint64_t kRam = 4u << 20;
constexpr std::uint32_t kGdt = 0x1000, kIdt = 0x2000, kTss = 0x3000;
constexpr std::uint32_t kTables = 0x10000, kTablesEnd = 0x23000;  // PD/PDPT and PTs, patchable
constexpr std::uint32_t kCode = 0x100000, kCodeMax = 0x2000, kStack = 0x80000;
constexpr std::uint64_t kMmio = 0xf0000000;

enum Flags : std::uint8_t {
  kPaging = 1, kPae = 2, kPse = 4, kWp = 8, kUser = 16, kNxe = 32, kIf = 64,
};

struct Header {
  std::uint8_t flags = 0;
  std::uint8_t irq = 0;          // a vector raised once after a few dispatches (0: none)
  std::uint16_t handler = 0;     // every IDT gate points at kCode + handler % kCodeMax
  std::uint16_t code_len = 0;
  std::uint32_t gpr[8] = {};     // EAX..EDI (ESP 0: kStack)
  std::uint32_t eflags = 0;
};
constexpr std::size_t kHeaderBytes = 42;

class QuietLogger final : public api::Logger {
 public:
  void log(api::LogLevel, std::string_view) override {}
};

// Ports: 0xf4 stops the VM; everything else reads a pattern.  MMIO: a 4 KiB
// scratch device at kMmio, all-ones elsewhere.  The run ends when the guest
// waits for an interrupt that will not come, after 4096 dispatcher passes, or
// after 8 ms of wall time (the engine polls at every pass and at least every
// millisecond).
class FuzzPlatform final : public api::Platform {
 public:
  explicit FuzzPlatform(std::uint8_t irq) : irq_(irq) {}
  std::uint32_t io_in(unsigned, std::uint16_t port, unsigned size) override {
    const std::uint32_t v = 0x5a5a5a5au ^ port;
    return size == 4 ? v : v & ((1u << (8 * size)) - 1);
  }
  void io_out(unsigned, std::uint16_t port, unsigned, std::uint32_t) override {
    if (port == 0xf4) stop_ = true;
  }
  std::uint64_t mmio_read(unsigned, std::uint64_t gpa, unsigned size) override {
    check_size(size);
    if (gpa >= kMmio && gpa + size <= kMmio + sizeof device_) {
      std::uint64_t v = 0;
      std::memcpy(&v, device_ + (gpa - kMmio), size);
      return v;
    }
    return ~0ull >> (64 - 8 * size);
  }
  void mmio_write(unsigned, std::uint64_t gpa, unsigned size, std::uint64_t v) override {
    check_size(size);
    if (gpa >= kMmio && gpa + size <= kMmio + sizeof device_) std::memcpy(device_ + (gpa - kMmio), &v, size);
  }
  // The APIC base MSR is the platform's: a guest may write it, reads see it.
  std::uint64_t apic_base(unsigned) override { return apic_base_; }
  void set_apic_base(unsigned, std::uint64_t value) override { apic_base_ = value; }
  bool interrupt_pending(unsigned) override { return irq_ != 0 && passes_ > 8; }
  std::uint8_t acknowledge_interrupt(unsigned) override {
    const std::uint8_t v = irq_;
    irq_ = 0;
    return v;
  }
  void wait_for_interrupt(unsigned) override {
    if (irq_ == 0) stop_ = true;
  }
  void wait_for_cpu_event(unsigned) override { stop_ = true; }
  api::CpuEvents cpu_events(unsigned) override { return {}; }
  bool acknowledge_nmi(unsigned) override { return false; }
  bool stop_requested() const override {
    return stop_ || ++passes_ > 4096 || std::chrono::steady_clock::now() > deadline_;
  }
  std::uint64_t now_ns() const override { return 0; }
  std::uint64_t next_timer_deadline_ns() override { return ~0ull; }

 private:
  // The API promises sizes 1, 2, 4 or 8 to devices.
  static void check_size(unsigned size) {
    if (size != 1 && size != 2 && size != 4 && size != 8) {
      std::fprintf(stderr, "fuzz_bt: MMIO access of %u bytes reached the platform\n", size);
      std::abort();
    }
  }
  std::uint8_t irq_;
  bool stop_ = false;
  mutable unsigned passes_ = 0;
  std::chrono::steady_clock::time_point deadline_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(8);
  std::uint8_t device_[4096] = {};
  std::uint64_t apic_base_ = 0xfee00900u;
};

// The engine object between two untouched reservations (see the top).
class EngineArena {
 public:
  static constexpr std::size_t kSide = 320u << 20;
  static constexpr std::size_t kMiddle = (sizeof(Vcpu) + 4096 + 4095) & ~std::size_t{4095};
  static constexpr std::uint8_t kCanary = 0xc7;

  EngineArena() {
    void* p = ::mmap(nullptr, 2 * kSide + kMiddle, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
    if (p == MAP_FAILED) std::abort();
    base_ = static_cast<std::uint8_t*>(p);
    middle_ = base_ + kSide;
    std::memset(middle_, kCanary, kMiddle);
    residency_.resize((2 * kSide + kMiddle) / 4096);
  }
  ~EngineArena() { ::munmap(base_, 2 * kSide + kMiddle); }
  // The object starts 2 KiB into the middle pages: canaries on both sides.
  void* slot() { return middle_ + 2048; }

  // Aborts, saying where, when a page of a side reservation is resident or a
  // canary changed.  Call after the engine object is destroyed.
  void check() {
    if (::mincore(base_, 2 * kSide + kMiddle, residency_.data()) != 0) std::abort();
    const std::size_t middle_first = kSide / 4096, middle_end = middle_first + kMiddle / 4096;
    for (std::size_t i = 0; i < residency_.size(); ++i) {
      if (i >= middle_first && i < middle_end) continue;
      if (residency_[i] & 1) {
        const long offset = static_cast<long>(i * 4096) - static_cast<long>(kSide + 2048);
        std::fprintf(stderr, "fuzz_bt: host memory %+ld bytes from the engine object was touched\n", offset);
        std::abort();
      }
    }
    for (std::size_t i = 0; i < kMiddle; ++i) {
      const bool in_object = i >= 2048 && i < 2048 + sizeof(Vcpu);
      if (!in_object && middle_[i] != kCanary) {
        std::fprintf(stderr, "fuzz_bt: canary %+ld bytes from the engine object changed\n",
                     static_cast<long>(i) - 2048);
        std::abort();
      }
    }
  }
  // Restore the object's bytes to canaries for the next input.
  void reset() { std::memset(middle_, kCanary, kMiddle); }

 private:
  std::uint8_t* base_ = nullptr;
  std::uint8_t* middle_ = nullptr;
  std::vector<unsigned char> residency_;
};

void w32(api::GuestMemory& m, std::uint64_t gpa, std::uint32_t v) { std::memcpy(m.host_base() + gpa, &v, 4); }
void w64(api::GuestMemory& m, std::uint64_t gpa, std::uint64_t v) { std::memcpy(m.host_base() + gpa, &v, 8); }

api::Segment flat(std::uint16_t sel, bool code, unsigned dpl) {
  api::Segment s;
  s.selector = sel;
  s.limit = 0xffffffff;
  s.type = code ? 0xb : 0x3;
  s.s = true;
  s.dpl = static_cast<std::uint8_t>(dpl);
  s.present = true;
  s.db = true;
  s.g = true;
  return s;
}

// GDT (null, code0, data0, code3, data3, TSS), IDT, TSS and the page tables.
void build_machine(api::GuestMemory& m, const Header& h) {
  std::memset(m.host_base(), 0, m.size());  // every input starts from the same RAM
  const std::uint64_t gdt[6] = {0, 0x00cf9a000000ffffull, 0x00cf92000000ffffull, 0x00cffa000000ffffull,
                                0x00cff2000000ffffull, 0x0000890000000067ull | (std::uint64_t{kTss} << 16)};
  std::memcpy(m.host_base() + kGdt, gdt, sizeof gdt);
  const std::uint32_t handler = kCode + h.handler % kCodeMax;
  for (unsigned v = 0; v < 256; ++v) {
    const std::uint64_t gate = (handler & 0xffff) | (0x08ull << 16) | (std::uint64_t{0xee} << 40) |
                               (std::uint64_t{handler >> 16} << 48);  // DPL 3 interrupt gate
    w64(m, kIdt + 8 * v, gate);
  }
  w32(m, kTss + 4, 0x70000);  // esp0
  w32(m, kTss + 8, 0x10);     // ss0
  if (!(h.flags & kPae)) {    // 32-bit paging: PD at kTables
    w32(m, kTables + 0, 0x20000 | 7);
    w32(m, kTables + 4 * (kMmio >> 22), 0x21000 | 7);
    for (std::uint32_t i = 0; i < 1024; ++i) w32(m, 0x20000 + 4 * i, (i << 12) | 7);
    w32(m, 0x21000, static_cast<std::uint32_t>(kMmio) | 0x1f);
  } else {  // PAE: PDPT at kTables, PDs at +0x1000 (0-1 GiB) and +0x2000 (3-4 GiB)
    w64(m, kTables + 0, (kTables + 0x1000) | 1);
    w64(m, kTables + 24, (kTables + 0x2000) | 1);
    w64(m, kTables + 0x1000, 0x20000 | 7);
    w64(m, kTables + 0x1000 + 8, 0x22000 | 7);
    w64(m, kTables + 0x2000 + 8 * ((kMmio - 0xc0000000) >> 21), 0x21000 | 7);
    for (std::uint64_t i = 0; i < 512; ++i) {
      w64(m, 0x20000 + 8 * i, (i << 12) | 7);
      w64(m, 0x22000 + 8 * i, ((i + 512) << 12) | 7);
    }
    w64(m, 0x21000, kMmio | 0x1f);
  }
}

api::VcpuState initial_state(const Header& h) {
  api::VcpuState s;
  s.rip = kCode;
  const bool user = h.flags & kUser;
  s.cs = flat(user ? 0x1b : 0x08, true, user ? 3 : 0);
  s.ds = s.es = s.fs = s.gs = s.ss = flat(user ? 0x23 : 0x10, false, user ? 3 : 0);
  s.cr0 = (h.flags & kPaging) ? 0x80000011u | ((h.flags & kWp) ? 0x10000u : 0) : 0x11;
  s.cr3 = kTables;
  s.cr4 = ((h.flags & kPse) ? 0x10 : 0) | ((h.flags & kPae) ? 0x20 : 0);
  s.efer = (h.flags & kNxe) ? 0x800 : 0;
  for (int i = 0; i < 8; ++i) s.gpr[i] = h.gpr[i];
  if (h.gpr[4] == 0) s.gpr[4] = kStack;
  s.rflags = (h.eflags & 0xcd5) | 0x2 | ((h.flags & kIf) ? 0x200 : 0);
  s.gdtr = {kGdt, 6 * 8 - 1};
  s.idtr = {kIdt, 256 * 8 - 1};
  s.tr.selector = 0x28;
  s.tr.base = kTss;
  s.tr.limit = 0x67;
  s.tr.type = 0xb;
  s.tr.present = true;
  s.ldtr.unusable = true;
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < kHeaderBytes) return -1;  // not a VM: keep it out of the corpus
  static fuzz::GuardedRam ram(kRam);
  static EngineArena arena;
  static QuietLogger log;

  fuzz::Reader in{{data, size}};
  Header h;
  h.flags = static_cast<std::uint8_t>(in.u(1));
  h.irq = static_cast<std::uint8_t>(in.u(1));
  h.handler = static_cast<std::uint16_t>(in.u(2));
  h.code_len = static_cast<std::uint16_t>(in.u(2) % kCodeMax);
  for (auto& r : h.gpr) r = in.u(4);
  h.eflags = in.u(4);
  build_machine(ram, h);
  const auto code = in.take(h.code_len);
  std::memcpy(ram.host_base() + kCode, code.data(), code.size());
  // Falling off the end of the code stops the VM: "out 0xf4, al" repeated.
  for (std::uint32_t a = kCode + static_cast<std::uint32_t>(code.size()); a + 1 < kCode + kCodeMax + 16; a += 2) {
    ram.host_base()[a] = 0xe6;
    ram.host_base()[a + 1] = 0xf4;
  }
  while (in.in.size() >= 6) {
    const std::uint32_t slot = in.u(2) % ((kTablesEnd - kTables) / 4);
    w32(ram, kTables + 4 * slot, in.u(4));
  }

  FuzzPlatform platform(h.irq);
  Vcpu* cpu = new (arena.slot()) Vcpu(ram, platform, log, 0, 4u << 20);
  api::RunExit exit;
  cpu->load(initial_state(h));
  exit = cpu->run();
  (void)cpu->save();
  cpu->~Vcpu();
  arena.check();
  arena.reset();
  static const bool verbose = std::getenv("FUZZ_BT_VERBOSE") != nullptr;  // to see what a seed does
  if (verbose) {
    static const char* kinds[] = {"stopped", "shutdown", "error"};
    std::fprintf(stderr, "fuzz_bt: exit %s: %s\n", kinds[static_cast<int>(exit.kind)],
                 exit.diagnostic.substr(0, 160).c_str());
  }
  if (exit.kind == api::ExitKind::Error && exit.diagnostic.find("in monitor code") != std::string::npos) {
    std::fprintf(stderr, "fuzz_bt: the engine faulted in its own code: %s\n", exit.diagnostic.c_str());
    std::abort();
  }
  return 0;
}
