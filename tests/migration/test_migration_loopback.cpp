// Whole migrations over real loopback TCP between a source guest and a
// receiving host: idle and dirtying guests, non-convergence and forced
// convergence, refusal, authentication, the previous protocol version, and
// ten moves back and forth.
#include "migration_test_fixture.hpp"

namespace modevisor::test {
namespace {

constexpr std::uint64_t kRam = 64ull << 20;
constexpr std::uint64_t kStampPages = kRam / 4096 / 2;

struct Migration {
  RunLog runs;
  TestDestination dest{"destination", &runs};
  CapturedLog dest_log{"destination"};
  std::unique_ptr<ReceivingHost> host;
  std::unique_ptr<TestGuest> source;

  explicit Migration(double pages_per_ms, ReceiverOptions ro = quick_receiver()) {
    if (!ro.log) ro.log = dest_log.logger;
    host = std::make_unique<ReceivingHost>(dest, cluster_secret(), ro);
    source = TestGuest::boot("source", kRam, kStampPages, pages_per_ms, 0.25, &runs);
    EXPECT_TRUE(source->wait_ticks(20, 5s));
  }

  MigrationReport migrate(SenderOptions o, const ClusterSecret& secret = cluster_secret()) {
    MigrationSender sender(*source, test_config(kRam), secret, std::move(o));
    return sender.run();
  }

