#include "kernel-driver/kvm_hypervisor.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>

#include "kernel-driver/kvm_abi.hpp"
#include "kernel-driver/kvm_exit.hpp"
#include "kernel-driver/kvm_state.hpp"

namespace modevisor::kvm {

const std::vector<RequiredCapability> kRequiredCapabilities = {
    {"USER_MEMORY", KVM_CAP_USER_MEMORY, "guest RAM as a memory slot"},
    {"SET_TSS_ADDR", KVM_CAP_SET_TSS_ADDR, "real-mode support on VT-x"},
    {"EXT_CPUID", KVM_CAP_EXT_CPUID, "KVM_GET_SUPPORTED_CPUID / KVM_SET_CPUID2"},
    {"IMMEDIATE_EXIT", KVM_CAP_IMMEDIATE_EXIT, "race-free kicks and completing I/O before a state save"},
    {"VCPU_EVENTS", KVM_CAP_VCPU_EVENTS, "pending exceptions, interrupts and NMIs in the saved state"},
    {"SYNC_MMU", KVM_CAP_SYNC_MMU, "guest RAM mapping changes seen by the driver"},
    {"USER_NMI", KVM_CAP_USER_NMI, "NMIs from the platform's local APICs (KVM_NMI)"},
};

namespace {

[[noreturn]] void fail(const std::string& what) {
  throw api::HypervisorError(what + ": " + std::strerror(errno));
}

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept { if (this != &o) { reset(); fd_ = o.fd_; o.fd_ = -1; } return *this; }
  int get() const { return fd_; }
  void reset() { if (fd_ >= 0) ::close(fd_); fd_ = -1; }

 private:
  int fd_ = -1;
};

// The signal that kicks a vCPU thread out of KVM_RUN (and the one its device
// timer raises).  The vCPU thread keeps it blocked except inside KVM_RUN
// (KVM_SET_SIGNAL_MASK), so platform code on that thread never sees EINTR; a
// signal that arrives outside KVM_RUN stays pending and makes the next KVM_RUN
// return at once.  The handler does nothing.
int kick_signal() { return SIGRTMIN + 1; }
void install_kick_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa{};
    sa.sa_handler = [](int) {};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(kick_signal(), &sa, nullptr);
  });
}

constexpr std::uint64_t kTssAddr = 0xfffbd000;       // 3 pages, below the BIOS
constexpr std::uint64_t kIdentityMapAddr = 0xfffbc000;  // 1 page, VT-x real mode without unrestricted guest

// Per-vCPU statistics from KVM_GET_STATS_FD (cumulative u64 counters only).
class KernelStats {
 public:
  explicit KernelStats(int vcpu_fd) {
    fd_ = Fd(::ioctl(vcpu_fd, KVM_GET_STATS_FD, 0));
    if (fd_.get() < 0) return;
    kvm_stats_header h{};
    if (::pread(fd_.get(), &h, sizeof h, 0) != static_cast<ssize_t>(sizeof h)) return;
    const std::size_t desc_size = abi::kStatsDescHeader + h.name_size;
    std::vector<std::uint8_t> descs(desc_size * h.num_desc);
    if (::pread(fd_.get(), descs.data(), descs.size(), h.desc_offset) != static_cast<ssize_t>(descs.size())) return;
    for (std::uint32_t i = 0; i < h.num_desc; ++i) {
      const auto* d = reinterpret_cast<const kvm_stats_desc*>(descs.data() + i * desc_size);
      if ((d->flags & KVM_STATS_TYPE_MASK) != KVM_STATS_TYPE_CUMULATIVE || d->size != 1) continue;
      const char* raw = reinterpret_cast<const char*>(d) + abi::kStatsDescHeader;
      std::string name(raw, strnlen(raw, h.name_size));
      entries_.push_back({std::move(name), h.data_offset + d->offset});
    }
  }
  void append(api::Counters& out) const {
    if (fd_.get() < 0) return;
    for (const auto& e : entries_) {
      std::uint64_t v = 0;
      if (::pread(fd_.get(), &v, sizeof v, e.offset) == sizeof v) out.emplace_back("kvm.kernel." + e.name, v);
    }
  }

 private:
  struct Entry {
    std::string name;
    std::uint64_t offset;
  };
  Fd fd_;
  std::vector<Entry> entries_;
};

// A kvm_msrs argument in its C layout (see kvm_abi.hpp).
class MsrBuffer {
 public:
  explicit MsrBuffer(std::size_t n) : buf_((abi::kMsrsHeader + n * sizeof(kvm_msr_entry) + 7) / 8) {
    const std::uint32_t count = n;
    std::memcpy(buf_.data(), &count, 4);
  }
  void* data() { return buf_.data(); }
  kvm_msr_entry& entry(std::size_t i) {
    return reinterpret_cast<kvm_msr_entry*>(reinterpret_cast<std::uint8_t*>(buf_.data()) + abi::kMsrsHeader)[i];
  }

 private:
  std::vector<std::uint64_t> buf_;  // 8-byte aligned
};

