#include "vmm/confinement.hpp"

#include <fcntl.h>
#include <linux/landlock.h>
#include <sys/stat.h>
#include <linux/sched.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#include <fmt/format.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>

// Under AddressSanitizer the leak check at exit stops the world with a
// ptrace'd clone, which the filter forbids: the check runs once, before
// confinement (scripts/sanitize.sh), and not again at exit.
#if defined(__SANITIZE_ADDRESS__)
#define MODEVISOR_VMM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MODEVISOR_VMM_ASAN 1
#endif
#endif
#ifdef MODEVISOR_VMM_ASAN
#include <sanitizer/lsan_interface.h>
#endif

namespace modevisor::vmm {

namespace {

std::atomic<int> g_report_fd{-1};

// Decimal digits of `value` into `out` (async-signal-safe); returns the length.
std::size_t put_number(char* out, long value) {
  char digits[24];
  std::size_t n = 0;
  const bool negative = value < 0;
  unsigned long v = negative ? 0UL - static_cast<unsigned long>(value) : static_cast<unsigned long>(value);
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  std::size_t length = 0;
  if (negative) out[length++] = '-';
  while (n > 0) out[length++] = digits[--n];
  return length;
}

std::size_t put_text(char* out, const char* text) {
  const std::size_t n = std::strlen(text);
  std::memcpy(out, text, n);
  return n;
}

// The filter's first step for a forbidden call: say which one, then die by
// the filter (rt_sigaction on SIGSYS is a KILL_PROCESS rule).
void on_forbidden_call(int, siginfo_t* info, void*) {
  char line[160];
  std::size_t n = 0;
  // A leading newline ends whatever line another thread may have been
  // writing, so the daemon reads this one whole.
  n += put_text(line + n, "\n{\"event\":\"seccomp\",\"syscall\":");
  n += put_number(line + n, info->si_syscall);
  n += put_text(line + n, ",\"arch\":");
  n += put_number(line + n, static_cast<long>(info->si_arch));
  n += put_text(line + n, "}\n");
  const int fd = g_report_fd.load();
  if (fd >= 0) [[maybe_unused]] auto w = ::send(fd, line, n, MSG_NOSIGNAL);
  char note[96];
  std::size_t m = put_text(note, "modevisor-vmm: the seccomp filter stops system call ");
  m += put_number(note + m, info->si_syscall);
  note[m++] = '\n';
  [[maybe_unused]] auto w2 = ::write(2, note, m);
  ::syscall(SYS_rt_sigaction, SIGSYS, nullptr, nullptr, sizeof(unsigned long));
  ::_exit(128 + SIGSYS);  // not reached: the call above ends the process
}

struct FilterDeleter {
  void operator()(scmp_filter_ctx ctx) const { seccomp_release(ctx); }
};
using Filter = std::unique_ptr<void, FilterDeleter>;

void check(int rc, const std::string& what) {
  if (rc < 0) throw std::runtime_error(fmt::format("seccomp: {}: {}", what, std::strerror(-rc)));
}

// Allows `name` when this architecture has it (a call it lacks needs no rule).
void allow(scmp_filter_ctx ctx, const char* name) {
  const int nr = seccomp_syscall_resolve_name(name);
  if (nr == __NR_SCMP_ERROR) return;
  check(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0), fmt::format("allow {}", name));
}

template <typename... Cmp>
void allow_if(scmp_filter_ctx ctx, const char* name, Cmp... conditions) {
  const int nr = seccomp_syscall_resolve_name(name);
  if (nr == __NR_SCMP_ERROR) return;
  check(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, sizeof...(Cmp), conditions...), fmt::format("allow {} (with arguments)", name));
}

// The allow list (host/vmm/README.md explains each group).
const char* const kAllowed[] = {
    // memory: guest RAM, the BT engine's code cache and shadow page tables, malloc
    "mmap", "munmap", "mprotect", "mremap", "madvise", "brk", "msync", "mincore", "memfd_create", "membarrier",
    // threads and their synchronisation (clone itself: threads only, below)
    "futex", "futex_waitv", "set_robust_list", "get_robust_list", "rseq", "set_tid_address", "sched_yield",
    "sched_getaffinity", "exit", "exit_group", "restart_syscall", "gettid", "getpid", "getppid",
    // signals: the BT engine's fault and kick handlers, the stop signalfd
    "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "rt_sigtimedwait", "rt_sigpending",
    "rt_sigsuspend",
    // time and timers: guest timers, the BT engine's per-vCPU POSIX timers, console ticks
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time", "timer_create",
    "timer_settime", "timer_gettime", "timer_getoverrun", "timer_delete", "setitimer", "getitimer",
    "timerfd_create", "timerfd_settime", "timerfd_gettime",
    // descriptors the process already holds: the daemon's link, sockets, pipes, files, KVM
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "lseek", "close", "fcntl",
    "dup", "dup3", "pipe2", "poll", "ppoll", "select", "pselect6", "epoll_create1", "epoll_ctl", "epoll_wait",
    "epoll_pwait", "eventfd2", "signalfd4",
    "sendmsg", "recvmsg", "sendto", "recvfrom", "shutdown", "getsockopt", "setsockopt", "getsockname",
    "getpeername", "accept4", "accept", "connect",
    // files: the VM log, save's snapshot file, the result file, the run-interval log
    "openat", "open", "fstat", "newfstatat", "stat", "lstat", "statx", "fsync", "fdatasync", "ftruncate",
    "fallocate", "rename", "renameat", "renameat2", "unlink", "unlinkat", "readlink", "readlinkat", "getcwd",
    "access", "faccessat", "faccessat2", "mkdir", "mkdirat", "fchmod", "fadvise64",
    // facts about the process and the host
    "getrandom", "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "uname", "sysinfo",
    "getrusage", "times", "sched_getparam", "sched_getscheduler", "getpriority",
};

