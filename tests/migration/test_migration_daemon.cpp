// Live migration through the daemons, end to end: two modevisord on temporary
// control sockets, their migration listeners on loopback TCP, real monitor
// processes and the stamper guest under bt-swmmu, driven with `modevisor
// migrate` as an operator drives it.  Every test ends by checking that the VM
// runs on exactly one host and that the two daemons' run-interval logs never
// overlap.
#include <poll.h>
#include <signal.h>

#include <array>
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "control/protocol.hpp"
#include "control/unix_socket.hpp"
#include "support/daemon_harness.hpp"
#include "support/loopback_relay.hpp"

namespace {

using nlohmann::json;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

using namespace modevisor::test_support;

// The numbers of the complete "tick N" lines, in order (a console read while
// the guest prints may end in half a line).
std::vector<long> ticks(const std::string& console) {
  std::vector<long> out;
  std::size_t at = 0;
  for (std::size_t end; (end = console.find('\n', at)) != std::string::npos; at = end + 1)
    if (console.compare(at, 5, "tick ") == 0) out.push_back(std::stol(console.substr(at + 5, end - at - 5)));
  return out;
}

using TestHost = DaemonHost;
namespace control = modevisor::control;

// A loopback relay to a destination's migration port that reads the frame
// headers coming back from the destination and, on the first connection,
// cuts both sides instead of passing on the first frame of type `cut_at`
// (CommitAck: the destination committed and the source cannot know).  Later
// connections (the source resolving) pass untouched, or with
// refuse_after_cut are closed at once (the source cannot reach it again).
class CommitCuttingRelay final : public LoopbackRelay {
 public:
  static constexpr std::uint16_t kCommitAck = 41;  // host/migration/protocol.hpp
  static constexpr std::size_t kHeaderBytes = 20;  // magic u32, type u16, reserved u16, length u32, xxh3 u64

  explicit CommitCuttingRelay(int target_port, bool refuse_after_cut = false, std::uint16_t cut_at = kCommitAck)
      : LoopbackRelay(target_port), cut_at_(cut_at), refuse_after_cut_(refuse_after_cut) {
    start();
  }
  ~CommitCuttingRelay() override { stop(); }
  bool cut() const { return cut_; }
  void let_through() { refuse_after_cut_ = false; }  // the network heals

 private:
  bool admit(int) override { return !(cut_ && refuse_after_cut_); }
  void relay(int source, int target, int index) override {
    const bool may_cut = index == 0;
    std::vector<std::uint8_t> back;  // destination -> source bytes not yet passed on
    std::size_t frame_at = 0;        // where the next frame header starts in `back`
    std::array<std::uint8_t, 65536> buffer{};
    while (!stopping()) {
      pollfd fds[2] = {{source, POLLIN, 0}, {target, POLLIN, 0}};
      if (::poll(fds, 2, 50) < 0) break;
      if (fds[0].revents & (POLLIN | POLLHUP)) {
        const ssize_t n = ::read(source, buffer.data(), buffer.size());
        if (n <= 0 || !write_all(target, buffer.data(), static_cast<std::size_t>(n))) break;
      }
      if (fds[1].revents & (POLLIN | POLLHUP)) {
        const ssize_t n = ::read(target, buffer.data(), buffer.size());
        if (n <= 0) break;
        if (!may_cut) {
          if (!write_all(source, buffer.data(), static_cast<std::size_t>(n))) break;
          continue;
        }
        back.insert(back.end(), buffer.data(), buffer.data() + n);
        bool cutting = false;
        while (back.size() - frame_at >= kHeaderBytes) {
          const std::uint8_t* h = back.data() + frame_at;
          const std::uint16_t type = static_cast<std::uint16_t>(h[4] | h[5] << 8);
          const std::uint32_t length = h[8] | h[9] << 8 | h[10] << 16 | static_cast<std::uint32_t>(h[11]) << 24;
          if (type == cut_at_) {
            cutting = true;
            break;
          }
          if (back.size() - frame_at < kHeaderBytes + length) break;
          frame_at += kHeaderBytes + length;
        }
        // Pass on every whole frame before the cut (or before an incomplete one).
        if (!write_all(source, back.data(), frame_at)) break;
        back.erase(back.begin(), back.begin() + static_cast<std::ptrdiff_t>(frame_at));
        frame_at = 0;
        if (cutting) {
          cut_ = true;
          break;
        }
      }
    }
  }