// KVM's VM-wide clock (what kvmclock reads) follows the platform's guest
// time: set from it when the VM is created and after the VM was paused or
// restored (guest time stood still, or continues from a snapshot), by the
// first vCPU whose state is loaded then.
struct VmClock {
  int vm_fd = -1;
  bool adjustable = false;  // KVM_CAP_ADJUST_CLOCK
  std::atomic<bool> resync{true};
  void sync(api::Platform& platform) {
    if (!adjustable || !resync.exchange(false)) return;
    kvm_clock_data data{};
    data.clock = platform.now_ns();
    if (::ioctl(vm_fd, KVM_SET_CLOCK, &data) < 0) fail("KVM_SET_CLOCK");
  }
};

class KvmVcpu final : public api::Vcpu {
 public:
  KvmVcpu(const KvmHypervisor& hv, int vm_fd, unsigned index, api::Platform& platform, const api::CpuidTable& model,
          std::shared_ptr<VmClock> clock)
      : hv_(hv), index_(index), platform_(platform), clock_(std::move(clock)) {
    install_kick_handler();
    fd_ = Fd(::ioctl(vm_fd, KVM_CREATE_VCPU, index));
    if (fd_.get() < 0) fail("KVM_CREATE_VCPU " + std::to_string(index));
    void* m = ::mmap(nullptr, hv.vcpu_mmap_size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
    if (m == MAP_FAILED) fail("mmap of kvm_run");
    run_ = static_cast<kvm_run*>(m);
    const auto entries =
        model.empty() ? filter_cpuid(hv.supported_cpuid(), index) : model_cpuid(hv.supported_cpuid(), model, index);
    std::vector<std::uint8_t> buf(abi::kCpuid2Header + entries.size() * sizeof(kvm_cpuid_entry2));
    const std::uint32_t nent = entries.size();
    std::memcpy(buf.data(), &nent, 4);
    std::memcpy(buf.data() + abi::kCpuid2Header, entries.data(), entries.size() * sizeof(kvm_cpuid_entry2));
    if (::ioctl(fd_.get(), abi::kSetCpuid2, buf.data()) < 0) fail("KVM_SET_CPUID2");
    if (hv.has_stats_fd()) stats_ = std::make_unique<KernelStats>(fd_.get());
  }

  ~KvmVcpu() override {
    if (timer_created_) timer_delete(timer_);
    if (run_) ::munmap(run_, hv_.vcpu_mmap_size());
  }

  api::RunExit run() override {
    // Waiting for SIPI: no guest code until the host loads the start-up state.
    if (wait_for_sipi_) return stopped();
    {
      std::lock_guard lock(thread_mutex_);
      thread_ = pthread_self();
      in_run_ = true;
    }
    struct Leave {
      KvmVcpu* v;
      ~Leave() {
        std::lock_guard lock(v->thread_mutex_);
        v->in_run_ = false;
      }
    } leave{this};
    const SignalGuard signals(fd_.get(), signal_mask_set_);
    ensure_timer();
    ExitContext cx{platform_, index_, apic_base(), counters_, {}};
    for (;;) {
      if (kick_.exchange(false) || platform_.stop_requested()) return stopped();
      const api::CpuEvents events = platform_.cpu_events(index_);
      if (events.init || events.startup) return stopped();  // the host applies them to the state
      if (events.nmi && platform_.acknowledge_nmi(index_)) {
        // KVM queues it and injects it once the guest does not block NMIs.
        if (::ioctl(fd_.get(), KVM_NMI, 0) < 0) return error("KVM_NMI failed: " + std::string(std::strerror(errno)));
        ++counters_.nmis_injected;
        halted_ = false;  // an NMI ends HLT
      }
      if (halted_) {
        const bool if_flag = halted_if_;
        if (if_flag && platform_.interrupt_pending(index_)) {
          halted_ = false;
        } else {
          if (if_flag)
            platform_.wait_for_interrupt(index_);
          else
            platform_.wait_for_cpu_event(index_);  // only an NMI, INIT or STARTUP wakes it
          continue;
        }
      }
      prepare_interrupts();
      arm_timer();
      const auto entered = std::chrono::steady_clock::now();
      const int ran = ::ioctl(fd_.get(), KVM_RUN, 0);
      const int run_errno = errno;
      last_run_ns_ = static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - entered).count());
      holding_ = false;  // the held-back interrupt's slice is over, whatever ended it
      window_opened_ = ran >= 0 ? run_->exit_reason == KVM_EXIT_IRQ_WINDOW_OPEN : window_opened_;
      errno = run_errno;
      if (ran < 0) {
        if (errno == EINTR || errno == EAGAIN) {
          ++counters_.intr;
          run_->immediate_exit = 0;
          SignalGuard::drain();
          continue;
        }
        return error("KVM_RUN failed: " + std::string(std::strerror(errno)));
      }
      pending_completion_ = run_->exit_reason == KVM_EXIT_IO || run_->exit_reason == KVM_EXIT_MMIO;
      cx.apic_base = run_->apic_base ? run_->apic_base : cx.apic_base;
      if (run_->apic_base) report_apic_base(run_->apic_base);
      switch (handle_exit(*run_, cx)) {
        case ExitOutcome::Continue:
          break;
        case ExitOutcome::Halt:
          halted_ = true;
          halted_if_ = run_->if_flag;
          break;
        case ExitOutcome::Shutdown:
          return with_dump(api::ExitKind::Shutdown, cx.reason);
        case ExitOutcome::Error:
          return with_dump(api::ExitKind::Error, cx.reason);
      }
    }
  }

  void kick() override {
    kick_.store(true);
    run_->immediate_exit = 1;
    std::lock_guard lock(thread_mutex_);
    if (in_run_) pthread_kill(thread_, kick_signal());
  }

  api::VcpuState get_state() override {
    complete_pending_io();
    api::VcpuState st;
    kvm_regs regs{};
    if (::ioctl(fd_.get(), KVM_GET_REGS, &regs) < 0) fail("KVM_GET_REGS");
    regs_to_state(regs, st);
    kvm_sregs sregs{};
    if (::ioctl(fd_.get(), KVM_GET_SREGS, &sregs) < 0) fail("KVM_GET_SREGS");
    sregs_to_state(sregs, st);
    report_apic_base(sregs.apic_base);
    // A state saved while the VM leaves its run loops (pause, save) freezes
    // guest time; KVM's clock must follow the platform's when it goes on.
    if (platform_.stop_requested()) clock_->resync = true;
    if (hv_.has_xsave()) {
      std::uint64_t xcr0 = 1;
      if (hv_.has_xcrs()) {
        kvm_xcrs xcrs{};
        if (::ioctl(fd_.get(), KVM_GET_XCRS, &xcrs) < 0) fail("KVM_GET_XCRS");
        for (unsigned i = 0; i < xcrs.nr_xcrs; ++i)
          if (xcrs.xcrs[i].xcr == 0) xcr0 = xcrs.xcrs[i].value;
      }
      auto xsave = std::make_unique<kvm_xsave>();
      if (::ioctl(fd_.get(), abi::kGetXsave, xsave.get()) < 0) fail("KVM_GET_XSAVE");
      xsave_to_state(*xsave, xcr0, st.fpu);
    } else {
      kvm_fpu fpu{};
      if (::ioctl(fd_.get(), KVM_GET_FPU, &fpu) < 0) fail("KVM_GET_FPU");
      fpu_to_state(fpu, st.fpu);
    }
    const auto& indices = hv_.state_msrs();
    if (!indices.empty()) {
      MsrBuffer msrs(indices.size());
      for (std::size_t i = 0; i < indices.size(); ++i) msrs.entry(i).index = indices[i];
      const int n = ::ioctl(fd_.get(), abi::kGetMsrs, msrs.data());
      if (n < 0) fail("KVM_GET_MSRS");
      for (int i = 0; i < n; ++i) st.msrs.push_back({msrs.entry(i).index, msrs.entry(i).data});
    }
    kvm_vcpu_events ev{};
    if (::ioctl(fd_.get(), KVM_GET_VCPU_EVENTS, &ev) < 0) fail("KVM_GET_VCPU_EVENTS");
    events_to_state(ev, st.events);
    if (hv_.has_debugregs()) {
      kvm_debugregs dr{};
      if (::ioctl(fd_.get(), KVM_GET_DEBUGREGS, &dr) < 0) fail("KVM_GET_DEBUGREGS");
      debugregs_to_state(dr, st);
    }
    // With a userspace APIC the local APIC registers are the platform's; only
    // the APIC base MSR lives here.  Halt is tracked here too (KVM returns to
    // userspace on HLT and keeps the vCPU runnable).
    st.run_state = wait_for_sipi_ ? api::RunState::WaitForSipi
                   : halted_      ? api::RunState::Halted
                                  : api::RunState::Runnable;
    return st;
  }

  void set_state(const api::VcpuState& st) override {
    complete_pending_io();
    clock_->sync(platform_);
    kvm_sregs sregs = sregs_from_state(st, platform_.apic_base(index_));
    reported_apic_base_ = sregs.apic_base;
    if (::ioctl(fd_.get(), KVM_SET_SREGS, &sregs) < 0) fail("KVM_SET_SREGS");
    kvm_regs regs = regs_from_state(st);
    if (::ioctl(fd_.get(), KVM_SET_REGS, &regs) < 0) fail("KVM_SET_REGS");
    if (hv_.has_xsave()) {
      if (hv_.has_xcrs()) {
        kvm_xcrs xcrs{};
        xcrs.nr_xcrs = 1;
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = st.fpu.xcr0 | 1;
        if (::ioctl(fd_.get(), KVM_SET_XCRS, &xcrs) < 0) fail("KVM_SET_XCRS (XCR0 " + std::to_string(st.fpu.xcr0) + ")");
      }
      auto xsave = std::make_unique<kvm_xsave>(xsave_from_state(st.fpu, hv_.supported_xcr0()));
      if (::ioctl(fd_.get(), abi::kSetXsave, xsave.get()) < 0) fail("KVM_SET_XSAVE");
    } else {
      kvm_fpu fpu = fpu_from_state(st.fpu);
      if (::ioctl(fd_.get(), KVM_SET_FPU, &fpu) < 0) fail("KVM_SET_FPU");
    }
    std::vector<api::Msr> wanted;
    for (const auto& m : st.msrs)
      for (auto idx : hv_.state_msrs())
        if (idx == m.index) wanted.push_back(m);
    if (!wanted.empty()) {
      MsrBuffer msrs(wanted.size());
      for (std::size_t i = 0; i < wanted.size(); ++i) {
        msrs.entry(i).index = wanted[i].index;
        msrs.entry(i).data = wanted[i].value;
      }
      const int n = ::ioctl(fd_.get(), abi::kSetMsrs, msrs.data());
      if (n < 0) fail("KVM_SET_MSRS");
      if (static_cast<std::size_t>(n) < wanted.size()) {
        char buf2[96];
        std::snprintf(buf2, sizeof buf2, "KVM_SET_MSRS: KVM refused MSR %#x = %#llx", wanted[n].index,
                      static_cast<unsigned long long>(wanted[n].value));
        throw api::HypervisorError(buf2);
      }
    }
    kvm_vcpu_events ev = events_from_state(st.events);
    if (::ioctl(fd_.get(), KVM_SET_VCPU_EVENTS, &ev) < 0) fail("KVM_SET_VCPU_EVENTS");
    if (hv_.has_debugregs()) {
      kvm_debugregs dr = debugregs_from_state(st);
      if (::ioctl(fd_.get(), KVM_SET_DEBUGREGS, &dr) < 0) fail("KVM_SET_DEBUGREGS");
    }
    // Without an in-kernel APIC, KVM_RUN loads CR8 from kvm_run on every entry.
    run_->cr8 = st.cr8;
    halted_ = st.run_state == api::RunState::Halted;
    halted_if_ = (st.rflags & 0x200) != 0;
    injected_at_.reset();  // a new state: no handler is returning into it
    window_opened_ = holding_ = false;
    wait_for_sipi_ = st.run_state == api::RunState::WaitForSipi;
  }

  api::Counters counters() const override {
    api::Counters c = counters_.to_counters();
    if (stats_) stats_->append(c);
    return c;
  }

 private:
  std::uint64_t apic_base() const { return 0xfee00000; }
  // KVM handles the guest's WRMSR of IA32_APIC_BASE itself (and reports the
  // value on every exit); the platform's local APIC owns the MSR and learns it here.
  void report_apic_base(std::uint64_t value) {
    if (value == reported_apic_base_) return;
    reported_apic_base_ = value;
    platform_.set_apic_base(index_, value);
  }

  // Blocks the kick signal on the calling thread for the duration of run()
  // and tells KVM to unblock it while in KVM_RUN.
  class SignalGuard {
   public:
    SignalGuard(int vcpu_fd, bool& mask_set) {
      sigset_t kick;
      sigemptyset(&kick);
      sigaddset(&kick, kick_signal());
      pthread_sigmask(SIG_BLOCK, &kick, &saved_);
      if (!mask_set) {
        sigset_t during_run = saved_;
        sigdelset(&during_run, kick_signal());
        std::uint8_t arg[abi::kSignalMaskHeader + abi::kKernelSigsetBytes] = {};
        const std::uint32_t len = abi::kKernelSigsetBytes;
        std::memcpy(arg, &len, 4);
        std::memcpy(arg + abi::kSignalMaskHeader, &during_run, abi::kKernelSigsetBytes);
        if (::ioctl(vcpu_fd, abi::kSetSignalMask, arg) < 0) fail("KVM_SET_SIGNAL_MASK");
        mask_set = true;
      }
    }
    ~SignalGuard() {
      drain();
      pthread_sigmask(SIG_SETMASK, &saved_, nullptr);
    }
    // Consume kick signals left pending (KVM returns EINTR with the signal
    // still pending and blocked again).
    static void drain() {
      sigset_t kick;
      sigemptyset(&kick);
      sigaddset(&kick, kick_signal());
      const timespec zero{};
      while (sigtimedwait(&kick, nullptr, &zero) > 0) {
      }
    }

   private:
    sigset_t saved_;
  };

  // A host timer that interrupts KVM_RUN when the platform's next device timer
  // is due, so the run loop asks the platform for interrupts again.
  void ensure_timer() {
    const pid_t tid = static_cast<pid_t>(::syscall(SYS_gettid));
    if (timer_created_ && timer_tid_ == tid) return;
    if (timer_created_) timer_delete(timer_);
    sigevent sev{};
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = kick_signal();
    sev._sigev_un._tid = tid;  // sigev_notify_thread_id (glibc < 2.38 lacks the name)
    timer_created_ = timer_create(CLOCK_MONOTONIC, &sev, &timer_) == 0;
    timer_tid_ = tid;
    armed_deadline_ = UINT64_MAX;
  }

  void arm_timer() {
    if (!timer_created_) return;
    // While an interrupt is held back the guest's slice is what ends the run
    // (a device timer falling due meanwhile only coalesces into the pending
    // request); otherwise the platform's next device timer.
    const std::uint64_t deadline = holding_ ? platform_.now_ns() + hold_slice_ns()
                                            : platform_.next_timer_deadline_ns();
    if (deadline == armed_deadline_) return;
    armed_deadline_ = deadline;
    itimerspec its{};
    if (deadline != UINT64_MAX) {
      const std::uint64_t now = platform_.now_ns();
      const std::uint64_t delta = deadline > now + 1000 ? deadline - now : 1000;
      its.it_value.tv_sec = delta / 1000000000;
      its.it_value.tv_nsec = delta % 1000000000;
    }
    timer_settime(timer_, 0, &its, nullptr);
  }

  // Userspace interrupt controller: inject the platform's pending interrupt
  // when the guest can take it, else ask KVM to exit when it can.
  //
  // Forward progress: when the interrupt window opens exactly where the last
  // interrupt was injected (same RIP and RSP: its handler has just returned
  // to the interrupted code, which has not run an instruction since), the
  // next interrupt is held back for one run of the guest, until its next exit
  // or a bounded slice.  Hardware would take it at once, but there a handler
  // takes microseconds; here every exit of a handler costs a round trip
  // through the driver (tens of microseconds, milliseconds on a loaded nested
  // host), so a periodic timer whose period is shorter than one handler's
  // round trips is due again at every IRET and the interrupted code never
  // runs (a guest in `while (ticks < n) hlt;` never sees its count).
  // Delaying an external interrupt is always architecturally allowed; the
  // hold only happens when the guest would otherwise make no progress.
  void prepare_interrupts() {
    if (!platform_.interrupt_pending(index_)) {
      run_->request_interrupt_window = 0;
      return;
    }
    if (run_->ready_for_interrupt_injection && run_->if_flag) {
      kvm_regs regs{};
      if (::ioctl(fd_.get(), KVM_GET_REGS, &regs) < 0) fail("KVM_GET_REGS");
      if (window_opened_ && injected_at_ && injected_at_->rip == regs.rip && injected_at_->rsp == regs.rsp) {
        injected_at_.reset();  // one slice per injection: a guest spinning in place still gets the next one
        window_opened_ = false;
        holding_ = true;
        ++counters_.interrupts_held;
        run_->request_interrupt_window = 0;
        return;
      }
      window_opened_ = false;
      injected_at_ = InjectionPoint{regs.rip, regs.rsp};
      kvm_interrupt irq{};
      irq.irq = platform_.acknowledge_interrupt(index_);
      if (::ioctl(fd_.get(), KVM_INTERRUPT, &irq) < 0) fail("KVM_INTERRUPT");
      ++counters_.interrupts_injected;
      run_->request_interrupt_window = 0;
    } else {
      run_->request_interrupt_window = 1;
    }
  }

  // KVM finishes an I/O or MMIO instruction (e.g. writes IN's result to RAX)
  // only on the next KVM_RUN; with immediate_exit set it does that and returns.
  void complete_pending_io() {
    if (!pending_completion_) return;
    pending_completion_ = false;
    const std::uint8_t saved = run_->immediate_exit;
    run_->immediate_exit = 1;
    const int r = ::ioctl(fd_.get(), KVM_RUN, 0);
    run_->immediate_exit = saved;
    if (r < 0 && errno != EINTR) fail("KVM_RUN (completing I/O)");
  }

  api::RunExit stopped() {
    run_->immediate_exit = 0;
    return {api::ExitKind::Stopped, {}};
  }
  api::RunExit error(std::string reason) { return with_dump(api::ExitKind::Error, std::move(reason)); }

  api::RunExit with_dump(api::ExitKind kind, std::string reason) {
    api::RunExit e{kind, std::move(reason)};
    try {
      pending_completion_ = false;
      const api::VcpuState st = get_state();
      if (kind == api::ExitKind::Shutdown && st.cs.selector == 0xf000 && st.rip == 0xfff0)
        e.diagnostic += "; the registers below are the vCPU's reset state: KVM on AMD reinitialises the VMCB "
                        "after a shutdown intercept, so the faulting state is lost (run under hv on VT-x or bt for it)";
      e.diagnostic += "\n" + format_state(st);
    } catch (const std::exception& x) {
      e.diagnostic += std::string("\n(no register dump: ") + x.what() + ")";
    }
    return e;
  }

  const KvmHypervisor& hv_;
  unsigned index_;
  api::Platform& platform_;
  std::shared_ptr<VmClock> clock_;
  std::uint64_t reported_apic_base_ = 0;
  Fd fd_;
  kvm_run* run_ = nullptr;
  ExitCounters counters_;
  std::unique_ptr<KernelStats> stats_;
  // The slice a held-back interrupt waits: room for a few round trips into
  // the guest as long as the last one took, at least kMinHoldSliceNs.
  std::uint64_t hold_slice_ns() const {
    return std::clamp<std::uint64_t>(4 * last_run_ns_, kMinHoldSliceNs, kMaxHoldSliceNs);
  }
  static constexpr std::uint64_t kMinHoldSliceNs = 1'000'000, kMaxHoldSliceNs = 10'000'000;

  struct InjectionPoint {
    std::uint64_t rip, rsp;
  };
  std::optional<InjectionPoint> injected_at_;  // where the last external interrupt was injected
  bool window_opened_ = false;  // the last exit was KVM_EXIT_IRQ_WINDOW_OPEN (and nothing was injected since)
  bool holding_ = false;        // this run holds a pending interrupt back (see prepare_interrupts)
  std::uint64_t last_run_ns_ = 0;  // wall time of the last KVM_RUN
  bool halted_ = false, halted_if_ = false;
  bool wait_for_sipi_ = false;  // KVM's own INIT/SIPI states need its in-kernel APIC; this is ours
  bool pending_completion_ = false;
  bool signal_mask_set_ = false;
  std::atomic<bool> kick_{false};
  std::mutex thread_mutex_;
  pthread_t thread_{};
  bool in_run_ = false;
  timer_t timer_{};
  bool timer_created_ = false;
  pid_t timer_tid_ = 0;
  std::uint64_t armed_deadline_ = UINT64_MAX;
};

