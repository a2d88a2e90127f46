// End-to-end: modevisord on a temporary control socket, real monitor
// processes (modevisor-vmm), real guests under bt-swmmu, driven by the
// modevisor client as an operator drives it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>

#include "control/protocol.hpp"
#include "control/unix_socket.hpp"
#include "support/daemon_harness.hpp"

namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using nlohmann::json;
namespace fs = std::filesystem;
namespace control = modevisor::control;

using namespace modevisor::test_support;

const fs::path kTestPlugins = MODEVISOR_TEST_PLUGIN_DIR;


class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path("/tmp") / ("mvd-" + std::to_string(::getpid()) + "-" + std::string(info->name()).substr(0, 24));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "plugins");
    socket_ = dir_ / "control.sock";
  }
  void TearDown() override {
    stop_daemon(SIGTERM);
    fs::remove_all(dir_);
  }

  void write_host_yaml(const std::string& extra = "") {
    std::ofstream(dir_ / "host.yaml") << "name: test\n"
                                      << "control_socket: " << socket_.string() << "\n"
                                      << "state_dir: " << (dir_ / "state").string() << "\n"
                                      << "log_dir: " << (dir_ / "logs").string() << "\n"
                                      << "plugin_dirs: [" << kPlugins.string() << ", " << (dir_ / "plugins").string()
                                      << "]\n"
                                      << extra;
  }

  // Starts modevisord and waits until it answers.
  void start_daemon(const std::string& extra_yaml = "") {
    if (!fs::exists(dir_ / "host.yaml")) write_host_yaml(extra_yaml);
    daemon_ = ::fork();
    if (daemon_ == 0) {
      const int out = ::open((dir_ / "daemon.out").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      ::dup2(out, 1);
      ::dup2(out, 2);
      const std::string binary = (kBin / "modevisord").string(), config = (dir_ / "host.yaml").string();
      ::execl(binary.c_str(), binary.c_str(), "--config", config.c_str(), nullptr);
      ::_exit(127);
    }
    ASSERT_TRUE(eventually([&] { return cli("--json host").status == 0; })) << read_file(dir_ / "daemon.out");
  }

  // Signals the daemon and returns its exit status (-1 if none was running).
  int stop_daemon(int signal) {
    if (daemon_ <= 0) return -1;
    ::kill(daemon_, signal);
    int status = 0;
    ::waitpid(daemon_, &status, 0);
    daemon_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  Result cli(const std::string& args) const {
    return shell((kBin / "modevisor").string() + " --socket " + socket_.string() + " " + args);
  }
  json cli_json(const std::string& args) const {
    const Result r = cli("--json " + args);
    json j = json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << args << ": " << r.out;
    return j;
  }
  std::string state_of(const std::string& name) const {
    const json j = cli_json("vm status " + name);
    return j.value("state", "(" + j.dump() + ")");
  }
  bool wait_state(const std::string& name, const std::string& state) const {
    return eventually([&] { return state_of(name) == state; });
  }

  fs::path vm_yaml(const std::string& name, const std::string& kernel, const std::string& cmdline) const {
    const fs::path file = dir_ / (name + ".yaml");
    std::ofstream(file) << "name: " << name << "\nguest:\n  os: other-32\n  kernel: " << (kGuests / kernel).string()
                        << "\n  cmdline: \"" << cmdline << "\"\nmemory: 64MiB\n";
    return file;
  }
  // A guest that runs until it is stopped (for all practical purposes).
  fs::path long_vm(const std::string& name) const { return vm_yaml(name, "sieve.elf", "n=100000000 r=100000"); }

  fs::path dir_, socket_;
  pid_t daemon_ = -1;
};

TEST_F(DaemonTest, StartListConsoleLogStatusOfAGuestThatRunsToItsEnd) {
  start_daemon();
  const fs::path vm = vm_yaml("hello", "hello.elf", "hello=world n=42");
  const json started = cli_json("vm start " + vm.string());
  EXPECT_EQ(started["name"], "hello") << started.dump();
  EXPECT_EQ(started["plugin"], "bt-swmmu");
  ASSERT_TRUE(wait_state("hello", "stopped"));

  const json list = cli_json("vm list");
  ASSERT_EQ(list["vms"].size(), 1u);
  EXPECT_EQ(list["vms"][0]["mode"], "BT32");
  EXPECT_EQ(list["vms"][0]["plugin"], "bt-swmmu");
  EXPECT_EQ(list["vms"][0]["result"]["exit_status"], 1);  // hello writes 0 to the debug-exit port

  const Result console = cli("vm console hello --no-follow");
  EXPECT_EQ(console.status, 0);
  EXPECT_THAT(console.out, HasSubstr("hello from hello"));
  EXPECT_THAT(console.out, HasSubstr("RESULT: PASS"));

  const Result log = cli("vm log hello");
  EXPECT_THAT(log.out, HasSubstr("MONITOR MODE: selected               : BT32 (bt-swmmu"));
  EXPECT_THAT(log.out, HasSubstr("power off: guest-exit"));

  const json status = cli_json("vm status hello");
  EXPECT_GT(status["counters"].value("bt.blocks_translated", 0), 0) << status.dump();
  EXPECT_GT(status["console_bytes"].get<int>(), 0);
}

// The seed's BT32 under the daemon, where no hardware mode is allowed (masked):
// the guest enters long mode, the monitor process takes the daemon's switch
// decision and the VM fails with the policy's reason, which `vm status` and
// the VM log show.
TEST_F(DaemonTest, ABt32VmEnteringLongModeWithNoHardwareModeFailsWithTheSeedsReason) {
  start_daemon("policy: esx-4.0\nmask: [hardware_virtualization]\n");
  const fs::path vm = dir_ / "longmode.yaml";
  std::ofstream(vm) << "name: longmode\nguest:\n  os: other-32\n  kernel: " << (kGuests / "longmode.elf").string()
                    << "\nmemory: 64MiB\ncpu_model: kvm64\n";
  const json started = cli_json("vm start " + vm.string());
  EXPECT_EQ(started["mode"], "BT32") << started.dump();
  ASSERT_TRUE(wait_state("longmode", "failed"));
  const json status = cli_json("vm status longmode");
  EXPECT_THAT(status.value("reason", ""), HasSubstr("BT64 could not virtualize the 64-bit architecture efficiently"));
  ASSERT_TRUE(status.contains("mode_switch")) << status.dump();
  EXPECT_EQ(status["mode_switch"].value("from", ""), "BT32");
  EXPECT_FALSE(status["mode_switch"].contains("to"));
  EXPECT_EQ(status["mode"], "BT32");
  const std::string log = read_file(dir_ / "logs" / "longmode.log");
  EXPECT_THAT(log, HasSubstr("mode switch: the guest activated long mode"));
  EXPECT_THAT(log, HasSubstr("MONITOR MODE: switch                 : none, the VM stops under BT32: "));
  const Result console = cli("vm console longmode --no-follow");
  EXPECT_THAT(console.out, HasSubstr("entering long mode\n"));
  EXPECT_THAT(console.out, Not(HasSubstr("64-bit code")));
}

TEST_F(DaemonTest, ConsoleAttachTypesIntoTheGuestAndReadsItsOutput) {
  start_daemon();
  ASSERT_EQ(cli("vm start " + long_vm("busy").string()).status, 0);
  ASSERT_TRUE(wait_state("busy", "running"));
  // Running is not yet printed: wait for the guest's first line, which the
  // attachment's history must then carry.
  ASSERT_TRUE(eventually([&] { return cli("vm console busy --no-follow").out.find("sieve: n=") != std::string::npos; }));
  // Attach as the client does: the reply carries the output so far, then events follow.
  control::LineChannel channel(control::connect_unix(socket_));
  ASSERT_TRUE(channel.send(control::request(1, "vm.console", {{"name", "busy"}, {"follow", true}})));
  const auto reply = channel.receive();
  ASSERT_TRUE(reply && (*reply)["ok"].get<bool>()) << (reply ? reply->dump() : channel.error());
  EXPECT_TRUE((*reply)["result"]["attached"].get<bool>());
  const auto history = control::base64_decode((*reply)["result"]["console"].get<std::string>());
  ASSERT_TRUE(history);
  EXPECT_THAT(*history, HasSubstr("sieve: n=100000000"));
  // Input reaches the guest's UART (sieve does not read it; the daemon must take it without harm).
  EXPECT_TRUE(channel.send(control::request(0, "console.input", {{"name", "busy"}, {"data", control::base64_encode("x\x03")}})));
  // Stopping the VM ends the attachment with a state event.
  ASSERT_EQ(cli("vm stop busy").status, 0);
  std::string end_state;
  while (auto message = channel.receive())
    if (message->value("event", "") == "state") {
      end_state = message->value("state", "");
      if (end_state == "stopped" || end_state == "failed") break;
    }
  EXPECT_EQ(end_state, "stopped");
}

TEST_F(DaemonTest, PauseResumeStop) {
  start_daemon();
  ASSERT_EQ(cli("vm start " + long_vm("busy").string()).status, 0);
  ASSERT_TRUE(wait_state("busy", "running"));
  EXPECT_EQ(cli("vm pause busy").status, 0);
  EXPECT_EQ(state_of("busy"), "paused");
  EXPECT_EQ(cli("vm pause busy").status, 12);  // the state does not allow it
  EXPECT_EQ(cli("vm resume busy").status, 0);
  EXPECT_EQ(state_of("busy"), "running");
  const json stopped = cli_json("vm stop busy");
  EXPECT_EQ(stopped["state"], "stopped") << stopped.dump();
  EXPECT_THAT(read_file(dir_ / "logs" / "busy.log"), HasSubstr("power off: stopped"));
  EXPECT_EQ(cli("vm stop busy").status, 12);
  EXPECT_EQ(cli("vm stop nosuch").status, 12);

  // Paused and resumed, a guest's output goes on with no gap and no repeat.
  // ~4.5 s under BT: long enough to be paused (at r=100, 1.1 s on the AMD
  // machines, a loaded ASan daemon answered the pause after the guest ended).
  const std::string cmdline = "n=10000000 r=400";
  ASSERT_EQ(cli("vm start " + vm_yaml("reference", "sieve.elf", cmdline).string()).status, 0);
  ASSERT_TRUE(wait_state("reference", "stopped"));
  ASSERT_EQ(cli("vm start " + vm_yaml("paused", "sieve.elf", cmdline).string()).status, 0);
  ASSERT_EQ(cli("vm pause paused").status, 0) << "the guest ended before it could be paused";
  const auto bytes_at_pause = cli_json("vm status paused")["console_bytes"];
  EXPECT_EQ(cli_json("vm status paused")["console_bytes"], bytes_at_pause);  // nothing runs while paused
  ASSERT_EQ(cli("vm resume paused").status, 0);
  ASSERT_TRUE(wait_state("paused", "stopped"));
  EXPECT_EQ(cli("vm console paused --no-follow").out, cli("vm console reference --no-follow").out);
  EXPECT_EQ(cli_json("vm status paused")["result"]["exit_status"], 1);
}

// Save a paused VM, stop it, restore it (paused, under the mode this host
// selects), resume: its output before the save and after the restore is the
// output of an uninterrupted run, byte for byte.
TEST_F(DaemonTest, SaveAndRestoreContinueTheGuestExactly) {
  start_daemon();
  // ~4.5 s under BT: long enough to be paused (at r=100, 1.1 s on the AMD
  // machines, a loaded ASan daemon answered the pause after the guest ended).
  const std::string cmdline = "n=10000000 r=400";
  ASSERT_EQ(cli("vm start " + vm_yaml("reference", "sieve.elf", cmdline).string()).status, 0);
  ASSERT_TRUE(wait_state("reference", "stopped"));
  const std::string expected = cli("vm console reference --no-follow").out;
  ASSERT_THAT(expected, HasSubstr("RESULT: PASS"));

  ASSERT_EQ(cli("vm start " + vm_yaml("sieve", "sieve.elf", cmdline).string()).status, 0);
  ASSERT_EQ(cli("vm pause sieve").status, 0) << "the guest ended before it could be paused";
  const fs::path snapshot = dir_ / "sieve.snap";
  const Result saved = cli("vm save sieve " + snapshot.string());
  ASSERT_EQ(saved.status, 0) << saved.out;
  ASSERT_EQ(cli("vm stop sieve").status, 0);
  const std::string before = cli("vm console sieve --no-follow").out;

  const json restored = cli_json("vm restore " + snapshot.string());
  EXPECT_EQ(restored["state"], "paused") << restored.dump();
  EXPECT_EQ(restored["plugin"], "bt-swmmu");
  EXPECT_EQ(cli("vm resume sieve").status, 0);
  ASSERT_TRUE(wait_state("sieve", "stopped"));
  EXPECT_EQ(before + cli("vm console sieve --no-follow").out, expected);
  EXPECT_EQ(cli_json("vm status sieve")["result"]["exit_status"], 1);

  // A damaged snapshot is refused with its name, and nothing changes.
  std::string bytes = read_file(snapshot);
  bytes[bytes.size() / 2] ^= 0x10;
  std::ofstream(dir_ / "flipped.snap", std::ios::binary) << bytes;
  const Result refused = cli("vm restore " + (dir_ / "flipped.snap").string());
  EXPECT_EQ(refused.status, 2) << refused.out;
  EXPECT_THAT(refused.out, HasSubstr("flipped.snap"));
  EXPECT_EQ(cli_json("vm list")["vms"].size(), 2u);
}

TEST_F(DaemonTest, AMonitorProcessKilledWithSigkillFailsOnlyItsVm) {
  start_daemon();
  ASSERT_EQ(cli("vm start " + long_vm("victim").string()).status, 0);
  ASSERT_EQ(cli("vm start " + long_vm("survivor").string()).status, 0);
  ASSERT_TRUE(wait_state("victim", "running"));
  const pid_t pid = cli_json("vm status victim")["pid"].get<pid_t>();
  ASSERT_GT(pid, 0);
  ::kill(pid, SIGKILL);
  ASSERT_TRUE(wait_state("victim", "failed"));
  const json victim = cli_json("vm status victim");
  EXPECT_THAT(victim["reason"].get<std::string>(), HasSubstr("killed by signal 9")) << victim.dump();
  EXPECT_EQ(state_of("survivor"), "running");
  EXPECT_EQ(cli("vm stop survivor").status, 0);
}

TEST_F(DaemonTest, SigtermStopsEveryVmCleanly) {
  start_daemon();
  ASSERT_EQ(cli("vm start " + long_vm("one").string()).status, 0);
  ASSERT_EQ(cli("vm start " + long_vm("two").string()).status, 0);
  ASSERT_TRUE(wait_state("two", "running"));
  EXPECT_EQ(stop_daemon(SIGTERM), 0);
  for (const char* name : {"one", "two"}) {
    const std::string log = read_file(dir_ / "logs" / (std::string(name) + ".log"));
    EXPECT_THAT(log, HasSubstr("power off: stopped")) << name;
    EXPECT_THAT(log, HasSubstr("counter ")) << name;
  }
  EXPECT_FALSE(fs::exists(socket_));
}

TEST_F(DaemonTest, ARestartedDaemonFindsTheVmsItLeftOrSaysItLostThem) {
  start_daemon();
  ASSERT_EQ(cli("vm start " + long_vm("kept").string()).status, 0);
  ASSERT_EQ(cli("vm start " + long_vm("lost").string()).status, 0);
  ASSERT_TRUE(wait_state("lost", "running"));
  const pid_t lost_pid = cli_json("vm status lost")["pid"].get<pid_t>();
  EXPECT_EQ(stop_daemon(SIGKILL), 128 + SIGKILL);  // the daemon dies; its VMs go on
  ::kill(lost_pid, SIGKILL);                       // and one of them dies while no daemon runs
  ASSERT_TRUE(eventually([&] { return ::kill(lost_pid, 0) != 0; }));  // reaped by init
  start_daemon();
  EXPECT_EQ(state_of("kept"), "running");
  ASSERT_TRUE(wait_state("lost", "failed"));
  EXPECT_THAT(cli_json("vm status lost")["reason"].get<std::string>(), HasSubstr("lost"));
  EXPECT_THAT(read_file(dir_ / "logs" / "host.log"), HasSubstr("VM kept: found running"));
  EXPECT_EQ(cli("vm stop kept").status, 0);
  EXPECT_EQ(state_of("kept"), "stopped");
}

TEST_F(DaemonTest, APluginDroppedInIsListedAfterRescan) {
  start_daemon();
  auto names = [&] {
    std::vector<std::string> out;
    const json all = cli_json("plugins");
    EXPECT_TRUE(all.contains("plugins")) << all.dump();
    for (const auto& p : all["plugins"]) out.push_back(p["name"]);
    return out;
  };
  EXPECT_THAT(names(), Not(::testing::Contains("test-good")));
  fs::copy_file(kTestPlugins / "good" / "test-good.so", dir_ / "plugins" / "test-good.so");
  const json rescanned = cli_json("plugins rescan");
  std::vector<std::string> listed;
  for (const auto& p : rescanned["plugins"]) listed.push_back(p["name"]);
  EXPECT_THAT(listed, ::testing::Contains("test-good"));
  EXPECT_THAT(names(), ::testing::Contains("test-good"));
}

// The VM's plugin file overwritten in place (not renamed) while it runs, and
// rescanned: the VM runs the image its monitor process loaded and goes on.
TEST_F(DaemonTest, APluginFileReplacedWhileItsVmRunsDoesNotCrashIt) {
  std::ofstream(dir_ / "host.yaml") << "control_socket: " << socket_.string() << "\nstate_dir: "
                                    << (dir_ / "state").string() << "\nlog_dir: " << (dir_ / "logs").string()
                                    << "\nplugin_dirs: [" << (dir_ / "plugins").string() << "]\n";
  fs::copy_file(kPlugins / "bt-swmmu.so", dir_ / "plugins" / "bt-swmmu.so");
  start_daemon();
  ASSERT_EQ(cli("vm start " + long_vm("busy").string()).status, 0);
  ASSERT_TRUE(wait_state("busy", "running"));
  {
    std::ofstream clobber(dir_ / "plugins" / "bt-swmmu.so", std::ios::binary | std::ios::trunc);
    clobber << "no longer a library";
  }
  const json rescanned = cli_json("plugins rescan");
  EXPECT_TRUE(rescanned["plugins"].empty());
  ASSERT_FALSE(rescanned["problems"].empty());
  EXPECT_EQ(cli("vm pause busy").status, 0);  // calls into the plugin's code
  EXPECT_EQ(cli("vm resume busy").status, 0);
  EXPECT_EQ(state_of("busy"), "running");
  const json stopped = cli_json("vm stop busy");
  EXPECT_EQ(stopped["state"], "stopped") << stopped.dump();
  EXPECT_EQ(stopped["result"]["result"], "stopped");
}

TEST_F(DaemonTest, AnotherUsersConnectionIsRefused) {
  start_daemon();
  struct stat st {};
  ASSERT_EQ(::stat(socket_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // Past the file mode too (as if it were opened up): SO_PEERCRED refuses the uid.
  auto connect_as_nobody = [&]() -> int {
    const pid_t child = ::fork();
    if (child == 0) {
      if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(90);
      try {
        control::LineChannel channel(control::connect_unix(socket_));
        channel.send(control::request(1, "vm.list"));
        auto reply = channel.receive();
        if (!reply) ::_exit(11);  // closed without an answer
        const bool refused = !reply->value("ok", true) &&
                             (*reply)["error"]["message"].get<std::string>().find("another user") != std::string::npos;
        ::_exit(refused ? 10 : 20);
      } catch (const std::system_error& e) {
        ::_exit(e.code().value() == EACCES ? 30 : 40);
      }
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to become another user";
  EXPECT_EQ(connect_as_nobody(), 30);  // the socket's mode keeps it out
  ::chmod(socket_.c_str(), 0666);
  const int opened = connect_as_nobody();
  EXPECT_TRUE(opened == 10 || opened == 11) << opened;  // refused by its credentials
  EXPECT_THAT(read_file(dir_ / "logs" / "host.log"), HasSubstr("refused a connection from uid 65534"));
  EXPECT_EQ(cli("--json vm list").status, 0);  // the owner still gets in
}

TEST_F(DaemonTest, BadHostYamlIsRefusedWithItsPosition) {
  auto daemon_with = [&](const std::string& yaml) {
    std::ofstream(dir_ / "bad.yaml") << yaml;
    return shell((kBin / "modevisord").string() + " --config " + (dir_ / "bad.yaml").string());
  };
  const fs::path secret = dir_ / "secret";
  std::ofstream(secret) << "s3cret\n";
  ::chmod(secret.c_str(), 0644);
  Result r = daemon_with("control_socket: " + socket_.string() + "\nmigration:\n  listen: 127.0.0.1:7000\n  secret_file: " +
                         secret.string() + "\n");
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.out, HasSubstr((dir_ / "bad.yaml").string() + ":4:16:"));
  EXPECT_THAT(r.out, HasSubstr(secret.string()));
  EXPECT_THAT(r.out, HasSubstr("readable by others"));

  r = daemon_with("migration:\n  secret_file: " + (dir_ / "missing").string() + "\n");
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.out, HasSubstr(":2:16:"));
  EXPECT_THAT(r.out, HasSubstr("missing"));

  r = daemon_with("metrics:\n  listen: localhost:99999\n");
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.out, HasSubstr(":2:11:"));
  EXPECT_THAT(r.out, HasSubstr("99999"));

  r = daemon_with("peers:\n  west: 10.0.0.2\n");
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.out, HasSubstr(":2:9:"));

  ::chmod(secret.c_str(), 0600);
  r = daemon_with("control_socket: " + socket_.string() + "\nstate_dir: " + (dir_ / "state").string() +
                  "\nmigration:\n  listen: 127.0.0.1:7000\n  secret_file: " + secret.string() +
                  "\npeers:\n  east: 192.0.2.1:7000\ncontrol_sockets: x\n");
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.out, HasSubstr("control_sockets"));  // an unknown key, with its position
  EXPECT_THAT(r.out, HasSubstr(":8:1:"));
}

