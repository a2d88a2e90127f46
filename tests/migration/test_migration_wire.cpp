// The wire protocol's pieces on their own: frames over a real socket pair,
// message payloads, page batches and the secret proofs, fed good and bad input.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "migration/auth.hpp"
#include "migration/channel.hpp"
#include "migration/messages.hpp"
#include "migration/page_batch.hpp"
#include "migration/progress.hpp"
#include "test_guest.hpp"

#include <nlohmann/json.hpp>

namespace modevisor::test {
namespace {

using namespace std::chrono_literals;
using Kind = MigrationError::Kind;

struct SocketPair {
  int a = -1, b = -1;
  SocketPair() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) throw std::runtime_error("socketpair");
    a = fds[0];
    b = fds[1];
  }
};

// A frame as the wire carries it, built by hand so tests can break any part.
std::vector<std::uint8_t> raw_frame(std::uint16_t type, std::vector<std::uint8_t> payload,
                                    std::uint32_t declared_length = UINT32_MAX, std::uint32_t magic = kFrameMagic) {
  std::vector<std::uint8_t> f(kFrameHeaderBytes);
  std::uint32_t length = declared_length == UINT32_MAX ? static_cast<std::uint32_t>(payload.size()) : declared_length;
  std::uint16_t reserved = 0;
  std::memcpy(f.data(), &magic, 4);
  std::memcpy(f.data() + 4, &type, 2);
  std::memcpy(f.data() + 6, &reserved, 2);
  std::memcpy(f.data() + 8, &length, 4);
  XXH3_state_t s;
  XXH3_64bits_reset(&s);
  XXH3_64bits_update(&s, f.data(), 12);
  XXH3_64bits_update(&s, payload.data(), payload.size());
  std::uint64_t sum = XXH3_64bits_digest(&s);
  std::memcpy(f.data() + 12, &sum, 8);
  f.insert(f.end(), payload.begin(), payload.end());
  return f;
}