class KvmVm final : public api::Vm {
 public:
  KvmVm(const KvmHypervisor& hv, api::GuestMemory& memory, unsigned vcpus, api::CpuidTable model)
      : hv_(hv), memory_(memory), model_(std::move(model)) {
    if (memory.size() == 0 || memory.size() % 4096)
      throw api::HypervisorError("guest RAM of " + std::to_string(memory.size()) + " bytes is not a whole number of pages");
    if (memory.size() > kIdentityMapAddr)
      throw api::HypervisorError("guest RAM reaches the KVM TSS/identity-map pages at 0xfffbc000; at most " +
                                 std::to_string(kIdentityMapAddr >> 20) + " MiB from address 0");
    const int max_vcpus = ::ioctl(hv.fd(), KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS);
    if (max_vcpus > 0 && vcpus > static_cast<unsigned>(max_vcpus))
      throw api::HypervisorError("KVM allows at most " + std::to_string(max_vcpus) + " vCPUs per VM");
    // A signal meant for the thread (another monitor's kick, a mode switch
    // on a vCPU thread) can interrupt the creation: it is only retried.
    for (int attempt = 0; attempt < 100; ++attempt) {
      fd_ = Fd(::ioctl(hv.fd(), KVM_CREATE_VM, 0));
      if (fd_.get() >= 0 || errno != EINTR) break;
    }
    if (fd_.get() < 0) fail("KVM_CREATE_VM");
    if (::ioctl(fd_.get(), KVM_SET_TSS_ADDR, kTssAddr) < 0) fail("KVM_SET_TSS_ADDR");
    if (::ioctl(hv.fd(), KVM_CHECK_EXTENSION, KVM_CAP_SET_IDENTITY_MAP_ADDR) > 0) {
      std::uint64_t addr = kIdentityMapAddr;
      if (::ioctl(fd_.get(), KVM_SET_IDENTITY_MAP_ADDR, &addr) < 0) fail("KVM_SET_IDENTITY_MAP_ADDR");
    }
    set_slot(0);
    clock_ = std::make_shared<VmClock>();
    clock_->vm_fd = fd_.get();
    clock_->adjustable = ::ioctl(hv.fd(), KVM_CHECK_EXTENSION, KVM_CAP_ADJUST_CLOCK) > 0;
  }