TEST_F(DaemonTest, MetricsEndpointServesVmAndHostFigures) {
  const int port = 20000 + ::getpid() % 20000;
  start_daemon("metrics:\n  listen: 127.0.0.1:" + std::to_string(port) + "\n");
  ASSERT_EQ(cli("vm start " + vm_yaml("hello", "hello.elf", "").string()).status, 0);
  ASSERT_TRUE(wait_state("hello", "stopped"));
  std::string page;
  ASSERT_TRUE(eventually([&] {
    page = shell("curl -s http://127.0.0.1:" + std::to_string(port) + "/metrics").out;
    return page.find("vm=\"hello\"") != std::string::npos;
  })) << page;
  EXPECT_THAT(page, HasSubstr("modevisor_vm_info{vm=\"hello\",state=\"stopped\",mode=\"BT32\",plugin=\"bt-swmmu\"} 1"));
  EXPECT_THAT(page, ::testing::ContainsRegex("modevisor_vm_monitor_events_total\\{vm=\"hello\",counter=\"bt.blocks_translated\"\\} [1-9]"));
  EXPECT_THAT(page, ::testing::ContainsRegex("modevisor_host_vms_started [1-9]"));
}

// Type=notify: READY=1 once the control socket listens, STOPPING=1 on SIGTERM.
TEST_F(DaemonTest, TellsSystemdWhenItIsReadyAndWhenItStops) {
  const fs::path notify = dir_ / "notify.sock";
  control::Fd listener(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, notify.c_str(), sizeof address.sun_path - 1);
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  ::setenv("NOTIFY_SOCKET", notify.c_str(), 1);
  start_daemon();
  ::unsetenv("NOTIFY_SOCKET");
  auto receive = [&] {
    char buffer[512] = {};
    const ssize_t n = ::recv(listener.get(), buffer, sizeof buffer - 1, 0);
    return n > 0 ? std::string(buffer, static_cast<std::size_t>(n)) : std::string();
  };
  EXPECT_THAT(receive(), HasSubstr("READY=1"));
  const pid_t daemon = daemon_;
  ::kill(daemon, SIGTERM);
  EXPECT_THAT(receive(), HasSubstr("STOPPING=1"));
  // Signal 0: only wait for its exit.  A second SIGTERM could arrive after
  // the daemon has let go of its handlers and kill it (seen under ASan).
  EXPECT_EQ(stop_daemon(0), 0);
}

