#include "bt64/vcpu64.hpp"

#include <dlfcn.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <x86intrin.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "bt64/emulator64.hpp"
#include "bt64/emulator64_step.hpp"

namespace modevisor::bt::bt64 {

namespace {
constexpr std::uint64_t kArithmeticFlags = 0xcd5;  // CF PF AF ZF SF OF DF: the host's RFLAGS while translated code runs
constexpr std::uint64_t kIf = 0x200;
constexpr std::uint64_t kRf = 0x10000;  // never in a pushed image (PUSHFQ clears it)
constexpr std::uint64_t kPage = 4096;
}  // namespace

// The monitor's guest memory (walks through the guest's tables, RAM or a
// device behind each page) and devices, for the emulator and event delivery.
// A successful access also maps its 4 GiB range into the slot table, so an
// instruction emulated because its range was not mapped runs translated
// next time.
class Vcpu64::Monitor final : public LinearMemory, public Emulator64Env {
 public:
  explicit Monitor(Vcpu64& v) : v_(v) {}

  Outcome<std::uint64_t> read(std::uint64_t la, unsigned size, Privilege who) override {
    std::uint8_t bytes[8] = {};
    if (auto f = access(la, bytes, size, who, false)) return *f;
    std::uint64_t value = 0;
    std::memcpy(&value, bytes, size);
    return value;
  }
  Check write(std::uint64_t la, unsigned size, std::uint64_t value, Privilege who) override {
    std::uint8_t bytes[8];
    std::memcpy(bytes, &value, 8);
    return access(la, bytes, size, who, true);
  }
  // Instruction bytes at `la` (up to `size`, fewer where the next page cannot be fetched).
  std::size_t fetch(std::uint64_t la, std::uint8_t* out, std::size_t size) {
    std::size_t got = 0;
    while (got < size) {
      const std::uint64_t at = la + got;
      const std::size_t chunk = std::min<std::size_t>(size - got, kPage - (at & (kPage - 1)));
      const WalkResult w = walk(v_.shadow_->phys(), v_.paging(), at, Access{false, v_.cpl() == 3, true}, true);
      if (!w.ok || w.pa + chunk > v_.mem_.size()) break;
      std::memcpy(out + got, v_.mem_.host_base() + w.pa, chunk);
      got += chunk;
    }
    return got;
  }
  // The guest-physical page of code at `la` (fetch rights), or the #PF error code.
  std::optional<std::uint64_t> code_page(std::uint64_t la, std::uint32_t* error) {
    const WalkResult w = walk(v_.shadow_->phys(), v_.paging(), la, Access{false, v_.cpl() == 3, true}, true);
    if (!w.ok) {
      *error = w.error;
      return std::nullopt;
    }
    return w.pa & ~(kPage - 1);
  }
  std::uint64_t fault_address() const { return fault_address_; }
  // Whether the guest's tables allow `size` bytes at `la` (no A/D set).
  Check check_access(std::uint64_t la, unsigned size, bool write, Privilege who) {
    for (std::uint64_t at = la; at < la + size; at = (at & ~(kPage - 1)) + kPage) {
      const WalkResult w = walk(v_.shadow_->phys(), v_.paging(), at, Access{write, who == Privilege::User, false}, false);
      if (!w.ok) {
        fault_address_ = at;
        return Fault{14, true, w.error};
      }
    }
    return std::nullopt;
  }
  // Whether `la` is guest RAM (not a device) for an access of this kind.
  bool copy_block(std::uint64_t dst, std::uint64_t src, unsigned bytes, Privilege who) override {
    if (bytes > kPage || !block_allowed(src, bytes, false, who) || !block_allowed(dst, bytes, true, who)) return false;
    std::uint8_t buffer[kPage];
    return !access(src, buffer, bytes, who, false) && !access(dst, buffer, bytes, who, true);
  }
  bool fill_block(std::uint64_t dst, std::uint64_t pattern, unsigned size, unsigned bytes, Privilege who) override {
    if (bytes > kPage || !block_allowed(dst, bytes, true, who)) return false;
    std::uint8_t buffer[kPage];
    for (unsigned at = 0; at < bytes; at += size) std::memcpy(buffer + at, &pattern, size);
    return !access(dst, buffer, bytes, who, true);
  }
  // RAM the access is allowed to (one page: the callers' ranges do not cross one).
  bool block_allowed(std::uint64_t la, unsigned bytes, bool write, Privilege who) {
    return is_ram(la, write, who) && !check_access(la, bytes, write, who);
  }
  bool is_ram(std::uint64_t la, bool write, Privilege who) {
    const WalkResult w = walk(v_.shadow_->phys(), v_.paging(), la, Access{write, who == Privilege::User, false}, false);
    return w.ok && w.pa < v_.mem_.size();
  }