  std::uint16_t cut_at_;
  std::atomic<bool> refuse_after_cut_;
  std::atomic<bool> cut_{false};
};

// A host with a migration listener, the shared secret and one named peer.
std::string migration_host_yaml(const TestHost& host, const fs::path& secret, const std::string& peer_name, int peer_port) {
  return host.base_yaml() + "migration:\n  listen: 127.0.0.1:" + std::to_string(host.port) + "\n  secret_file: " +
         secret.string() + "\npeers:\n  " + peer_name + ": 127.0.0.1:" + std::to_string(peer_port) + "\n";
}

class DaemonMigrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path("/tmp") / ("mvm-" + std::to_string(::getpid()) + "-" + std::string(info->name()).substr(0, 20));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    write_secret(dir_ / "cluster.secret", "a cluster secret that both hosts hold, 32+ bytes long");
    a_ = {"host-a", dir_ / "a", free_port()};
    b_ = {"host-b", dir_ / "b", free_port()};
  }
  void TearDown() override {
    a_.stop();
    b_.stop();
    if (!std::getenv("MODEVISOR_KEEP_TEST_DIRS")) fs::remove_all(dir_);
  }
  static void write_secret(const fs::path& file, const std::string& text) {
    std::ofstream(file) << text << "\n";
    fs::permissions(file, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::replace);
  }
  // b_reached_at: the port A dials for host-b (a relay in front of B), B's own by default.
  // VM "busy" on A (96 MiB stamped fast) and its migration to B with a 1 ms
  // limit, which cannot converge quickly, so it is in flight for a while:
  // `client` runs `migrate` and leaves its output in `migrate`.
  void start_busy_migration(Result& migrate, std::thread& client) {
    ASSERT_EQ(a_.cli("vm start " + vm_yaml("busy", "mib=64 fast=1 every=20", "portable-32", 96).string()).status, 0);
    ASSERT_TRUE(eventually([&] { return ticks(a_.console("busy")).size() >= 3; }));
    client = std::thread([this, &migrate] { migrate = a_.cli("--json migrate busy --to host-b --downtime-ms 1"); });
  }
  void start_both(const fs::path& secret_b = {}, int b_reached_at = 0) {
    a_.start(migration_host_yaml(a_, dir_ / "cluster.secret", "host-b", b_reached_at ? b_reached_at : b_.port));
    if (HasFatalFailure()) return;
    b_.start(migration_host_yaml(b_, secret_b.empty() ? dir_ / "cluster.secret" : secret_b, "host-a", a_.port));
  }
  fs::path vm_yaml(const std::string& name, const std::string& cmdline, const std::string& cpu_model,
                   unsigned mib = 32) {
    const fs::path file = dir_ / (name + ".yaml");
    std::ofstream(file) << "name: " << name << "\nguest:\n  os: other-32\n  kernel: " << (kGuests / "stamper.elf").string()
                        << "\n  cmdline: \"" << cmdline << " khz=" << tsc_khz() << "\"\nmemory: " << mib
                        << "MiB\ncpu_model: " << cpu_model << "\n";
    return file;
  }
  // No instant at which both hosts ran a VM.
  void expect_no_overlap() {
    auto all = a_.run_intervals();
    for (auto i : b_.run_intervals()) all.push_back(i);
    expect_disjoint(all, "");
  }
  std::size_t running_intervals() {
    std::size_t n = 0;
    for (const auto* h : {&a_, &b_})
      for (auto i : h->run_intervals()) n += i[2] < 0;
    return n;
  }

  fs::path dir_;
  TestHost a_, b_;
};