  std::unique_ptr<api::Vcpu> create_vcpu(unsigned index, api::Platform& platform) override {
    return std::make_unique<KvmVcpu>(hv_, fd_.get(), index, platform, model_, clock_);
  }

  std::vector<std::string> hidden_cpuid_features() const override {
    return model_.empty() ? std::vector<std::string>{} : cpuid_model_gaps(hv_.supported_cpuid(), model_);
  }

  void enable_dirty_log(bool on) override {
    set_slot(on ? KVM_MEM_LOG_DIRTY_PAGES : 0);
    dirty_log_ = on;
  }

  bool collect_dirty_log(std::vector<std::uint64_t>& bitmap) override {
    if (!dirty_log_) return false;
    const std::size_t pages = memory_.size() / 4096;
    std::vector<std::uint64_t> log((pages + 63) / 64);
    kvm_dirty_log d{};
    d.slot = 0;
    d.dirty_bitmap = log.data();
    if (::ioctl(fd_.get(), KVM_GET_DIRTY_LOG, &d) < 0) fail("KVM_GET_DIRTY_LOG");
    if (bitmap.size() < log.size()) bitmap.resize(log.size());
    for (std::size_t i = 0; i < log.size(); ++i) bitmap[i] |= log[i];
    return true;
  }

 private:
  void set_slot(std::uint32_t flags) {
    kvm_userspace_memory_region r{};
    r.slot = 0;
    r.flags = flags;
    r.guest_phys_addr = 0;
    r.memory_size = memory_.size();
    r.userspace_addr = reinterpret_cast<std::uint64_t>(memory_.host_base());
    if (::ioctl(fd_.get(), KVM_SET_USER_MEMORY_REGION, &r) < 0)
      fail(std::string("KVM_SET_USER_MEMORY_REGION") + (flags ? " (dirty logging)" : ""));
  }

