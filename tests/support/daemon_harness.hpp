// What the end-to-end tests of the daemon, of migration between daemons and
// of the fleet share: running commands, polling, free loopback ports, child
// processes, and a host (a real modevisord in a temporary folder) driven with
// the `modevisor` CLI as an operator drives it.  Header-only; each test
// target defines MODEVISOR_BINARY_DIR.
#pragma once

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <x86intrin.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace modevisor::test_support {

namespace fs = std::filesystem;
using nlohmann::json;

inline const fs::path kBin = fs::path(MODEVISOR_BINARY_DIR) / "bin";
inline const fs::path kGuests = fs::path(MODEVISOR_BINARY_DIR) / "guests";
inline const fs::path kPlugins = fs::path(MODEVISOR_BINARY_DIR) / "plugins";

struct Result {
  int status = -1;
  std::string out;  // stdout and stderr
};

inline Result shell(const std::string& command) {
  Result result;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return result;
  std::array<char, 4096> buffer{};
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) result.out.append(buffer.data(), n);
  const int raw = ::pclose(pipe);
  result.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return result;
}

inline std::string read_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Polls until `done` holds; the bound only turns a hang into a failure.
inline bool eventually(const std::function<bool()>& done, int tenths = 600) {
  for (int i = 0; i < tenths; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return done();
}

// A loopback port nobody listens on now (the kernel's choice, released at once).
// A loopback port nothing listens on now, never the same one twice in this
// process: the kernel may hand a just-closed ephemeral port out again at once
// (CI saw two etcd members of one cluster given the same peer port).
inline int free_port() {
  static std::mutex mutex;
  static std::set<int> given;
  std::lock_guard lock(mutex);
  for (;;) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    const int port = ntohs(a.sin_port);
    if (given.insert(port).second) return port;
  }
}

// This machine's TSC rate, for guests that pace themselves by it (stamper).
inline std::uint64_t tsc_khz() {
  const auto t0 = std::chrono::steady_clock::now();
  const auto c0 = __rdtsc();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto c1 = __rdtsc();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return static_cast<std::uint64_t>(static_cast<double>(c1 - c0) / ms);
}

// argv[0] is a path; stdout and stderr are appended to `output`.
inline pid_t spawn(const std::vector<std::string>& argv, const fs::path& output) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int out = ::open(output.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    ::dup2(out, 1);
    ::dup2(out, 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  return pid;
}

inline void end_process(pid_t& pid, int signal = SIGTERM) {
  if (pid <= 0) return;
  ::kill(pid, SIGCONT);  // a stopped process must be able to take the signal
  ::kill(pid, signal);
  int status = 0;
  ::waitpid(pid, &status, 0);
  pid = -1;
}

// (monitor pid, from, to) in CLOCK_MONOTONIC ns; to = -1 while it runs.
using RunInterval = std::array<long long, 3>;

// A daemon's `<state_dir>/run-intervals.log`: `run|end VM PID NS` lines.
inline std::vector<RunInterval> read_run_intervals(const fs::path& log, const std::string& only_vm = "") {
  std::vector<RunInterval> out;
  std::map<long long, std::size_t> open;
  std::istringstream in(read_file(log));
  std::string what, vm;
  long long pid, t;
  while (in >> what >> vm >> pid >> t) {
    if (!only_vm.empty() && vm != only_vm) continue;
    if (what == "run") {
      open[pid] = out.size();
      out.push_back({pid, t, -1});
    } else if (open.count(pid)) {
      out[open[pid]][2] = t;
      open.erase(pid);
    }
  }
  return out;
}

// Fails the test where two intervals (of one VM, on any hosts) overlap;
// returns how many still run.
inline std::size_t expect_disjoint(std::vector<RunInterval> all, const std::string& vm) {
  const long long now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                            std::chrono::steady_clock::now().time_since_epoch()).count();
  std::size_t running = 0;
  for (auto& i : all)
    if (i[2] < 0) {
      i[2] = now;
      ++running;
    }
  for (std::size_t x = 0; x < all.size(); ++x)
    for (std::size_t y = x + 1; y < all.size(); ++y)
      EXPECT_TRUE(all[x][2] <= all[y][1] || all[y][2] <= all[x][1])
          << "monitor processes " << all[x][0] << " and " << all[y][0] << " ran VM " << vm << " at the same time";
  return running;
}

// One host: a modevisord with its own folder, control socket and state.
struct DaemonHost {
  std::string name;
  fs::path dir;
  int port = 0;  // its migration listener
  pid_t daemon = -1;

  fs::path socket() const { return dir / "control.sock"; }
  Result cli(const std::string& args) const {
    return shell((kBin / "modevisor").string() + " --socket " + socket().string() + " " + args);
  }
  json cli_json(const std::string& args) const {
    const Result r = cli("--json " + args);
    json j = json::parse(r.out, nullptr, false);
    return j.is_discarded() ? json{{"unparsed", r.out}, {"status", r.status}} : j;
  }
  std::string state_of(const std::string& vm) const { return cli_json("vm status " + vm).value("state", "none"); }
  std::string console(const std::string& vm) const { return cli("vm console --no-follow " + vm).out; }
  std::string log(const std::string& vm) const { return cli("vm log " + vm).out; }
  std::string daemon_log() const { return read_file(dir / "daemon.out"); }
  std::vector<RunInterval> run_intervals(const std::string& only_vm = "") const {
    return read_run_intervals(dir / "state" / "run-intervals.log", only_vm);
  }
  // The common head of its host YAML; the caller adds migration:, peers:, fleet:.
  std::string base_yaml() const {
    return "name: " + name + "\ncontrol_socket: " + socket().string() + "\nstate_dir: " + (dir / "state").string() +
           "\nlog_dir: " + (dir / "logs").string() + "\nplugin_dirs: [" + kPlugins.string() + "]\n";
  }
  // Writes host.yaml, starts the daemon and waits until it answers.
  void start(const std::string& host_yaml) {
    fs::create_directories(dir);
    std::ofstream(dir / "host.yaml") << host_yaml;
    daemon = spawn({(kBin / "modevisord").string(), "--config", (dir / "host.yaml").string()}, dir / "daemon.out");
    ASSERT_TRUE(eventually([&] { return cli("--json host").status == 0; })) << daemon_log();
  }
  void stop(int signal = SIGTERM) { end_process(daemon, signal); }
  // The monitor processes this daemon started (its children).
  std::vector<pid_t> children() const {
    std::vector<pid_t> out;
    std::istringstream in(read_file("/proc/" + std::to_string(daemon) + "/task/" + std::to_string(daemon) + "/children"));
    pid_t pid;
    while (in >> pid) out.push_back(pid);
    return out;
  }
};

}  // namespace modevisor::test_support