TEST_F(DaemonTest, ErrorsAreJsonWithJsonAndStatusesDoNotCollide) {
  start_daemon();
  const Result missing = cli("--json vm status nosuch");
  EXPECT_EQ(missing.status, 12);
  const json j = json::parse(missing.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << missing.out;
  EXPECT_EQ(j["error"]["code"], "no-such-vm");
  EXPECT_EQ(j["exit_status"], 12);
  const Result unreachable = shell((kBin / "modevisor").string() + " --json --socket " + (dir_ / "none.sock").string() +
                                   " vm list");
  EXPECT_EQ(unreachable.status, 10);
  EXPECT_EQ(json::parse(unreachable.out, nullptr, false)["error"]["code"], "protocol");
  const Result bad = cli("--json vm start " + (dir_ / "nonexistent.yaml").string());
  EXPECT_EQ(bad.status, 2);
  EXPECT_EQ(json::parse(bad.out, nullptr, false)["error"]["code"], "bad-input");
}

}  // namespace

namespace {

// `vm console` on a terminal: raw mode, so Ctrl-C goes to the guest instead of
// killing the client; Ctrl-] detaches.  A kernel file that is not a kernel is
// refused by the monitor process, and the daemon goes on.
TEST_F(DaemonTest, ConsoleOnATerminalPassesCtrlCAndDetachesOnCtrlBracket) {
  start_daemon();
  ASSERT_EQ(cli("vm start " + long_vm("busy").string()).status, 0);
  ASSERT_TRUE(wait_state("busy", "running"));
  int terminal = -1;
  const pid_t child = ::forkpty(&terminal, nullptr, nullptr, nullptr);
  if (child == 0) {
    const std::string binary = (kBin / "modevisor").string();
    ::execl(binary.c_str(), binary.c_str(), "--socket", socket_.c_str(), "vm", "console", "busy", nullptr);
    ::_exit(127);
  }
  ASSERT_GT(child, 0);
  std::string seen;
  auto read_until = [&](const std::string& text) {
    return eventually([&] {
      char buffer[4096];
      pollfd p{terminal, POLLIN, 0};
      while (::poll(&p, 1, 0) > 0) {
        const ssize_t n = ::read(terminal, buffer, sizeof buffer);
        if (n <= 0) break;
        seen.append(buffer, static_cast<std::size_t>(n));
      }
      return seen.find(text) != std::string::npos;
    });
  };
  ASSERT_TRUE(read_until("escape: Ctrl-]")) << seen;
  EXPECT_TRUE(read_until("sieve: n=100000000")) << seen;
  ASSERT_EQ(::write(terminal, "\x03", 1), 1);  // Ctrl-C: to the guest, not a signal to the client
  ::usleep(300000);
  int status = 0;
  EXPECT_EQ(::waitpid(child, &status, WNOHANG), 0) << "Ctrl-C ended the client";
  ASSERT_EQ(::write(terminal, "\x1d", 1), 1);  // Ctrl-]
  ASSERT_TRUE(read_until("detached")) << seen;
  ::waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  ::close(terminal);
  EXPECT_EQ(state_of("busy"), "running");

  std::ofstream(dir_ / "junk.elf") << "not a kernel";
  const Result junk = cli("vm start " + vm_yaml("junk", "../../../" + (dir_ / "junk.elf").string(), "").string());
  EXPECT_EQ(junk.status, 2) << junk.out;
  EXPECT_THAT(junk.out, HasSubstr("junk.elf"));
  EXPECT_EQ(state_of("busy"), "running");
  EXPECT_EQ(cli("vm stop busy").status, 0);
}

}  // namespace

