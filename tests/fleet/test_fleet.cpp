// The fleet on etcd, end to end: a real three-member etcd (Debian's
// etcd-server) on loopback ports, three real modevisord with fleet: in their
// host YAML, real monitor processes and the stamper guest under bt-swmmu,
// driven with the `modevisor` CLI as an operator drives it.  Every test that
// runs a VM ends by checking the daemons' run-interval logs: no instant at
// which two hosts ran the same VM.
#include <poll.h>

#include <atomic>
#include <set>

#include "support/daemon_harness.hpp"
#include "support/loopback_relay.hpp"
#include "fleet/etcd_client.hpp"
#include "fleet/ownership.hpp"

namespace {

using nlohmann::json;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using modevisor::fleet::EtcdClient;

using namespace modevisor::test_support;

const char* kPrefix = "/fleet-test";
constexpr int kTtl = 4;  // the daemons' lease TTL, seconds

std::string etcd_binary() {
  for (const char* candidate : {"/usr/bin/etcd", "/usr/local/bin/etcd"})
    if (::access(candidate, X_OK) == 0) return candidate;
  return {};
}

std::size_t tick_count(const std::string& console) {
  std::size_t n = 0;
  std::istringstream in(console);
  std::string line;
  while (std::getline(in, line)) n += line.rfind("tick ", 0) == 0;
  return n;
}

// Three etcd members on loopback, each with its own data directory.
class EtcdCluster {
 public:
  void start(const fs::path& dir) {
    dir_ = dir;
    for (auto& m : members_) m = {free_port(), free_port(), -1};
    for (std::size_t i = 0; i < members_.size(); ++i) start_member(i);
  }
  void start_member(std::size_t i) {
    std::string cluster;
    for (std::size_t j = 0; j < members_.size(); ++j)
      cluster += (j ? "," : "") + name(j) + "=http://127.0.0.1:" + std::to_string(members_[j].peer);
    const std::string client = "http://127.0.0.1:" + std::to_string(members_[i].client);
    const std::string peer = "http://127.0.0.1:" + std::to_string(members_[i].peer);
    members_[i].pid = spawn({etcd_binary(), "--name", name(i), "--data-dir", (dir_ / name(i)).string(),
                             "--listen-client-urls", client, "--advertise-client-urls", client, "--listen-peer-urls",
                             peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", cluster,
                             "--initial-cluster-state", "new", "--logger", "zap", "--heartbeat-interval", "100", "--election-timeout",
                             "500"},
                            dir_ / (name(i) + ".log"));
  }
  void stop_member(std::size_t i) { end_process(members_[i].pid); }
  void signal_all(int signal) {
    for (auto& m : members_)
      if (m.pid > 0) ::kill(m.pid, signal);
  }
  void stop_all() {
    for (std::size_t i = 0; i < members_.size(); ++i) stop_member(i);
  }
  std::vector<std::string> endpoints() const {
    std::vector<std::string> out;
    for (const auto& m : members_) out.push_back("127.0.0.1:" + std::to_string(m.client));
    return out;
  }
  std::string endpoint_list() const {
    std::string out;
    for (const auto& e : endpoints()) out += (out.empty() ? "" : ",") + e;
    return out;
  }
  // A write went through: the cluster has a leader.
  bool healthy() const {
    try {
      EtcdClient etcd(endpoints());
      etcd.put(std::string(kPrefix) + "-health", "ok");
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }

 private:
  static std::string name(std::size_t i) { return "m" + std::to_string(i + 1); }
  struct Member {
    int client = 0, peer = 0;
    pid_t pid = -1;
  };
  fs::path dir_;
  std::array<Member, 3> members_{};
};

// A fleet member: a daemon with a migration listener, the shared secret and
// the fleet's etcd; `advertised_port`, when set, is what peers are told to dial.
std::string fleet_host_yaml(const DaemonHost& host, const fs::path& secret, const EtcdCluster& etcd, int advertised_port) {
  std::string yaml = host.base_yaml() + "migration:\n  listen: 127.0.0.1:" + std::to_string(host.port) +
                     "\n  secret_file: " + secret.string() + "\n";
  if (advertised_port) yaml += "  advertise: 127.0.0.1:" + std::to_string(advertised_port) + "\n";
  yaml += "fleet:\n  etcd: [";
  for (const auto& e : etcd.endpoints()) yaml += e + (e == etcd.endpoints().back() ? "" : ", ");
  return yaml + "]\n  prefix: " + kPrefix + "\n  lease_ttl: " + std::to_string(kTtl) + "\n";
}

struct FleetHost : DaemonHost {
  int advertised_port = 0;
  void start(const fs::path& secret, const EtcdCluster& etcd) {
    DaemonHost::start(fleet_host_yaml(*this, secret, etcd, advertised_port));
  }
};

// A loopback TCP relay in front of a host's migration port whose direction
// towards that host can be held after a number of bytes: a migration stopped
// mid-stream, deterministically, at a point the test chooses.
class HeldRelay final : public LoopbackRelay {
 public:
  HeldRelay(int target_port, std::size_t hold_after) : LoopbackRelay(target_port), hold_after_(hold_after) { start(); }
  ~HeldRelay() override { stop(); }
  bool holding() const { return held_; }
  void release() { released_ = true; }