  const KvmHypervisor& hv_;
  api::GuestMemory& memory_;
  api::CpuidTable model_;
  std::shared_ptr<VmClock> clock_;
  Fd fd_;
  bool dirty_log_ = false;
};

}  // namespace

std::vector<kvm_cpuid_entry2> filter_cpuid(const std::vector<kvm_cpuid_entry2>& supported, unsigned vcpu_index) {
  // KVM_FEATURE_CLOCKSOURCE, _NOP_IO_DELAY, _CLOCKSOURCE2, _CLOCKSOURCE_STABLE_BIT
  constexpr std::uint32_t kKvmClockFeatures = (1u << 0) | (1u << 1) | (1u << 3) | (1u << 24);
  std::vector<kvm_cpuid_entry2> out;
  for (auto e : supported) {
    if (e.function > 0x40000001 && e.function <= 0x4fffffff) continue;  // other paravirtual leaves
    switch (e.function) {
      case 0x40000000:
        e.eax = 0x40000001;  // "KVMKVMKVM", highest paravirtual leaf
        break;
      case 0x40000001:
        // Only the paravirtual clock (and no-op port 0x80 delays): it lives
        // in KVM and needs no in-kernel APIC.  Without it a guest calibrates
        // its TSC against the PIT through exits, which is unreliable when
        // exits are slow (nested hosts).  PV EOI, PV IPIs, async page faults
        // and steal time need KVM's in-kernel APIC or are not modelled.
        e.eax &= kKvmClockFeatures;
        e.ebx = e.ecx = e.edx = 0;
        break;
      case 1:
        e.ecx &= ~(1u << 5);   // VMX: no nested virtualization
        e.ecx &= ~(1u << 21);  // x2APIC: the platform's APIC is an xAPIC
        e.ecx &= ~(1u << 24);  // TSC-deadline timer: not in the platform's APIC
        e.ecx |= 1u << 31;     // running under a hypervisor
        e.ebx = (e.ebx & 0x00ffffff) | (vcpu_index << 24);  // initial APIC ID
        break;
      case 0xb:
      case 0x1f:
        e.edx = vcpu_index;  // x2APIC ID
        break;
      case 0x80000001:
        e.ecx &= ~(1u << 2);  // SVM: no nested virtualization
        break;
      case 0x8000000a:
        e.eax = e.ebx = e.ecx = e.edx = 0;  // SVM features
        break;
      default:
        break;
    }
    out.push_back(e);
  }
  return out;
}