// ---- Confinement of the monitor processes (host/vmm/confinement.hpp) ----

// The inode of the unix socket listening at `path` (from /proc/net/unix), 0 if none.
std::string unix_socket_inode(const fs::path& path) {
  std::ifstream table("/proc/net/unix");
  std::string line;
  while (std::getline(table, line)) {
    std::istringstream fields(line);
    std::string num, refcount, protocol, flags, type, st, inode, name;
    fields >> num >> refcount >> protocol >> flags >> type >> st >> inode >> name;
    if (name == path.string()) return inode;
  }
  return "";
}

std::vector<std::string> open_descriptors(pid_t pid) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(fs::path("/proc") / std::to_string(pid) / "fd", ec)) {
    std::error_code link_ec;
    out.push_back(fs::read_symlink(entry.path(), link_ec).string());
  }
  return out;
}

// A VM whose monitor opens a unix socket is killed by its process's seccomp
// filter; the daemon says which call it was, and the VM beside it runs on.
TEST_F(DaemonTest, AForbiddenSystemCallKillsOnlyThatVmAndTheDaemonSaysWhich) {
  std::ofstream(dir_ / "host.yaml") << "control_socket: " << socket_.string() << "\nstate_dir: "
                                    << (dir_ / "state").string() << "\nlog_dir: " << (dir_ / "logs").string()
                                    << "\nplugin_dirs: [" << (dir_ / "plugins").string() << "]\n";
  fs::copy_file(kPlugins / "bt-swmmu.so", dir_ / "plugins" / "bt-swmmu.so");
  start_daemon();
  ASSERT_EQ(cli("vm start " + long_vm("survivor").string()).status, 0);
  ASSERT_TRUE(wait_state("survivor", "running"))
      << cli("vm status survivor").out << read_file(dir_ / "daemon.out") << read_file(dir_ / "logs" / "survivor.log");
  // The fixture (a newer plugin of the same mode) is what the next VM gets.
  fs::copy_file(kTestPlugins / "forbidden-syscall" / "test-forbidden-syscall.so",
                dir_ / "plugins" / "test-forbidden-syscall.so");
  ASSERT_EQ(cli("plugins rescan").status, 0);
  cli("vm start " + vm_yaml("victim", "hello.elf", "n=1").string());
  ASSERT_TRUE(wait_state("victim", "failed")) << cli("vm status victim").out;
  const json victim = cli_json("vm status victim");
  EXPECT_EQ(victim.value("plugin", ""), "test-forbidden-syscall") << victim.dump();
  EXPECT_THAT(victim.value("reason", ""), HasSubstr("killed by the seccomp filter (SIGSYS, syscall 41 socket)"))
      << victim.dump();
  EXPECT_THAT(read_file(dir_ / "daemon.out"), HasSubstr("killed by the seccomp filter"));
  EXPECT_EQ(state_of("survivor"), "running");
  const json stopped = cli_json("vm stop survivor");
  EXPECT_EQ(stopped["state"], "stopped") << stopped.dump();
}

