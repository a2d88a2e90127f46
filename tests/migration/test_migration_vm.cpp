// Real VMs (host/vm/vm.hpp) migrated over loopback TCP: the stamper guest
// (tests/guests/stamper.c) runs under bt-swmmu on the source, moves to a
// second Vm that this host's own selector placed, and goes on printing with
// no gap and no repeat, with its RAM identical page for page.
#include <x86intrin.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "local_host.hpp"
#include "migration_test_fixture.hpp"

namespace modevisor::test {
namespace {

namespace fs = std::filesystem;

std::uint64_t tsc_khz() {
  static const std::uint64_t khz = [] {
    const auto t0 = std::chrono::steady_clock::now();
    const auto c0 = __rdtsc();
    std::this_thread::sleep_for(100ms);
    const auto c1 = __rdtsc();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return static_cast<std::uint64_t>(static_cast<double>(c1 - c0) / ms);
  }();
  return khz;
}

using host::migration::LocalHost;

// Keeps a copy of RAM as received (after the digest check, before the guest runs there).
class RecordingDestination final : public DestinationHost {
 public:
  explicit RecordingDestination(DestinationHost& inner) : inner_(inner) {}
  PlacementDecision place(const MigrationConfig& c) override { return inner_.place(c); }
  std::unique_ptr<ArrivedVm> restore(const MigrationConfig& c, const Placement& p, std::span<const std::uint8_t> s,
                                     std::unique_ptr<GuestRam> ram) override {
    received.assign(ram->host_base(), ram->host_base() + ram->size());
    return inner_.restore(c, p, s, std::move(ram));
  }
  std::vector<std::uint8_t> received;

