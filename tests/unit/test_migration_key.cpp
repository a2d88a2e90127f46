// The per-migration key the daemon derives so that no monitor process holds
// the cluster secret, and the daemon's peek at a connection's Hello.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <vector>

#include "migration/auth.hpp"
#include "migration/channel.hpp"
#include "migration/messages.hpp"

namespace {

namespace mig = modevisor::host::migration;

std::vector<std::uint8_t> bytes_of(const mig::ClusterSecret& s) { return {s.bytes().begin(), s.bytes().end()}; }

TEST(MigrationKey, IsFixedPerSecretAndIdAndDiffersOtherwise) {
  const auto cluster = mig::ClusterSecret::from_string("a cluster secret of 32 bytes or so");
  const auto other = mig::ClusterSecret::from_string("another cluster's secret, as long");
  const mig::MigrationId a = mig::make_migration_id(), b = mig::make_migration_id();
  EXPECT_EQ(bytes_of(mig::derive_migration_key(cluster, a)), bytes_of(mig::derive_migration_key(cluster, a)));
  EXPECT_NE(bytes_of(mig::derive_migration_key(cluster, a)), bytes_of(mig::derive_migration_key(cluster, b)));
  EXPECT_NE(bytes_of(mig::derive_migration_key(cluster, a)), bytes_of(mig::derive_migration_key(other, a)));
  EXPECT_EQ(mig::derive_migration_key(cluster, a).bytes().size(), 32u);
  EXPECT_NE(bytes_of(mig::derive_migration_key(cluster, a)), bytes_of(cluster));
}

TEST(MigrationKey, ProofsUnderTheKeyOfOneIdDoNotVerifyUnderAnother) {
  const auto cluster = mig::ClusterSecret::from_string("a cluster secret of 32 bytes or so");
  mig::HandshakeTranscript t;
  t.id = mig::make_migration_id();
  t.source_nonce = mig::make_nonce();
  t.destination_nonce = mig::make_nonce();
  const auto proof = mig::compute_proof(mig::derive_migration_key(cluster, t.id), mig::ProofRole::Source, t);
  EXPECT_TRUE(mig::verify_proof(mig::derive_migration_key(cluster, t.id), mig::ProofRole::Source, t, proof));
  EXPECT_FALSE(mig::verify_proof(mig::derive_migration_key(cluster, mig::make_migration_id()), mig::ProofRole::Source,
                                 t, proof));
  EXPECT_FALSE(mig::verify_proof(cluster, mig::ProofRole::Source, t, proof));
}

// The first bytes of a real connection, as a source's Channel sends its Hello.
std::vector<std::uint8_t> hello_stream(const mig::MigrationId& id) {
  int pair[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
  {
    mig::Channel out(pair[0], "test", std::chrono::milliseconds(1000));
    out.send(mig::MessageType::Hello, mig::encode(mig::HelloMessage{1, 2, id, mig::make_nonce()}));
  }
  std::vector<std::uint8_t> bytes(4096);
  const ssize_t n = ::read(pair[1], bytes.data(), bytes.size());
  ::close(pair[1]);
  bytes.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return bytes;
}

TEST(HelloPeek, FindsTheIdOfARealHelloAndWaitsForAPartialOne) {
  const mig::MigrationId id = mig::make_migration_id();
  const auto stream = hello_stream(id);
  const mig::HelloPeek whole = mig::peek_hello(stream);
  ASSERT_EQ(whole.status, mig::HelloPeek::Status::Found) << whole.why;
  EXPECT_EQ(whole.id, id);
  for (std::size_t n : {std::size_t{0}, std::size_t{5}, mig::kFrameHeaderBytes, stream.size() - 1}) {
    const mig::HelloPeek part = mig::peek_hello(std::span(stream).first(n));
    EXPECT_EQ(part.status, mig::HelloPeek::Status::NeedMore) << n;
    EXPECT_GT(part.needed, n);
  }
}

TEST(HelloPeek, RefusesWhatIsNotAHello) {
  auto stream = hello_stream(mig::make_migration_id());
  auto not_magic = stream;
  not_magic[0] ^= 0xff;
  EXPECT_EQ(mig::peek_hello(not_magic).status, mig::HelloPeek::Status::NotHello);
  auto other_type = stream;
  other_type[4] = static_cast<std::uint8_t>(mig::MessageType::Config);
  EXPECT_EQ(mig::peek_hello(other_type).status, mig::HelloPeek::Status::NotHello);
  const std::string text = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  const mig::HelloPeek http = mig::peek_hello(std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
  EXPECT_EQ(http.status, mig::HelloPeek::Status::NotHello);
  EXPECT_FALSE(http.why.empty());
}

}  // namespace
