#include "diff_oracle.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace bttest {

namespace {

bool write_all(int fd, const std::uint8_t* data, std::size_t size) {
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

std::string env_or_empty(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

std::string find_in_path(const std::string& program) {
  const std::string path = env_or_empty("PATH");
  std::size_t start = 0;
  while (start <= path.size()) {
    const std::size_t end = std::min(path.find(':', start), path.size());
    const std::string dir = path.substr(start, end - start);
    const std::filesystem::path candidate = std::filesystem::path(dir.empty() ? "." : dir) / program;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
    start = end + 1;
  }
  return {};
}

// A program whose answer is known: EAX = 0x600dcafe, the scratch buffer
// echoed back.  Run once per candidate, so an oracle that starts but computes
// nothing (or faults on its first 32-bit instruction) is not chosen.
constexpr std::uint32_t kProbeEax = 0x600dcafe;

std::string probe(const std::vector<std::string>& launcher, const std::string& helper) {
  const std::vector<std::uint8_t> code = {
      0xb8, 0xfe, 0xca, 0x0d, 0x60,        // mov eax, 0x600dcafe
      0xa3, 0x00, 0x00, 0x21, 0x00,        // mov [0x210000], eax
      0xff, 0x25, 0x40, 0x00, 0x21, 0x00,  // jmp dword [0x210040] (back into the helper)
  };
  std::vector<std::uint8_t> scratch(kHelperScratchSize);
  for (std::size_t i = 0; i < scratch.size(); ++i) scratch[i] = static_cast<std::uint8_t>(i * 7 + 3);
  std::vector<std::string> argv = launcher;
  argv.push_back(helper);
  const ProcessRun run = run_process(argv, helper_input(code, scratch));
  if (!run.exited_ok()) return run.describe_failure();
  if (run.output.size() != kHelperOutputSize)
    return "answered " + std::to_string(run.output.size()) + " bytes, expected " + std::to_string(kHelperOutputSize);
  std::uint32_t eax = 0;
  std::memcpy(&eax, run.output.data(), 4);
  if (eax != kProbeEax) return "computed a wrong EAX for the probe program";
  if (!std::equal(scratch.begin(), scratch.end(), run.output.begin() + 36)) return "did not echo the scratch buffer";
  return {};
}

std::string first_line(const std::vector<std::uint8_t>& text) {
  std::string line(text.begin(), text.end());
  return line.substr(0, line.find('\n'));
}

Oracle host_cpu_oracle() {
  Oracle o;
  o.kind = OracleKind::HostCpu;
  o.description = "host CPU (the 32-bit helper runs natively)";
  o.matches_host_undefined_flags = true;
  return o;
}

Oracle qemu_user_oracle(const std::string& qemu) {
  Oracle o;
  o.kind = OracleKind::QemuUser;
  o.launcher = {qemu};
  const ProcessRun version = run_process({qemu, "--version"}, {});
  o.description = "qemu-user: " + qemu + (version.exited_ok() ? " (" + first_line(version.output) + ")" : "");
  o.matches_host_undefined_flags = false;
  return o;
}

}  // namespace

bool ProcessRun::exited_ok() const { return started && WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0; }

std::string ProcessRun::describe_failure() const {
  if (!started) return std::string("exec: ") + std::strerror(exec_errno);
  if (WIFSIGNALED(wait_status)) return "killed by signal " + std::to_string(WTERMSIG(wait_status)) + " (" +
                                       strsignal(WTERMSIG(wait_status)) + ")";
  if (WIFEXITED(wait_status)) return "exit status " + std::to_string(WEXITSTATUS(wait_status));
  return "wait status " + std::to_string(wait_status);
}

ProcessRun run_process(const std::vector<std::string>& argv, const std::vector<std::uint8_t>& input) {
  ProcessRun run;
  int to_child[2], from_child[2], exec_report[2];
  if (::pipe2(to_child, O_CLOEXEC) || ::pipe2(from_child, O_CLOEXEC) || ::pipe2(exec_report, O_CLOEXEC)) {
    run.exec_errno = errno;
    return run;
  }
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(to_child[0], 0);
    ::dup2(from_child[1], 1);
    ::execv(args[0], args.data());
    const int e = errno;  // exec_report is close-on-exec: it only carries a failed exec's errno
    (void)!::write(exec_report[1], &e, sizeof e);
    ::_exit(127);
  }
  ::close(to_child[0]);
  ::close(from_child[1]);
  ::close(exec_report[1]);
  // The child may die before reading everything (a failed exec): no SIGPIPE.
  struct sigaction ignore {}, previous {};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ignore, &previous);
  write_all(to_child[1], input.data(), input.size());
  ::sigaction(SIGPIPE, &previous, nullptr);
  ::close(to_child[1]);
  std::uint8_t buf[65536];
  for (;;) {
    const ssize_t n = ::read(from_child[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    run.output.insert(run.output.end(), buf, buf + n);
  }
  ::close(from_child[0]);
  int e = 0;
  ssize_t got;
  do got = ::read(exec_report[0], &e, sizeof e);
  while (got < 0 && errno == EINTR);
  ::close(exec_report[0]);
  run.started = got != static_cast<ssize_t>(sizeof e);
  run.exec_errno = run.started ? 0 : e;
  while (::waitpid(pid, &run.wait_status, 0) < 0 && errno == EINTR) {
  }
  return run;
}

std::vector<std::uint8_t> helper_input(const std::vector<std::uint8_t>& code, const std::vector<std::uint8_t>& scratch) {
  std::vector<std::uint8_t> in;
  const std::uint32_t len = static_cast<std::uint32_t>(code.size());
  in.insert(in.end(), reinterpret_cast<const std::uint8_t*>(&len), reinterpret_cast<const std::uint8_t*>(&len) + 4);
  in.insert(in.end(), code.begin(), code.end());
  in.insert(in.end(), scratch.begin(), scratch.end());
  return in;
}

OracleRequest oracle_request_from_environment(const std::string& helper) {
  OracleRequest r;
  r.forced = env_or_empty("MODEVISOR_DIFF_ORACLE");
  r.helper = helper;
  r.qemu_i386 = env_or_empty("MODEVISOR_QEMU_I386");
  if (r.qemu_i386.empty()) r.qemu_i386 = find_in_path("qemu-i386");
  return r;
}

OracleChoice choose_oracle(const OracleRequest& request) {
  OracleChoice choice;
  const std::string& forced = request.forced;
  if (!forced.empty() && forced != "auto" && forced != "host-cpu" && forced != "qemu-user") {
    choice.error = "MODEVISOR_DIFF_ORACLE=" + forced + " is not an oracle (host-cpu, qemu-user or auto)";
    return choice;
  }
  std::string reasons;
  if (forced != "qemu-user") {
    const std::string native_failure = probe({}, request.helper);
    if (native_failure.empty()) {
      choice.found = true;
      choice.oracle = host_cpu_oracle();
      return choice;
    }
    reasons = "the host CPU cannot run the 32-bit helper " + request.helper + ": " + native_failure;
    if (forced == "host-cpu") {
      choice.error = reasons + " (MODEVISOR_DIFF_ORACLE=host-cpu)";
      return choice;
    }
  }
  std::string qemu_failure;
  if (request.qemu_i386.empty()) {
    qemu_failure = "no qemu-i386 in PATH (install Debian's qemu-user: scripts/setup.sh)";
  } else {
    qemu_failure = probe({request.qemu_i386}, request.helper);
    if (!qemu_failure.empty()) qemu_failure = request.qemu_i386 + " cannot run the helper: " + qemu_failure;
  }
  if (qemu_failure.empty()) {
    choice.found = true;
    choice.oracle = qemu_user_oracle(request.qemu_i386);
    if (forced == "qemu-user") choice.oracle.description += " (forced: MODEVISOR_DIFF_ORACLE=qemu-user)";
    else choice.oracle.description += " (" + reasons + ")";
    return choice;
  }
  choice.error = "no oracle for the differential tests: " + (reasons.empty() ? "" : reasons + "; ") + qemu_failure;
  return choice;
}

const OracleChoice& diff_oracle() {
  static const OracleChoice choice = choose_oracle(oracle_request_from_environment(BT_NATIVE32_HELPER));
  return choice;
}

}  // namespace bttest
