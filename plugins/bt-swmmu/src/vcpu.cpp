#include "vcpu.hpp"

#include "event_frame.hpp"
#include "host_signals.hpp"

#include <sys/mman.h>
#include <signal.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>
#include <x86intrin.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <stdexcept>

namespace modevisor::bt {

namespace {

constexpr std::uint32_t kArithFlags = 0x8d5;   // CF PF AF ZF SF OF
constexpr std::uint32_t kHostFlags = 0xcd5;    // + DF: live in host RFLAGS
constexpr std::uint32_t kIF = 0x200, kRF = 0x10000;
}  // namespace

Vcpu::Vcpu(api::GuestMemory& mem, api::Platform& platform, api::Logger& log, unsigned index,
           std::size_t translation_cache_bytes)
    : mem_(mem),
      platform_(platform),
      log_(log),
      index_(index),
      msrs_(__rdtsc()),
      dirty_([this](std::vector<std::uint64_t>& bitmap) { shadow_->collect_dirty(bitmap); },
             [this] { block_poll(); }) {
  install_host_signal_handlers();
  shadow_ = std::make_unique<ShadowMmu>(mem.host_base(), mem.size(), mem.fd());
  translator_ = std::make_unique<Translator>(translation_cache_bytes);
  translator_->set_monitor_sites(&sites_);
  void* p = mmap(nullptr, kContextAlloc, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error("bt-swmmu: cannot allocate the vCPU context");
  ctx_ = new (p) Context{};
  if (mprotect(static_cast<std::uint8_t*>(p) + kLimitTrapOffset, 4096, PROT_NONE) != 0)
    throw std::runtime_error("bt-swmmu: cannot protect the limit-trap page");
  ctx_->guest_fx[0] = 0x7f;  // FCW 0x37f
  ctx_->guest_fx[1] = 0x03;
  const std::uint32_t mxcsr = 0x1f80;
  std::memcpy(ctx_->guest_fx + 24, &mxcsr, 4);
  ctx_->rflags = 0x202;
  ctx_->sysflags = 0x2;
  ctx_->monitor_fn = reinterpret_cast<std::uint64_t>(&Vcpu::monitor_call_entry);
  ctx_->monitor_obj = reinterpret_cast<std::uint64_t>(this);
  cs_.db = true;
  trace_ = std::getenv("MODEVISOR_BT_TRACE") != nullptr;
}

Vcpu::~Vcpu() {
  munmap(ctx_, kContextAlloc);
}

// ---------------------------------------------------------------- state

std::uint32_t Vcpu::eflags() const {
  return (static_cast<std::uint32_t>(ctx_->rflags) & kHostFlags) | (ctx_->sysflags & ~kHostFlags) | 2;
}

void Vcpu::set_eflags(std::uint32_t v) {
  ctx_->rflags = (v & kHostFlags) | 0x202;
  // RF (set by IRET or a task switch) lasts until the next instruction
  // starts: the dispatcher and monitor calls clear it (code_breakpoint).
  ctx_->sysflags = (v & ~kHostFlags) | 2;
}

api::Segment& Vcpu::seg(int i) {
  switch (i) {
    case 0: return es_;
    case 1: return cs_;
    case 2: return ss_;
    case 3: return ds_;
    case 4: return fs_;
    default: return gs_;
  }
}

void Vcpu::sync_seg_bases() {
  write_seg_bases();
  // The windows are looked up when next read (event delivery and IRET load
  // CS and SS one after the other: only the last set is ever used).
  windows_stale_ = true;
}

// The Context's segment bases and null FS/GS biases from the registers; the
// windows only when the mode changed under them (a CR0.PE write).
void Vcpu::write_seg_bases() {
  auto base = [](const api::Segment& s) { return s.unusable ? 0u : static_cast<std::uint32_t>(s.base); };
  ctx_->seg_base[0] = base(es_);
  ctx_->seg_base[1] = base(cs_);
  ctx_->seg_base[2] = base(ss_);
  ctx_->seg_base[3] = base(ds_);
  ctx_->seg_base[4] = base(fs_);
  ctx_->seg_base[5] = base(gs_);
  const bool pm = !real_mode() && !v86();
  ctx_->null_fs_gs_bias[0] = pm && fs_.unusable ? kNullSegmentBias : 0;
  ctx_->null_fs_gs_bias[1] = pm && gs_.unusable ? kNullSegmentBias : 0;
  if (pm != windows_protected_mode_) windows_stale_ = true;
}

// A segment load (data or stack segment).
void Vcpu::replace_segment(api::Segment& reg, const api::Segment& value) {
  note_segment_shape(reg, value);
  reg = value;
  write_seg_bases();
}

// SYSENTER's and SYSEXIT's CS and SS (the mode already set).
void Vcpu::replace_code_and_stack(const api::Segment& cs, const api::Segment& ss) {
  note_segment_shape(cs_, cs);
  note_segment_shape(ss_, ss);
  cs_ = cs;
  ss_ = ss;
  write_seg_bases();
}

// The windows follow the segment registers and the mode; the Context holds
// the set in use (its copy changes with the set).
void Vcpu::refresh_windows() const {
  if (!windows_stale_) return;
  windows_stale_ = false;
  const api::Segment* regs[6] = {&es_, &cs_, &ss_, &ds_, &fs_, &gs_};
  bool fresh = false;  // computed now, maybe into the entry the Context held
  windows_protected_mode_ = !real_mode() && !v86();
  const SegmentWindowsCache::Set& set = windows_.lookup(regs, windows_protected_mode_, &fresh);
  if (&set == windows_in_context_ && !fresh) return;
  std::memcpy(ctx_->seg_window, set.windows, sizeof(set.windows));
  ctx_->code_window = set.code;
  windows_in_context_ = &set;
}

bool Vcpu::flat() const {
  auto ok = [](const api::Segment& s) { return s.unusable || s.base == 0; };
  return ok(es_) && ok(cs_) && ok(ss_) && ok(ds_) && !limited();
}

void Vcpu::load(const api::VcpuState& s) {
  if ((s.efer & 0x400) || s.cs.l)
    throw api::MonitorError("bt-swmmu: the vCPU is in long mode; BT64 (64-bit guests) is not implemented");
  long_mode_entered_.clear();
  for (int i = 0; i < 8; ++i) ctx_->gpr[i] = static_cast<std::uint32_t>(s.gpr[i]);
  eip_ = static_cast<std::uint32_t>(s.rip);
  set_eflags(static_cast<std::uint32_t>(s.rflags));
  es_ = s.es; cs_ = s.cs; ss_ = s.ss; ds_ = s.ds; fs_ = s.fs; gs_ = s.gs; ldtr_ = s.ldtr; tr_ = s.tr;
  gdtr_ = s.gdtr; idtr_ = s.idtr;
  cr0_ = s.cr0; cr2_ = s.cr2; cr3_ = s.cr3; cr4_ = s.cr4; cr8_ = s.cr8; efer_ = s.efer;
  dr_ = s.dr;
  debug_registers_changed();
  msrs_.load(s.msrs, __rdtsc());
  bool zero = true;
  for (auto b : s.fpu.fxsave) zero &= b == 0;
  if (!zero) {
    std::memcpy(ctx_->guest_fx, s.fpu.fxsave.data(), 512);
    std::uint32_t mxcsr;
    std::memcpy(&mxcsr, ctx_->guest_fx + 24, 4);
    mxcsr &= 0xffff;
    std::memcpy(ctx_->guest_fx + 24, &mxcsr, 4);
  }
  xcr0_ = s.fpu.xcr0;
  xsave_extended_ = s.fpu.xsave_extended;
  pending_exception_ = s.events.exception;
  pending_interrupt_ = s.events.interrupt;
  nmi_pending_ = s.events.nmi_pending;
  nmi_masked_ = s.events.nmi_masked;
  interrupt_shadow_ = s.events.interrupt_shadow;
  run_state_ = s.run_state;
  cpl_ = cs_.selector & 3;
  if (ss_.present && !ss_.unusable) cpl_ = ss_.dpl;
  if (real_mode()) cpl_ = 0;
  if (v86()) cpl_ = 3;
  sync_seg_bases();
}

api::VcpuState Vcpu::save() const {
  api::VcpuState s;
  for (int i = 0; i < 8; ++i) s.gpr[i] = static_cast<std::uint32_t>(ctx_->gpr[i]);
  s.rip = eip_;
  s.rflags = eflags();
  s.es = es_; s.cs = cs_; s.ss = ss_; s.ds = ds_; s.fs = fs_; s.gs = gs_; s.ldtr = ldtr_; s.tr = tr_;
  s.gdtr = gdtr_; s.idtr = idtr_;
  s.cr0 = cr0_; s.cr2 = cr2_; s.cr3 = cr3_; s.cr4 = cr4_; s.cr8 = cr8_; s.efer = efer_;
  s.dr = dr_;
  s.msrs = msrs_.saved();
  s.set_msr(MsrFile::kTsc, msrs_.tsc(__rdtsc()));
  std::memcpy(s.fpu.fxsave.data(), ctx_->guest_fx, 512);
  s.fpu.xcr0 = xcr0_;
  s.fpu.xsave_extended = xsave_extended_;
  s.events.exception = pending_exception_;
  s.events.interrupt = pending_interrupt_;
  s.events.nmi_pending = nmi_pending_;
  s.events.nmi_masked = nmi_masked_;
  s.events.interrupt_shadow = interrupt_shadow_;
  s.run_state = run_state_;
  return s;
}

void Vcpu::add_counters(api::Counters& out) const {
  const auto& t = translator_->stats;
  const auto& m = shadow_->stats;
  auto add = [&](const char* n, std::uint64_t v) { out.emplace_back(n, v); };
  add("bt.blocks_translated", t.blocks_translated);
  add("bt.guest_insns_translated", t.guest_insns_translated);
  add("bt.dispatcher_lookups", counters_.dispatches);
  add("bt.translation_cache_hits", counters_.cache_hits + ctx_->indirect_hits);
  add("bt.chained_jumps", t.chains);
  add("bt.indirect_lookup_hits", ctx_->indirect_hits);
  add("bt.indirect_lookup_misses", counters_.indirect_misses);
  add("bt.irq_window_exits", counters_.irq_window_exits);
  add("bt.cache_flushes", t.flushes);
  add("bt.smc_invalidations", t.smc_invalidations);
  add("bt.special_exits", counters_.special_exits);
  add("bt.irq_check_exits", counters_.irq_exits);
  add("bt.monitor_sites_marked", sites_.marks);
  add("bt.monitor_sites_unmarked", sites_.unmarks);
  add("bt.platform_polls", counters_.platform_polls);
  add("bt.monitor_calls", counters_.monitor_calls);
  add("bt.monitor_calls_in_cache", counters_.monitor_calls_in_cache);
  add("bt.io_exits", counters_.io_exits);
  add("bt.mmio_exits", counters_.mmio_exits);
  add("bt.wrapped_accesses", counters_.wrapped_accesses);
  add("bt.hlt_exits", counters_.hlt_exits);
  add("bt.interrupts_delivered", counters_.interrupts);
  add("bt.nmis_delivered", counters_.nmis);
  add("bt.exceptions_delivered", counters_.exceptions);
  add("swmmu.hidden_faults", m.hidden_faults);
  add("swmmu.true_faults", m.true_faults);
  add("swmmu.traced_pt_writes", m.pt_writes);
  add("swmmu.space_switches", m.switches);
  add("swmmu.space_switch_hits", m.switch_hits);
  add("swmmu.space_rebuilds", m.rebuilds);
  add("swmmu.space_evictions", m.evictions);
  add("swmmu.map_resets", m.map_resets);
  add("swmmu.dirty_log_faults", m.dirty_log_faults);
  add("swmmu.prefilled_pages", m.prefilled);
}

std::string Vcpu::dump() const {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "EAX=%08x EBX=%08x ECX=%08x EDX=%08x ESI=%08x EDI=%08x EBP=%08x ESP=%08x EIP=%08x EFL=%08x "
                "CPL=%u CS=%04x SS=%04x DS=%04x CR0=%08x CR2=%08x CR3=%08x CR4=%08x",
                unsigned(ctx_->gpr[0]), unsigned(ctx_->gpr[3]), unsigned(ctx_->gpr[1]), unsigned(ctx_->gpr[2]),
                unsigned(ctx_->gpr[6]), unsigned(ctx_->gpr[7]), unsigned(ctx_->gpr[5]), unsigned(ctx_->gpr[4]),
                eip_, eflags(), cpl_, cs_.selector, ss_.selector, ds_.selector, unsigned(cr0_), unsigned(cr2_),
                unsigned(cr3_), unsigned(cr4_));
  return buf;
}

// ---------------------------------------------------------------- dirty pages

bool Vcpu::collect_dirty_pages(std::vector<std::uint64_t>& bitmap) {
  dirty_.collect(bitmap);
  return true;
}

// ---------------------------------------------------------------- signals

void Vcpu::block_poll() {
  poll_blocked_.store(true, std::memory_order_seq_cst);
  mprotect(poll_page(), 4096, PROT_NONE);
}

void Vcpu::kick() {
  if (running_vcpu() == this && in_run_ && !in_guest_) {
    // From the vCPU's own thread, inside a platform call the monitor made
    // (e.g. a TPR write that unmasks an interrupt): the dispatcher looks at
    // the platform before it runs guest code again; nothing to interrupt.
    poll_needed_.store(true, std::memory_order_release);
    return;
  }
  poll_needed_.store(true, std::memory_order_release);
  kicked_.store(true, std::memory_order_seq_cst);
  block_poll();
}

// ---------------------------------------------------------------- run loop

api::RunExit Vcpu::run() {
  api::RunExit ex;
  // Waiting for SIPI: no guest code until the host loads the start-up state.
  if (run_state_ == api::RunState::WaitForSipi) return ex;
  // From here on only this thread touches the shadow MMU: a collector asks
  // it instead of collecting concurrently with guest writes.
  dirty_.enter_run();
  bind_running_vcpu(this);
  in_run_ = true;
  poll_needed_.store(true);
  tick_.start_on_this_thread();
  struct Guard {
    Vcpu* v;
    ~Guard() {
      v->dirty_.leave_run();
      v->in_run_ = false;
      v->in_guest_ = false;
      bind_running_vcpu(nullptr);
      v->tick_.stop();
    }
  } guard{this};
  if (sigsetjmp(bug_jmp_, 1) != 0) {
    ex.kind = api::ExitKind::Error;
    ex.diagnostic = bug_message_ + "; " + dump();
    return ex;
  }
  for (;;) {
    monitor_walks_next_iteration();  // guest code may have changed its page tables since
    if (dirty_.requested()) dirty_.serve();
    if (!long_mode_entered_.empty()) {  // BT32 cannot go on: the host switches modes or stops
      ex.kind = api::ExitKind::ModeChange;
      ex.diagnostic = long_mode_entered_;
      return ex;
    }
    if (kicked_.exchange(false)) {
      ex.kind = api::ExitKind::Stopped;
      return ex;
    }
    // The platform's state (stop requests, CPU events, interrupt lines, timer
    // deadlines) only changes through our own platform calls or with a kick
    // (the interrupt notifier, stop requests) or the host tick: look at it
    // then, and only then (it takes the machine's lock and reads the clock).
    const bool poll = poll_needed_.exchange(false, std::memory_order_acq_rel) | written_platform_changed() |
                      platform_called_;
    platform_called_ = false;
    if (!poll && platform_read_ && platform_.stop_requested()) {
      ex.kind = api::ExitKind::Stopped;
      return ex;
    }
    platform_read_ = false;
    if (poll && poll_platform()) {
      ex.kind = api::ExitKind::Stopped;
      return ex;
    }
    try {
      // Pending events.
      if (pending_exception_) {
        auto pe = *pending_exception_;
        pending_exception_.reset();
        if (!deliver_exception(GuestException{pe.vector, pe.has_error_code, pe.error_code})) {
          ex.kind = api::ExitKind::Shutdown;
          ex.diagnostic = "triple fault; " + dump();
          run_state_ = api::RunState::Shutdown;
          return ex;
        }
      }
      // An NMI is blocked from the delivery of the last one until the next IRET.
      if (nmi_pending_ && !nmi_masked_) {
        nmi_pending_ = false;
        nmi_masked_ = true;
        run_state_ = api::RunState::Runnable;
        ++counters_.nmis;
        deliver(2, false, 0, false, eip_);
        continue;
      }
      const bool can_irq = (ctx_->sysflags & kIF) && !interrupt_shadow_;
      interrupt_shadow_ = false;
      // For inline STI/POPF: is an interrupt waiting for IF?
      ctx_->irq_hint = !(ctx_->sysflags & kIF) && (pending_interrupt_ || irq_line_);
      if (can_irq && !pending_interrupt_ && irq_line_) irq_line_ = platform_.interrupt_pending(index_);  // still raised?
      if (can_irq && (pending_interrupt_ || irq_line_)) {
        std::uint8_t vec = pending_interrupt_ ? *pending_interrupt_ : platform_.acknowledge_interrupt(index_);
        pending_interrupt_.reset();
        platform_called_ = true;
        run_state_ = api::RunState::Runnable;
        ++counters_.interrupts;
        deliver(vec, false, 0, false, eip_);
        continue;
      }
      if (run_state_ == api::RunState::Halted) {
        const bool interrupts_enabled = ctx_->sysflags & kIF;
        dirty_.park();
        if (interrupts_enabled)
          platform_.wait_for_interrupt(index_);
        else
          platform_.wait_for_cpu_event(index_);  // only an NMI (or INIT) wakes it
        dirty_.unpark();
        platform_called_ = true;
        continue;
      }
      if (run_state_ == api::RunState::Shutdown) {
        ex.kind = api::ExitKind::Shutdown;
        ex.diagnostic = "vCPU is shut down; " + dump();
        return ex;
      }
      StepResult r = step();
      if (r == StepResult::Error) {
        ex.kind = api::ExitKind::Error;
        ex.diagnostic = bug_message_ + "; " + dump();
        return ex;
      }
      if (r == StepResult::Shutdown) {
        ex.kind = api::ExitKind::Shutdown;
        ex.diagnostic = "triple fault; " + dump();
        run_state_ = api::RunState::Shutdown;
        return ex;
      }
    } catch (const GuestException& ge) {
      ++counters_.exceptions;
      bool delivered;
      try {
        delivered = deliver_exception(ge);
      } catch (const std::exception& e) {  // delivery met something not supported (a 16-bit TSS, ...)
        ex.kind = api::ExitKind::Error;
        ex.diagnostic = std::string(e.what()) + "; " + dump();
        return ex;
      }
      if (!delivered) {
        ex.kind = api::ExitKind::Shutdown;
        ex.diagnostic = "triple fault; " + dump();
        run_state_ = api::RunState::Shutdown;
        return ex;
      }
    } catch (const std::exception& e) {
      ex.kind = api::ExitKind::Error;
      ex.diagnostic = std::string(e.what()) + "; " + dump();
      return ex;
    }
  }
}

bool Vcpu::poll_platform() {
  ++counters_.platform_polls;
  seen_changes_ = platform_.change_count();  // before looking: a change meanwhile is seen next time
  platform_written_ = false;
  if (platform_.stop_requested()) return true;
  const api::CpuEvents events = platform_.cpu_events(index_);
  if (events.init || events.startup) return true;  // the host applies them to the state
  if (events.nmi && platform_.acknowledge_nmi(index_)) nmi_pending_ = true;
  irq_line_ = platform_.interrupt_pending(index_);
  tick_.arm_deadline(platform_);
  return false;
}

void Vcpu::activate_region() {
  const bool user = cpl_ == 3;
  const RecentRegions::View view = RecentRegions::view(user, paging().smap_suspended, cr0_, cr3_, cr4_, efer_);
  region_ = recent_regions_.find(view, shadow_->stats.evictions);
  if (region_) {
    shadow_->reactivate(region_);
  } else {
    region_ = shadow_->activate(make_region_key(paging(), user));
    recent_regions_.remember(view, region_, shadow_->stats.evictions);  // (activate may have evicted another)
  }
  ctx_->fast_table = reinterpret_cast<std::uint64_t>(region_->fast);
  ctx_->region_base = reinterpret_cast<std::uint64_t>(region_->base);  // translated code's r12
}

Block* Vcpu::lookup_slow(std::uint32_t eip) {
  ++counters_.dispatches;
  if (tkey_ & kTKeyLimits) {
    // Code at an offset beyond CS's limit: #GP(0) there.  Blocks (and their
    // chains) translated under a larger CS limit may run past this one.
    if (eip > cs_.limit) raise(13, true, 0);
    if (cs_.limit < translated_cs_limit_) {
      translator_->flush();
      shadow_->clear_block_maps();
      pending_patch_ = 0;
      translated_cs_limit_ = cs_.limit;
    }
  }
  // Region maps and lookup tables are keyed by linear address (CS base +
  // EIP); an alias of the same linear address under another CS base is a miss.
  const std::uint32_t cs_base = static_cast<std::uint32_t>(cs_.base);
  const std::uint32_t la = cs_base + eip;
  // The last lookups, in front of the region's hash map (lookup() probed
  // them already, except in the limits flavour).  A single step (TF, or an
  // instruction breakpoint passed with RF) needs a one-instruction
  // translation of its own.
  if ((tkey_ & kTKeyLimits) && !single_step_) {
    if (Block* b = recent_lookups_.find(shadow_->block_map_generation(), region_, la, eip)) {
      ++counters_.cache_hits;
      return b;
    }
  }
  auto it = single_step_ ? region_->blocks.end() : region_->blocks.find(la);
  if (it != region_->blocks.end()) {
    Block* b = static_cast<Block*>(it->second);
    if (b->valid && b->eip == eip) {
      ++counters_.cache_hits;
      recent_lookups_.remember(shadow_->block_map_generation(), region_, la, b);
      return b;
    }
  }
  const bool user = cpl_ == 3;
  const PhysMem& pm = shadow_->phys();
  WalkResult w = walk(pm, paging(), la, Access{false, user, true}, true);
  if (!w.ok) {
    cr2_ = la;
    raise(14, true, w.error);
  }
  if (w.pa >= pm.size) {
    // Unclaimed bus space reads as all ones, and 0xff 0xff is an invalid
    // opcode: #UD like a PC.  Code that a device provides (ROM) is not run.
    if (platform_read().mmio_read(index_, w.pa & ~7ull, 8) == ~0ull) raise(6);
    throw std::runtime_error("bt-swmmu: guest executes outside RAM (MMIO/ROM code is not supported)");
  }
  const std::uint32_t next_page = (la & ~0xfffu) + 0x1000;
  WalkResult w2 = walk(pm, paging(), next_page, Access{false, user, true}, false);
  const bool have2 = w2.ok && (w2.pa & ~0xfffull) < pm.size;
  Block* b = single_step_ ? nullptr : translator_->find(eip, w.pa, tkey_, cs_base);
  if (b && b->n_pages == 2 && (!have2 || (w2.pa & ~0xfffull) != b->pa_page[1])) b = nullptr;
  if (b) {
    ++counters_.cache_hits;
  } else {
    if (translator_->needs_flush()) {
      translator_->flush();
      shadow_->clear_block_maps();
      pending_patch_ = 0;
    }
    std::uint8_t buf[4096 + 16];
    CodeWindow cw;
    cw.cs_base = cs_base;
    cw.cs_limit = static_cast<std::uint32_t>(cs_.limit);
    cw.first_page_bytes = next_page - la;
    std::memcpy(buf, pm.base + w.pa, cw.first_page_bytes);
    cw.total = cw.first_page_bytes;
    cw.pa_page[0] = w.pa & ~0xfffull;
    if (have2) {
      cw.pa_page[1] = w2.pa & ~0xfffull;
      std::memcpy(buf + cw.total, pm.base + cw.pa_page[1], 16);
      cw.total += 16;
    }
    cw.bytes = buf;
    TranslateStatus st = translator_->translate(eip, tkey_, cw, &b, single_step_ ? 1 : Translator::kMaxInsns,
                                                single_step_);
    if (st == TranslateStatus::FetchFault) {
      if (w2.ok) throw std::runtime_error("bt-swmmu: instruction fetch across into MMIO");
      walk(pm, paging(), next_page, Access{false, user, true}, true);
      cr2_ = next_page;
      raise(14, true, w2.error);
    }
    if (st == TranslateStatus::Undefined) raise(6);
    if (st == TranslateStatus::CodeLimit) raise(13, true, 0);
    if (tkey_ & kTKeyLimits) translated_cs_limit_ = std::max(translated_cs_limit_, cs_.limit);
    if (!single_step_) {
      for (int i = 0; i < b->n_pages; ++i) shadow_->protect_code_page(b->pa_page[i]);
    }
  }
  if (b->n_pages == 2) walk(pm, paging(), next_page, Access{false, user, true}, true);
  if (!single_step_) {
    region_->blocks[la] = b;
    shadow_->note_block_maps_changed();
    shadow_->note_code_derivation(region_, la, w);
    if (b->n_pages == 2) shadow_->note_code_derivation(region_, next_page, w2);
    if (b->entry) region_->fast[la & 0xffff] = FastEntry{-static_cast<std::int64_t>(fast_key(cs_base, eip)) - 1,
                                                            reinterpret_cast<std::uint64_t>(b->entry)};
  }
  return b;
}

// At an enabled instruction breakpoint (CS:EIP's linear address in DRn):
// the #DB fault with DR6.Bn; with EFLAGS.RF set the instruction instead runs
// once on its own (a transient translation has no breakpoint) and RF clears.
std::optional<Vcpu::StepResult> Vcpu::code_breakpoint() {
  const std::uint32_t la = code_linear(eip_);
  if (!code_breakpoints_.at(la)) return std::nullopt;
  if (ctx_->sysflags & eflags_bits::kRF) {
    single_step_ = true;
    return std::nullopt;
  }
  dr_[6] = (dr_[6] & ~0xfull) | CodeBreakpoints::hits(dr_, la);
  return deliver_fault(GuestException{1, false, 0});
}

Vcpu::StepResult Vcpu::step() {
  // EFLAGS.TF at the start of an instruction: it runs alone, and a
  // single-step #DB (a trap, DR6.BS) follows when it completed.
  const bool traced_write_step = single_step_;
  const bool trap_flag = (ctx_->sysflags & kEflagsTf) != 0;
  if (!trap_flag) return step_instructions(traced_write_step);
  single_step_ = true;
  const std::uint64_t deliveries = deliveries_;
  bool executed = false;
  ss_load_shadow_ = false;
  const StepResult r = step_instructions(traced_write_step, &executed);
  if (r != StepResult::Continue || !executed || deliveries_ != deliveries) return r;
  // MOV SS and POP SS hold the trap back until the next instruction has run
  // (it runs single-stepped too: TF is still set).
  if (ss_load_shadow_) return r;
  dr_[6] |= 0x4000;  // BS
  return deliver_fault(GuestException{1, false, 0});
}

// One dispatcher step: a block of translated code (or one instruction of
// the monitor's).  `executed`: set when the guest ran (not when a kick or an
// interrupt poll at the block's entry left first).
Vcpu::StepResult Vcpu::step_instructions(bool traced_write_step, bool* executed) {
  // Region block maps hold blocks of one flavour; the user/supervisor part of
  // the flavour follows the region view, the rest clears the maps on change.
  if (breakpoints_flush_pending_) {  // the instruction breakpoints changed (debug_registers_changed)
    translator_->flush();
    shadow_->clear_block_maps();
    pending_patch_ = 0;
    breakpoints_flush_pending_ = false;
  }
  const TKey tk = flavour_key();
  if (tk != (tkey_ & ~kTKeyUser)) {
    shadow_->clear_block_maps();
    pending_patch_ = 0;
  }
  tkey_ = tk | (cpl_ == 3 ? kTKeyUser : 0);
  activate_region();
  view_ = CachedView{};  // segment bases or block maps may have changed outside monitor calls
  if (code_breakpoints_.any())
    if (const auto r = code_breakpoint()) return *r;
  // RF lasts one instruction, and only breakpoints read it: cleared here,
  // set again when the block did not run.
  const bool resume_flag = ctx_->sysflags & eflags_bits::kRF;
  ctx_->sysflags &= ~eflags_bits::kRF;
  Block* b = lookup(eip_);
  if (pending_patch_) {
    // The jump's own target: an event delivered since may have moved CS:EIP.
    if (pending_patch_target_ == eip_ && pending_patch_cs_base_ == b->cs_base && b->cs_base == cs_.base &&
        b->entry && b->valid && b->n_pages == 1 && !single_step_)
      translator_->chain(pending_patch_, b);
    pending_patch_ = 0;
  }
  const bool stepping = single_step_;
  single_step_ = false;
  struct EndStep {
    ShadowMmu* s;
    bool on;
    ~EndStep() { if (on) s->end_write_through(); }
  } end_step{shadow_.get(), traced_write_step};
  // A special block with an entry is run like any block: its monitor call
  // emulates it and goes on in translated code (no round trip per special
  // instruction after an exit).  Single-stepped ones have no entry.
  if (b->special && !b->entry) {
    ++counters_.special_exits;
    if (executed) *executed = true;
    if (b->monitor_site)
      return run_monitor_site(b);
    else
      emulate(eip_, false, b);
    return StepResult::Continue;
  }
  if (poll_blocked_.exchange(false)) mprotect(poll_page(), 4096, PROT_READ);
  if (kicked_.load() || poll_needed_.load(std::memory_order_acquire)) {
    if (resume_flag) ctx_->sysflags |= eflags_bits::kRF;
    return StepResult::Continue;
  }
  sync_seg_bases();
  refresh_windows();
  in_guest_ = true;
  const std::uint64_t reason = translator_->enter(ctx_, b->entry);
  in_guest_ = false;
  // Not run: the entry poll left first; a write to a traced page runs again, alone.
  const bool ran = reason != kExitInterrupt && !(reason == kExitFault && ctx_->fault_kind == FaultKind::ProtectedWrite);
  if (executed) *executed = ran;
  if (!ran && resume_flag) ctx_->sysflags |= eflags_bits::kRF;
  return dispatch_exit(reason, stepping);
}

// ---------------------------------------------------------------- adaptive translation

void Vcpu::drop_translations_of(std::uint64_t pa_page) {
  dropped_.clear();
  translator_->invalidate_page(pa_page, &dropped_);
  shadow_->forget_blocks(dropped_);  // translations of other pages stay reachable
  pending_patch_ = 0;
}

// A fault at `eip` took the monitor's attention (a host signal each time):
// once the instruction is one the monitor can run exactly, and it keeps
// faulting, translate it as a monitor call.
void Vcpu::note_fault_site(std::uint32_t eip, AdaptiveSites::Fault kind) {
  const PhysMem& pm = shadow_->phys();
  const WalkResult w = walk(pm, paging(), code_linear(eip), Access{false, cpl_ == 3, true}, false);
  if (!w.ok || w.pa >= pm.size) return;
  DecodedInsn scratch;
  const DecodedInsn* d = nullptr;
  try {
    d = &fetch_decoded(eip, nullptr, scratch);
  } catch (const GuestException&) {
    return;
  }
  if ((code_linear(eip) & 0xfff) + d->insn.length > 0x1000) return;
  bool eligible = false;
  if (kind == AdaptiveSites::Fault::Divide) {
    eligible = d->insn.mnemonic == ZYDIS_MNEMONIC_DIV || d->insn.mnemonic == ZYDIS_MNEMONIC_IDIV;
  } else if (classify(d->insn, d->ops, tkey_) == InsnClass::Plain) {
    // One explicit memory operand and nothing else in memory: what
    // emulate_mmio_native runs exactly, against RAM as well as devices.
    int mem = 0;
    bool other = false;
    for (unsigned i = 0; i < d->insn.operand_count; ++i) {
      const auto& op = d->ops[i];
      if (op.type != ZYDIS_OPERAND_TYPE_MEMORY) continue;
      if (op.visibility != ZYDIS_OPERAND_VISIBILITY_EXPLICIT || op.mem.type != ZYDIS_MEMOP_TYPE_MEM) other = true;
      ++mem;
    }
    eligible = mem == 1 && !other && d->insn.mnemonic != ZYDIS_MNEMONIC_LEA &&
               d->insn.meta.category != ZYDIS_CATEGORY_BITBYTE;
  }
  if (eligible && sites_.fault(w.pa, kind)) drop_translations_of(w.pa & ~0xfffull);
}

// An instruction translated as a monitor call.  When it ran without needing
// the monitor (RAM the shadow could map, no fault, no traced page) for long
// enough, it goes back to native translation.
Vcpu::StepResult Vcpu::run_monitor_site(Block* b) {
  const std::uint64_t pa = b->pa_page[0] | (b->linear() & 0xfff);
  // The faults these sites exist for are found before emulating, and
  // delivered without unwinding the monitor's stack.
  DecodedInsn scratch;
  const DecodedInsn& d = fetch_decoded(eip_, b, scratch);
  if (auto fault = monitor_site_fault(d)) {
    sites_.dirty(pa);
    return deliver_fault(*fault);
  }
  monitor_needed_ = false;
  const std::uint64_t mmio_before = counters_.mmio_exits;
  try {
    emulate(eip_, true, b);
  } catch (const GuestException&) {
    sites_.dirty(pa);
    throw;
  }
  if (monitor_needed_ || counters_.mmio_exits != mmio_before)
    sites_.dirty(pa);
  else if (sites_.clean(pa))
    drop_translations_of(pa & ~0xfffull);
  return StepResult::Continue;
}

// The #DE or #PF a monitor site's instruction raises, if it does: checked
// with walks that change nothing, so emulating it afterwards is exact.
std::optional<GuestException> Vcpu::monitor_site_fault(const DecodedInsn& d) {
  const auto& insn = d.insn;
  if (insn.mnemonic == ZYDIS_MNEMONIC_DIV || insn.mnemonic == ZYDIS_MNEMONIC_IDIV) {
    const auto& op = d.ops[0];
    if (op.type != ZYDIS_OPERAND_TYPE_REGISTER) return std::nullopt;  // a memory divisor: emulate() checks
    if (divide_faults(insn, get_reg(op.reg.value))) return GuestException{0, false, 0};
    return std::nullopt;
  }
  for (unsigned i = 0; i < insn.operand_count; ++i) {
    const auto& op = d.ops[i];
    if (op.type != ZYDIS_OPERAND_TYPE_MEMORY || op.visibility != ZYDIS_OPERAND_VISIBILITY_EXPLICIT) continue;
    const unsigned size = op.size / 8;
    if (size == 0) return std::nullopt;
    const bool writes = op.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE;
    const std::uint32_t la = ea(d.insn, op);
    const PagingRegs regs = paging();
    const Access access{writes, cpl_ == 3, false};
    for (std::uint32_t at = la; at - la < size; at = (at & ~0xfffu) + 0x1000) {
      if (walker_.allows(regs, at, access)) continue;  // the site's last run walked it (traced tables)
      const WalkResult w = walk(shadow_->phys(), regs, at, access, false);
      if (!w.ok) {
        cr2_ = at;
        return GuestException{14, true, w.error};
      }
      walker_.note_check(regs, at, access, w, [&](std::uint64_t page) { return shadow_->is_pt_page(page); });
    }
    return std::nullopt;
  }
  return std::nullopt;
}

Vcpu::StepResult Vcpu::deliver_fault(const GuestException& ex) {
  ++counters_.exceptions;
  return deliver_exception(ex) ? StepResult::Continue : StepResult::Shutdown;
}

// ---------------------------------------------------------------- memory

std::uint64_t Vcpu::lin_to_phys(std::uint32_t la, bool write, bool user, bool fetch) {
  const ShadowMmu& shadow = *shadow_;
  const Outcome<std::uint64_t> pa = walker_.translate(shadow.phys(), paging(), la, Access{write, user, fetch},
                                                      [&](std::uint64_t page) { return shadow.is_pt_page(page); });
  if (!pa.ok()) {
    cr2_ = la;
    throw pa.fault();
  }
  return pa.value();
}

std::uint64_t Vcpu::read_phys(std::uint64_t pa, unsigned size) {
  const PhysMem& pm = shadow_->phys();
  if (pa + size <= pm.size) {
    // Fixed-size loads (a variable memcpy is a call and a store-forwarding stall).
    const std::uint8_t* p = pm.base + pa;
    switch (size) {
      case 1: return *p;
      case 2: { std::uint16_t v; std::memcpy(&v, p, 2); return v; }
      case 4: { std::uint32_t v; std::memcpy(&v, p, 4); return v; }
      case 8: { std::uint64_t v; std::memcpy(&v, p, 8); return v; }
      default: { std::uint64_t v = 0; std::memcpy(&v, p, size); return v; }
    }
  }
  ++counters_.mmio_exits;
  return platform_read().mmio_read(index_, pa, size);
}

void Vcpu::note_guest_write(std::uint64_t pa, unsigned size) {
  const std::uint64_t pa_page = pa & ~0xfffull;
  walker_.drop_table(pa_page);
  if (shadow_->dirty_logging()) shadow_->mark_dirty(pa_page);
  if (shadow_->is_pt_page(pa_page) || shadow_->is_code_page(pa_page)) monitor_needed_ = true;
  if (shadow_->is_pt_page(pa_page)) shadow_->pt_entries_written(pa_page, static_cast<std::uint32_t>(pa & 0xfff), size);
  if (shadow_->is_code_page(pa_page)) {
    drop_translations_of(pa_page);
    shadow_->release_code_page(pa_page);
  }
}

void Vcpu::write_phys(std::uint64_t pa, unsigned size, std::uint64_t v) {
  const PhysMem& pm = shadow_->phys();
  if (pa + size <= pm.size) {
    note_guest_write(pa, size);
    std::uint8_t* p = pm.base + pa;
    switch (size) {
      case 1: *p = static_cast<std::uint8_t>(v); break;
      case 2: { const auto w = static_cast<std::uint16_t>(v); std::memcpy(p, &w, 2); break; }
      case 4: { const auto w = static_cast<std::uint32_t>(v); std::memcpy(p, &w, 4); break; }
      default: std::memcpy(p, &v, size); break;
    }
    return;
  }
  ++counters_.mmio_exits;
  platform_write().mmio_write(index_, pa, size, v);
}

std::uint32_t Vcpu::read(std::uint32_t la, unsigned size, bool user, bool fetch) {
  if ((la & 0xfff) + size > 0x1000) {
    std::uint32_t v = 0;
    for (unsigned i = 0; i < size; ++i) v |= read(la + i, 1, user, fetch) << (8 * i);
    return v;
  }
  if (!fetch) note_data_access(la, size, false);
  return static_cast<std::uint32_t>(read_phys(lin_to_phys(la, false, user, fetch), size));
}

void Vcpu::write(std::uint32_t la, unsigned size, std::uint32_t v, bool user) {
  if ((la & 0xfff) + size > 0x1000) {
    // Check both pages before writing anything.
    lin_to_phys(la, true, user, false);
    lin_to_phys(la + size - 1, true, user, false);
    for (unsigned i = 0; i < size; ++i) write(la + i, 1, (v >> (8 * i)) & 0xff, user);
    return;
  }
  note_data_access(la, size, true);
  write_phys(lin_to_phys(la, true, user, false), size, v);
}

// From ss_ itself, not the Context's windows: event delivery and far
// transfers push on a new stack before the windows are synced.
void Vcpu::check_stack_access(std::uint32_t offset, unsigned size, bool write) {
  const SegmentWindows w = segment_windows(ss_, !real_mode() && !v86());
  if (!(write ? w.write : w.read).allows(offset, size)) raise(12, true, 0);
}

// The stack pointer has SS.B's width: ESP, or SP wrapping at 64 KiB with
// ESP's upper half kept.

void Vcpu::push32(std::uint32_t v) { push(v, 4); }

void Vcpu::push(std::uint32_t v, unsigned bytes) {
  const std::uint32_t mask = stack_mask();
  const std::uint32_t sp = (reg32(4) - bytes) & mask;
  check_stack_access(sp, bytes, true);
  write(sp + static_cast<std::uint32_t>(ss_.base), bytes, bytes == 4 ? v : v & 0xffff, cpl_ == 3);
  reg32(4) = (reg32(4) & ~mask) | sp;
}

std::uint32_t Vcpu::pop(unsigned bytes) {
  const std::uint32_t mask = stack_mask();
  const std::uint32_t sp = reg32(4) & mask;
  check_stack_access(sp, bytes, false);
  const std::uint32_t v = read(sp + static_cast<std::uint32_t>(ss_.base), bytes, cpl_ == 3);
  reg32(4) = (reg32(4) & ~mask) | ((sp + bytes) & mask);
  return v;
}

std::uint32_t Vcpu::pop32() { return pop(4); }

void Vcpu::push_words(const std::uint32_t* words, unsigned n) {
  if (stack_mask() != 0xffffffffu) {  // a 16-bit stack may wrap inside the frame
    const std::uint32_t esp0 = reg32(4);
    try {
      for (unsigned i = 0; i < n; ++i) push32(words[i]);
    } catch (...) {
      reg32(4) = esp0;
      throw;
    }
    return;
  }
  const std::uint32_t esp = reg32(4) - 4 * n;
  check_stack_access(esp, 4 * n, true);
  const std::uint32_t la = esp + static_cast<std::uint32_t>(ss_.base);
  if ((la & 0xfff) + 4 * n > 0x1000) {
    for (unsigned i = 0; i < n; ++i) push32(words[i]);
    return;
  }
  const std::uint64_t pa = lin_to_phys(la, true, cpl_ == 3, false);
  note_data_access(la, 4 * n, true);
  for (unsigned i = 0; i < n; ++i) write_phys(pa + 4 * (n - 1 - i), 4, words[i]);
  reg32(4) = esp;
}

void Vcpu::pop_words(std::uint32_t* words, unsigned n) {
  if (stack_mask() == 0xffffffffu) check_stack_access(reg32(4), 4 * n, false);
  const std::uint32_t la = reg32(4) + static_cast<std::uint32_t>(ss_.base);
  if ((la & 0xfff) + 4 * n > 0x1000 || stack_mask() != 0xffffffffu) {
    for (unsigned i = 0; i < n; ++i) words[i] = pop32();
    return;
  }
  const std::uint64_t pa = lin_to_phys(la, false, cpl_ == 3, false);
  note_data_access(la, 4 * n, false);
  for (unsigned i = 0; i < n; ++i) words[i] = static_cast<std::uint32_t>(read_phys(pa + 4 * i, 4));
  reg32(4) += 4 * n;
}

std::uint64_t Vcpu::read_qword(std::uint32_t la, bool user) {
  if ((la & 0xfff) > 0xff8) return read(la, 4, user) | (static_cast<std::uint64_t>(read(la + 4, 4, user)) << 32);
  note_data_access(la, 8, false);
  return read_phys(lin_to_phys(la, false, user, false), 8);
}

// ---------------------------------------------------------------- segments

std::uint64_t Vcpu::read_descriptor(std::uint16_t sel, std::uint32_t error) {
  const Outcome<std::uint32_t> at = locate_descriptor(sel, gdtr_, ldtr_, error);
  if (!at.ok()) throw at.fault();
  return read_qword(at.value(), false);
}

void Vcpu::load_segment(int sreg, std::uint16_t sel) {
  if (real_mode() || v86()) {
    load_segment_real(sreg, sel);
    return;
  }
  if ((sel & 0xfffc) == 0) {
    if (sreg == 2) raise(13, true, 0);
    api::Segment s;
    s.selector = sel;
    s.unusable = true;
    replace_segment(seg(sreg), s);
    return;
  }
  std::uint64_t raw = read_descriptor(sel, sel & 0xfffc);
  api::Segment s = decoded_.decode(raw, sel);
  require(sreg == 2 ? check_stack_segment_load(s, sel, cpl_) : check_data_segment_load(s, sel, cpl_));
  if (!(s.type & 1)) {  // set the accessed bit
    const std::uint32_t la = static_cast<std::uint32_t>(((sel & 4) ? ldtr_.base : gdtr_.base) + (sel & ~7u) + 5);
    write(la, 1, static_cast<std::uint32_t>((raw >> 40) & 0xff) | 1, false);
    s.type |= 1;
  }
  replace_segment(seg(sreg), s);
}

void Vcpu::load_cs(std::uint16_t sel, unsigned new_cpl) { load_cs_descriptor(sel, read_descriptor(sel, sel & 0xfffc), new_cpl); }

void Vcpu::load_cs_descriptor(std::uint16_t sel, std::uint64_t raw, unsigned new_cpl) {
  const api::Segment& s = decoded_.decode(raw, static_cast<std::uint16_t>((sel & ~3u) | new_cpl));
  require(check_code_segment(s, sel));
  if (s.l) throw std::runtime_error("bt-swmmu: 64-bit code segment: BT64 is not implemented");
  note_segment_shape(cs_, s, 1);
  cs_ = s;  // copied whole, then the accessed bit (not the other way round: a store-forwarding stall)
  cs_.type |= 1;
  cpl_ = new_cpl;
  write_seg_bases();
}

// ---------------------------------------------------------------- far transfers

void Vcpu::null_inaccessible_data_segments() {
  for (int i : {0, 3, 4, 5}) {  // ES DS FS GS: null if not accessible at the new CPL
    api::Segment& s = seg(i);
    const bool conforming_code = (s.type & 8) && (s.type & 4);
    if (!s.unusable && !conforming_code && s.dpl < cpl_) {
      s = api::Segment{};
      s.unusable = true;
      windows_stale_ = true;
    }
  }
  write_seg_bases();
}

void Vcpu::far_transfer(std::uint16_t sel, std::uint32_t off, bool call, std::uint32_t ret_eip, unsigned opsize) {
  if (real_mode() || v86()) {
    far_transfer_real(sel, off, call, ret_eip, opsize);
    return;
  }
  if ((sel & 0xfffc) == 0) raise(13, true, 0);
  api::Segment t = decode_segment_descriptor(read_descriptor(sel, sel & 0xfffc), sel);
  if (!t.s) {
    if (t.type == 5 || t.type == 9 || t.type == 1 || t.type == 0xb || t.type == 3) {
      far_transfer_to_task(sel, t, call, ret_eip);
      return;
    }
    if (t.type == 0xc || t.type == 4) {
      far_transfer_through_call_gate(sel, call, ret_eip);
      return;
    }
    raise(13, true, sel & 0xfffc);
  }
  require(check_far_transfer_target(t, sel, cpl_));
  // A 16-bit operand size pushes words and leaves a 16-bit EIP.
  const unsigned bytes = opsize / 8;
  if (call) {
    const std::uint32_t esp0 = reg32(4);
    try {
      push(cs_.selector, bytes);
      push(ret_eip, bytes);
    } catch (...) {
      reg32(4) = esp0;
      throw;
    }
  }
  load_cs(sel, cpl_);
  eip_ = bytes == 2 ? off & 0xffff : off;
}

}  // namespace modevisor::bt