 private:
  // One connection, both directions; only towards the target is held.
  void relay(int from_source, int to_target, int) override {
    std::array<char, 16384> buffer{};
    while (!stopping()) {
      pollfd fds[2] = {{from_source, POLLIN, 0}, {to_target, POLLIN, 0}};
      if (forwarded_ >= hold_after_ && !released_) {
        held_ = true;
        fds[0].events = 0;
      }
      if (::poll(fds, 2, 50) < 0) break;
      if (fds[0].revents & (POLLIN | POLLHUP)) {
        const std::size_t room = released_ ? buffer.size() : std::min(buffer.size(), hold_after_ - std::min(hold_after_, forwarded_.load()));
        const ssize_t n = ::read(from_source, buffer.data(), std::max<std::size_t>(room, 1));
        if (n <= 0 || !write_all(to_target, buffer.data(), static_cast<std::size_t>(n))) break;
        forwarded_ += static_cast<std::size_t>(n);
      }
      if (fds[1].revents & (POLLIN | POLLHUP)) {
        const ssize_t n = ::read(to_target, buffer.data(), buffer.size());
        if (n <= 0 || !write_all(from_source, buffer.data(), static_cast<std::size_t>(n))) break;
      }
    }
  }

  std::size_t hold_after_;
  std::atomic<std::size_t> forwarded_{0};
  std::atomic<bool> held_{false}, released_{false};
};

class FleetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (etcd_binary().empty()) GTEST_SKIP() << "etcd is not installed (apt-get install etcd-server; scripts/setup.sh does)";
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path("/tmp") / ("mvf-" + std::to_string(::getpid()) + "-" + std::string(info->name()).substr(0, 20));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream(dir_ / "cluster.secret") << "a cluster secret that every host holds, 32+ bytes\n";
    fs::permissions(dir_ / "cluster.secret", fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::replace);
    etcd_.start(dir_ / "etcd");
    ASSERT_TRUE(eventually([&] { return etcd_.healthy(); }, 300)) << read_file(dir_ / "etcd" / "m1.log");
    const char* names[] = {"host-a", "host-b", "host-c"};
    for (std::size_t i = 0; i < hosts_.size(); ++i) {
      hosts_[i].name = names[i];
      hosts_[i].dir = dir_ / std::string(1, static_cast<char>('a' + i));
      hosts_[i].port = free_port();
    }
    khz_ = tsc_khz();
  }
  void TearDown() override {
    for (auto& h : hosts_) h.stop();
    // Monitor processes whose daemon a test killed outlive it by design (a
    // restarted daemon reattaches them); the test ends them.
    for (pid_t pid : orphans_) ::kill(pid, SIGKILL);
    etcd_.stop_all();
    if (!HasFailure() && !std::getenv("MODEVISOR_KEEP_TEST_DIRS")) fs::remove_all(dir_);
  }
  void start_hosts(std::size_t n = 3) {
    for (std::size_t i = 0; i < n; ++i) {
      hosts_[i].start(dir_ / "cluster.secret", etcd_);
      if (HasFatalFailure()) return;
    }
    // Registered: each is alive in `hosts`.
    ASSERT_TRUE(eventually([&] { return alive_hosts().size() == n; })) << fleet_cli("hosts").out;
  }
  Result fleet_cli(const std::string& args) const {
    return shell((kBin / "modevisor").string() + " --etcd " + etcd_.endpoint_list() + " --etcd-prefix " + kPrefix + " " +
                 args);
  }
  json fleet_json(const std::string& args) const {
    const Result r = fleet_cli("--json " + args);
    json j = json::parse(r.out, nullptr, false);
    return j.is_discarded() ? json{{"unparsed", r.out}} : j;
  }
  std::vector<std::string> alive_hosts() const {
    std::vector<std::string> out;
    for (const auto& h : fleet_json("hosts").value("hosts", json::array()))
      if (h.value("alive", false)) out.push_back(h.value("name", ""));
    return out;
  }
  // The VM's ownership record: {owner, epoch, ...}, or null.
  json owner_of(const std::string& vm) const {
    for (const auto& v : fleet_json("vm list --fleet").value("vms", json::array()))
      if (v.value("vm", "") == vm) return v;
    return nullptr;
  }
  // The host's last run of the VM has ended (its monitor process paused or dropped it).
  static bool stopped_running(const DaemonHost& host, const std::string& vm) {
    const auto intervals = host.run_intervals(vm);
    return !intervals.empty() && intervals.back()[2] >= 0;
  }
  std::string owner_name(const std::string& vm) const {
    const json record = owner_of(vm);
    return record.is_object() ? record.value("owner", "") : "";
  }
  fs::path vm_yaml(const std::string& name, unsigned mib = 16) {
    const fs::path file = dir_ / (name + ".yaml");
    std::ofstream(file) << "name: " << name << "\nguest:\n  os: other-32\n  kernel: " << (kGuests / "stamper.elf").string()
                        << "\n  cmdline: \"mib=4 rate=1 every=20 khz=" << khz_ << "\"\nmemory: " << mib
                        << "MiB\ncpu_model: portable-32\n";
    return file;
  }
  bool ticking(const FleetHost& h, const std::string& vm) {
    const std::size_t before = tick_count(h.console(vm));
    return eventually([&] { return tick_count(h.console(vm)) > before + 2; }, 150);
  }
  // No instant at which two hosts ran the same VM; `open` intervals (all VMs) still running.
  void expect_no_overlap(std::size_t open) {
    std::set<std::string> names;
    for (const auto& h : hosts_) {
      std::istringstream in(read_file(h.dir / "state" / "run-intervals.log"));
      std::string what, vm;
      long long pid, t;
      while (in >> what >> vm >> pid >> t) names.insert(vm);
    }
    std::size_t running = 0;
    for (const auto& name : names) running += expect_no_overlap_of(name);
    EXPECT_EQ(running, open);
  }
  std::size_t expect_no_overlap_of(const std::string& name) {
    std::vector<RunInterval> all;
    for (const auto& h : hosts_)
      for (auto i : h.run_intervals(name)) all.push_back(i);
    return expect_disjoint(all, name);
  }

