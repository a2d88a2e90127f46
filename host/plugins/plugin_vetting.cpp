#include "plugins/plugin_vetting.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>

namespace modevisor::host {

namespace {

// A piece is framed as its 8-byte length and its bytes; this length marks
// the end: the child finished its work.
constexpr std::uint64_t kEndMark = ~std::uint64_t{0};

void write_all(int fd, const std::string& bytes) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<std::size_t>(n);
  }
}

void write_frame(int fd, std::uint64_t length, const std::string& bytes) {
  std::string frame(sizeof length, '\0');
  std::memcpy(frame.data(), &length, sizeof length);
  frame += bytes;
  write_all(fd, frame);
}

std::string signal_text(int sig) {
  const char* name = sigabbrev_np(sig);
  std::string text = fmt::format("signal {}{}", sig, name ? fmt::format(" SIG{}", name) : "");
  if (sig == SIGABRT) text += ": an uncaught exception or abort()";
  if (sig == SIGSEGV || sig == SIGBUS) text += ": a bad memory access";
  return text;
}

[[noreturn]] void child_main(int report_fd, const std::function<void(const ChildEmit&)>& work) {
  // The host's own handlers (bt-swmmu's fault handler, a daemon's) mean
  // nothing here: a crash in plugin code must end this child, visibly.
  for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTERM, SIGINT, SIGHUP, SIGPIPE})
    ::signal(sig, SIG_DFL);
  work([&](const std::string& piece) { write_frame(report_fd, piece.size(), piece); });
  write_frame(report_fd, kEndMark, {});
  ::_exit(0);  // no atexit handlers, no static destructors of the host's copy
}

}  // namespace

ChildTranscript run_in_child_streaming(const std::function<void(const ChildEmit&)>& work,
                                       const std::string& activity, std::chrono::milliseconds timeout) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    return {{}, fmt::format("cannot vet it in a child process: pipe: {}", std::strerror(errno))};
  // Buffered output would otherwise be written twice if the plugin exit()s.
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    ::close(fds[0]);
    ::close(fds[1]);
    return {{}, fmt::format("cannot vet it in a child process: fork: {}", std::strerror(err))};
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

  ChildTranscript transcript;
  bool finished = false;
  std::size_t at = 0;
  while (received.size() - at >= sizeof(std::uint64_t)) {
    std::uint64_t length = 0;
    std::memcpy(&length, received.data() + at, sizeof length);
    at += sizeof length;
    if (length == kEndMark) {
      finished = true;
      break;
    }
    if (received.size() - at < length) break;  // cut off mid-piece
    transcript.pieces.push_back(received.substr(at, length));
    at += length;
  }
  if (timed_out)
    transcript.failure = fmt::format("did not finish {} within {} s (the vetting child was killed)", activity,
                                     timeout.count() / 1000.0);
  else if (WIFSIGNALED(status))
    transcript.failure = fmt::format("crashed while {} ({})", activity, signal_text(WTERMSIG(status)));
  else if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && finished)
    transcript.failure.clear();
  else if (WIFEXITED(status))
    transcript.failure = fmt::format("ended the process (exit status {}) while {}; a plugin must never exit",
                                     WEXITSTATUS(status), activity);
  else
    transcript.failure = fmt::format("stopped reporting while {}", activity);
  return transcript;
}

std::variant<std::string, ChildFailure> run_in_child(const std::function<std::string()>& work,
                                                     const std::string& activity,
                                                     std::chrono::milliseconds timeout) {
  ChildTranscript transcript =
      run_in_child_streaming([&](const ChildEmit& emit) { emit(work()); }, activity, timeout);
  if (!transcript.failure.empty()) return ChildFailure{std::move(transcript.failure)};
  if (transcript.pieces.size() != 1) return ChildFailure{fmt::format("reported nothing readable while {}", activity)};
  return std::move(transcript.pieces.front());
}

}  // namespace modevisor::host