Filter build_filter() {
  Filter filter(seccomp_init(SCMP_ACT_TRAP));
  scmp_filter_ctx ctx = filter.get();
  if (!ctx) throw std::runtime_error("seccomp: cannot create a filter (libseccomp)");
  check(seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS), "kill other architectures' calls");
  check(seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 1), "no_new_privs");
  check(seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1), "every thread");
  for (const char* name : kAllowed) allow(ctx, name);

  const auto self = static_cast<scmp_datum_t>(::getpid());
  // Threads, never a new process (fork, vfork, clone without CLONE_THREAD).
  allow_if(ctx, "clone", SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD));
  // clone3's flags live in memory the filter cannot read: glibc falls back to clone.
  check(seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0), "clone3 -> ENOSYS");
  // Signals to this process's own threads only (the BT engine kicks its vCPUs).
  allow_if(ctx, "tgkill", SCMP_A0(SCMP_CMP_EQ, self));
  allow_if(ctx, "kill", SCMP_A0(SCMP_CMP_EQ, self));
  // TCP for migration's in-doubt resolution (a new connection to the peer);
  // no unix sockets: the daemon's control socket stays out of reach.
  allow_if(ctx, "socket", SCMP_A0(SCMP_CMP_EQ, AF_INET));
  allow_if(ctx, "socket", SCMP_A0(SCMP_CMP_EQ, AF_INET6));
  // ioctl: KVM's own (type 0xAE: KVM_RUN and the rest on the VM and vCPU
  // descriptors of the HV plugins) and the few that stdio and sockets use.
  allow_if(ctx, "ioctl", SCMP_A1(SCMP_CMP_MASKED_EQ, 0xff00, 0xAE00));
  for (unsigned long request : {TCGETS, FIONREAD, FIONBIO, FIOCLEX})
    allow_if(ctx, "ioctl", SCMP_A1(SCMP_CMP_EQ, request));
  // Thread names only.
  for (int option : {PR_SET_NAME, PR_GET_NAME}) allow_if(ctx, "prctl", SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(option)));
  // Reading limits, never raising them.
  allow_if(ctx, "prlimit64", SCMP_A2(SCMP_CMP_EQ, 0));
  allow(ctx, "getrlimit");
  // The reporting handler stays in place: touching SIGSYS's action kills
  // (every other signal's action may change: the BT engine sets its own).
  allow_if(ctx, "rt_sigaction", SCMP_A0(SCMP_CMP_NE, SIGSYS));
  check(seccomp_rule_add(ctx, SCMP_ACT_KILL_PROCESS, SCMP_SYS(rt_sigaction), 1, SCMP_A0(SCMP_CMP_EQ, SIGSYS)),
        "lock SIGSYS");
  return filter;
}

void set_limit(int resource, rlim_t value, const char* what) {
  rlimit current{};
  ::getrlimit(resource, &current);
  rlim_t wanted = value;
  if (current.rlim_max != RLIM_INFINITY && current.rlim_max < wanted) wanted = current.rlim_max;
  const rlimit limit{wanted, wanted};
  if (::setrlimit(resource, &limit) != 0)
    throw std::runtime_error(fmt::format("cannot limit {} to {}: {}", what, wanted, std::strerror(errno)));
}

std::uint64_t mapped_bytes() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmSize:") {
      std::uint64_t kib = 0;
      status >> kib;
      return kib * 1024;
    }
    status.ignore(1 << 12, '\n');
  }
  return 0;
}