  fs::path dir_;
  EtcdCluster etcd_;
  std::array<FleetHost, 3> hosts_;
  std::vector<pid_t> orphans_;  // monitor processes of a daemon the test killed
  std::uint64_t khz_ = 0;
};

TEST_F(FleetTest, HostsRegisterWithWhatTheyOfferAndADeadHostsRecordExpires) {
  start_hosts();
  const json hosts = fleet_json("hosts");
  ASSERT_EQ(hosts["hosts"].size(), 3u) << hosts.dump(2);
  for (const auto& h : hosts["hosts"]) {
    EXPECT_TRUE(h.value("alive", false)) << h.dump(2);
    EXPECT_FALSE(h.value("migration_address", "").empty()) << h.dump(2);
    EXPECT_NE(h["modes"].dump().find("BT"), std::string::npos) << h.dump(2);
    EXPECT_GT(h.value("free_memory_bytes", 0ull), 0ull);
    EXPECT_GT(h.value("free_vcpus", 0), 0);
    EXPECT_EQ(h.value("policy", ""), "default");
  }
  // The text view names each host and its modes.
  const std::string text = fleet_cli("hosts").out;
  for (const char* name : {"host-a", "host-b", "host-c"}) EXPECT_NE(text.find(name), std::string::npos) << text;

  // host-c dies without a word: its lease expires and it is listed as not alive.
  hosts_[2].stop(SIGKILL);
  EXPECT_TRUE(eventually([&] { return alive_hosts().size() == 2; }, 10 * (kTtl + 6))) << fleet_cli("hosts").out;
  const json after = fleet_json("hosts");
  bool listed_dead = false;
  for (const auto& h : after["hosts"])
    if (h.value("name", "") == "host-c") listed_dead = !h.value("alive", true);
  EXPECT_TRUE(listed_dead) << after.dump(2);
  // A daemon that stops cleanly leaves at once (its lease revoked).
  hosts_[1].stop();
  EXPECT_TRUE(eventually([&] { return alive_hosts().size() == 1; }, 30)) << fleet_cli("hosts").out;
}