// The filter's switch: off, the same call goes through (and the fixture says so).
TEST_F(DaemonTest, TheSeccompFilterCanBeTurnedOffForDebugging) {
  std::ofstream(dir_ / "host.yaml") << "control_socket: " << socket_.string() << "\nstate_dir: "
                                    << (dir_ / "state").string() << "\nlog_dir: " << (dir_ / "logs").string()
                                    << "\nplugin_dirs: [" << (dir_ / "plugins").string() << "]\n";
  fs::copy_file(kTestPlugins / "forbidden-syscall" / "test-forbidden-syscall.so",
                dir_ / "plugins" / "test-forbidden-syscall.so");
  ::setenv("MODEVISOR_VMM_SECCOMP", "off", 1);
  start_daemon();
  ::unsetenv("MODEVISOR_VMM_SECCOMP");
  cli("vm start " + vm_yaml("let-through", "hello.elf", "n=1").string());
  ASSERT_TRUE(wait_state("let-through", "failed"));
  const json vm = cli_json("vm status let-through");
  EXPECT_THAT(vm.value("reason", ""), HasSubstr("let socket(AF_UNIX) through")) << vm.dump();
  EXPECT_THAT(read_file(dir_ / "logs" / "let-through.log"), HasSubstr("OFF (MODEVISOR_VMM_SECCOMP=off)"));
}