TEST_F(DaemonMigrationTest, AVmMovesToTheOtherHostAndBackWithItsOutputUnbroken) {
  start_both();
  ASSERT_EQ(a_.cli("vm start " + vm_yaml("ticker", "mib=8 rate=2 every=20", "portable-32").string()).status, 0);
  ASSERT_TRUE(eventually([&] { return ticks(a_.console("ticker")).size() >= 10; }));

  const json there = a_.cli_json("migrate ticker --to host-b");
  ASSERT_EQ(there.value("outcome", ""), "completed") << there.dump(2);
  EXPECT_EQ(there.value("mode", ""), "BT32");
  EXPECT_GT(there.value("bytes_sent", 0), 0);
  EXPECT_EQ(a_.state_of("ticker"), "stopped");
  EXPECT_NE(a_.cli_json("vm status ticker").value("reason", "").find("migrated"), std::string::npos);
  const std::string on_a = a_.console("ticker");
  ASSERT_TRUE(eventually([&] { return b_.state_of("ticker") == "running"; })) << b_.daemon_log();
  ASSERT_TRUE(eventually([&] { return ticks(b_.console("ticker")).size() >= 10; }));
  // The monitor process that received it runs confined, as one that started a VM does.
  const json status_b = b_.cli_json("vm status ticker");
  const std::string proc_status = read_file("/proc/" + std::to_string(status_b.value("pid", 0)) + "/status");
  EXPECT_NE(proc_status.find("Seccomp:\t2\n"), std::string::npos) << status_b.dump() << proc_status;
  EXPECT_NE(proc_status.find("NoNewPrivs:\t1\n"), std::string::npos) << proc_status;
  EXPECT_NE(b_.log("ticker").find("confinement: "), std::string::npos) << b_.log("ticker");

  const json back = b_.cli_json("migrate ticker --to 127.0.0.1:" + std::to_string(a_.port));
  ASSERT_EQ(back.value("outcome", ""), "completed") << back.dump(2);
  EXPECT_EQ(b_.state_of("ticker"), "stopped");
  const std::string on_b = b_.console("ticker");
  // A's daemon hears of the arrival from its monitor process a moment after
  // B's "completed"; until then it shows the VM's earlier, stopped run.
  ASSERT_TRUE(eventually([&] { return a_.state_of("ticker") == "running"; })) << a_.daemon_log();
  ASSERT_TRUE(eventually([&] { return ticks(a_.console("ticker")).size() >= 10; }));

  // One byte stream across A, B, A (a line may end on the next host): one
  // sequence of ticks, no gap, no repeat.
  const std::string stream = on_a + on_b + a_.console("ticker");
  const std::vector<long> all = ticks(stream);
  ASSERT_GE(all.size(), 30u);
  for (std::size_t i = 1; i < all.size(); ++i)
    ASSERT_EQ(all[i], all[i - 1] + 1) << "at line " << i << "\n--- A ---\n" << on_a << "\n--- B ---\n" << on_b;

  // Each host chose the mode itself and says so in its log.
  const std::string log_b = b_.log("ticker"), log_a = a_.log("ticker");
  EXPECT_NE(log_b.find("migration in: VM ticker from host-a"), std::string::npos) << log_b;
  EXPECT_NE(log_b.find("MONITOR MODE: selected"), std::string::npos) << log_b;
  EXPECT_NE(log_a.find("migration in: VM ticker from host-b"), std::string::npos) << log_a;
  EXPECT_NE(log_a.find("MONITOR MODE: selected"), std::string::npos) << log_a;
  EXPECT_EQ(running_intervals(), 1u);
  expect_no_overlap();
}

// A daemon stopped with SIGTERM stops its VMs, those that arrived by
// migration included: none is left running without a daemon.
TEST_F(DaemonMigrationTest, AVmThatArrivedStopsWhenItsDaemonStops) {
  start_both();
  ASSERT_EQ(a_.cli("vm start " + vm_yaml("arrival", "mib=8 rate=2 every=20", "portable-32").string()).status, 0);
  ASSERT_TRUE(eventually([&] { return ticks(a_.console("arrival")).size() >= 3; }));
  const json there = a_.cli_json("migrate arrival --to host-b");
  ASSERT_EQ(there.value("outcome", ""), "completed") << there.dump(2);
  // Right after "completed", before B's daemon may have heard of the arrival
  // from the monitor process: its children are what must stop with it.
  const std::vector<pid_t> monitors = b_.children();
  ASSERT_EQ(monitors.size(), 1u);
  const pid_t pid = monitors[0];
  b_.stop();
  auto gone = [&] {
    const std::string st = read_file("/proc/" + std::to_string(pid) + "/stat");
    return st.empty() || st.find(") Z ") != std::string::npos;
  };
  EXPECT_TRUE(eventually(gone)) << "monitor process " << pid << " outlived its daemon\n" << b_.daemon_log();
  if (!gone()) ::kill(pid, SIGKILL);
}