  // The destination prints a little, then the checks every completed migration makes.
  void expect_completed(const MigrationReport& r) {
    ASSERT_EQ(r.outcome, Outcome::Completed) << summary(r);
    ASSERT_TRUE(r.downtime_ms.has_value());
    EXPECT_GT(*r.downtime_ms, 0.0);
    EXPECT_EQ(r.pages_missed_by_tracking, 0u);  // the test guest's tracking is exact
    EXPECT_EQ(r.mode, "BT");
    ASSERT_NE(dest.last(), nullptr);
    const auto source_ticks = source->state().ticks;
    EXPECT_TRUE(dest.last()->wait_ticks(source_ticks + 20, 5s));
    expect_exactly_one_runs(*source, dest, runs);
    EXPECT_TRUE(output_continues({source->output(), dest.last()->output()}));
    expect_identical_ram(*source, dest.restored_ram());
  }
};

TEST(MigrationLoopback, IdleGuestMovesWithItsRamAndOutput) {
  Migration m(1);  // 4 MB/s of stamping
  std::vector<RoundProgress> lines;
  auto o = quick_options(m.host->address());
  o.on_progress = [&](const RoundProgress& p) { lines.push_back(p); };
  MigrationReport r = m.migrate(o);
  m.expect_completed(r);
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(r.rounds, lines.size());
  EXPECT_GT(lines.front().bandwidth_bytes_per_s, 0);
  EXPECT_GT(r.zero_pages_elided, 0u);  // most of a fresh guest is zero
  EXPECT_EQ(r.protocol_version, kProtocolVersion);
  EXPECT_LT(r.bytes_sent, kRam);  // zero pages elided, the rest compressed
  EXPECT_NE(m.dest_log.str().find("accepted stamper under BT"), std::string::npos);
  m.host->stop();
  ASSERT_EQ(m.host->results().size(), 1u);
  EXPECT_EQ(m.host->results()[0].end, ReceiverStep::Running);
}

TEST(MigrationLoopback, DirtyingGuestConvergesWithinTheDowntimeLimit) {
  Migration m(12);  // ~50 MB/s
  auto o = quick_options(m.host->address());
  MigrationReport r = m.migrate(o);
  m.expect_completed(r);
  EXPECT_LE(r.estimated_downtime_ms, 300.0);
  EXPECT_GT(r.final_pages, 0u);  // the guest dirtied pages until it paused
}

TEST(MigrationLoopback, NonConvergenceCancelsThenTheSameGuestConverges) {
  Migration m(0);  // as fast as it goes: every stamped page, over and over
  auto o = quick_options(m.host->address());
  o.downtime_limit = 1ms;
  o.max_rounds = 3;
  MigrationReport r = m.migrate(o);
  EXPECT_EQ(r.outcome, Outcome::Cancelled) << summary(r);
  EXPECT_EQ(r.rounds, 3u);
  EXPECT_NE(r.reason.find("did not converge: the round cap of 3 was reached"), std::string::npos) << r.reason;
  EXPECT_FALSE(r.downtime_ms.has_value());  // it never paused
  EXPECT_TRUE(m.source->running());
  EXPECT_EQ(m.dest.restores(), 0u);
  // The source runs on and is migrated again with the default limit.
  const auto before = m.source->state().ticks;
  EXPECT_TRUE(m.source->wait_ticks(before + 10, 5s));
  o = quick_options(m.host->address());
  o.force_converge = true;  // a guest this fast may need it on a loaded machine
  r = m.migrate(o);
  m.expect_completed(r);
}

TEST(MigrationLoopback, ForceConvergeThrottlesTheGuestAndSwitchesOver) {
  Migration m(0);
  auto o = quick_options(m.host->address());
  o.downtime_limit = 1ms;  // below the digest time alone: only forcing ends it
  o.max_rounds = 2;
  o.force_converge = true;
  std::vector<unsigned> throttles;
  o.on_progress = [&](const RoundProgress& p) { throttles.push_back(p.throttle_percent); };
  MigrationReport r = m.migrate(o);
  m.expect_completed(r);
  // Throttled from 20% up by 10 a round until the guest's writes fit, or forced at 99%.
  ASSERT_GE(throttles.size(), 3u);
  EXPECT_EQ(throttles.front(), 0u);
  EXPECT_EQ(throttles[2], 20u);
  EXPECT_GE(r.throttle_percent, 20u);
  if (r.throttle_percent < 99) {
    EXPECT_FALSE(r.forced);
  }
}

TEST(MigrationLoopback, RefusedVmNeverPauses) {
  Migration m(1);
  m.dest.selector = [](const MigrationConfig& c) {
    return PlacementDecision{std::nullopt, {"no mode can run " + c.vm_name + ": CPU model portable-32 leaf 0x1 "
                                            "differs"}};
  };
  const unsigned resumes = m.source->resumes();
  MigrationReport r = m.migrate(quick_options(m.host->address()));
  EXPECT_EQ(r.outcome, Outcome::Refused);
  ASSERT_EQ(r.refusal_reasons.size(), 1u);
  EXPECT_EQ(r.refusal_reasons[0], "no mode can run stamper: CPU model portable-32 leaf 0x1 differs");
  EXPECT_EQ(m.source->resumes(), resumes);  // never paused, so never resumed
  EXPECT_TRUE(m.source->running());
  EXPECT_EQ(m.dest.restores(), 0u);
  EXPECT_FALSE(m.runs.two_hosts_ran_at_once());
}

TEST(MigrationLoopback, WrongSecretIsRefusedBeforeAnyStateMoves) {
  Migration m(1);
  ClusterSecret stranger = ClusterSecret::from_string("not the cluster secret at all");
  MigrationReport r = m.migrate(quick_options(m.host->address()), stranger);
  EXPECT_EQ(r.outcome, Outcome::Refused) << summary(r);
  EXPECT_EQ(r.failed_step, "hello");
  // The stranger learns the destination does not trust it; the destination learns nothing of the VM.
  EXPECT_EQ(m.dest.placements(), 0u);
  EXPECT_TRUE(m.source->running());
  EXPECT_LT(r.bytes_sent, 512u);
  ASSERT_TRUE(m.host->wait_results(1, 5s));
  EXPECT_EQ(m.host->results()[0].end, ReceiverStep::Refused);
  EXPECT_NE(m.dest_log.str().find("refused a connection from 127.0.0.1:"), std::string::npos) << m.dest_log.str();
  EXPECT_NE(m.dest_log.str().find("does not hold this cluster's secret"), std::string::npos);
}

TEST(MigrationLoopback, StrangerThatAnswersTheChallengeAnywayIsRefusedAndLogged) {
  Migration m(1);
  // A client that ignores the destination's proof and sends one of its own making.
  Channel ch(tcp_connect(m.host->address(), 2s), "destination", 2s);
  HelloMessage hello;
  hello.id = make_migration_id();
  hello.nonce = make_nonce();
  ch.send(MessageType::Hello, encode(hello));
  ASSERT_EQ(ch.receive().type, MessageType::Challenge);
  AuthProof guess{};
  ch.send(MessageType::Proof, std::span<const std::uint8_t>(guess));
  Frame f = ch.receive();
  EXPECT_EQ(f.type, MessageType::Abandon);
  EXPECT_EQ(std::string(f.payload.begin(), f.payload.end()), "the source did not prove the cluster secret");
  ASSERT_TRUE(m.host->wait_results(1, 5s));
  EXPECT_EQ(m.host->results()[0].end, ReceiverStep::Refused);
  EXPECT_EQ(m.dest.placements(), 0u);
  EXPECT_NE(m.dest_log.str().find("did not prove the cluster secret"), std::string::npos) << m.dest_log.str();
  // A Config sent without the handshake is refused too.
  Channel raw(tcp_connect(m.host->address(), 2s), "destination", 2s);
  raw.send(MessageType::Config, encode_config(test_config(kRam)));
  f = raw.receive();
  EXPECT_EQ(f.type, MessageType::Abandon);
  EXPECT_NE(std::string(f.payload.begin(), f.payload.end()).find("unexpected Config in step await-hello"),
            std::string::npos);
  EXPECT_EQ(m.dest.placements(), 0u);
}

TEST(MigrationLoopback, SourceSendsNothingToAStrangerDestination) {
  RunLog runs;
  TestDestination stranger_host("stranger", &runs);
  ClusterSecret stranger = ClusterSecret::from_string("a stranger's own secret 42");
  ReceivingHost host(stranger_host, stranger, quick_receiver());
  auto source = TestGuest::boot("source", kRam, kStampPages, 1, 0, &runs);
  MigrationSender sender(*source, test_config(kRam), cluster_secret(), quick_options(host.address()));
  MigrationReport r = sender.run();
  EXPECT_EQ(r.outcome, Outcome::Refused);
  EXPECT_NE(r.reason.find("did not prove the cluster secret; nothing was sent to it"), std::string::npos) << r.reason;
  EXPECT_EQ(stranger_host.placements(), 0u);
  EXPECT_TRUE(source->running());
}

TEST(MigrationLoopback, PreviousProtocolVersionIsStillSpoken) {
  {
    Migration m(4);
    auto o = quick_options(m.host->address());
    o.max_version = kOldestProtocolVersion;  // an older source: raw pages
    MigrationReport r = m.migrate(o);
    m.expect_completed(r);
    EXPECT_EQ(r.protocol_version, kOldestProtocolVersion);
  }
  {
    ReceiverOptions ro = quick_receiver();
    ro.max_version = kOldestProtocolVersion;  // an older destination
    Migration m(4, ro);
    MigrationReport r = m.migrate(quick_options(m.host->address()));
    m.expect_completed(r);
    EXPECT_EQ(r.protocol_version, kOldestProtocolVersion);
  }
  {
    ReceiverOptions ro = quick_receiver();
    ro.min_version = kProtocolVersion;  // a destination that no longer speaks version 1
    Migration m(4, ro);
    auto o = quick_options(m.host->address());
    o.max_version = kOldestProtocolVersion;
    MigrationReport r = m.migrate(o);
    EXPECT_EQ(r.outcome, Outcome::Refused);
    EXPECT_NE(r.reason.find("no common protocol version"), std::string::npos) << r.reason;
    EXPECT_TRUE(m.source->running());
  }
}

TEST(MigrationLoopback, TenMigrationsBackAndForth) {
  RunLog runs;
  TestDestination host_a("A", &runs), host_b("B", &runs);
  ReceivingHost a(host_a, cluster_secret(), quick_receiver()), b(host_b, cluster_secret(), quick_receiver());
  std::unique_ptr<TestGuest> first = TestGuest::boot("A", kRam, kStampPages, 4, 0.1, &runs);
  ASSERT_TRUE(first->wait_ticks(10, 5s));
  std::vector<std::string> outputs;
  std::vector<std::shared_ptr<TestGuest>> keep;  // every earlier copy, discarded
  TestGuest* current = first.get();
  for (int hop = 0; hop < 10; ++hop) {
    const bool to_b = hop % 2 == 0;
    ReceivingHost& target = to_b ? b : a;
    TestDestination& target_host = to_b ? host_b : host_a;
    const std::size_t before = target.result_count();
    MigrationSender sender(*current, test_config(kRam), cluster_secret(), quick_options(target.address()));
    MigrationReport r = sender.run();
    ASSERT_EQ(r.outcome, Outcome::Completed) << "hop " << hop << ": " << summary(r);
    ASSERT_TRUE(target.wait_results(before + 1, 5s));
    expect_identical_ram(*current, target_host.restored_ram());
    outputs.push_back(current->output());
    auto& result = target.results()[before];
    ASSERT_EQ(result.end, ReceiverStep::Running);
    ASSERT_NE(result.vm, nullptr);
    keep.push_back(target_host.last());
    current = keep.back().get();
    ASSERT_TRUE(current->wait_ticks(current->state().ticks + 5, 5s));
  }
  outputs.push_back(current->output());
  EXPECT_TRUE(output_continues(outputs));
  EXPECT_FALSE(runs.two_hosts_ran_at_once());
  EXPECT_FALSE(first->running());
  EXPECT_TRUE(current->running());
  a.stop();
  b.stop();
}

}  // namespace
}  // namespace modevisor::test
