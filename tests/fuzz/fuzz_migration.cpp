// The live-migration protocol as a receiving host reads it (host/migration):
// the first input byte picks the surface, the rest is what the peer sent.
//   0  frames: a byte stream through a socket into Channel::receive, frame
//      after frame (magic, type, length limits, checksum)
//   1  the Config message's JSON (decode_config: every field validated)
//   2  a Pages batch (PageBatchDecoder::apply: raw and zstd, into 64 pages of RAM)
//   3  the small messages: Hello, Challenge, RoundEnd, Digest, Resolution,
//      Accept, Refuse, a migration id; and the daemon's peek at a Hello
// Bad input ends in MigrationError naming what was wrong, never a crash, a
// sanitizer report, a hang or another exception.
//
// MODEVISOR_FUZZ_WRITE_SEEDS=DIR: writes seeds made by the real encoders to DIR and exits.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "migration/auth.hpp"
#include "migration/channel.hpp"
#include "migration/messages.hpp"
#include "migration/page_batch.hpp"

using namespace modevisor;
namespace mig = modevisor::host::migration;

namespace {

constexpr std::size_t kRamPages = 64;

void put(const std::string& dir, const std::string& name, std::uint8_t surface, std::span<const std::uint8_t> bytes) {
  std::ofstream out(dir + "/" + name, std::ios::binary);
  out.put(static_cast<char>(surface));
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}
std::span<const std::uint8_t> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

mig::MigrationConfig sample_config() {
  mig::MigrationConfig c;
  c.vm_name = "ticker";
  c.vm_file = "/srv/vms/ticker.yaml";
  c.vm_yaml = "name: ticker\nguest:\n  os: other-32\n  kernel: sieve.elf\nmemory: 64MiB\n";
  c.cpu_model = "portable-32";
  c.cpuid.push_back({0, 0, false, 0x0d, 0x756e6547, 0x6c65746e, 0x49656e69});
  c.vcpus = 2;
  c.memory_bytes = 64 << 20;
  c.source_host = "host-a";
  c.source_mode = "BT";
  c.source_plugin = "bt-swmmu 0.1.0";
  return c;
}

void write_seeds(const std::string& dir) {
  // 0: a frame stream, as a source sends it.
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) std::abort();
  {
    mig::Channel out(pair[0], "seed", std::chrono::milliseconds(1000));
    mig::HelloMessage hello{1, 2, mig::make_migration_id(), mig::make_nonce()};
    out.send(mig::MessageType::Hello, mig::encode(hello));
    out.send(mig::MessageType::Config, mig::encode_config(sample_config()));
    out.send(mig::MessageType::RoundEnd, mig::encode(mig::RoundMessage{1, 3}));
    out.send(mig::MessageType::Abandon, std::string("{\"reason\":\"seed\"}"));
    out.close();
    std::vector<std::uint8_t> stream(1 << 16);
    const ssize_t n = ::read(pair[1], stream.data(), stream.size());
    stream.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
    put(dir, "frames", 0, stream);
  }
  ::close(pair[1]);
  // 1: Config.
  put(dir, "config", 1, as_bytes(mig::encode_config(sample_config())));
  // 2: Pages, raw and zstd, with zero pages and data pages.
  for (auto [encoding, name] : {std::pair{mig::PageEncoding::Raw, "pages-raw"}, std::pair{mig::PageEncoding::Zstd, "pages-zstd"}}) {
    mig::PageBatchEncoder encoder(encoding, 1);
    encoder.begin(1);
    std::vector<std::uint8_t> page(mig::kPageBytes);
    for (std::size_t i = 0; i < page.size(); ++i) page[i] = static_cast<std::uint8_t>(i * 7);
    encoder.add_page(3, page.data());
    encoder.add_zero(4);
    encoder.add_page(kRamPages - 1, page.data());
    put(dir, name, 2, encoder.finish());
  }
  // 3: the small messages, each after its selector byte.
  mig::HelloMessage hello{1, 2, mig::make_migration_id(), mig::make_nonce()};
  std::vector<std::uint8_t> m{0};
  auto h = mig::encode(hello);
  m.insert(m.end(), h.begin(), h.end());
  put(dir, "hello", 3, m);
  mig::ChallengeMessage challenge{2, mig::make_nonce(), {}};
  m = {1};
  auto c = mig::encode(challenge);
  m.insert(m.end(), c.begin(), c.end());
  put(dir, "challenge", 3, m);
  m = {3};
  auto d = mig::encode(mig::DigestMessage{{1, 2}, 64 << 20});
  m.insert(m.end(), d.begin(), d.end());
  put(dir, "digest", 3, m);
  m = {5};
  auto p = mig::encode_placement({"BT", "bt-swmmu 0.1.0"});
  m.insert(m.end(), p.begin(), p.end());
  put(dir, "accept", 3, m);
  m = {6};
  auto r = mig::encode_reasons({"no mode", "name taken"});
  m.insert(m.end(), r.begin(), r.end());
  put(dir, "refuse", 3, m);
}

template <typename F>
void expect_migration_error(F&& decode) {
  try {
    decode();
  } catch (const mig::MigrationError& e) {
    if (std::string(e.what()).empty()) std::abort();
  }
}

void frames(std::span<const std::uint8_t> stream) {
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) std::abort();
  // The whole stream fits the socket's buffer (-max_len keeps inputs small).
  int buffer = 1 << 20;
  ::setsockopt(pair[0], SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer);
  std::size_t sent = 0;
  ::fcntl(pair[0], F_SETFL, O_NONBLOCK);
  while (sent < stream.size()) {
    const ssize_t n = ::send(pair[0], stream.data() + sent, stream.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<std::size_t>(n);
  }
  ::close(pair[0]);  // the peer is done: end of stream after what it sent
  mig::Channel in(pair[1], "fuzz", std::chrono::milliseconds(200));
  expect_migration_error([&] {
    for (int i = 0; i < 1000; ++i) (void)in.receive();
  });
}

void small_message(std::span<const std::uint8_t> in) {
  if (in.empty()) return;
  const auto payload = in.subspan(1);
  expect_migration_error([&] {
    switch (in[0] % 8) {
      case 0: (void)mig::decode_hello(payload); break;
      case 1: (void)mig::decode_challenge(payload); break;
      case 2: (void)mig::decode_round(payload, "RoundEnd"); break;
      case 3: (void)mig::decode_digest(payload); break;
      case 4: (void)mig::decode_resolution(payload); break;
      case 5: (void)mig::decode_placement(payload); break;
      case 6: (void)mig::decode_reasons(payload, "Refuse"); break;
      case 7: (void)mig::decode_migration_id(payload); break;
    }
  });
  const mig::HelloPeek peek = mig::peek_hello(payload);
  if (peek.status == mig::HelloPeek::Status::NotHello && peek.why.empty()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) { return modevisor::fuzz::write_seeds_when_asked(write_seeds); }

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::span<const std::uint8_t> rest(data + 1, size - 1);
  switch (data[0] % 4) {
    case 0: frames(rest); break;
    case 1: expect_migration_error([&] { (void)mig::decode_config(rest, 1ULL << 30); }); break;
    case 2: {
      static std::vector<std::uint8_t> ram(kRamPages * mig::kPageBytes);
      for (bool zstd : {false, true}) {
        mig::PageBatchDecoder decoder(ram, zstd);
        expect_migration_error([&] { (void)decoder.apply(rest); });
      }
      break;
    }
    case 3: small_message(rest); break;
  }
  return 0;
}