// What a running VM's monitor process holds and may do: filter mode 2,
// no_new_privs, no core files, and none of the daemon's descriptors (its
// control socket) nor the cluster secret.
TEST_F(DaemonTest, AMonitorProcessRunsConfinedWithoutTheDaemonsSocketOrSecret) {
  const fs::path secret = dir_ / "cluster.secret";
  std::ofstream(secret) << "a cluster secret only the daemon reads, 32+ bytes\n";
  ::chmod(secret.c_str(), 0600);
  start_daemon("migration:\n  listen: 127.0.0.1:" + std::to_string(20000 + ::getpid() % 20000) + "\n  secret_file: " + secret.string() + "\n");
  ASSERT_EQ(cli("vm start " + long_vm("confined").string()).status, 0);
  ASSERT_TRUE(wait_state("confined", "running"));
  const pid_t pid = cli_json("vm status confined")["pid"].get<pid_t>();
  ASSERT_GT(pid, 0);
  const std::string status = read_file(fs::path("/proc") / std::to_string(pid) / "status");
  EXPECT_THAT(status, HasSubstr("Seccomp:\t2\n"));
  EXPECT_THAT(status, HasSubstr("NoNewPrivs:\t1\n"));
  const std::string limits = read_file(fs::path("/proc") / std::to_string(pid) / "limits");
  EXPECT_THAT(limits, ::testing::ContainsRegex("Max core file size +0 +0"));
  EXPECT_THAT(limits, ::testing::ContainsRegex("Max open files +1024 +1024"));
  EXPECT_THAT(limits, ::testing::ContainsRegex("Max address space +[0-9]+ +[0-9]+ +bytes"));
  const std::string inode = unix_socket_inode(socket_);
  ASSERT_FALSE(inode.empty()) << "the daemon's control socket is not in /proc/net/unix";
  const auto fds = open_descriptors(pid);
  ASSERT_FALSE(fds.empty());
  EXPECT_THAT(fds, ::testing::Not(::testing::Contains("socket:[" + inode + "]")));
  EXPECT_THAT(fds, ::testing::Not(::testing::Contains(secret.string())));
  const std::string log = read_file(dir_ / "logs" / "confined.log");
  EXPECT_THAT(log, HasSubstr("seccomp filter on"));
  // Landlock where the kernel has it (this log says which): no file readable by path.
  if (log.find("no landlock here") == std::string::npos) EXPECT_THAT(log, HasSubstr("no file readable by path"));
  // Confined, it still does all a VM does: pause, resume, save, console, stop.
  EXPECT_EQ(cli("vm pause confined").status, 0);
  EXPECT_EQ(cli("vm save confined " + (dir_ / "confined.snap").string()).status, 0) << cli("vm status confined").out;
  EXPECT_EQ(cli("vm resume confined").status, 0);
  EXPECT_EQ(state_of("confined"), "running");
  const json stopped = cli_json("vm stop confined");
  EXPECT_EQ(stopped["state"], "stopped") << stopped.dump();
}