// Landlock (Linux >= 5.13): no file or directory may be opened for reading
// by path any more.  Everything the VM reads was read before (plugin,
// kernel, snapshot, configuration); what it still opens, it opens to write
// (log, save, result, run log).  So the cluster secret's file, the daemon's
// configuration and every other file of the daemon's user stay unread even
// though the seccomp filter must allow openat.  Returns what was applied.
std::string forbid_reading_files() {
  const long abi = ::syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION);
  if (abi < 1)
    return fmt::format("no landlock here ({}): files stay readable by path", std::strerror(errno));
  landlock_ruleset_attr attributes{};
  attributes.handled_access_fs = LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR;
  const int ruleset = static_cast<int>(::syscall(SYS_landlock_create_ruleset, &attributes, sizeof attributes, 0));
  if (ruleset < 0) throw std::runtime_error(fmt::format("landlock ruleset: {}", std::strerror(errno)));
  // Reading stays allowed only where a mode plugin may still open a file
  // after confinement: a VM arriving by migration is created under its
  // plugin then, and the HV plugins open /dev/kvm and read KVM's module
  // parameters (nothing there is a secret).
  for (const char* path : {"/dev/kvm", "/sys/module"}) {
    const int fd = ::open(path, O_PATH | O_CLOEXEC);
    if (fd < 0) continue;
    struct stat st{};
    landlock_path_beneath_attr beneath{};
    beneath.parent_fd = fd;
    beneath.allowed_access = (::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode))
                                 ? LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR
                                 : LANDLOCK_ACCESS_FS_READ_FILE;
    ::syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &beneath, 0);
    ::close(fd);
  }
  const long restricted = ::syscall(SYS_landlock_restrict_self, ruleset, 0);
  const int error = errno;
  ::close(ruleset);
  if (restricted != 0) throw std::runtime_error(fmt::format("landlock: {}", std::strerror(error)));
  return fmt::format("landlock ABI {}: no file readable by path (but /dev/kvm and /sys/module)", abi);
}

}  // namespace

void close_inherited_descriptors(int keep) {
  if (keep > 3) ::close_range(3, static_cast<unsigned>(keep) - 1, 0);
  ::close_range(static_cast<unsigned>(keep < 3 ? 3 : keep + 1), ~0U, 0);
}

ConfinementLimits limits_for_vm(std::uint64_t memory_bytes, unsigned vcpus) {
  ConfinementLimits limits;
  // What is mapped now (guest RAM included), plus what a running VM still
  // maps: bt-swmmu reserves up to 64 shadow regions of 4 GiB (+ a guard)
  // per vCPU (PROT_NONE reservations count here), a save's compression
  // buffers (up to the RAM again), thread stacks and caches.
  constexpr std::uint64_t kShadowReservation = 64 * ((4ULL << 30) + (64 << 10));
  constexpr std::uint64_t kHeadroom = 4ULL << 30;
  limits.address_space_bytes =
      mapped_bytes() + memory_bytes + static_cast<std::uint64_t>(vcpus ? vcpus : 1) * kShadowReservation + kHeadroom;
  return limits;
}

bool seccomp_wanted() {
  const char* value = std::getenv("MODEVISOR_VMM_SECCOMP");
  if (!value) return true;
  const std::string v = value;
  return !(v == "off" || v == "0" || v == "no");
}

void set_report_fd(int fd) { g_report_fd = fd; }

std::string confine(const ConfinementLimits& limits, int report_fd) {
#ifdef MODEVISOR_VMM_ASAN
  __lsan_do_leak_check();  // first: it reads /proc/self/task, which Landlock then denies
#endif
  set_limit(RLIMIT_CORE, 0, "core files");
  set_limit(RLIMIT_NOFILE, limits.open_files, "open files");
  if (limits.address_space_bytes) set_limit(RLIMIT_AS, limits.address_space_bytes, "the address space");
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
    throw std::runtime_error(fmt::format("no_new_privs: {}", std::strerror(errno)));
  const std::string limits_text =
      fmt::format("core 0, {} open files, address space {} MiB, no_new_privs", limits.open_files,
                  limits.address_space_bytes >> 20);
  if (!seccomp_wanted())
    return "confinement: " + limits_text + "; seccomp filter and landlock OFF (MODEVISOR_VMM_SECCOMP=off)";
  const std::string landlock_text = forbid_reading_files();
  set_report_fd(report_fd);
  struct sigaction action{};
  action.sa_sigaction = on_forbidden_call;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  if (::sigaction(SIGSYS, &action, nullptr) != 0)
    throw std::runtime_error(fmt::format("the SIGSYS handler: {}", std::strerror(errno)));
  Filter filter = build_filter();
  check(seccomp_load(filter.get()), "load the filter");
  return "confinement: " + limits_text + "; " + landlock_text + "; seccomp filter on (" +
         std::to_string(std::size(kAllowed)) + " calls allowed, a few more with argument checks; anything else ends this process)";
}

}  // namespace modevisor::vmm