  // Emulator64Env
  LinearMemory& memory() override { return *this; }
  std::uint64_t port_in(std::uint16_t port, unsigned size) override {
    return v_.platform_.io_in(v_.index_, port, size);
  }
  void port_out(std::uint16_t port, unsigned size, std::uint64_t value) override {
    v_.platform_.io_out(v_.index_, port, size, static_cast<std::uint32_t>(value));
    v_.poll_needed_.store(true);
  }
  std::array<std::uint32_t, 4> cpuid(std::uint32_t leaf, std::uint32_t subleaf) override {
    const CpuidAnswer a = v_.cpuid_.answer(leaf, subleaf, v_.index_);
    return {a.eax, a.ebx, a.ecx, a.edx};
  }
  std::optional<std::uint64_t> rdmsr(std::uint32_t index) override {
    if (index == 0x1b) return v_.platform_.apic_base(v_.index_);
    if (index == 0x10) return __rdtsc();
    for (const auto& m : v_.state_.msrs)
      if (m.index == index) return m.value;
    // Never written: what BT32's MSR file answers (MISC_ENABLE's fast
    // strings, PAT's power-on value, SYSENTER_* zero).
    if (MsrFile::holds(index)) {
      static const MsrFile power_on(0);
      const auto v = power_on.read(index, 0);
      if (v.ok()) return v.value();
    }
    return std::nullopt;
  }
  bool wrmsr(std::uint32_t index, std::uint64_t value) override {
    if (index == 0x1b) {
      v_.platform_.set_apic_base(v_.index_, value);
      return true;
    }
    // The MSRs the emulator does not keep in the state itself (SYSENTER_*, PAT, ...).
    if (index == 0x174 || index == 0x175 || index == 0x176 || index == 0x277 || index == 0x1a0) {
      v_.state_.set_msr(index, value);
      return true;
    }
    return false;
  }
  std::uint64_t tsc() override { return __rdtsc(); }
  // Translations are keyed by RIP and checked against the guest-physical
  // pages of their code when the dispatcher finds them; a new mapping
  // (another CR3, an INVLPG after a PTE change, NX set) only undoes the
  // chains and the indirect-branch table, which skip that check.
  void paging_changed() override {
    v_.forget_ranges();
    v_.unchain_translations();
  }
  void invlpg(std::uint64_t la) override {
    v_.shadow_->invlpg(la);
    v_.unchain_translations();
  }

 private:
  // `size` bytes at `la` (split at pages), through RAM or the platform.
  Check access(std::uint64_t la, std::uint8_t* bytes, unsigned size, Privilege who, bool write) {
    unsigned done = 0;
    while (done < size) {
      const std::uint64_t at = la + done;
      const unsigned chunk = std::min<unsigned>(size - done, static_cast<unsigned>(kPage - (at & (kPage - 1))));
      const bool user = who == Privilege::User;
      const WalkResult w = walk(v_.shadow_->phys(), v_.paging(), at, Access{write, user, false}, true);
      if (!w.ok) {
        fault_address_ = at;
        return Fault{14, true, w.error};
      }
      if (w.pa + chunk <= v_.mem_.size()) {
        std::uint8_t* host = v_.mem_.host_base() + w.pa;
        if (write) {
          const std::uint64_t page = w.pa & ~(kPage - 1);
          std::memcpy(host, bytes + done, chunk);
          v_.mem_.mark_dirty(w.pa, chunk);
          if (v_.shadow_->is_pt_page(page))
            v_.shadow_->pt_entries_written(page, static_cast<std::uint32_t>(w.pa & (kPage - 1)), chunk);
          if (v_.shadow_->is_code_page(page)) v_.code_page_written(page);
        } else {
          std::memcpy(bytes + done, host, chunk);
        }
      } else if (write) {
        std::uint64_t value = 0;
        std::memcpy(&value, bytes + done, chunk);
        v_.platform_.mmio_write(v_.index_, w.pa, chunk, value);
        v_.poll_needed_.store(true);
      } else {
        const std::uint64_t value = v_.platform_.mmio_read(v_.index_, w.pa, chunk);
        std::memcpy(bytes + done, &value, chunk);
      }
      done += chunk;
    }
    v_.map_range(static_cast<std::uint32_t>(la >> 32));
    return std::nullopt;
  }