TEST_F(FleetTest, AVmOwnedByOneHostIsRefusedEverywhereElseUntilItStops) {
  start_hosts(2);
  auto& a = hosts_[0];
  auto& b = hosts_[1];
  const fs::path yaml = vm_yaml("solo");
  ASSERT_EQ(a.cli("vm start " + yaml.string()).status, 0);
  json owner = owner_of("solo");
  ASSERT_FALSE(owner.is_null());
  EXPECT_EQ(owner.value("owner", ""), "host-a");
  const std::int64_t epoch = owner.value("epoch", 0);
  EXPECT_GE(epoch, 1);

  const Result refused = b.cli("vm start " + yaml.string());
  EXPECT_NE(refused.status, 0);
  EXPECT_NE(refused.out.find("owned by host host-a"), std::string::npos) << refused.out;
  EXPECT_EQ(b.cli_json("vm list")["vms"].size(), 0u);
  EXPECT_TRUE(ticking(a, "solo"));

  // Stopped on A, its record goes; B may start it, with a later epoch.
  ASSERT_EQ(a.cli("vm stop solo").status, 0);
  EXPECT_TRUE(eventually([&] { return owner_of("solo").is_null(); }, 100));
  ASSERT_EQ(b.cli("vm start " + yaml.string()).status, 0) << b.daemon_log();
  owner = owner_of("solo");
  EXPECT_EQ(owner.value("owner", ""), "host-b");
  EXPECT_GT(owner.value("epoch", 0), epoch);
  expect_no_overlap(1);
}

TEST_F(FleetTest, MigrationMovesOwnershipExactlyOnceAndToAutoPicksAHostThatHonoursTheHints) {
  start_hosts();
  auto& a = hosts_[0];
  auto& b = hosts_[1];
  ASSERT_EQ(a.cli("vm start " + vm_yaml("mover").string()).status, 0);
  const std::int64_t epoch = owner_of("mover").value("epoch", 0);
  ASSERT_TRUE(ticking(a, "mover"));

  const json there = a.cli_json("migrate mover --to host-b");
  ASSERT_EQ(there.value("outcome", ""), "completed") << there.dump(2) << a.daemon_log();
  json owner = owner_of("mover");
  EXPECT_EQ(owner.value("owner", ""), "host-b");
  EXPECT_EQ(owner.value("from", ""), "host-a");
  EXPECT_EQ(owner.value("epoch", 0), epoch + 1) << "ownership moved more than once";
  EXPECT_EQ(owner.value("migration_id", ""), there.value("migration_id", "?"));
  EXPECT_TRUE(ticking(b, "mover"));
  EXPECT_EQ(a.state_of("mover"), "stopped");

  // --to auto: host-a or host-c (both honour the hints and fit); the choice is explained.
  const json moved = b.cli_json("migrate mover --to auto");
  ASSERT_EQ(moved.value("outcome", ""), "completed") << moved.dump(2) << b.daemon_log();
  const std::string placement = moved.value("placement", "");
  EXPECT_NE(placement.find("chosen"), std::string::npos) << moved.dump(2);
  EXPECT_NE(placement.find("hints honoured"), std::string::npos) << placement;
  owner = owner_of("mover");
  const std::string chosen = owner.value("owner", "");
  EXPECT_TRUE(chosen == "host-a" || chosen == "host-c") << owner.dump(2);
  EXPECT_EQ(placement.rfind(chosen, 0), 0u) << placement;
  EXPECT_EQ(owner.value("epoch", 0), epoch + 2);
  const FleetHost& now_on = chosen == "host-a" ? hosts_[0] : hosts_[2];
  EXPECT_TRUE(ticking(now_on, "mover"));

  // A second writer holding the revision that was current before the move loses.
  EtcdClient etcd(etcd_.endpoints());
  const auto record = etcd.get(std::string(kPrefix) + "/vms/mover");
  ASSERT_TRUE(record.has_value());
  EXPECT_FALSE(etcd.put_if_unchanged(record->key, record->mod_revision - 1, "{\"owner\":\"thief\",\"epoch\":99}", 0).succeeded);
  EXPECT_EQ(owner_of("mover").value("owner", ""), chosen);
  // And through the rules: a move from a host that is not the owner is refused.
  modevisor::fleet::Ownership ownership(etcd, modevisor::fleet::Keys{kPrefix});
  const auto stolen = ownership.move("mover", "host-b", "host-b", 0, "forged");
  EXPECT_FALSE(stolen.ok);
  EXPECT_NE(stolen.reason.find("not by the source host-b"), std::string::npos) << stolen.reason;
  expect_no_overlap(1);
}