MigrationError::Kind receive_error(int write_fd, const std::vector<std::uint8_t>& bytes, Channel& ch,
                                   std::string& message, bool close_after = false) {
  EXPECT_EQ(::write(write_fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  if (close_after) ::close(write_fd);
  try {
    ch.receive();
  } catch (const MigrationError& e) {
    message = e.what();
    return e.kind();
  }
  ADD_FAILURE() << "no error";
  return Kind::Local;
}

TEST(MigrationFrames, CarryTypeAndPayloadAndCountBytes) {
  SocketPair p;
  Channel tx(p.a, "tx", 1000ms), rx(p.b, "rx", 1000ms);
  tx.send(MessageType::Config, std::string("{\"x\":1}"));
  tx.send(MessageType::Ready, std::span<const std::uint8_t>());
  Frame f = rx.receive();
  EXPECT_EQ(f.type, MessageType::Config);
  EXPECT_EQ(std::string(f.payload.begin(), f.payload.end()), "{\"x\":1}");
  f = rx.receive();
  EXPECT_EQ(f.type, MessageType::Ready);
  EXPECT_TRUE(f.payload.empty());
  EXPECT_EQ(tx.bytes_sent(), 2 * kFrameHeaderBytes + 7);
  EXPECT_EQ(rx.bytes_received(), tx.bytes_sent());
}

TEST(MigrationFrames, FlippedPayloadBitFailsTheChecksum) {
  SocketPair p;
  Channel rx(p.b, "peer", 1000ms);
  auto f = raw_frame(static_cast<std::uint16_t>(MessageType::Config), {'{', '}', ' ', ' '});
  f[kFrameHeaderBytes + 2] ^= 0x01;
  std::string msg;
  EXPECT_EQ(receive_error(p.a, f, rx, msg), Kind::Protocol);
  EXPECT_NE(msg.find("checksum mismatch in a Config frame"), std::string::npos) << msg;
  ::close(p.a);
}

TEST(MigrationFrames, OversizedLengthIsRefusedBeforeAllocation) {
  SocketPair p;
  Channel rx(p.b, "peer", 1000ms);
  auto f = raw_frame(static_cast<std::uint16_t>(MessageType::Pages), {}, 0xfffffff0u);
  f.resize(kFrameHeaderBytes);
  std::string msg;
  EXPECT_EQ(receive_error(p.a, f, rx, msg), Kind::Protocol);
  EXPECT_NE(msg.find("Pages from peer declares 4294967280 bytes, more than its limit"), std::string::npos) << msg;
  // A message that carries nothing may not carry a byte.
  SocketPair q;
  Channel rx2(q.b, "peer", 1000ms);
  EXPECT_EQ(receive_error(q.a, raw_frame(static_cast<std::uint16_t>(MessageType::Go), {1}), rx2, msg), Kind::Protocol);
  ::close(p.a);
  ::close(q.a);
}

TEST(MigrationFrames, UnknownTypeAndWrongMagicAreNamed) {
  SocketPair p;
  Channel rx(p.b, "peer", 1000ms);
  std::string msg;
  EXPECT_EQ(receive_error(p.a, raw_frame(999, {}), rx, msg), Kind::Protocol);
  EXPECT_NE(msg.find("unknown message type 999"), std::string::npos) << msg;
  SocketPair q;
  Channel rx2(q.b, "peer", 1000ms);
  EXPECT_EQ(receive_error(q.a, raw_frame(1, {}, UINT32_MAX, 0x12345678), rx2, msg), Kind::Protocol);
  EXPECT_NE(msg.find("not a modevisor migration stream"), std::string::npos) << msg;
  ::close(p.a);
  ::close(q.a);
}

TEST(MigrationFrames, TruncatedStreamSaysHowMuchArrived) {
  SocketPair p;
  Channel rx(p.b, "peer", 1000ms);
  auto f = raw_frame(static_cast<std::uint16_t>(MessageType::Config), std::vector<std::uint8_t>(100, 'x'));
  f.resize(kFrameHeaderBytes + 10);
  std::string msg;
  EXPECT_EQ(receive_error(p.a, f, rx, msg, true), Kind::Transport);
  EXPECT_NE(msg.find("truncated: Config payload ended after 10 of 100 bytes"), std::string::npos) << msg;
}

TEST(MigrationFrames, SilentPeerTimesOut) {
  SocketPair p;
  Channel rx(p.b, "peer", 100ms);
  try {
    rx.receive();
    FAIL();
  } catch (const MigrationError& e) {
    EXPECT_EQ(e.kind(), Kind::Timeout);
    EXPECT_NE(std::string(e.what()).find("no progress from peer within 100 ms"), std::string::npos) << e.what();
  }
  ::close(p.a);
}

TEST(MigrationMessages, ConfigRoundTripsLeafForLeaf) {
  MigrationConfig c = test_config(64 << 20);
  c.needs = {64, "4-level", true, true};
  auto text = encode_config(c);
  MigrationConfig d = decode_config(std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()), 1ull << 40);
  EXPECT_EQ(d.vm_name, c.vm_name);
  EXPECT_EQ(d.vm_yaml, c.vm_yaml);
  ASSERT_EQ(d.cpuid.size(), c.cpuid.size());
  for (std::size_t i = 0; i < c.cpuid.size(); ++i) {
    EXPECT_EQ(d.cpuid[i].function, c.cpuid[i].function);
    EXPECT_EQ(d.cpuid[i].ebx, c.cpuid[i].ebx);
    EXPECT_EQ(d.cpuid[i].edx, c.cpuid[i].edx);
  }
  EXPECT_EQ(d.memory_bytes, c.memory_bytes);
  EXPECT_EQ(d.needs.bitness, 64u);
  EXPECT_EQ(d.needs.paging, "4-level");
  EXPECT_TRUE(d.needs.long_mode);
  EXPECT_TRUE(d.needs.paravirtual_clock);
}

std::string config_error(nlohmann::json j, std::uint64_t max_memory = 1ull << 40) {
  auto text = j.dump();
  try {
    decode_config(std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()), max_memory);
  } catch (const MigrationError& e) {
    EXPECT_EQ(e.kind(), Kind::Protocol);
    return e.what();
  }
  return "accepted";
}

TEST(MigrationMessages, BadConfigIsRefusedNamingTheField) {
  auto good = nlohmann::json::parse(encode_config(test_config(64 << 20)));
  auto j = good;
  j["memory_bytes"] = 4097;
  EXPECT_NE(config_error(j).find("not a whole number of 4 KiB pages"), std::string::npos);
  j = good;
  EXPECT_NE(config_error(j, 32 << 20).find("'memory_bytes' = 67108864 is outside 4096..33554432"), std::string::npos);
  j = good;
  j["vcpus"] = 0;
  EXPECT_NE(config_error(j).find("'vcpus' = 0 is outside 1..255"), std::string::npos);
  j = good;
  j["vcpus"] = -3;
  EXPECT_NE(config_error(j).find("'vcpus' is not an unsigned integer"), std::string::npos);
  j = good;
  j.erase("cpuid");
  EXPECT_NE(config_error(j).find("field 'cpuid' is missing"), std::string::npos);
  j = good;
  j["cpuid"] = nlohmann::json::array();
  for (int i = 0; i < 1025; ++i) j["cpuid"].push_back({0, 0, false, 0, 0, 0, 0});
  EXPECT_NE(config_error(j).find("1025 CPUID leaves, more than 1024"), std::string::npos);
  j = good;
  j["cpuid"][1] = {1, 0, false, 5000000000ull, 0, 0, 0};
  EXPECT_NE(config_error(j).find("CPUID leaf 1 is not"), std::string::npos);
  j = good;
  j["needs"]["paging"] = "5-level";
  EXPECT_NE(config_error(j).find("paging '5-level'"), std::string::npos);
  std::string junk = "{\"vm_name\": ";
  try {
    decode_config(std::span(reinterpret_cast<const std::uint8_t*>(junk.data()), junk.size()), 1 << 30);
    FAIL();
  } catch (const MigrationError& e) {
    EXPECT_NE(std::string(e.what()).find("Config: not valid JSON"), std::string::npos);
  }
}