// The seed's BT32 switch is decided where the VM runs: a VM that arrived
// under BT32 and then enters long mode is re-selected by the receiving host
// (here: no hardware mode, policy esx-4.0, so it stops with the seed's reason).
TEST_F(DaemonMigrationTest, AnArrivedBt32VmEnteringLongModeIsReselectedOnTheNewHost) {
  const std::string policy = "policy: esx-4.0\nmask: [hardware_virtualization]\n";
  a_.start(policy + migration_host_yaml(a_, dir_ / "cluster.secret", "host-b", b_.port));
  ASSERT_FALSE(HasFatalFailure());
  b_.start(policy + migration_host_yaml(b_, dir_ / "cluster.secret", "host-a", a_.port));
  ASSERT_FALSE(HasFatalFailure());
  const fs::path vm = dir_ / "longmode.yaml";
  std::ofstream(vm) << "name: longmode\nguest:\n  os: other-32\n  kernel: " << (kGuests / "longmode.elf").string()
                    << "\n  cmdline: \"wait=1\"\nmemory: 32MiB\ncpu_model: kvm64\n";
  ASSERT_EQ(a_.cli("vm start " + vm.string()).status, 0);
  ASSERT_TRUE(eventually([&] { return a_.console("longmode").find("waiting for a key") != std::string::npos; }))
      << a_.console("longmode") << a_.log("longmode");

  const json moved = a_.cli_json("migrate longmode --to host-b");
  ASSERT_EQ(moved.value("outcome", ""), "completed") << moved.dump(2);
  // B's daemon hears of the arrival from its monitor process, a moment
  // after the source's "completed".
  ASSERT_TRUE(eventually([&] { return b_.state_of("longmode") == "running"; })) << b_.daemon_log();
  control::LineChannel channel(control::connect_unix(b_.socket()));
  ASSERT_TRUE(channel.send(control::request(1, "vm.console", {{"name", "longmode"}, {"follow", true}})));
  const auto reply = channel.receive();
  ASSERT_TRUE(reply && (*reply)["ok"].get<bool>()) << (reply ? reply->dump() : channel.error());
  ASSERT_TRUE(channel.send(
      control::request(0, "console.input", {{"name", "longmode"}, {"data", control::base64_encode("k")}})));

  ASSERT_TRUE(eventually([&] { return b_.state_of("longmode") == "failed"; })) << b_.log("longmode");
  const json status = b_.cli_json("vm status longmode");
  EXPECT_NE(status.value("reason", "").find("BT64 could not virtualize the 64-bit architecture efficiently"),
            std::string::npos)
      << status.dump(2);
  ASSERT_TRUE(status.contains("mode_switch")) << status.dump(2);
  EXPECT_EQ(status["mode_switch"].value("from", ""), "BT32");
  const std::string log_b = b_.log("longmode");
  EXPECT_NE(log_b.find("MONITOR MODE: switch                 : none, the VM stops under BT32: "), std::string::npos)
      << log_b;
  EXPECT_EQ(log_b.find("cannot switch monitor modes"), std::string::npos) << log_b;
  const std::string console = b_.console("longmode");
  EXPECT_NE(console.find("entering long mode\n"), std::string::npos) << console;
  EXPECT_EQ(console.find("64-bit code"), std::string::npos) << console;
}

TEST_F(DaemonMigrationTest, TenMigrationsBackAndForthKeepOneUnbrokenOutputAndOneHostAtATime) {
  start_both();
  ASSERT_EQ(a_.cli("vm start " + vm_yaml("ticker", "mib=8 rate=2 every=20", "portable-32").string()).status, 0);
  ASSERT_TRUE(eventually([&] { return ticks(a_.console("ticker")).size() >= 5; }));

  // Each host's console holds what the guest printed while it ran there; the
  // segments, in the order the VM visited the hosts, are one byte stream.
  std::string stream;
  const TestHost* here = &a_;
  const TestHost* there = &b_;
  constexpr int kMigrations = 10;
  for (int i = 0; i < kMigrations; ++i) {
    const std::size_t seen = ticks(here->console("ticker")).size();
    ASSERT_TRUE(eventually([&] { return ticks(here->console("ticker")).size() >= seen + 3; }))
        << "migration " << i << ": the guest does not run on " << here->name;
    const json record = here->cli_json("migrate ticker --to " + there->name);
    ASSERT_EQ(record.value("outcome", ""), "completed") << "migration " << i << ": " << record.dump(2);
    EXPECT_EQ(here->state_of("ticker"), "stopped") << "migration " << i;
    stream += here->console("ticker");
    ASSERT_TRUE(eventually([&] { return there->state_of("ticker") == "running"; })) << "migration " << i;
    EXPECT_EQ(running_intervals(), 1u) << "migration " << i;
    std::swap(here, there);
  }
  ASSERT_EQ(here, &a_) << "an even number of moves ends where it began";
  const std::size_t seen = ticks(a_.console("ticker")).size();
  ASSERT_TRUE(eventually([&] { return ticks(a_.console("ticker")).size() >= seen + 5; }));
  stream += a_.console("ticker");

  const std::vector<long> all = ticks(stream);
  ASSERT_GE(all.size(), 3u * kMigrations);
  for (std::size_t i = 1; i < all.size(); ++i)
    ASSERT_EQ(all[i], all[i - 1] + 1) << "tick line " << i << " after " << kMigrations << " migrations";

  // Eleven stints, six on A and five on B, only the last still running, none overlapping.
  EXPECT_EQ(a_.run_intervals().size(), 6u);
  EXPECT_EQ(b_.run_intervals().size(), 5u);
  EXPECT_EQ(running_intervals(), 1u);
  expect_no_overlap();
  EXPECT_EQ(a_.state_of("ticker"), "running");
  EXPECT_EQ(b_.state_of("ticker"), "stopped");
}