 private:
  DestinationHost& inner_;
};

fs::path write_vm(const std::string& name, const std::string& cmdline, const std::string& cpu_model, unsigned mib) {
  fs::path dir = fs::temp_directory_path() / ("mv-migration-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::path file = dir / (name + ".yaml");
  std::ofstream(file) << "name: " << name << "\nguest:\n  os: other-32\n  kernel: " << MODEVISOR_BINARY_DIR
                      << "/guests/stamper.elf\n  cmdline: " << cmdline << "\nmemory: " << mib
                      << "MiB\ncpu_model: " << cpu_model << "\n";
  return file;
}

bool wait_for(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (done()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return done();
}

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// The stamper's region (4 MiB on, `pages` pages): byte 0 of each page is the
// number of passes over it, so all pages hold v or v+1 (mod 256) and the
// v+1 pages come first: the incrementer left no page behind or ahead.
::testing::AssertionResult stamps_consistent(const std::vector<std::uint8_t>& ram, std::uint64_t pages) {
  const std::uint8_t first = ram[0x400000];
  std::uint64_t boundary = pages;
  for (std::uint64_t p = 1; p < pages; ++p) {
    const std::uint8_t v = ram[0x400000 + p * 4096];
    if (v == first) continue;
    if (boundary == pages && static_cast<std::uint8_t>(v + 1) == first) {
      boundary = p;
      continue;
    }
    if (boundary != pages && static_cast<std::uint8_t>(v + 1) == first) continue;
    return ::testing::AssertionFailure() << "page " << p << " holds " << int(v) << ", page 0 " << int(first);
  }
  return ::testing::AssertionSuccess();
}

struct VmMigrationCase {
  const char* name;
  unsigned rate;  // pages per ms
  bool fast;
};

class RealVmMigration : public ::testing::TestWithParam<VmMigrationCase> {};

TEST_P(RealVmMigration, GuestContinuesOnTheOtherVmWithItsMemoryAndOutput) {
  const VmMigrationCase& c = GetParam();
  const unsigned region_mib = 24;
  const std::string cmdline = "mib=" + std::to_string(region_mib) + " rate=" + std::to_string(c.rate) +
                              (c.fast ? " fast=1" : "") + " khz=" + std::to_string(tsc_khz()) + " every=5";
  fs::path file = write_vm(std::string("stamper-") + c.name, cmdline, "portable-32", 32);
  LocalHost a("host-a"), b("host-b");
  std::unique_ptr<Vm> source = a.power_on(file);
  ASSERT_TRUE(wait_for([&] { return count(a.console_text(), "tick ") >= 10; }, 20s)) << a.console_text();

  VmDestination b_host(b.view());
  RecordingDestination recording(b_host);
  ReceivingHost receiver(recording, cluster_secret(), quick_receiver(b.log));
  VmMigrationSource endpoint(*source);
  auto options = quick_options(receiver.address());
  options.io_timeout = 10s;
  options.force_converge = c.fast;
  std::vector<std::string> lines;
  options.on_progress = [&](const RoundProgress& p) { lines.push_back(progress_line(p)); };
  MigrationSender sender(endpoint, describe_for_migration(*source, "", "host-a"), cluster_secret(), options);
  MigrationReport r = sender.run();
  ASSERT_EQ(r.outcome, Outcome::Completed) << summary(r);
  std::cout << summary(r) << "\n";
  if (const char* show = std::getenv("MIGRATION_SHOW_LOG"); show && *show) std::cout << b.log_text();
  for (const auto& l : lines) std::cout << "  " << l << "\n";

  if (r.pages_missed_by_tracking)
    std::cout << "KNOWN DEFECT: bt-swmmu's dirty tracking missed " << r.pages_missed_by_tracking
              << " pages; the final check found and sent them\n";
  SessionResult ended = source->wait();  // the source gave its copy up
  EXPECT_EQ(ended.kind, SessionResult::Kind::Stopped);
  EXPECT_NE(ended.reason.find("migrated to 127.0.0.1:"), std::string::npos) << ended.reason;
  EXPECT_EQ(source->state(), VmState::Stopped);
  ASSERT_TRUE(receiver.wait_results(1, 5s));
  std::unique_ptr<Vm> moved = take_vm(std::move(receiver.results()[0].vm));
  ASSERT_NE(moved, nullptr);
  EXPECT_EQ(moved->state(), VmState::Running);
  const std::size_t ticks_before = count(a.console_text(), "tick ");
  ASSERT_TRUE(wait_for([&] { return count(b.console_text(), "tick ") >= 10; }, 20s)) << b.console_text();

  // Serial output: the source's bytes then the destination's are one unbroken sequence of ticks.
  std::string joined = a.console_text() + b.console_text();
  joined = joined.substr(joined.find("tick 0"));
  EXPECT_TRUE(output_continues({joined}));
  EXPECT_GE(count(joined, "tick "), ticks_before + 10);
  // RAM: page for page what the source had when it stopped.
  const auto* src = source->ram().host_base();
  ASSERT_EQ(recording.received.size(), source->ram().size());
  std::uint64_t differing = 0;
  for (std::uint64_t p = 0; p < recording.received.size() / 4096; ++p)
    differing += std::memcmp(src + p * 4096, recording.received.data() + p * 4096, 4096) != 0;
  EXPECT_EQ(differing, 0u);
  if (c.rate || c.fast) {
    EXPECT_TRUE(stamps_consistent(recording.received, region_mib * 256));
  }
  // The destination chose its own mode and said so in the VM's log there.
  const std::string log = b.log_text();
  EXPECT_NE(log.find("migration in: VM stamper-"), std::string::npos) << log;
  EXPECT_NE(log.find("MONITOR MODE: selected"), std::string::npos) << log;
  moved->stop("test over");
  moved->wait();
  receiver.stop();
}

INSTANTIATE_TEST_SUITE_P(BtToBt, RealVmMigration,
                         ::testing::Values(VmMigrationCase{"idle", 0, false}, VmMigrationCase{"dirtying", 12, false},
                                           VmMigrationCase{"fast", 0, true}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(RealVmMigrationBackAndForth, SixMovesKeepOneUnbrokenOutput) {
  const std::string cmdline = "mib=8 rate=4 khz=" + std::to_string(tsc_khz()) + " every=5";
  fs::path file = write_vm("stamper-pingpong", cmdline, "portable-32", 16);
  LocalHost a("host-a"), b("host-b");
  b.joined = a.joined;
  VmDestination to_a(a.view()), to_b(b.view());
  ReceivingHost at_a(to_a, cluster_secret(), quick_receiver()), at_b(to_b, cluster_secret(), quick_receiver());
  std::unique_ptr<Vm> current = a.power_on(file);
  ASSERT_TRUE(wait_for([&] { return count(a.console_text(), "tick ") >= 5; }, 20s));
  std::vector<std::unique_ptr<Vm>> gone;
  for (int hop = 0; hop < 6; ++hop) {
    const bool to_second = hop % 2 == 0;
    ReceivingHost& target = to_second ? at_b : at_a;
    LocalHost& there = to_second ? b : a;
    const std::size_t before = target.result_count();
    VmMigrationSource endpoint(*current);
    MigrationSender sender(endpoint, describe_for_migration(*current, "", to_second ? "host-a" : "host-b"),
                           cluster_secret(), quick_options(target.address()));
    MigrationReport r = sender.run();
    ASSERT_EQ(r.outcome, Outcome::Completed) << "hop " << hop << ": " << summary(r);
    ASSERT_TRUE(target.wait_results(before + 1, 5s));
    current->wait();
    gone.push_back(std::move(current));
    current = take_vm(std::move(target.results()[before].vm));
    ASSERT_NE(current, nullptr);
    const std::size_t ticks = count(there.console_text(), "tick ");
    ASSERT_TRUE(wait_for([&] { return count(there.console_text(), "tick ") >= ticks + 3; }, 20s));
  }
  std::string joined = a.joined->read();
  joined = joined.substr(joined.find("tick 0"));
  EXPECT_TRUE(output_continues({joined}));
  EXPECT_GT(count(b.console_text(), "tick "), 0u);
  current->stop("test over");
  current->wait();
}

TEST(RealVmMigrationRefusal, HostCpuModelIsRefusedBeforeTheVmPauses) {
  fs::path file = write_vm("stamper-host-model", "mib=4 rate=1 khz=" + std::to_string(tsc_khz()), "host", 16);
  LocalHost a("host-a"), b("host-b");
  std::unique_ptr<Vm> source = a.power_on(file);
  ASSERT_TRUE(wait_for([&] { return count(a.console_text(), "tick ") >= 3; }, 20s));
  VmDestination b_host(b.view());
  ReceivingHost receiver(b_host, cluster_secret(), quick_receiver());
  VmMigrationSource endpoint(*source);
  std::vector<VmState> states;
  MigrationSender sender(endpoint, describe_for_migration(*source, "", "host-a"), cluster_secret(),
                         quick_options(receiver.address()));
  MigrationReport r = sender.run();
  EXPECT_EQ(r.outcome, Outcome::Refused);
  ASSERT_FALSE(r.refusal_reasons.empty());
  EXPECT_NE(r.refusal_reasons[0].find("cpu_model host: the guest read the source host's own CPUID"),
            std::string::npos);
  EXPECT_EQ(source->state(), VmState::Running);
  EXPECT_FALSE(r.downtime_ms.has_value());
  const std::size_t ticks = count(a.console_text(), "tick ");
  EXPECT_TRUE(wait_for([&] { return count(a.console_text(), "tick ") > ticks; }, 10s));
  source->stop("test over");
  source->wait();
}

}  // namespace
}  // namespace modevisor::test