TEST(MigrationMessages, BinaryMessagesCheckTheirLength) {
  HelloMessage h;
  h.id = make_migration_id();
  h.nonce = make_nonce();
  auto bytes = encode(h);
  HelloMessage back = decode_hello(bytes);
  EXPECT_EQ(back.id, h.id);
  EXPECT_EQ(back.nonce, h.nonce);
  bytes.pop_back();
  EXPECT_THROW(decode_hello(bytes), MigrationError);
  bytes = encode(h);
  bytes.push_back(0);
  try {
    decode_hello(bytes);
    FAIL();
  } catch (const MigrationError& e) {
    EXPECT_NE(std::string(e.what()).find("1 unexpected trailing bytes"), std::string::npos);
  }
  std::uint8_t bad = 7;
  EXPECT_THROW(decode_resolution(std::span(&bad, 1)), MigrationError);
}

TEST(MigrationPages, BatchesRoundTripCompressedAndRawWithZeroPages) {
  for (PageEncoding enc : {PageEncoding::Zstd, PageEncoding::Raw}) {
    std::vector<std::uint8_t> src(64 * 4096, 0), dst(64 * 4096, 0xee);
    std::mt19937 rng(1);
    for (std::size_t i = 8 * 4096; i < 40 * 4096; ++i) src[i] = static_cast<std::uint8_t>(rng() % 4);
    PageBatchEncoder e(enc, 1);
    e.begin(3);
    for (std::uint64_t p = 0; p < 64; ++p)
      if (is_zero_page(&src[p * 4096])) e.add_zero(p); else e.add_page(p, &src[p * 4096]);
    auto payload = e.finish();
    if (enc == PageEncoding::Zstd) {
      EXPECT_LT(payload.size(), 32u * 4096);
    }
    PageBatchDecoder d(dst, enc == PageEncoding::Zstd);
    AppliedBatch b = d.apply(payload);
    EXPECT_EQ(b.round, 3u);
    EXPECT_EQ(b.entries, 64u);
    EXPECT_EQ(b.zero_pages, 32u);
    EXPECT_EQ(src, dst);
  }
}

std::string batch_error(std::vector<std::uint8_t> payload, std::size_t ram_pages = 16, bool zstd = true) {
  std::vector<std::uint8_t> ram(ram_pages * 4096);
  PageBatchDecoder d(ram, zstd);
  try {
    d.apply(payload);
  } catch (const MigrationError& e) {
    return e.what();
  }
  return "accepted";
}

TEST(MigrationPages, DecoderValidatesEveryCountIndexAndLength) {
  std::vector<std::uint8_t> page(4096, 7);
  auto batch = [&](PageEncoding enc, std::uint64_t index) {
    PageBatchEncoder e(enc, 1);
    e.begin(0);
    e.add_page(index, page.data());
    auto s = e.finish();
    return std::vector<std::uint8_t>(s.begin(), s.end());
  };
  EXPECT_NE(batch_error(batch(PageEncoding::Raw, 16)).find("page 16 is beyond guest RAM (16 pages)"), std::string::npos);
  EXPECT_EQ(batch_error(batch(PageEncoding::Raw, 15)), "accepted");
  EXPECT_NE(batch_error(batch(PageEncoding::Zstd, 1), 16, false).find("not allowed by the negotiated protocol version"),
            std::string::npos);
  auto b = batch(PageEncoding::Raw, 1);
  b.pop_back();
  EXPECT_NE(batch_error(b).find("data length 4096 but 4095 bytes follow"), std::string::npos);
  b = batch(PageEncoding::Raw, 1);
  b[4] = 0;  // zero entries
  b[5] = 0;
  EXPECT_NE(batch_error(b).find("0 entries; 1 to 256 allowed"), std::string::npos);
  b = batch(PageEncoding::Raw, 1);
  b[4] = 0x01;  // 257 entries
  b[5] = 0x01;
  EXPECT_NE(batch_error(b).find("257 entries"), std::string::npos);
  b = batch(PageEncoding::Zstd, 1);
  b[b.size() - 3] ^= 0xff;
  std::string e = batch_error(b);
  EXPECT_NE(e, "accepted");
}