TEST_F(DaemonMigrationTest, AWrongSecretIsRefusedBeforeAnyStateMovesAndTheVmRunsOn) {
  write_secret(dir_ / "other.secret", "a different secret, also long enough to be used");
  start_both(dir_ / "other.secret");
  ASSERT_EQ(a_.cli("vm start " + vm_yaml("ticker", "mib=4 rate=1 every=20", "portable-32").string()).status, 0);
  ASSERT_TRUE(eventually([&] { return ticks(a_.console("ticker")).size() >= 3; }));
  const json record = a_.cli_json("migrate ticker --to host-b");
  EXPECT_EQ(record.value("outcome", ""), "refused") << record.dump(2);
  EXPECT_NE(record.value("exit_status", 0), 0);
  EXPECT_FALSE(record.contains("downtime_ms") && !record["downtime_ms"].is_null()) << "the VM paused";
  // Only the handshake crossed: no page, no state.
  EXPECT_EQ(record.value("pages_sent", 1), 0) << record.dump(2);
  EXPECT_EQ(record.value("state_bytes", 1), 0) << record.dump(2);
  EXPECT_EQ(record.value("failed_step", ""), "hello") << record.dump(2);
  EXPECT_EQ(a_.state_of("ticker"), "running");
  EXPECT_EQ(b_.cli_json("vm list")["vms"].size(), 0u);
  const std::size_t before = ticks(a_.console("ticker")).size();
  EXPECT_TRUE(eventually([&] { return ticks(a_.console("ticker")).size() > before + 3; }));
  EXPECT_TRUE(eventually([&] { return read_file(b_.dir / "daemon.out").find("migration: from") != std::string::npos; }))
      << read_file(b_.dir / "daemon.out");
  EXPECT_EQ(a_.run_intervals().size(), 1u) << "the VM paused on the source";
  EXPECT_EQ(running_intervals(), 1u);
  expect_no_overlap();
}

TEST_F(DaemonMigrationTest, AVmOnTheHostsOwnCpuModelIsRefusedBeforeItPauses) {
  start_both();
  ASSERT_EQ(a_.cli("vm start " + vm_yaml("native", "mib=4 rate=1 every=20", "host").string()).status, 0);
  ASSERT_TRUE(eventually([&] { return ticks(a_.console("native")).size() >= 3; }));
  const json record = a_.cli_json("migrate native --to host-b");
  EXPECT_EQ(record.value("outcome", ""), "refused") << record.dump(2);
  EXPECT_NE(record.dump().find("cpu_model"), std::string::npos) << record.dump(2);
  EXPECT_EQ(a_.state_of("native"), "running");
  EXPECT_EQ(a_.run_intervals().size(), 1u) << "the VM paused on the source";
  EXPECT_EQ(b_.cli_json("vm list")["vms"].size(), 0u);
  expect_no_overlap();
}