TEST_F(FleetTest, ExplainFleetShowsTheModeEachHostWouldPickAndWhy) {
  start_hosts(2);
  const fs::path yaml = vm_yaml("asked");
  const json answer = fleet_json("explain " + yaml.string() + " --fleet");
  ASSERT_EQ(answer.value("hosts", json::array()).size(), 2u) << answer.dump(2);
  for (const auto& h : answer["hosts"]) {
    EXPECT_EQ(h.value("mode", ""), "BT32") << h.dump(2);
    EXPECT_EQ(h.value("plugin", ""), "bt-swmmu");
    EXPECT_TRUE(h.value("eligible", false)) << h.dump(2);
    EXPECT_FALSE(h.value("reasoning", json::array()).empty());
  }
  const std::string text = fleet_cli("explain " + yaml.string() + " --fleet").out;
  EXPECT_NE(text.find("== host-a"), std::string::npos) << text;
  EXPECT_NE(text.find("MONITOR MODE"), std::string::npos) << text;
  // A VM too big for any host is placed nowhere, and says why.
  std::ofstream(dir_ / "huge.yaml") << "name: huge\nguest:\n  os: other-32\n  kernel: " << (kGuests / "stamper.elf").string()
                                    << "\nmemory: 3GiB\nvcpus: 64\ncpu_model: portable-32\n";
  const json huge = fleet_json("explain " + (dir_ / "huge.yaml").string() + " --fleet");
  for (const auto& h : huge.value("hosts", json::array())) {
    EXPECT_FALSE(h.value("eligible", true)) << h.dump(2);
    EXPECT_NE(h["why_not"].dump().find("does not fit"), std::string::npos) << h.dump(2);
  }
}

TEST_F(FleetTest, OneEtcdMemberStoppedKeepsQuorumAndEverythingWorks) {
  start_hosts(2);
  auto& a = hosts_[0];
  auto& b = hosts_[1];
  ASSERT_EQ(a.cli("vm start " + vm_yaml("steady").string()).status, 0);
  etcd_.stop_member(0);
  ASSERT_TRUE(eventually([&] { return etcd_.healthy(); }, 300));
  std::this_thread::sleep_for(std::chrono::seconds(kTtl + 1));  // longer than a lease: renewals go on
  EXPECT_EQ(a.state_of("steady"), "running") << a.daemon_log();
  const json moved = a.cli_json("migrate steady --to host-b");
  ASSERT_EQ(moved.value("outcome", ""), "completed") << moved.dump(2);
  EXPECT_EQ(owner_of("steady").value("owner", ""), "host-b");
  EXPECT_TRUE(ticking(b, "steady"));
  EXPECT_NE(b.cli("vm start " + vm_yaml("second").string()).status, 1);
  EXPECT_EQ(owner_of("second").value("owner", ""), "host-b");
  expect_no_overlap(2);
}