namespace {

// The registers of a leaf that hold feature flags: a model's bits there are
// offered only where KVM supports them; everything else (vendor, signature,
// brand, sizes) is the model's as written.
struct FeatureRegs {
  bool ebx, ecx, edx;
};
FeatureRegs feature_registers(std::uint32_t function) {
  switch (function) {
    case 1: return {false, true, true};
    case 7: return {true, true, true};
    case 0x80000001: return {false, true, true};
    default: return {false, false, false};
  }
}

const kvm_cpuid_entry2* find_supported(const std::vector<kvm_cpuid_entry2>& supported, std::uint32_t function,
                                       std::uint32_t index) {
  for (const auto& e : supported)
    if (e.function == function && (!(e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) || e.index == index)) return &e;
  return nullptr;
}

// Bit 31 of leaf 1 ECX (hypervisor present) is the monitor's to set, not KVM's to support.
constexpr std::uint32_t kHypervisorBit = 1u << 31;

}  // namespace

std::vector<kvm_cpuid_entry2> model_cpuid(const std::vector<kvm_cpuid_entry2>& supported,
                                          const api::CpuidTable& model, unsigned vcpu_index) {
  std::vector<kvm_cpuid_entry2> out;
  for (const auto& leaf : model) {
    kvm_cpuid_entry2 e{};
    e.function = leaf.function;
    e.index = leaf.index;
    e.flags = leaf.indexed ? KVM_CPUID_FLAG_SIGNIFCANT_INDEX : 0;
    e.eax = leaf.eax, e.ebx = leaf.ebx, e.ecx = leaf.ecx, e.edx = leaf.edx;
    const FeatureRegs f = feature_registers(leaf.function);
    const kvm_cpuid_entry2* s = find_supported(supported, leaf.function, leaf.index);
    if (f.ebx) e.ebx &= s ? s->ebx : 0;
    if (f.ecx) e.ecx &= (s ? s->ecx : 0) | (leaf.function == 1 ? kHypervisorBit : 0);
    if (f.edx) e.edx &= s ? s->edx : 0;
    if (leaf.function == 1) e.ebx = (e.ebx & 0x00ffffff) | (vcpu_index << 24);
    out.push_back(e);
  }
  return out;
}