TEST_F(DaemonMigrationTest, ADestinationKilledMidMigrationLeavesTheVmRunningOnTheSource) {
  start_both();
  Result migrate;
  std::thread client;
  ASSERT_NO_FATAL_FAILURE(start_busy_migration(migrate, client));
  // In flight: `vm status` on the source shows it; the destination has a monitor process receiving.
  const bool in_flight = eventually([&] { return a_.cli_json("vm status busy").contains("migration"); }, 300);
  std::vector<pid_t> receivers = b_.children();
  b_.stop(SIGKILL);
  for (pid_t pid : receivers) ::kill(pid, SIGKILL);
  client.join();
  const json record = json::parse(migrate.out, nullptr, false);
  ASSERT_FALSE(record.is_discarded()) << migrate.out;
  // On a loaded machine the guest's vCPU may not get to write before the
  // rounds end (seen in CI: 52 KB sent of 96 MiB): the migration converges
  // and completes before it can be seen in flight.  Non-convergence cannot
  // be forced every time (as in ANonConvergingMigration... below).
  if (!in_flight && record.value("outcome", "") == "completed")
    GTEST_SKIP() << "the migration completed before it was seen in flight: " << record.dump(2);
  ASSERT_TRUE(in_flight) << migrate.out;
  EXPECT_EQ(record.value("outcome", ""), "cancelled") << record.dump(2);
  EXPECT_TRUE(eventually([&] { return a_.state_of("busy") == "running"; }));
  const std::size_t before = ticks(a_.console("busy")).size();
  EXPECT_TRUE(eventually([&] { return ticks(a_.console("busy")).size() > before + 3; }));
  EXPECT_EQ(running_intervals(), 1u);
  expect_no_overlap();
}

// A destination daemon stopped cleanly (SIGTERM) mid-migration ends the
// monitor process receiving the VM too, before the daemon exits: it abandons
// the uncommitted arrival, the source keeps its VM, and nothing is left
// running on the destination without a daemon.
TEST_F(DaemonMigrationTest, ADestinationStoppedMidMigrationEndsItsReceiverAndTheSourceKeepsTheVm) {
  start_both();
  Result migrate;
  std::thread client;
  ASSERT_NO_FATAL_FAILURE(start_busy_migration(migrate, client));
  const bool in_flight = eventually([&] { return a_.cli_json("vm status busy").contains("migration"); }, 300);
  std::vector<pid_t> receivers;
  EXPECT_TRUE(eventually([&] { return !(receivers = b_.children()).empty(); }, 300));
  b_.stop();  // SIGTERM; returns once the daemon has exited
  auto ended = [](pid_t pid) {
    const std::string st = read_file("/proc/" + std::to_string(pid) + "/stat");
    return st.empty() || st.find(") Z ") != std::string::npos;
  };
  for (pid_t pid : receivers) {
    EXPECT_TRUE(eventually([&] { return ended(pid); })) << "receiving monitor process " << pid
                                                        << " outlived its daemon\n" << b_.daemon_log();
    if (!ended(pid)) ::kill(pid, SIGKILL);
  }
  client.join();
  ASSERT_TRUE(in_flight) << migrate.out;
  const json record = json::parse(migrate.out, nullptr, false);
  ASSERT_FALSE(record.is_discarded()) << migrate.out;
  if (record.value("outcome", "") == "completed") {
    // It committed before the SIGTERM landed (a guest that wrote little):
    // the VM arrived and stopped with B's daemon, as B's own VMs do.
    EXPECT_EQ(a_.state_of("busy"), "stopped");
    EXPECT_NE(read_file(b_.dir / "logs" / "host.log").find("stopping every VM"), std::string::npos) << read_file(b_.dir / "logs" / "host.log");
  } else {
    EXPECT_NE(read_file(b_.dir / "logs" / "host.log").find("stopping the receiving monitor process"), std::string::npos)
        << read_file(b_.dir / "logs" / "host.log");
    EXPECT_TRUE(eventually([&] { return a_.state_of("busy") == "running"; })) << record.dump(2);
    const std::size_t before = ticks(a_.console("busy")).size();
    EXPECT_TRUE(eventually([&] { return ticks(a_.console("busy")).size() > before + 3; }));
  }
  expect_no_overlap();
}