TEST_F(FleetTest, WithoutQuorumNoOwnerChangesRunningVmsRunOnAndMigrationsAreRefused) {
  start_hosts(2);
  auto& a = hosts_[0];
  auto& b = hosts_[1];
  ASSERT_EQ(a.cli("vm start " + vm_yaml("frozen").string()).status, 0);
  const json before = owner_of("frozen");
  ASSERT_EQ(before.value("owner", ""), "host-a");
  etcd_.stop_member(1);
  etcd_.stop_member(2);
  // Both daemons find no quorum anywhere (the last member says "no leader", the others are down).
  EXPECT_TRUE(eventually([&] { return a.daemon_log().find("etcd has no quorum") != std::string::npos; }, 100))
      << a.daemon_log();
  std::this_thread::sleep_for(std::chrono::seconds(2 * kTtl));  // two leases' time: nothing expires
  EXPECT_EQ(a.state_of("frozen"), "running") << a.daemon_log();
  EXPECT_TRUE(ticking(a, "frozen"));

  const Result refused = a.cli("migrate frozen --to host-b");
  EXPECT_NE(refused.status, 0);
  EXPECT_NE(refused.out.find("no quorum"), std::string::npos) << refused.out;
  const Result start = b.cli("vm start " + vm_yaml("newcomer").string());
  EXPECT_NE(start.status, 0);
  EXPECT_NE(start.out.find("no quorum"), std::string::npos) << start.out;
  EXPECT_EQ(a.state_of("frozen"), "running");

  // Quorum back: the record is the one written before, unchanged.
  etcd_.start_member(1);
  ASSERT_TRUE(eventually([&] { return etcd_.healthy(); }, 300));
  const json after = owner_of("frozen");
  EXPECT_EQ(after.value("owner", ""), "host-a") << after.dump(2);
  EXPECT_EQ(after.value("epoch", 0), before.value("epoch", -1));
  EXPECT_TRUE(owner_of("newcomer").is_null());
  EXPECT_TRUE(ticking(a, "frozen"));
  // Once both hosts renew their leases again, ownership may move again.
  for (const auto* h : {&a, &b})
    EXPECT_TRUE(eventually([&] {
      const json fleet = h->cli_json("host")["daemon"]["fleet"];
      return fleet.value("no_quorum", "x").empty() && fleet.value("lease_valid", false);
    }, 100)) << h->name;
  const json moved = a.cli_json("migrate frozen --to host-b");
  EXPECT_EQ(moved.value("outcome", ""), "completed") << moved.dump(2);
  expect_no_overlap(1);
}

TEST_F(FleetTest, AStoppedDaemonsVmsPauseBeforeTheirRecordExpiresAndRestartElsewhere) {
  start_hosts(2);
  auto& a = hosts_[0];
  auto& b = hosts_[1];
  const fs::path yaml = vm_yaml("island");
  ASSERT_EQ(a.cli("vm start " + yaml.string()).status, 0);
  ASSERT_TRUE(ticking(a, "island"));
  // host-a's daemon stops answering (as if cut off): its monitor process pauses the VM by itself.
  ::kill(a.daemon, SIGSTOP);
  EXPECT_TRUE(eventually([&] { return stopped_running(a, "island"); }, 10 * (kTtl + 4))) << "the VM on the silent host did not pause";
  // Its record expires with the lease; then, and only then, B may start the VM.
  EXPECT_TRUE(eventually([&] { return owner_of("island").is_null(); }, 10 * (kTtl + 6)));
  ASSERT_EQ(b.cli("vm start " + yaml.string()).status, 0) << b.daemon_log();
  EXPECT_EQ(owner_of("island").value("owner", ""), "host-b");
  EXPECT_TRUE(ticking(b, "island"));

  // host-a wakes: its VM stays paused, says why, and may not resume (host-b owns it).
  ::kill(a.daemon, SIGCONT);
  EXPECT_TRUE(eventually([&] { return a.cli("--json host").status == 0; }));
  EXPECT_EQ(a.state_of("island"), "paused");
  EXPECT_NE(a.cli_json("vm status island").value("reason", "").find("fleet"), std::string::npos);
  const Result resume = a.cli("vm resume island");
  EXPECT_NE(resume.status, 0);
  EXPECT_NE(resume.out.find("owned by host host-b"), std::string::npos) << resume.out;
  EXPECT_EQ(a.state_of("island"), "paused");
  expect_no_overlap(1);
}

TEST_F(FleetTest, AHostCutOffFromEtcdPausesItsVmsAndSaysWhy) {
  start_hosts(1);
  auto& a = hosts_[0];
  ASSERT_EQ(a.cli("vm start " + vm_yaml("cutoff").string()).status, 0);
  ASSERT_TRUE(ticking(a, "cutoff"));
  // Every member stops answering (SIGSTOP: connections are taken, nothing
  // replies), as across a partition: the daemon cannot renew its lease and
  // cannot prove that no quorum exists elsewhere, so it pauses its VMs.
  etcd_.signal_all(SIGSTOP);
  EXPECT_TRUE(eventually([&] { return a.state_of("cutoff") == "paused"; }, 10 * (kTtl + 6))) << a.daemon_log();
  const std::string reason = a.cli_json("vm status cutoff").value("reason", "");
  EXPECT_NE(reason.find("fleet"), std::string::npos) << reason;
  EXPECT_TRUE(eventually([&] { return a.daemon_log().find("cannot renew") != std::string::npos; }, 50)) << a.daemon_log();
  etcd_.signal_all(SIGCONT);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(a.state_of("cutoff"), "paused") << "a paused VM never resumes by itself";
  expect_no_overlap(0);
}