std::vector<std::string> cpuid_model_gaps(const std::vector<kvm_cpuid_entry2>& supported,
                                          const api::CpuidTable& model) {
  std::vector<std::string> gaps;
  const auto offered = model_cpuid(supported, model, 0);
  static constexpr const char* kRegs[] = {"ebx", "ecx", "edx"};
  for (std::size_t i = 0; i < model.size(); ++i) {
    const std::uint32_t wanted[3] = {model[i].ebx, model[i].ecx, model[i].edx};
    const std::uint32_t got[3] = {offered[i].ebx, offered[i].ecx, offered[i].edx};
    const FeatureRegs f = feature_registers(model[i].function);
    const bool is_feature[3] = {f.ebx, f.ecx, f.edx};
    for (int r = 0; r < 3; ++r) {
      if (!is_feature[r]) continue;
      for (unsigned bit = 0; bit < 32; ++bit)
        if ((wanted[r] >> bit & 1) && !(got[r] >> bit & 1)) {
          char line[64];
          std::snprintf(line, sizeof line, "leaf %#x %s bit %u", model[i].function, kRegs[r], bit);
          gaps.emplace_back(line);
        }
    }
  }
  return gaps;
}

std::unique_ptr<KvmHypervisor> KvmHypervisor::open(const std::filesystem::path& device,
                                                   const std::filesystem::path& sys_module) {
  const KvmFacts facts = probe_kvm(device, sys_module);
  if (facts.vendor_module == "kvm_pvm" && facts.device_present)
    throw api::HypervisorError(device.string() + " is provided by kvm_pvm (PVM), which cannot run unmodified guests; "
                               "load kvm_intel or kvm_amd instead");
  if (!facts.device_present)
    throw api::HypervisorError("no " + device.string() +
                               (facts.vendor_module == "kvm_pvm"
                                    ? " (kvm_pvm is loaded but has no device node here, and it cannot run "
                                      "unmodified guests anyway: load kvm_intel or kvm_amd)"
                                    : " (is kvm_intel or kvm_amd loaded?)"));
  std::unique_ptr<KvmHypervisor> hv(new KvmHypervisor);
  hv->fd_ = ::open(device.c_str(), O_RDWR | O_CLOEXEC);
  if (hv->fd_ < 0) fail("cannot open " + device.string());
  const int version = ::ioctl(hv->fd_, KVM_GET_API_VERSION, 0);
  if (version != KVM_API_VERSION)
    throw api::HypervisorError(device.string() + " speaks KVM API version " + std::to_string(version) + ", expected " +
                               std::to_string(KVM_API_VERSION));
  std::string missing;
  for (const auto& c : kRequiredCapabilities)
    if (::ioctl(hv->fd_, KVM_CHECK_EXTENSION, c.cap) <= 0)
      missing += (missing.empty() ? "" : ", ") + std::string("KVM_CAP_") + c.name + " (" + c.why + ")";
  if (!missing.empty()) throw api::HypervisorError("KVM at " + device.string() + " lacks " + missing);
  hv->xsave_ = ::ioctl(hv->fd_, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE) > 0;
  hv->xcrs_ = ::ioctl(hv->fd_, KVM_CHECK_EXTENSION, KVM_CAP_XCRS) > 0;
  hv->debugregs_ = ::ioctl(hv->fd_, KVM_CHECK_EXTENSION, KVM_CAP_DEBUGREGS) > 0;
  hv->stats_fd_ = ::ioctl(hv->fd_, KVM_CHECK_EXTENSION, KVM_CAP_BINARY_STATS_FD) > 0;
  hv->vcpu_mmap_size_ = ::ioctl(hv->fd_, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (hv->vcpu_mmap_size_ < static_cast<int>(sizeof(kvm_run))) fail("KVM_GET_VCPU_MMAP_SIZE");

  for (int n = 64;; n *= 2) {
    std::vector<std::uint8_t> buf(abi::kCpuid2Header + n * sizeof(kvm_cpuid_entry2));
    std::uint32_t nent = n;
    std::memcpy(buf.data(), &nent, 4);
    if (::ioctl(hv->fd_, abi::kGetSupportedCpuid, buf.data()) == 0) {
      std::memcpy(&nent, buf.data(), 4);
      hv->supported_cpuid_.resize(nent);
      std::memcpy(hv->supported_cpuid_.data(), buf.data() + abi::kCpuid2Header, nent * sizeof(kvm_cpuid_entry2));
      break;
    }
    if (errno != E2BIG || n > 4096) fail("KVM_GET_SUPPORTED_CPUID");
  }
  for (const auto& e : hv->supported_cpuid_)
    if (e.function == 0xd && e.index == 0) hv->supported_xcr0_ = (std::uint64_t{e.edx} << 32 | e.eax) | 3;

  {
    std::uint32_t count = 0;
    ::ioctl(hv->fd_, abi::kGetMsrIndexList, &count);  // E2BIG, fills in the count
    std::vector<std::uint32_t> list(1 + count);
    list[0] = count;
    if (::ioctl(hv->fd_, abi::kGetMsrIndexList, list.data()) < 0) fail("KVM_GET_MSR_INDEX_LIST");
    for (auto want : kStateMsrs)
      for (std::uint32_t i = 0; i < list[0]; ++i)
        if (list[1 + i] == want) { hv->state_msrs_.push_back(want); break; }
  }

  hv->info_.driver = facts.vendor_module.empty() ? "kvm" : facts.vendor_module;
  hv->info_.mmu_selection = api::MmuSelection::HostWide;
  hv->info_.nested_paging = facts.nested_paging_enabled.value_or(false);
  hv->info_.mmu_parameter = facts.vendor_module == "kvm_intel" ? "kvm_intel ept"
                            : facts.vendor_module == "kvm_amd" ? "kvm_amd npt"
                                                               : "the vendor module's ept/npt parameter";
  return hv;
}

KvmHypervisor::~KvmHypervisor() {
  if (fd_ >= 0) ::close(fd_);
}

std::unique_ptr<api::Vm> KvmHypervisor::create_vm(api::GuestMemory& memory, unsigned vcpus,
                                                  const api::CpuidTable& cpuid) {
  return std::make_unique<KvmVm>(*this, memory, vcpus, cpuid);
}

}  // namespace modevisor::kvm