// The connection ends after the destination committed and before the source
// heard it (CommitAck cut): both keep the VM paused; the source reconnects
// and asks, the destination's daemon hands that connection to the monitor
// process holding the committed VM, whose ledger answers "committed"; the
// source lets go and sends Go, and the VM runs on the destination, once.
TEST_F(DaemonMigrationTest, AnUnknownOutcomeIsResolvedByTheProcessHoldingTheCommittedVm) {
  CommitCuttingRelay relay(b_.port);
  start_both({}, relay.port());
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_EQ(a_.cli("vm start " + vm_yaml("doubted", "mib=8 rate=2 every=20", "portable-32").string()).status, 0);
  ASSERT_TRUE(eventually([&] { return ticks(a_.console("doubted")).size() >= 5; }));

  const Result migrate = a_.cli("--json migrate doubted --to host-b");
  EXPECT_TRUE(relay.cut()) << "the relay never saw the CommitAck";
  EXPECT_GE(relay.connections(), 2) << "the source did not reconnect to resolve";
  const json record = json::parse(migrate.out, nullptr, false);
  ASSERT_FALSE(record.is_discarded()) << migrate.out;
  EXPECT_EQ(record.value("outcome", ""), "completed") << record.dump(2) << b_.daemon_log();
  EXPECT_TRUE(eventually([&] { return b_.state_of("doubted") == "running"; })) << b_.daemon_log();
  EXPECT_TRUE(eventually([&] { return a_.state_of("doubted") == "stopped"; }));
  const std::size_t there = ticks(b_.console("doubted")).size();
  EXPECT_TRUE(eventually([&] { return ticks(b_.console("doubted")).size() > there + 3; }));
  EXPECT_NE(b_.daemon_log().find("the connection goes to the monitor process receiving it"), std::string::npos)
      << b_.daemon_log();
  EXPECT_NE(b_.log("doubted").find("is in doubt"), std::string::npos) << b_.log("doubted");
  // One tick sequence across both hosts: nothing lost, nothing run twice.
  const std::vector<long> all = ticks(a_.console("doubted") + b_.console("doubted"));
  for (std::size_t i = 1; i < all.size(); ++i) ASSERT_EQ(all[i], all[i - 1] + 1) << "at line " << i;
  EXPECT_EQ(running_intervals(), 1u);
  expect_no_overlap();
}

// The same cut, and the source cannot reach the destination again: both
// copies stay paused.  The destination lists its copy as in-doubt; the
// operator discards it there (`vm stop`) and resumes the source's: the VM ran
// on one host at a time throughout and its output goes on where it stopped.
TEST_F(DaemonMigrationTest, AnUnresolvedArrivalIsListedInDoubtAndTheOperatorDecides) {
  CommitCuttingRelay relay(b_.port, /*refuse_after_cut=*/true);
  start_both({}, relay.port());
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_EQ(a_.cli("vm start " + vm_yaml("limbo", "mib=8 rate=2 every=20", "portable-32").string()).status, 0);
  ASSERT_TRUE(eventually([&] { return ticks(a_.console("limbo")).size() >= 5; }));

  const Result migrate = a_.cli("--json migrate limbo --to host-b");
  ASSERT_TRUE(relay.cut());
  const json record = json::parse(migrate.out, nullptr, false);
  ASSERT_FALSE(record.is_discarded()) << migrate.out;
  EXPECT_EQ(record.value("outcome", ""), "in-doubt") << record.dump(2);
  EXPECT_EQ(a_.state_of("limbo"), "paused");
  // The destination says what it holds.
  json listed;
  EXPECT_TRUE(eventually([&] {
    for (const auto& vm : b_.cli_json("vm list").value("vms", json::array()))
      if (vm.value("name", "") == "limbo") listed = vm;
    return listed.value("state", "") == "in-doubt";
  })) << b_.cli_json("vm list").dump(2) << b_.daemon_log();
  EXPECT_NE(listed.value("reason", "").find("paused until the source resolves"), std::string::npos) << listed.dump();
  const std::size_t before = ticks(a_.console("limbo")).size();
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(ticks(a_.console("limbo")).size(), before) << "the source ran while in doubt";
  // The operator discards the destination's copy, then resumes the source's.
  ASSERT_EQ(b_.cli("vm stop limbo").status, 0) << b_.daemon_log();
  EXPECT_TRUE(eventually([&] { return b_.cli_json("vm list").value("vms", json::array()).empty(); }))
      << b_.cli_json("vm list").dump(2);
  ASSERT_EQ(a_.cli("vm resume limbo").status, 0);
  EXPECT_TRUE(eventually([&] { return ticks(a_.console("limbo")).size() > before + 3; }));
  const std::vector<long> all = ticks(a_.console("limbo"));
  for (std::size_t i = 1; i < all.size(); ++i) ASSERT_EQ(all[i], all[i - 1] + 1) << "at line " << i;
  EXPECT_EQ(running_intervals(), 1u);
  expect_no_overlap();
}