// The source's daemon dies (SIGKILL) while the VM's memory is on its way:
// the migration is the two monitor processes' business, so it completes, the
// ownership record moves once to the destination, and the source's copy has
// ended; the VM never ran on both hosts.
TEST_F(FleetTest, ASourceDaemonKilledMidMigrationLeavesTheVmOnExactlyOneHost) {
  auto& a = hosts_[0];
  auto& b = hosts_[1];
  // host-b is reached through a relay that holds the stream after 8 KiB:
  // Hello and Config are through, the first memory round is not.
  HeldRelay relay(b.port, 8 * 1024);
  b.advertised_port = relay.port();
  start_hosts(2);
  ASSERT_EQ(a.cli("vm start " + vm_yaml("orphan").string()).status, 0);
  const std::int64_t epoch = owner_of("orphan").value("epoch", 0);
  ASSERT_TRUE(ticking(a, "orphan"));
  const fs::path client_out = dir_ / "migrate.out";
  pid_t client = spawn({(kBin / "modevisor").string(), "--socket", a.socket().string(), "migrate", "orphan", "--to",
                        "host-b"},
                       client_out);
  ASSERT_TRUE(eventually([&] { return relay.holding(); }, 300)) << read_file(client_out) << a.daemon_log();
  for (pid_t pid : a.children()) orphans_.push_back(pid);
  a.stop(SIGKILL);
  relay.release();
  // The destination runs it and owns it, one epoch on.
  EXPECT_TRUE(eventually([&] { return owner_name("orphan") == "host-b"; }, 300))
      << owner_of("orphan").dump(2) << b.daemon_log();
  EXPECT_EQ(owner_of("orphan").value("epoch", 0), epoch + 1) << owner_of("orphan").dump();
  EXPECT_TRUE(eventually([&] { return b.state_of("orphan") == "running"; }, 100)) << b.daemon_log();
  EXPECT_TRUE(ticking(b, "orphan"));
  // The source's monitor process stopped running it.
  EXPECT_TRUE(eventually([&] { return stopped_running(a, "orphan"); }, 100));
  end_process(client, SIGKILL);
  expect_no_overlap(1);
}

// The destination's daemon dies (SIGKILL) just after the migration
// committed: the arriving VM runs on under its monitor process until the
// fence deadline its daemon can no longer extend, pauses by itself before
// the record expires with that daemon's lease, and only then may another host
// start it.  The source never resumes its copy.
TEST_F(FleetTest, ADestinationDaemonKilledAfterCommitPausesItsVmBeforeAnotherHostMayStartIt) {
  start_hosts(3);
  auto& a = hosts_[0];
  auto& b = hosts_[1];
  auto& c = hosts_[2];
  const fs::path yaml = vm_yaml("stranded");
  ASSERT_EQ(a.cli("vm start " + yaml.string()).status, 0);
  ASSERT_TRUE(ticking(a, "stranded"));
  const json moved = a.cli_json("migrate stranded --to host-b");
  ASSERT_EQ(moved.value("outcome", ""), "completed") << moved.dump(2);
  for (pid_t pid : b.children()) orphans_.push_back(pid);
  b.stop(SIGKILL);
  EXPECT_EQ(owner_of("stranded").value("owner", ""), "host-b");
  // host-b's monitor process pauses the VM by itself (the fence) ...
  EXPECT_TRUE(eventually([&] { return stopped_running(b, "stranded"); }, 10 * (kTtl + 4))) << "the VM whose daemon died did not pause";
  // ... the record goes with host-b's lease, and then host-c may start it.
  EXPECT_TRUE(eventually([&] { return owner_of("stranded").is_null(); }, 10 * (kTtl + 6)));
  EXPECT_EQ(a.state_of("stranded"), "stopped");
  ASSERT_EQ(c.cli("vm start " + yaml.string()).status, 0) << c.daemon_log();
  EXPECT_EQ(owner_of("stranded").value("owner", ""), "host-c");
  EXPECT_TRUE(ticking(c, "stranded"));
  // The source's copy stays ended: a resume there is refused.
  EXPECT_NE(a.cli("vm resume stranded").status, 0);
  expect_no_overlap(1);
}

}  // namespace
