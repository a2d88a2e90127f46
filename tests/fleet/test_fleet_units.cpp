// The fleet's pure parts: the host YAML's fleet: section and placement from
// published host records (no etcd needed).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "common/errors.hpp"
#include "config/host_config.hpp"
#include "fleet/etcd_client.hpp"
#include "fleet/placement.hpp"
#include "runtime/describe.hpp"
#include "selection/guest_os.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace modevisor;

fs::path write(const std::string& name, const std::string& text) {
  const fs::path dir = fs::temp_directory_path() / ("mvf-units-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / name) << text;
  return dir / name;
}

const std::string kBase = "name: h\nmigration:\n  listen: 127.0.0.1:7000\n  secret_file: /dev/null\n";

TEST(FleetConfig, AbsentMeansNoFleet) {
  EXPECT_FALSE(host::default_host_config().daemon.fleet.has_value());
}

TEST(FleetConfig, EndpointsPrefixAndTtlAreRead) {
  const auto file = write("ok.yaml", "name: h\nmigration:\n  listen: 127.0.0.1:7000\nfleet:\n  etcd: [127.0.0.1:2379, "
                                     "10.0.0.2:2379]\n  prefix: /prod/\n  lease_ttl: 6\n");
  try {
    const auto config = host::load_host_config(file);
    FAIL() << "migration.listen without a secret was accepted";
  } catch (const host::InputError&) {
  }
  const auto secret = write("secret", "a secret long enough for the cluster, 32+ bytes\n");
  fs::permissions(secret, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::replace);
  const auto good = write("good.yaml", "name: h\nmigration:\n  listen: 127.0.0.1:7000\n  secret_file: " + secret.string() +
                                           "\nfleet:\n  etcd: [127.0.0.1:2379, 10.0.0.2:2379]\n  prefix: /prod/\n  lease_ttl: 6\n");
  const auto config = host::load_host_config(good);
  ASSERT_TRUE(config.daemon.fleet.has_value());
  EXPECT_EQ(config.daemon.fleet->etcd.size(), 2u);
  EXPECT_EQ(config.daemon.fleet->prefix, "/prod");
  EXPECT_EQ(config.daemon.fleet->lease_ttl.count(), 6);
}

TEST(FleetConfig, BadFleetSectionsAreRefusedWithWhere) {
  const auto secret = write("secret2", "a secret long enough for the cluster, 32+ bytes\n");
  fs::permissions(secret, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::replace);
  const std::string base = "name: h\nmigration:\n  listen: 127.0.0.1:7000\n  secret_file: " + secret.string() + "\n";
  for (const std::string& bad : {std::string("fleet:\n  etcd: []\n"), std::string("fleet:\n  etcd: [nohostport]\n"),
                                 std::string("fleet:\n  prefix: /x\n"), std::string("fleet:\n  etcd: [a:1]\n  prefix: x\n"),
                                 std::string("fleet:\n  etcd: [a:1]\n  lease_ttl: 0\n"),
                                 std::string("fleet:\n  etcd: [a:1]\n  colour: red\n")}) {
    const auto file = write("bad.yaml", base + bad);
    try {
      host::load_host_config(file);
      ADD_FAILURE() << "accepted: " << bad;
    } catch (const host::InputError& e) {
      EXPECT_NE(std::string(e.what()).find("bad.yaml"), std::string::npos) << e.what();
    }
  }
  // A fleet member must be reachable for migrations.
  const auto no_listen = write("nolisten.yaml", "name: h\nfleet:\n  etcd: [a:1]\n");
  EXPECT_THROW(host::load_host_config(no_listen), host::InputError);
}

// Peers dial the advertised address (a listener on 0.0.0.0, NAT, a relay).
TEST(FleetConfig, TheAdvertisedMigrationAddressIsReadAndNeedsAListener) {
  const auto secret = write("secret3", "a secret long enough for the cluster, 32+ bytes\n");
  fs::permissions(secret, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::replace);
  const auto good = write("adv.yaml", "name: h\nmigration:\n  listen: 0.0.0.0:7000\n  advertise: 10.0.0.5:7100\n  secret_file: " +
                                          secret.string() + "\n");
  const auto config = host::load_host_config(good);
  ASSERT_TRUE(config.daemon.migration_advertise.has_value());
  EXPECT_EQ(config.daemon.migration_advertise->text(), "10.0.0.5:7100");
  const auto lonely = write("adv-bad.yaml", "name: h\nmigration:\n  advertise: 10.0.0.5:7100\n  secret_file: " + secret.string() + "\n");
  try {
    host::load_host_config(lonely);
    ADD_FAILURE() << "advertise without listen was accepted";
  } catch (const host::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("adv-bad.yaml:3"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("needs migration.listen"), std::string::npos) << e.what();
  }
}

TEST(EtcdClient, EndpointsAreCheckedAndAnUnreachableClusterIsAnError) {
  EXPECT_THROW(fleet::EtcdClient({}), fleet::EtcdError);
  EXPECT_THROW(fleet::EtcdClient({"nocolon"}), fleet::EtcdError);
  EXPECT_THROW(fleet::EtcdClient({"https://a:1"}), fleet::EtcdError);
  EXPECT_EQ(fleet::split_endpoints("a:1,b:2,,c:3").size(), 3u);
  // Port 1 on loopback: refused at once; the error names the endpoint.
  fleet::EtcdClient etcd({"127.0.0.1:1"}, std::chrono::milliseconds(300));
  try {
    etcd.get("/x");
    FAIL();
  } catch (const fleet::EtcdError& e) {
    EXPECT_NE(std::string(e.what()).find("127.0.0.1:1"), std::string::npos) << e.what();
  }
  const auto status = etcd.member_status();
  ASSERT_EQ(status.size(), 1u);
  EXPECT_EQ(status[0].kind, fleet::EtcdClient::MemberStatus::Kind::Refused);
}

// A host record as a daemon publishes it, for a BT-only host with the given room.
json record(const std::string& name, std::uint64_t free_mib, unsigned vcpus, bool bt_runs = true) {
  api::HostCapabilities caps;
  caps.source = "profile: test";
  caps.vendor_id = "GenuineIntel";
  caps.long_mode = true;
  json plugin{{"name", "bt-swmmu"}, {"version", "0.1.0"}, {"mode", "BT"}, {"log_token", "BT"}, {"execution", "software"},
              {"mmu", "software"}, {"guests", {"32-bit"}}, {"max_vcpus", 0}, {"runs_here", bt_runs},
              {"why_not", bt_runs ? json::array() : json::array({"broken here"})}};
  return json{{"name", name}, {"alive", true}, {"migration_address", "127.0.0.1:1"},
              {"capabilities", host::capabilities_json(caps)}, {"policy", "default"}, {"plugins", {plugin}},
              {"free_memory_bytes", free_mib << 20}, {"free_vcpus", vcpus}};
}

host::VmConfig vm(std::uint64_t mib, unsigned vcpus, const std::string& hints = "") {
  const auto kernel = write("kernel.bin", "not loaded: placement reads the declaration only");
  const auto file = write("vm.yaml", "name: v\nguest:\n  os: other-32\n  kernel: " + kernel.string() + "\nmemory: " + std::to_string(mib) +
                                         "MiB\nvcpus: " + std::to_string(vcpus) + "\ncpu_model: portable-32\n" + hints);
  host::GuestOsTable table = host::GuestOsTable::load(fs::path(MODEVISOR_SOURCE_DIR) / "configs" / "guest-os.yaml");
  return host::load_vm_config(file, table);
}

const fs::path kConfigs = fs::path(MODEVISOR_SOURCE_DIR) / "configs";

TEST(Placement, AutoPicksAnEligibleHostWithTheMostRoomAndExplainsIt) {
  const json hosts = json::array({record("self", 9000, 8), record("small", 100, 8), record("roomy", 4000, 8),
                                  record("broken", 8000, 8, false)});
  const auto choice = fleet::choose_destination(vm(256, 1), hosts, "self", "auto", kConfigs);
  ASSERT_TRUE(choice.host.has_value()) << choice.explanation;
  EXPECT_EQ(choice.host->value("name", ""), "roomy");
  EXPECT_EQ(choice.explanation.rfind("roomy chosen", 0), 0u) << choice.explanation;
  EXPECT_NE(choice.explanation.find("small: BT32"), std::string::npos) << choice.explanation;
  EXPECT_NE(choice.explanation.find("does not fit"), std::string::npos) << choice.explanation;
  EXPECT_NE(choice.explanation.find("broken: no mode"), std::string::npos) << choice.explanation;
  EXPECT_EQ(choice.verdicts.size(), 3u) << "the source itself is never a candidate";
}

TEST(Placement, AHostThatWouldIgnoreAHintIsNotChosen) {
  // A hint for a hardware MMU: a BT-only host would ignore it.
  const auto choice = fleet::choose_destination(vm(64, 1, "monitor:\n  virtual_mmu: hardware\n"),
                                                json::array({record("bt-only", 4000, 8)}), "self", "auto", kConfigs);
  EXPECT_FALSE(choice.host.has_value());
  EXPECT_NE(choice.explanation.find("no host can take"), std::string::npos) << choice.explanation;
}

TEST(Placement, ANamedHostMustExistAndFit) {
  const json hosts = json::array({record("a", 4000, 8)});
  EXPECT_FALSE(fleet::choose_destination(vm(64, 1), hosts, "self", "nowhere", kConfigs).host.has_value());
  EXPECT_FALSE(fleet::choose_destination(vm(64, 16), hosts, "self", "a", kConfigs).host.has_value());
  EXPECT_TRUE(fleet::choose_destination(vm(64, 1), hosts, "self", "a", kConfigs).host.has_value());
}

}  // namespace