  Vcpu64& v_;
  std::uint64_t fault_address_ = 0;
};

Vcpu64::Vcpu64(api::GuestMemory& mem, api::Platform& platform, api::Logger& log, unsigned index,
               const CpuidModel& cpuid)
    : mem_(mem), platform_(platform), log_(log), index_(index), cpuid_(cpuid) {
  install_host_signal_handlers();
  shadow_ = std::make_unique<ShadowMmu>(mem.host_base(), mem.size(), mem.fd());
  block_ = std::make_unique<ContextBlock>();
  translator_ = std::make_unique<Translator64>();
  monitor_ = std::make_unique<Monitor>(*this);
  load_fpu_image(api::FpuState{}.fxsave);
  // SYSCALL/SYSRET differ by vendor: the CPU model's (leaf 0's "AuthenticAMD").
  vendor_ = cpuid.answer(0, 0, index).ebx == 0x68747541 ? Vendor::Amd : Vendor::Intel;
  trace_ = std::getenv("MODEVISOR_BT_TRACE") != nullptr;
  // The walk's reserved physical-address bits and 1 GiB pages, as the model
  // offers them (no leaf 0x80000008: 36 bits, SDM vol. 3 4.1.4).
  const std::uint32_t max_extended = cpuid.answer(0x80000000, 0, index).eax;
  max_phys_bits_ = max_extended >= 0x80000008 ? (cpuid.answer(0x80000008, 0, index).eax & 0xff) : 36;
  pages_1g_ = max_extended >= 0x80000001 && ((cpuid.answer(0x80000001, 0, index).edx >> 26) & 1);
}

Vcpu64::~Vcpu64() = default;

PagingRegs Vcpu64::paging() const {
  PagingRegs r{state_.cr0, state_.cr3, state_.cr4, state_.efer, cpl() < 3 && (state_.rflags & 0x40000) != 0};
  r.max_phys_bits = max_phys_bits_;
  r.pages_1g = pages_1g_;
  return r;
}

void Vcpu64::state_to_context() {
  Context64* c = block_->ctx();
  for (int i = 0; i < 16; ++i) c->gpr[i] = state_.gpr[i];
  c->rflags = (state_.rflags & kArithmeticFlags) | 2;
  c->vif = state_.rflags & kIf;
  c->sysflags = (state_.rflags & ~(kArithmeticFlags | kIf | kRf)) | 2;
  c->seg_base[0] = state_.fs.base;
  c->seg_base[1] = state_.gs.base;
}

void Vcpu64::context_to_state() {
  const Context64* c = block_->ctx();
  for (int i = 0; i < 16; ++i) state_.gpr[i] = c->gpr[i];
  state_.rflags = (state_.rflags & ~(kArithmeticFlags | kIf)) | (c->rflags & kArithmeticFlags) | (c->vif & kIf) | 2;
}

void Vcpu64::load(const api::VcpuState& s) {
  // Long mode is active only with paging and PAE on (SDM vol. 3 9.8.5).
  if (!(s.efer & (1u << 10)) || (s.cr0 & 0x80000001u) != 0x80000001u || !(s.cr4 & 0x20))
    throw api::MonitorError("bt64: the state is not in long mode (EFER.LMA needs CR0.PG, CR0.PE and CR4.PAE)");
  state_ = s;
  halted_ = s.run_state == api::RunState::Halted;
  load_fpu_image(s.fpu.fxsave);
  state_to_context();
  forget_ranges();
  flush_translations();
}

api::VcpuState Vcpu64::save() const {
  api::VcpuState s = state_;
  const Context64* c = block_->ctx();
  for (int i = 0; i < 16; ++i) s.gpr[i] = c->gpr[i];
  s.rflags = (state_.rflags & ~(kArithmeticFlags | kIf)) | (c->rflags & kArithmeticFlags) | (c->vif & kIf) | 2;
  s.run_state = halted_ ? api::RunState::Halted : api::RunState::Runnable;
  std::memcpy(s.fpu.fxsave.data(), c->guest_fx, sizeof c->guest_fx);
  return s;
}

void Vcpu64::load_fpu_image(const std::array<std::uint8_t, 512>& fxsave) {
  Context64* c = block_->ctx();
  bool zero = true;
  for (auto b : fxsave) zero &= b == 0;
  if (zero) {
    // A state that never held one: the FPU after RESET (FCW 0x37f, MXCSR 0x1f80).
    std::memset(c->guest_fx, 0, sizeof c->guest_fx);
    const std::uint16_t fcw = 0x37f;
    const std::uint32_t mxcsr = 0x1f80;
    std::memcpy(c->guest_fx, &fcw, 2);
    std::memcpy(c->guest_fx + 24, &mxcsr, 4);
    return;
  }
  std::memcpy(c->guest_fx, fxsave.data(), sizeof c->guest_fx);
  // MXCSR's reserved bits would make FXRSTOR64 fault in translated code.
  std::uint32_t mxcsr;
  std::memcpy(&mxcsr, c->guest_fx + 24, 4);
  mxcsr &= 0xffff;
  std::memcpy(c->guest_fx + 24, &mxcsr, 4);
}

void Vcpu64::kick() {
  kicked_.store(true);
  poll_needed_.store(true);
  if (in_guest_) block_->revoke_poll();
}

void Vcpu64::add_counters(api::Counters& out) const {
  out.emplace_back("bt64.dispatches", counters_.dispatches);
  out.emplace_back("bt64.blocks_translated", translator_->stats.blocks);
  out.emplace_back("bt64.monitor_steps", counters_.monitor_steps);
  out.emplace_back("bt64.slot_table_misses", counters_.table_misses);
  out.emplace_back("bt64.slot_guard_faults", counters_.guard_faults);
  out.emplace_back("bt64.shadow_fills", counters_.shadow_fills);
  out.emplace_back("bt64.guest_page_faults", counters_.guest_page_faults);
  out.emplace_back("bt64.events", counters_.events);
  out.emplace_back("bt64.full_flushes", counters_.code_flushes);
  out.emplace_back("bt64.unchains", counters_.unchains);
  out.emplace_back("bt64.code_page_writes", counters_.code_page_writes);
  out.emplace_back("bt64.blocks_dropped", translator_->stats.dropped_blocks);
  out.emplace_back("bt64.remapped_code", counters_.remapped_code);
}

// ---------------------------------------------------------------- memory views

Vcpu64::View Vcpu64::current_view() const {
  const PagingRegs r = paging();
  return View{r.cr0, r.cr3, r.cr4, r.efer, cpl() == 3 ? 3u : 0u, r.smap_suspended};
}

void Vcpu64::check_view() {
  const View now = current_view();
  if (now == view_) return;
  forget_ranges();
  // The indirect-branch table skips the fetch's walk: entries found under
  // another CPL or mapping must not be reached from this one.
  block_->clear_fast();
  view_ = now;
}

void Vcpu64::forget_ranges() {
  for (std::uint32_t high : mapped_ranges_)
    for (std::uint64_t k = 0; k < 4; ++k) block_->clear_slot((std::uint64_t{high} << 2) + k);
  mapped_ranges_.clear();
  view_ = View{~0ull};
}

bool Vcpu64::map_range(std::uint32_t high) {
  if (!is_canonical(std::uint64_t{high} << 32)) return false;
  if (std::find(mapped_ranges_.begin(), mapped_ranges_.end(), high) != mapped_ranges_.end()) return true;
  if (view_ == View{~0ull}) view_ = current_view();
  Region* r = shadow_->activate(make_region_key(paging(), cpl() == 3, high));
  if (shadow_->stats.evictions != evictions_seen_) {
    // A region went: the table may name its host addresses no more.
    evictions_seen_ = shadow_->stats.evictions;
    for (std::uint32_t h : mapped_ranges_)
      for (std::uint64_t k = 0; k < 4; ++k) block_->clear_slot((std::uint64_t{h} << 2) + k);
    mapped_ranges_.clear();
  }
  const std::uint64_t bias = reinterpret_cast<std::uint64_t>(r->base) - (std::uint64_t{high} << 32);
  for (std::uint64_t k = 0; k < 4; ++k) block_->set_slot((std::uint64_t{high} << 2) + k, bias);
  mapped_ranges_.push_back(high);
  return true;
}

void Vcpu64::flush_translations() {
  translator_->flush();
  for (std::uint64_t page : code_pages_) shadow_->release_code_page(page);
  code_pages_.clear();
  block_->clear_fast();
  pending_patch_ = 0;
  ++counters_.code_flushes;
}

void Vcpu64::unchain_translations() {
  translator_->unchain_all();
  block_->clear_fast();
  pending_patch_ = 0;
  ++counters_.unchains;
}

void Vcpu64::code_page_written(std::uint64_t page) {
  translator_->drop_code_page(page);
  block_->clear_fast();
  pending_patch_ = 0;
  shadow_->release_code_page(page);
  code_pages_.erase(std::remove(code_pages_.begin(), code_pages_.end(), page), code_pages_.end());
  ++counters_.code_page_writes;
}

void Vcpu64::protect_code_page(std::uint64_t page) {
  if (shadow_->is_code_page(page)) return;
  shadow_->protect_code_page(page);
  code_pages_.push_back(page);
}

// ---------------------------------------------------------------- the run loop

api::RunExit Vcpu64::run() {
  api::RunExit ex;
  bind_running_vcpu(this);
  in_run_ = true;
  poll_needed_.store(true);
  tick_.start_on_this_thread();
  struct Guard {
    Vcpu64* v;
    ~Guard() {
      v->in_run_ = false;
      v->in_guest_ = false;
      bind_running_vcpu(nullptr);
      v->tick_.stop();
    }
  } guard{this};
  if (sigsetjmp(bug_jmp_, 1) != 0) {
    ex.kind = api::ExitKind::Error;
    ex.diagnostic = bug_message_;
    return ex;
  }
  for (;;) {
    if (kicked_.exchange(false)) return ex;
    if (poll_needed_.exchange(false)) {
      block_->restore_poll();
      if (platform_.stop_requested()) return ex;
      tick_.arm_deadline(platform_);
    }
    Step s = take_interrupt_if_any();
    if (s == Step::Continue && halted_) {
      // With IF clear only an NMI or INIT could wake it: the platform's to
      // judge (a uniprocessor VM halted so stops with reason "halted").
      if (state_.rflags & kIf)
        platform_.wait_for_interrupt(index_);
      else
        platform_.wait_for_cpu_event(index_);
      poll_needed_.store(true);
      if (platform_.interrupt_pending(index_)) halted_ = false;
      continue;
    }
    if (s == Step::Continue) s = step();
    switch (s) {
      case Step::Continue: break;
      case Step::Stop: return ex;
      case Step::Shutdown:
        ex.kind = api::ExitKind::Shutdown;
        ex.diagnostic = bug_message_.empty() ? "triple fault" : bug_message_;
        return ex;
      case Step::Error:
        ex.kind = api::ExitKind::Error;
        ex.diagnostic = bug_message_;
        return ex;
    }
  }
}

Vcpu64::Step Vcpu64::take_interrupt_if_any() {
  if (!(state_.rflags & kIf) || interrupt_shadow_) {
    interrupt_shadow_ = false;
    return Step::Continue;
  }
  if (!platform_.interrupt_pending(index_)) return Step::Continue;
  const std::uint8_t vector = platform_.acknowledge_interrupt(index_);
  halted_ = false;
  ++counters_.interrupts;
  context_to_state();
  const Step s = deliver(vector, false, 0, EventKind::HardwareInterrupt);
  state_to_context();
  return s;
}

Block64* Vcpu64::block_at_rip(Step* failed) {
  const bool flavour = compat();
  if (flavour != last_compat_) {  // the indirect-branch table holds one flavour's targets
    block_->clear_fast();
    last_compat_ = flavour;
  }
  // Translated compatibility-mode code assumes flat CS/DS/ES/SS (checked at
  // every step: a segment load may have changed a base since translation).
  if (flavour && (state_.cs.base || state_.ds.base || state_.es.base || state_.ss.base)) {
    bug_message_ = "bt64: compatibility-mode code with segment bases is not translated yet";
    *failed = Step::Error;
    return nullptr;
  }
  const std::uint64_t la = flavour ? static_cast<std::uint32_t>(state_.rip) : state_.rip;
  const std::size_t first = kPage - (la & (kPage - 1));
  std::uint32_t error = 0;
  // The fetch's walk (CPL, NX) every time: a block is used only where its
  // RIP still maps to the pages it was translated from.
  const auto page = monitor_->code_page(la, &error);
  if (!page) {
    *failed = deliver_with_context(Fault{14, true, error}, la);
    return nullptr;
  }
  if (Block64* b = translator_->find(state_.rip, flavour, cpl() == 0)) {
    bool same = b->code_pages[0] == *page;
    if (same && b->code_pages[1] != Block64::kNoPage) {
      std::uint32_t err2 = 0;
      const auto next = monitor_->code_page(la + first, &err2);
      same = next && *next == b->code_pages[1];
    }
    if (same) {
      ++counters_.cache_hits;
      return b;
    }
    ++counters_.remapped_code;  // translated again below, replacing it
  }
  std::uint8_t bytes[2 * kPage];
  std::size_t got = monitor_->fetch(la, bytes, first + 15);
  if (translator_->needs_flush()) flush_translations();
  Block64* b = nullptr;
  CodeBytes code{state_.rip, bytes, got, flavour};
  code.supervisor = cpl() == 0;
  const auto st = translator_->translate(code, &b);
  if (st == Translate64Status::Ok) {
    protect_code_page(*page);
    b->code_pages[0] = *page;
    if (b->end_rip - state_.rip > first) {
      if (auto next = monitor_->code_page(la + first, &error)) {
        protect_code_page(*next);
        b->code_pages[1] = *next;
      }
    }
    return b;
  }
  if (st == Translate64Status::FetchFault) {
    std::uint32_t err = 0;
    monitor_->code_page(la + first, &err);
    *failed = deliver_with_context(Fault{14, true, err}, la + first);
    return nullptr;
  }
  // Special or undefined: the monitor runs it.
  *failed = monitor_step();
  return nullptr;
}

Vcpu64::Step Vcpu64::step() {
  check_view();
  // CR0.TS/EM or CR4.OSFXSR changed: translations made under the old gate
  // run (or leave to the monitor) FPU/SIMD instructions the new one does not.
  const FpuGate gate = fpu_gate(state_.cr0, state_.cr4);
  if (!(gate == translator_->fpu_gate())) {
    flush_translations();
    translator_->set_fpu_gate(gate);
  }
  Step failed = Step::Continue;
  Block64* b = block_at_rip(&failed);
  if (!b) return failed;
  return run_block(b);
}

Vcpu64::Step Vcpu64::run_block(Block64* b) {
  block_->set_fast(b->rip, b->entry);
  // Chain the exit that led here only if it was for this block (a monitor
  // step may have come between: its target was another instruction).
  if (pending_patch_ && pending_patch_rip_ == b->rip) translator_->chain(pending_patch_, b);
  pending_patch_ = 0;
  ++counters_.dispatches;
  block_->ctx()->seg_base[0] = state_.fs.base;
  block_->ctx()->seg_base[1] = state_.gs.base;
  fault_kind_ = FaultKind::None;
  in_guest_ = true;
  const std::uint64_t reason = translator_->enter(*block_, b->entry);
  in_guest_ = false;
  Context64* c = block_->ctx();
  state_.rip = c->next_rip;
  state_.rflags = (state_.rflags & ~kIf) | (c->vif & kIf);  // a translated CLI
  switch (reason) {
    case kExit64Dispatch:
      pending_patch_ = c->patch_site;
      pending_patch_rip_ = c->next_rip;
      return Step::Continue;
    case kExit64Indirect:
      return Step::Continue;
    case kExit64Special:
      return monitor_step();
    case kExit64Fault:
      switch (fault_kind_) {
        case FaultKind::Interrupt:
          return Step::Continue;
        case FaultKind::PageFault:
          ++counters_.guest_page_faults;
          context_to_state();
          {
            const Step s = deliver_fault(Fault{14, true, fault_error_}, fault_address_);
            state_to_context();
            return s;
          }
        case FaultKind::Emulate:
          return monitor_step();
        case FaultKind::DivideError: {
          context_to_state();
          const Step s = deliver(0, false, 0, EventKind::Exception);
          state_to_context();
          return s;
        }
        case FaultKind::FpuError:
          return fpu_exception();
        case FaultKind::None:
          break;
      }
      [[fallthrough]];
    default:
      bug_message_ = "bt64: translated code left with reason " + std::to_string(reason);
      return Step::Error;
  }
}

Vcpu64::Step Vcpu64::monitor_step() {
  ++counters_.monitor_steps;
  context_to_state();
  std::uint8_t bytes[16];
  const std::uint64_t la = linear_rip();
  const std::size_t got = monitor_->fetch(la, bytes, sizeof bytes);
  if (got == 0) {
    std::uint32_t error = 0;
    monitor_->code_page(la, &error);
    const Step s = deliver_fault(Fault{14, true, error}, la);
    state_to_context();
    return s;
  }
  if (trace_) {  // MODEVISOR_BT_TRACE: each instruction the monitor runs
    ZydisDisassembledInstruction d;
    if (ZYAN_SUCCESS(ZydisDisassembleATT(compat() ? ZYDIS_MACHINE_MODE_LONG_COMPAT_32 : ZYDIS_MACHINE_MODE_LONG_64,
                                        state_.rip, bytes, got, &d))) {
      char line[200];
      std::snprintf(line, sizeof line, "bt64: monitor step at %#llx (CS %#x): %s",
                    static_cast<unsigned long long>(state_.rip), state_.cs.selector, d.text);
      log_.log(api::LogLevel::Trace, line);
    }
  }
  const bool was_compat = compat();
  const StepResult r = emulate_one(state_, *monitor_, bytes, got, vendor_);
  if (r.kind == StepKind::Unsupported) {
    // An FPU/SIMD instruction the guest's CR0/CR4 or the CPU model do not let run.
    bool is_fpu = false;
    const Step fpu = fpu_step(bytes, got, &is_fpu);
    if (is_fpu) return fpu;
    // Not the emulator's (which changed nothing): a plain instruction whose
    // access hit a traced page, a code page or a device runs alone on the
    // stage.  The emulator goes first: the monitor's own instructions (I/O,
    // CPUID, ...) are the common case and need one decoding only.
    bool staged = false;
    const Step on_stage = run_staged(bytes, got, &staged);
    if (staged) return on_stage;
  }
  Step s = Step::Continue;
  switch (r.kind) {
    case StepKind::Next:
      interrupt_shadow_ = r.interrupt_shadow;
      break;
    case StepKind::Halt:
      halted_ = true;
      break;
    case StepKind::Fault:
      s = deliver_fault(*r.fault, r.fault_address.value_or(monitor_->fault_address()));
      break;
    case StepKind::Unsupported:
      bug_message_ = "bt64: cannot emulate " + r.what + " at RIP " + std::to_string(state_.rip);
      s = Step::Error;
      break;
  }
  if (compat() != was_compat) block_->clear_fast();
  state_to_context();
  return s;
}

bool Vcpu64::decode(const std::uint8_t* bytes, std::size_t size, ZydisDecodedInstruction* insn,
                    ZydisDecodedOperand* ops) const {
  ZydisDecoder decoder;
  ZydisDecoderInit(&decoder, compat() ? ZYDIS_MACHINE_MODE_LONG_COMPAT_32 : ZYDIS_MACHINE_MODE_LONG_64,
                   compat() ? ZYDIS_STACK_WIDTH_32 : ZYDIS_STACK_WIDTH_64);
  return ZYAN_SUCCESS(ZydisDecoderDecodeFull(&decoder, bytes, size, insn, ops));
}

Vcpu64::Step Vcpu64::fpu_exception() {
  // x87 exceptions are #MF (CR0.NE; Linux sets it), SIMD ones #XM with
  // CR4.OSXMMEXCPT, else #UD (SDM vol. 3 table 13-1).
  context_to_state();
  std::uint8_t bytes[16];
  const std::size_t got = monitor_->fetch(linear_rip(), bytes, sizeof bytes);
  ZydisDecodedInstruction insn;
  ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
  const bool simd = got && decode(bytes, got, &insn, ops) && fpu_isa(insn, ops) == FpuIsa::Sse;
  const std::uint8_t vector = !simd ? 16 : (state_.cr4 & kCr4OsXmmExcpt) ? 19 : 6;
  const Step s = deliver(vector, false, 0, EventKind::Exception);
  state_to_context();
  return s;
}

Vcpu64::Step Vcpu64::fpu_step(const std::uint8_t* bytes, std::size_t size, bool* handled) {
  *handled = false;
  ZydisDecodedInstruction insn;
  ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
  if (!decode(bytes, size, &insn, ops)) return Step::Continue;
  const FpuIsa isa = fpu_isa(insn, ops);
  if (isa == FpuIsa::None) return Step::Continue;
  const auto fault = fpu_fault(isa, insn.mnemonic == ZYDIS_MNEMONIC_FWAIT, state_.cr0, state_.cr4);
  if (!fault) {
    if (insn.mnemonic != ZYDIS_MNEMONIC_FWAIT) return Step::Continue;  // it runs (on the stage, if it can)
    // FWAIT with CR0.TS set and MP clear: it only checks for pending x87
    // exceptions, which the saved state keeps for the next x87 instruction.
    *handled = true;
    state_.rip += insn.length;
    if (compat()) state_.rip = static_cast<std::uint32_t>(state_.rip);
    state_to_context();
    return Step::Continue;
  }
  *handled = true;
  const Step s = deliver_fault(*fault, 0);
  state_to_context();
  return s;
}

Vcpu64::Step Vcpu64::run_staged(const std::uint8_t* bytes, std::size_t size, bool* handled) {
  *handled = false;
  Block64* b = nullptr;
  std::uint32_t fetch_error = 0;
  const std::uint64_t code_page = monitor_->code_page(linear_rip(), &fetch_error).value_or(Block64::kNoPage);
  const CodeBytes code{state_.rip, bytes, size, compat(), code_page, cpl() == 0};
  if (translator_->translate_staged(code, stage_, &b) != Translate64Status::Ok) return Step::Continue;
  *handled = true;
  ZydisDecodedInstruction insn;
  ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
  decode(bytes, size, &insn, ops);
  const ZydisDecodedOperand* op = nullptr;
  for (unsigned i = 0; i < insn.operand_count_visible; ++i)
    if (ops[i].type == ZYDIS_OPERAND_TYPE_MEMORY) op = &ops[i];
  const unsigned bytes_n = op->size / 8;
  if (bytes_n > sizeof stage_) {  // never for the instructions translated code runs
    bug_message_ = "bt64: a staged operand of " + std::to_string(bytes_n) + " bytes does not fit the stage";
    return Step::Error;
  }
  const bool reads = (op->actions & (ZYDIS_OPERAND_ACTION_READ | ZYDIS_OPERAND_ACTION_CONDREAD)) != 0;
  const bool writes = (op->actions & (ZYDIS_OPERAND_ACTION_WRITE | ZYDIS_OPERAND_ACTION_CONDWRITE)) != 0;
  const Privilege who = privilege_at(cpl());
  std::uint64_t la = 0;
  try {
    detail::Step address(state_, *monitor_, vendor_, insn, ops);
    la = address.operand_linear(*op, bytes_n, writes);
  } catch (const Fault& f) {
    const Step s = deliver_fault(f, 0);
    state_to_context();
    return s;
  }
  // The operand's pages must allow the access before anything runs (a #PF
  // leaves the instruction undone); then its bytes onto the stage, and a RAM
  // destination written back unchanged first (the dirty bit, a traced page).
  if (auto f = monitor_->check_access(la, bytes_n, writes, who)) {
    const Step s = deliver_fault(*f, monitor_->fault_address());
    state_to_context();
    return s;
  }
  const bool ram = monitor_->is_ram(la, writes, who);
  std::memset(stage_, 0, sizeof stage_);
  for (unsigned done = 0; done < bytes_n && (reads || (writes && ram)); done += 8) {
    const unsigned n = std::min(8u, bytes_n - done);
    const auto v = monitor_->read(la + done, n, who);
    if (!v.ok()) {
      const Step s = deliver_fault(v.fault(), monitor_->fault_address());
      state_to_context();
      return s;
    }
    std::memcpy(stage_ + done, &v.value(), n);
  }
  for (unsigned done = 0; writes && ram && done < bytes_n; done += 8) {
    const unsigned n = std::min(8u, bytes_n - done);
    std::uint64_t v = 0;
    std::memcpy(&v, stage_ + done, n);
    if (auto f = monitor_->write(la + done, n, v, who)) {
      const Step s = deliver_fault(*f, monitor_->fault_address());
      state_to_context();
      return s;
    }
  }
  // The write-back above may have written a code page, which drops every
  // translation, the staged one too: look it up (or translate it) again.
  if (translator_->translate_staged(code, stage_, &b) != Translate64Status::Ok) {
    bug_message_ = "bt64: the staged instruction could not be translated again";
    return Step::Error;
  }
  in_guest_ = true;
  translator_->enter(*block_, b->entry);
  in_guest_ = false;
  state_.rip = block_->ctx()->next_rip;
  for (unsigned done = 0; writes && done < bytes_n; done += 8) {
    const unsigned n = std::min(8u, bytes_n - done);
    std::uint64_t v = 0;
    std::memcpy(&v, stage_ + done, n);
    if (auto f = monitor_->write(la + done, n, v, who)) {  // a device that refuses: its fault
      context_to_state();
      const Step s = deliver_fault(*f, monitor_->fault_address());
      state_to_context();
      return s;
    }
  }
  return Step::Continue;
}

Vcpu64::Step Vcpu64::deliver_with_context(const Fault& f, std::uint64_t cr2) {
  context_to_state();
  const Step s = deliver_fault(f, cr2);
  state_to_context();
  return s;
}

Vcpu64::Step Vcpu64::deliver_fault(const Fault& f, std::uint64_t cr2) {
  if (f.vector == 14) state_.cr2 = cr2;
  return deliver(f.vector, f.has_error, f.error, EventKind::Exception);
}

Vcpu64::Step Vcpu64::deliver(std::uint8_t vector, bool has_error, std::uint32_t error, EventKind kind) {
  ++counters_.events;
  halted_ = false;
  if (trace_) {  // MODEVISOR_BT_TRACE: each event, where the guest was
    char line[160];
    std::snprintf(line, sizeof line, "bt64: event vector %u error %#x at RIP %#llx (CS %#x, CR2 %#llx)", vector,
                  has_error ? error : 0u, static_cast<unsigned long long>(state_.rip), state_.cs.selector,
                  static_cast<unsigned long long>(state_.cr2));
    log_.log(api::LogLevel::Trace, line);
  }
  Check c = bt64::deliver(state_, *monitor_, vector, has_error, error, kind);
  if (!c) return Step::Continue;
  // A fault while delivering: #DF (SDM vol. 3 table 6-5, simplified as the
  // 32-bit engine does: any fault delivering an event), then shutdown.
  if (vector == 8) {
    bug_message_ = "triple fault: delivering #DF faulted with vector " + std::to_string(c->vector);
    return Step::Shutdown;
  }
  if (c->vector == 14) state_.cr2 = monitor_->fault_address();
  c = bt64::deliver(state_, *monitor_, 8, true, 0, EventKind::Exception);
  if (!c) return Step::Continue;
  bug_message_ = "triple fault: delivering #DF faulted with vector " + std::to_string(c->vector);
  return Step::Shutdown;
}

// ---------------------------------------------------------------- host signals

bool Vcpu64::handle_signal(int sig, void* info, void* uctx) {
  if (!in_run_) return false;
  if (sig == kKickSignal) {
    poll_needed_.store(true);
    if (in_guest_) block_->revoke_poll();
    return true;
  }
  auto* si = static_cast<siginfo_t*>(info);
  auto* uc = static_cast<ucontext_t*>(uctx);
  greg_t* g = uc->uc_mcontext.gregs;
  const auto pc = static_cast<std::uintptr_t>(g[REG_RIP]);
  Block64* b = in_guest_ && translator_->in_cache(pc) ? translator_->block_at(pc) : nullptr;
  if (!b) {
    // Where: a translator routine, or the module and offset (for addr2line).
    char where[160] = "";
    Dl_info dl{};
    if (translator_->in_cache(pc))
      std::snprintf(where, sizeof where, ", translator routine %s", translator_->routine_at(pc).c_str());
    else if (dladdr(reinterpret_cast<void*>(pc), &dl) && dl.dli_fname)
      std::snprintf(where, sizeof where, " (%s+%#lx)", dl.dli_fname,
                    static_cast<unsigned long>(pc - reinterpret_cast<std::uintptr_t>(dl.dli_fbase)));
    char msg[320];
    std::snprintf(msg, sizeof msg, "bt64: host signal %d in monitor code at %#lx%s (fault address %p)", sig,
                  static_cast<unsigned long>(pc), where, si->si_addr);
    bug_message_ = msg;
    siglongjmp(bug_jmp_, 1);
  }
  const std::uint64_t rip = translator_->guest_rip_at(b, pc);
  // Leave translated code at guest instruction `rip`: the guest registers
  // from the host's (R12-R15 are in the context already), then the exit routine.
  auto leave = [&](FaultKind kind) {
    static const int host_reg[16] = {REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_R14, REG_RBP, REG_RSI, REG_RDI,
                                     REG_R8,  REG_R9,  REG_R10, REG_R11, -1,      -1,      -1,      -1};
    Context64* c = block_->ctx();
    for (int i = 0; i < 12; ++i) c->gpr[i] = static_cast<std::uint64_t>(g[host_reg[i]]);
    const auto off = static_cast<std::uint32_t>(pc - reinterpret_cast<std::uintptr_t>(b->entry));
    for (const auto& sw : b->swaps)
      if (off >= sw.begin && off < sw.end) c->gpr[sw.reg] = c->spill;  // the borrowed register's guest value
    c->rflags = static_cast<std::uint64_t>(g[REG_EFL]);
    c->next_rip = rip;
    c->patch_site = 0;
    c->exit_reason = kExit64Fault;
    fault_kind_ = kind;
    // The exit routine stores the host registers again: give it the guest's.
    g[REG_R15] = reinterpret_cast<greg_t>(c);
    g[REG_RIP] = static_cast<greg_t>(translator_->exit_from_signal());
    return true;
  };
  // #DE in translated code (DIV/IDIV): the guest's, at the instruction.
  // SIGFPE: #DE from DIV/IDIV, else an unmasked x87 (#MF) or SIMD (#XM)
  // exception of the guest's FPU state.
  if (sig == SIGFPE)
    return leave(si->si_code == FPE_INTDIV || si->si_code == FPE_INTOVF ? FaultKind::DivideError
                                                                         : FaultKind::FpuError);
  if (sig != SIGSEGV && sig != SIGBUS) return leave(FaultKind::Emulate);  // the emulator raises it
  const auto addr = reinterpret_cast<std::uintptr_t>(si->si_addr);
  const auto poll = reinterpret_cast<std::uintptr_t>(block_->base()) + kPollOffset64;
  if (addr >= poll && addr < poll + kPage) return leave(FaultKind::Interrupt);
  std::uint64_t slot = 0;
  if (block_->is_table_miss(addr, &slot)) {
    ++counters_.table_misses;
    // A range the view has not mapped yet: map it and retry the load.
    // Non-canonical: the emulator raises #GP/#SS.
    if (map_range(static_cast<std::uint32_t>(slot >> 2))) return true;
    return leave(FaultKind::Emulate);
  }
  Region* r = nullptr;
  std::uint32_t la32 = 0;
  if (shadow_->contains(si->si_addr, &r, &la32)) {
    const bool write = (g[REG_ERR] & 2) != 0;
    std::uint64_t out = 0;
    FillResult fr;
    try {
      fr = shadow_->fill(r, paging(), la32, write, &out);
    } catch (const std::exception& e) {
      bug_message_ = e.what();
      siglongjmp(bug_jmp_, 1);
    }
    switch (fr) {
      case FillResult::Mapped:
        ++counters_.shadow_fills;
        return true;
      case FillResult::GuestFault:
        fault_address_ = r->linear(la32);
        fault_error_ = static_cast<std::uint32_t>(out);
        return leave(FaultKind::PageFault);
      case FillResult::Mmio:
      case FillResult::ProtectedWrite:
      case FillResult::Repeat:
        return leave(FaultKind::Emulate);
    }
  }
  // A guard bias (an unmapped range in a backed page of the table: the
  // host's #GP), or a region guard: the monitor emulates the instruction,
  // which maps the range for the next time.
  ++counters_.guard_faults;
  return leave(FaultKind::Emulate);
}

}  // namespace modevisor::bt::bt64