TEST(MigrationPages, DestinationDigestFromAppliedBatchesEqualsAFullPass) {
  std::vector<std::uint8_t> src(32 * 4096, 0), dst(32 * 4096, 0);
  std::mt19937 rng(7);
  for (std::size_t i = 4 * 4096; i < 20 * 4096; ++i) src[i] = static_cast<std::uint8_t>(rng());
  std::memset(&src[25 * 4096], 0, 4096);
  PageBatchEncoder e(PageEncoding::Zstd, 1);
  PageBatchDecoder d(dst, true);
  e.begin(0);
  for (std::uint64_t p = 0; p < 32; ++p) e.add_page(p, &src[p * 4096]);  // zero pages sent as data too
  d.apply(e.finish());
  EXPECT_EQ(d.digest(), digest_ram(src));
  EXPECT_EQ(digest_ram(dst), digest_ram(src));
  // A later batch that zeroes a page and rewrites another keeps them equal.
  std::memset(&src[5 * 4096], 0, 4096);
  src[6 * 4096] ^= 1;
  e.begin(1);
  e.add_zero(5);
  e.add_page(6, &src[6 * 4096]);
  d.apply(e.finish());
  EXPECT_EQ(d.digest(), digest_ram(src));
  // One bit anywhere changes it.
  dst[6 * 4096 + 100] ^= 4;
  EXPECT_NE(digest_ram(dst), digest_ram(src));
}

TEST(MigrationAuth, ProofsNeedTheSameSecretAndTheRightRole) {
  ClusterSecret a = ClusterSecret::from_string("correct horse battery staple");
  ClusterSecret b = ClusterSecret::from_string("correct horse battery stapler");
  HandshakeTranscript t{1, 2, 2, make_migration_id(), make_nonce(), make_nonce()};
  auto proof = compute_proof(a, ProofRole::Source, t);
  EXPECT_TRUE(verify_proof(a, ProofRole::Source, t, proof));
  EXPECT_FALSE(verify_proof(b, ProofRole::Source, t, proof));
  EXPECT_FALSE(verify_proof(a, ProofRole::Destination, t, proof));  // not replayable in the other direction
  HandshakeTranscript other = t;
  other.destination_nonce = make_nonce();
  EXPECT_FALSE(verify_proof(a, ProofRole::Source, other, proof));  // bound to this exchange's nonces
  EXPECT_NE(make_nonce(), make_nonce());
  EXPECT_THROW(ClusterSecret::from_string("short"), MigrationError);
  auto file = std::filesystem::temp_directory_path() / ("mvsecret-" + std::to_string(::getpid()));
  std::ofstream(file) << "0123456789abcdef0123\n";
  EXPECT_EQ(ClusterSecret::from_file(file).bytes().size(), 20u);
  std::filesystem::remove(file);
  try {
    ClusterSecret::from_file(file);
    FAIL();
  } catch (const MigrationError& e) {
    EXPECT_NE(std::string(e.what()).find(file.string()), std::string::npos);
  }
}

TEST(MigrationProgress, LineAndRecordCarryTheNumbers) {
  RoundProgress p{4, 1000, 50'000'000, 250, 48e6, 1.2e9, 12.4, 0};
  EXPECT_EQ(progress_line(p), "round 4: 50.0 MB sent, dirty 48.0 MB/s, bandwidth 1.20 GB/s, est. downtime 12 ms");
  MigrationReport r;
  r.outcome = Outcome::Completed;
  r.downtime_ms = 21.5;
  r.rounds = 3;
  r.mode = "BT";
  auto j = to_json(r);
  EXPECT_EQ(j["outcome"], "completed");
  EXPECT_EQ(j["downtime_ms"], 21.5);
  EXPECT_EQ(j["rounds"], 3);
  EXPECT_FALSE(j.contains("reason"));
}

}  // namespace
}  // namespace modevisor::test

#include "migration/vm_endpoints.hpp"

namespace modevisor::test {
namespace {

TEST(MigrationPeers, NameFromPeersOrAddressPortElseANamedError) {
  DaemonConfig daemon;
  daemon.peers["host-b"] = NetAddress{"127.0.0.1", 7020};
  EXPECT_EQ(resolve_peer(daemon, "host-b"), "127.0.0.1:7020");
  EXPECT_EQ(resolve_peer(daemon, "10.0.0.7:7020"), "10.0.0.7:7020");
  try {
    resolve_peer(daemon, "host-c");
    FAIL();
  } catch (const MigrationError& e) {
    EXPECT_NE(std::string(e.what()).find("peer 'host-c' is neither a name from this host's peers (host-b)"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace modevisor::test