// The same unresolved cut; then the destination can be reached again and the
// operator asks the source's daemon to resolve it (`vm resolve`): the
// destination's process still holds the committed copy, answers "committed",
// and the VM runs there; the source's copy ends.
TEST_F(DaemonMigrationTest, AnInDoubtMigrationIsResolvedOnRequestOnceTheDestinationIsReachable) {
  CommitCuttingRelay relay(b_.port, /*refuse_after_cut=*/true);
  start_both({}, relay.port());
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_EQ(a_.cli("vm start " + vm_yaml("later", "mib=8 rate=2 every=20", "portable-32").string()).status, 0);
  ASSERT_TRUE(eventually([&] { return ticks(a_.console("later")).size() >= 5; }));
  const json first = a_.cli_json("migrate later --to host-b");
  ASSERT_EQ(first.value("outcome", ""), "in-doubt") << first.dump(2);
  // Nothing to resolve on a VM that is not in doubt.
  EXPECT_NE(b_.cli("vm resolve nosuch").status, 0);

  relay.let_through();
  const json resolved = a_.cli_json("vm resolve later");
  EXPECT_EQ(resolved.value("outcome", ""), "completed") << resolved.dump(2) << b_.daemon_log();
  EXPECT_TRUE(eventually([&] { return b_.state_of("later") == "running"; })) << b_.daemon_log();
  EXPECT_EQ(a_.state_of("later"), "stopped");
  const std::size_t there = ticks(b_.console("later")).size();
  EXPECT_TRUE(eventually([&] { return ticks(b_.console("later")).size() > there + 3; }));
  const std::vector<long> all = ticks(a_.console("later") + b_.console("later"));
  for (std::size_t i = 1; i < all.size(); ++i) ASSERT_EQ(all[i], all[i - 1] + 1) << "at line " << i;
  // Resolved once: asking again finds nothing in doubt.
  EXPECT_NE(a_.cli("vm resolve later").status, 0);
  EXPECT_EQ(running_intervals(), 1u);
  expect_no_overlap();
}

TEST_F(DaemonMigrationTest, ANonConvergingMigrationIsCancelledThenForcedWithTheGuestThrottled) {
  start_both();
  ASSERT_EQ(a_.cli("vm start " + vm_yaml("busy", "mib=24 fast=1 every=20", "portable-32", 32).string()).status, 0);
  ASSERT_TRUE(eventually([&] { return ticks(a_.console("busy")).size() >= 3; }));
  // A 0 ms limit cannot be met while the guest writes as fast as it can: at the round cap it is cancelled.
  const json cancelled = a_.cli_json("migrate busy --to host-b --downtime-ms 0");
  // A round that finds nothing dirty switches over: the guest's vCPU did not
  // write during it (not scheduled on a loaded machine: pages_missed_by_tracking
  // is then 0, seen in CI) or the tracking missed writes (then > 0, and the
  // final check sent them).  Non-convergence cannot be forced every time.
  if (cancelled.value("outcome", "") == "completed")
    GTEST_SKIP() << "a round found nothing dirty (" << cancelled.value("pages_missed_by_tracking", 0)
                 << " pages missed by tracking); it converged: " << cancelled.dump(2);
  ASSERT_EQ(cancelled.value("outcome", ""), "cancelled") << cancelled.dump(2);
  EXPECT_GE(cancelled.value("rounds", 0), 2) << cancelled.dump(2);
  EXPECT_EQ(a_.state_of("busy"), "running");
  EXPECT_EQ(b_.cli_json("vm list")["vms"].size(), 0u);
  const std::size_t before = ticks(a_.console("busy")).size();
  EXPECT_TRUE(eventually([&] { return ticks(a_.console("busy")).size() > before + 3; }));
  // Forced: the same limit, but at a cap the vCPUs are throttled and it
  // switches over above the limit (or it met a quiet moment before the cap).
  const json forced = a_.cli_json("migrate busy --to host-b --downtime-ms 0 --force-converge");
  ASSERT_EQ(forced.value("outcome", ""), "completed") << forced.dump(2);
  if (forced.value("forced", false)) {
    EXPECT_GT(forced.value("throttle_percent", 0), 0) << forced.dump(2);
  }
  std::printf("forced migration: forced %d, throttle %d%%, rounds %d\n", forced.value("forced", false) ? 1 : 0,
              forced.value("throttle_percent", 0), forced.value("rounds", 0));
  EXPECT_TRUE(eventually([&] { return b_.state_of("busy") == "running"; }));
  EXPECT_EQ(running_intervals(), 1u);
  expect_no_overlap();
}

}  // namespace