// Requests whose fields have the wrong types (found while writing fuzz_control): each is
// refused as a protocol error and the daemon goes on answering.
TEST_F(DaemonTest, RequestsWithFieldsOfTheWrongTypeAreRefusedAndTheDaemonGoesOn) {
  start_daemon();
  control::LineChannel channel(control::connect_unix(socket_));
  for (const char* line : {R"({"id":1,"op":5})", R"({"id":2,"op":"host","args":[1]})", R"({"id":{},"op":"host"})",
                           R"({"id":3})", R"({"id":4,"op":""})"}) {
    ASSERT_TRUE(channel.send(json::parse(line))) << line;
    const auto reply = channel.receive();
    ASSERT_TRUE(reply.has_value()) << line << ": the daemon closed the connection";
    EXPECT_FALSE(reply->value("ok", true)) << line;
    EXPECT_EQ((*reply)["error"].value("code", ""), "protocol") << line << " -> " << reply->dump();
  }
  EXPECT_EQ(cli("--json host").status, 0);
}

// Landlock: a confined monitor process cannot open a file for reading (here
// one standing in for the cluster secret, readable by the daemon's user);
// with the switch off it can.  Skipped where the kernel has no Landlock.
TEST_F(DaemonTest, AConfinedMonitorProcessCannotReadFilesByPath) {
  const fs::path probe = "/tmp/modevisor-test-confinement-probe";
  std::ofstream(probe) << "a secret the monitor process must not read\n";
  std::ofstream(dir_ / "host.yaml") << "control_socket: " << socket_.string() << "\nstate_dir: "
                                    << (dir_ / "state").string() << "\nlog_dir: " << (dir_ / "logs").string()
                                    << "\nplugin_dirs: [" << (dir_ / "plugins").string() << "]\n";
  fs::copy_file(kTestPlugins / "reads-a-file" / "test-reads-a-file.so", dir_ / "plugins" / "test-reads-a-file.so");
  start_daemon();
  cli("vm start " + vm_yaml("reader", "hello.elf", "n=1").string());
  ASSERT_TRUE(wait_state("reader", "failed"));
  const std::string log = read_file(dir_ / "logs" / "reader.log");
  if (log.find("no landlock here") != std::string::npos) {
    fs::remove(probe);
    GTEST_SKIP() << "this kernel has no Landlock";
  }
  EXPECT_THAT(cli_json("vm status reader").value("reason", ""), HasSubstr("open for reading: Permission denied"));
  stop_daemon(SIGTERM);

  ::setenv("MODEVISOR_VMM_SECCOMP", "off", 1);
  start_daemon();
  ::unsetenv("MODEVISOR_VMM_SECCOMP");
  cli("vm start " + vm_yaml("unconfined", "hello.elf", "n=1").string());
  ASSERT_TRUE(wait_state("unconfined", "failed"));
  EXPECT_THAT(cli_json("vm status unconfined").value("reason", ""), HasSubstr("read 43 bytes"));
  fs::remove(probe);
}
