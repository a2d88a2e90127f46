#include "plugins/plugin_vetting.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace modevisor::host {

namespace {

constexpr char kReportTag = 'R';  // first byte of a child's report

void write_all(int fd, const std::string& bytes) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<std::size_t>(n);
  }
}

std::string signal_text(int sig) {
  const char* name = sigabbrev_np(sig);
  std::string text = fmt::format("signal {}{}", sig, name ? fmt::format(" SIG{}", name) : "");
  if (sig == SIGABRT) text += ": an uncaught exception or abort()";
  if (sig == SIGSEGV || sig == SIGBUS) text += ": a bad memory access";
  return text;
}

[[noreturn]] void child_main(int report_fd, const std::function<std::string()>& work) {
  // The host's own handlers (bt-swmmu's fault handler, a daemon's) mean
  // nothing here: a crash in plugin code must end this child, visibly.
  for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTERM, SIGINT, SIGHUP, SIGPIPE})
    ::signal(sig, SIG_DFL);
  std::string report(1, kReportTag);
  report += work();
  write_all(report_fd, report);
  ::_exit(0);  // no atexit handlers, no static destructors of the host's copy
}

}  // namespace

std::variant<std::string, ChildFailure> run_in_child(const std::function<std::string()>& work,
                                                     const std::string& activity,
                                                     std::chrono::milliseconds timeout) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    return ChildFailure{fmt::format("cannot vet it in a child process: pipe: {}", std::strerror(errno))};
  // Buffered output would otherwise be written twice if the plugin exit()s.
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    ::close(fds[0]);
    ::close(fds[1]);
    return ChildFailure{fmt::format("cannot vet it in a child process: fork: {}", std::strerror(err))};
  }
  if (pid == 0) {
    ::close(fds[0]);
    child_main(fds[1], work);
  }
  ::close(fds[1]);

  std::string received;
  bool timed_out = false;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) {
      timed_out = ready == 0;
      break;
    }
    char chunk[4096];
    const ssize_t n = ::read(fds[0], chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EOF: the child is done (or gone)
    received.append(chunk, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }

  if (timed_out)
    return ChildFailure{fmt::format("did not finish {} within {} s (the vetting child was killed)", activity,
                                    timeout.count() / 1000.0)};
  if (WIFSIGNALED(status))
    return ChildFailure{fmt::format("crashed while {} ({})", activity, signal_text(WTERMSIG(status)))};
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && !received.empty() && received.front() == kReportTag)
    return received.substr(1);
  if (WIFEXITED(status))
    return ChildFailure{fmt::format("ended the process (exit status {}) while {}; a plugin must never exit",
                                    WEXITSTATUS(status), activity)};
  return ChildFailure{fmt::format("stopped reporting while {}", activity)};
}

}  // namespace modevisor::host
