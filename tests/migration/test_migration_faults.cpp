// Fault injection at every step of the protocol, over real loopback TCP
// through a proxy that cuts, truncates, corrupts or stalls the stream, and
// with the destination a real process killed at a chosen step.  After each,
// the VM runs on exactly one host (or, where the outcome cannot be known,
// on none until it is resolved), and never on two at once.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

#include "migration_test_fixture.hpp"

namespace modevisor::test {
namespace {

constexpr std::uint64_t kRam = 32ull << 20;
constexpr std::uint64_t kStampPages = kRam / 4096 / 2;

struct FaultCase {
  const char* name;
  FaultRule rule;
  // What the source must end with once resolution (if any) is done.
  Outcome outcome;
  const char* reason_part;  // in the report's reason, when not completed
};

std::ostream& operator<<(std::ostream& o, const FaultCase& c) { return o << c.name; }

using D = Direction;
using F = Fault;
using T = MessageType;

const FaultCase kCases[] = {
    {"CutBeforeHello", {D::ToDestination, T::Hello, 1, F::CutBefore}, Outcome::Cancelled, "closed"},
    {"CutBeforeChallenge", {D::ToSource, T::Challenge, 1, F::CutBefore}, Outcome::Cancelled, "closed"},
    {"CutBeforeProof", {D::ToDestination, T::Proof, 1, F::CutBefore}, Outcome::Cancelled, "closed"},
    {"CutBeforeWelcome", {D::ToSource, T::Welcome, 1, F::CutBefore}, Outcome::Cancelled, "closed"},
    {"CutBeforeConfig", {D::ToDestination, T::Config, 1, F::CutBefore}, Outcome::Cancelled, "closed"},
    {"CutBeforeAccept", {D::ToSource, T::Accept, 1, F::CutBefore}, Outcome::Cancelled, "closed"},
    {"CutInFirstRound", {D::ToDestination, T::Pages, 3, F::CutBefore}, Outcome::Cancelled, ""},
    {"CutBeforeRoundEnd", {D::ToDestination, T::RoundEnd, 1, F::CutBefore}, Outcome::Cancelled, ""},
    {"CutBeforeRoundAck", {D::ToSource, T::RoundAck, 1, F::CutBefore}, Outcome::Cancelled, "closed"},
    {"CutBeforeState", {D::ToDestination, T::State, 1, F::CutBefore}, Outcome::Cancelled, ""},
    {"CutBeforeDigest", {D::ToDestination, T::Digest, 1, F::CutBefore}, Outcome::Cancelled, ""},
    {"CutBeforeReady", {D::ToSource, T::Ready, 1, F::CutBefore}, Outcome::Cancelled, "closed"},
    // The commit never reached the destination: resolution says aborted, the source resumes.
    {"CutBeforeCommit", {D::ToDestination, T::Commit, 1, F::CutBefore}, Outcome::Cancelled, "did not commit"},
    // Committed, the acknowledgement lost: resolution says committed, Go goes on a new connection.
    {"CutBeforeCommitAck", {D::ToSource, T::CommitAck, 1, F::CutBefore}, Outcome::Completed, ""},
    {"CutBeforeGo", {D::ToDestination, T::Go, 1, F::CutBefore}, Outcome::Completed, ""},
    {"CutBeforeRunning", {D::ToSource, T::Running, 1, F::CutBefore}, Outcome::Completed, ""},
    {"TruncatedPages", {D::ToDestination, T::Pages, 2, F::Truncate}, Outcome::Cancelled, "truncated"},
    {"TruncatedState", {D::ToDestination, T::State, 1, F::Truncate}, Outcome::Cancelled, "truncated"},
    {"FlippedBitInPages", {D::ToDestination, T::Pages, 2, F::FlipBit}, Outcome::Cancelled, "checksum mismatch"},
    {"FlippedBitInState", {D::ToDestination, T::State, 1, F::FlipBit}, Outcome::Cancelled, "checksum mismatch"},
    {"FlippedBitInConfig", {D::ToDestination, T::Config, 1, F::FlipBit}, Outcome::Cancelled, "checksum mismatch"},
    {"StalledRoundAck", {D::ToSource, T::RoundAck, 1, F::Stall}, Outcome::Cancelled, "no progress"},
    {"StalledReady", {D::ToSource, T::Ready, 1, F::Stall}, Outcome::Cancelled, "no progress"},
    {"StalledDigest", {D::ToDestination, T::Digest, 1, F::Stall}, Outcome::Cancelled, ""},
};

class MigrationFault : public ::testing::TestWithParam<FaultCase> {};

TEST_P(MigrationFault, LeavesTheVmRunningOnExactlyOneHost) {
  const FaultCase& c = GetParam();
  RunLog runs;
  TestDestination dest("destination", &runs);
  ReceiverOptions ro = quick_receiver();
  ro.io_timeout = 1500ms;
  ReceivingHost host(dest, cluster_secret(), ro);
  FaultProxy proxy(host.address(), c.rule);
  auto source = TestGuest::boot("source", kRam, kStampPages, 8, 0.25, &runs);
  ASSERT_TRUE(source->wait_ticks(10, 5s));
  auto o = quick_options(proxy.address());
  o.io_timeout = 1500ms;
  MigrationSender sender(*source, test_config(kRam), cluster_secret(), o);
  MigrationReport r = sender.run();
  EXPECT_TRUE(proxy.fired());
  EXPECT_EQ(r.outcome, c.outcome) << summary(r);
  // Let the destination notice the end of its connections.
  host.stop();
  if (*c.reason_part) {
    // Where the stream was cut both ways, only the side that saw the damage can name it.
    std::string reasons = "source: " + r.reason;
    for (const auto& result : host.results()) reasons += "\ndestination: " + result.reason;
    EXPECT_NE(reasons.find(c.reason_part), std::string::npos) << reasons;
  }
  expect_exactly_one_runs(*source, dest, runs);
  if (r.outcome == Outcome::Completed) {
    expect_identical_ram(*source, dest.restored_ram());
    ASSERT_TRUE(dest.last()->wait_ticks(source->state().ticks + 5, 5s));
    EXPECT_TRUE(output_continues({source->output(), dest.last()->output()}));
  } else {
    EXPECT_TRUE(source->running());
    EXPECT_FALSE(source->discarded());
    ASSERT_TRUE(source->wait_ticks(source->state().ticks + 5, 5s));
    EXPECT_TRUE(output_continues({source->output()}));
    EXPECT_TRUE(host.ledger().in_doubt().empty());
  }
}

INSTANTIATE_TEST_SUITE_P(EveryStep, MigrationFault, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(MigrationIntegrity, BitFlippedPastTheChecksumIsCaughtByTheDigest) {
  RunLog runs;
  TestDestination dest("destination", &runs);
  ReceivingHost host(dest, cluster_secret(), quick_receiver());
  // Protocol 1 sends raw pages, so the flipped bit lands in guest RAM (under 2 it may break zstd first).
  FaultProxy proxy(host.address(), FaultRule{D::ToDestination, T::Pages, 1, F::FlipBitRechecksum, 100});
  auto source = TestGuest::boot("source", kRam, kStampPages, 2, 0.25, &runs);
  auto o = quick_options(proxy.address());
  o.max_version = kOldestProtocolVersion;
  MigrationSender sender(*source, test_config(kRam), cluster_secret(), o);
  MigrationReport r = sender.run();
  EXPECT_TRUE(proxy.fired());
  EXPECT_EQ(r.outcome, Outcome::Cancelled) << summary(r);
  EXPECT_NE(r.reason.find("guest RAM digest mismatch"), std::string::npos) << r.reason;
  EXPECT_EQ(dest.restores(), 0u);
  ASSERT_TRUE(r.downtime_ms.has_value());  // it had paused for stop-and-copy, and runs again
  EXPECT_TRUE(source->running());
  host.stop();
  EXPECT_FALSE(runs.two_hosts_ran_at_once());
}

TEST(MigrationIntegrity, DestinationThatCannotRestoreAbandonsAndTheSourceResumes) {
  RunLog runs;
  TestDestination dest("destination", &runs);
  dest.before_restore = [](GuestRam&) { throw std::runtime_error("bt-swmmu refused the vCPU state"); };
  ReceivingHost host(dest, cluster_secret(), quick_receiver());
  auto source = TestGuest::boot("source", kRam, kStampPages, 2, 0.25, &runs);
  MigrationSender sender(*source, test_config(kRam), cluster_secret(), quick_options(host.address()));
  MigrationReport r = sender.run();
  EXPECT_EQ(r.outcome, Outcome::Cancelled);
  EXPECT_NE(r.reason.find("restoring stamper under bt-swmmu 0.1.0 failed: bt-swmmu refused the vCPU state"),
            std::string::npos)
      << r.reason;
  EXPECT_TRUE(source->running());
}

// ---------------------------------------------------------------- a destination process killed

class PeerProcess {
 public:
  explicit PeerProcess(const char* kill_at = nullptr) {
    int out[2];
    if (::pipe(out) != 0) throw std::runtime_error("pipe");
    const std::string secret(cluster_secret().bytes().begin(), cluster_secret().bytes().end());
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(out[1], 1);
      ::close(out[0]);
      ::close(out[1]);
      ::execl(MIGRATION_PEER_PATH, MIGRATION_PEER_PATH, secret.c_str(), kill_at, static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(out[1]);
    out_ = ::fdopen(out[0], "r");
    std::string line = read_line();
    if (line.rfind("listening ", 0) != 0) throw std::runtime_error("peer said: " + line);
    address_ = line.substr(10);
  }
  ~PeerProcess() {
    kill();
    if (out_) std::fclose(out_);
  }
  const std::string& address() const { return address_; }
  std::string read_line() {
    char buf[256];
    if (!std::fgets(buf, sizeof buf, out_)) return "";
    std::string s(buf);
    if (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  }
  void kill() {
    pid_t pid = pid_.exchange(-1);
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }

 private:
  std::atomic<pid_t> pid_{-1};
  FILE* out_ = nullptr;
  std::string address_;
};

class DestinationKilled : public ::testing::TestWithParam<const char*> {};

TEST_P(DestinationKilled, BeforeCommitTheSourceResumes) {
  RunLog runs;
  PeerProcess peer(GetParam());
  auto source = TestGuest::boot("source", kRam, kStampPages, 8, 0.25, &runs);
  auto o = quick_options(peer.address());
  o.io_timeout = 2000ms;
  MigrationSender sender(*source, test_config(kRam), cluster_secret(), o);
  MigrationReport r = sender.run();
  EXPECT_EQ(r.outcome, Outcome::Cancelled) << summary(r);
  EXPECT_TRUE(source->running());
  EXPECT_FALSE(source->discarded());
  EXPECT_TRUE(source->wait_ticks(source->state().ticks + 5, 5s));
  EXPECT_TRUE(output_continues({source->output()}));
}

INSTANTIATE_TEST_SUITE_P(AtStep, DestinationKilled,
                         ::testing::Values("await-proof", "memory-rounds", "await-digest", "ready"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& ch : s)
                             if (ch == '-') ch = '_';
                           return s;
                         });

TEST(DestinationKilled, AfterCommitBothStayPausedUntilResolved) {
  RunLog runs;
  auto source = TestGuest::boot("source", kRam, kStampPages, 8, 0.25, &runs);
  MigrationId id{};
  {
    PeerProcess peer("committed");  // it committed, then died before it could say so
    auto o = quick_options(peer.address());
    o.io_timeout = 2000ms;
    o.resolve_attempts = 2;
    MigrationSender sender(*source, test_config(kRam), cluster_secret(), o);
    MigrationReport r = sender.run();
    EXPECT_EQ(r.outcome, Outcome::InDoubt) << summary(r);
    EXPECT_NE(r.reason.find("the VM stays paused here"), std::string::npos) << r.reason;
    EXPECT_FALSE(source->running());
    EXPECT_FALSE(source->discarded());
    auto hex = sender.migration_id();
    for (std::size_t i = 0; i < id.size(); ++i) id[i] = static_cast<std::uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  }
  // The destination host comes back without the VM (it died with its process):
  // asked about the migration, it does not know it, so the source takes the VM back.
  RunLog unused;
  TestDestination fresh("destination", &unused);
  ReceivingHost host(fresh, cluster_secret(), quick_receiver());
  MigrationReport resolved = resolve_in_doubt(*source, cluster_secret(), id, quick_options(host.address()));
  EXPECT_EQ(resolved.outcome, Outcome::Cancelled) << summary(resolved);
  EXPECT_NE(resolved.reason.find("did not commit (unknown)"), std::string::npos);
  EXPECT_TRUE(source->running());
  EXPECT_FALSE(runs.two_hosts_ran_at_once());
}

TEST(MigrationResolution, LateCommitLosesToAResolution) {
  // The ledger decides once: a Resolve that finds a migration Ready aborts it,
  // and the Commit that arrives afterwards is declined.
  ArrivalLedger ledger;
  MigrationId id = make_migration_id();
  ASSERT_TRUE(ledger.begin(id));
  EXPECT_FALSE(ledger.begin(id));  // a replayed id is refused
  ledger.set_ready(id);
  EXPECT_EQ(ledger.resolve(id), Resolution::Aborted);
  RunLog runs;
  std::unique_ptr<ArrivedVm> vm = std::make_unique<TestGuest>("d", std::make_unique<GuestRam>(1 << 20),
                                                              GuestState{0, 0, 1}, 1, &runs);
  EXPECT_FALSE(ledger.commit(id, vm));
  EXPECT_NE(vm, nullptr);  // handed back to be discarded
  MigrationId other = make_migration_id();
  ledger.begin(other);
  ledger.set_ready(other);
  EXPECT_TRUE(ledger.commit(other, vm));
  EXPECT_EQ(ledger.resolve(other), Resolution::Committed);
  EXPECT_EQ(ledger.in_doubt().size(), 1u);
  EXPECT_NE(ledger.take_for_go(other), nullptr);
  EXPECT_EQ(ledger.take_for_go(other), nullptr);  // only one connection starts it
  EXPECT_EQ(ledger.resolve(make_migration_id()), Resolution::Unknown);
}

}  // namespace
}  // namespace modevisor::test
