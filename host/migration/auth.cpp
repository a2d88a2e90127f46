#include "migration/auth.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <fstream>
#include <iterator>

#include "migration/byte_codec.hpp"
#include "migration/messages.hpp"

namespace modevisor::host::migration {

ClusterSecret::ClusterSecret(std::vector<std::uint8_t> bytes) : bytes_(std::move(bytes)) {
  if (bytes_.size() < kMinSecretBytes)
    throw MigrationError(MigrationError::Kind::Local, "the cluster secret has " + std::to_string(bytes_.size()) +
                                                          " bytes; at least " + std::to_string(kMinSecretBytes) +
                                                          " are needed");
}

ClusterSecret ClusterSecret::from_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw MigrationError(MigrationError::Kind::Local, file.string() + ": cannot read the cluster secret");
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!bytes.empty() && bytes.back() == '\n') bytes.pop_back();
  try {
    return ClusterSecret(std::move(bytes));
  } catch (const MigrationError& e) {
    throw MigrationError(MigrationError::Kind::Local, file.string() + ": " + e.what());
  }
}

ClusterSecret ClusterSecret::from_string(const std::string& text) {
  return ClusterSecret(std::vector<std::uint8_t>(text.begin(), text.end()));
}

namespace {
std::vector<std::uint8_t> transcript_bytes(ProofRole role, const HandshakeTranscript& t) {
  ByteWriter w;
  const std::string label = role == ProofRole::Source ? "modevisor migration: source proves the cluster secret"
                                                      : "modevisor migration: destination proves the cluster secret";
  w.bytes(std::span(reinterpret_cast<const std::uint8_t*>(label.data()), label.size()));
  w.u16(t.min_version);
  w.u16(t.max_version);
  w.u16(t.chosen_version);
  w.bytes(t.id);
  w.bytes(t.source_nonce);
  w.bytes(t.destination_nonce);
  return w.take();
}
}  // namespace

AuthProof compute_proof(const ClusterSecret& secret, ProofRole role, const HandshakeTranscript& t) {
  auto message = transcript_bytes(role, t);
  AuthProof out{};
  unsigned int length = 0;
  if (!HMAC(EVP_sha256(), secret.bytes().data(), static_cast<int>(secret.bytes().size()), message.data(),
            message.size(), out.data(), &length) ||
      length != out.size())
    throw MigrationError(MigrationError::Kind::Local, "HMAC-SHA256 failed (OpenSSL)");
  return out;
}

bool verify_proof(const ClusterSecret& secret, ProofRole role, const HandshakeTranscript& t,
                  std::span<const std::uint8_t> proof) {
  if (proof.size() != kProofBytes) return false;
  auto expected = compute_proof(secret, role, t);
  return CRYPTO_memcmp(expected.data(), proof.data(), expected.size()) == 0;
}

ClusterSecret derive_migration_key(const ClusterSecret& cluster, const MigrationId& id) {
  const std::string label = "modevisor migration key v1";
  std::vector<std::uint8_t> message(label.begin(), label.end());
  message.insert(message.end(), id.begin(), id.end());
  std::vector<std::uint8_t> key(32);
  unsigned int length = 0;
  if (!HMAC(EVP_sha256(), cluster.bytes().data(), static_cast<int>(cluster.bytes().size()), message.data(),
            message.size(), key.data(), &length) ||
      length != key.size())
    throw MigrationError(MigrationError::Kind::Local, "HMAC-SHA256 failed (OpenSSL)");
  return ClusterSecret(std::move(key));
}

HelloPeek peek_hello(std::span<const std::uint8_t> start) {
  HelloPeek out;
  if (start.size() < kFrameHeaderBytes) {
    out.needed = kFrameHeaderBytes;
    return out;
  }
  ByteReader header(start.first(kFrameHeaderBytes), "frame header");
  const std::uint32_t magic = header.u32("magic");
  const std::uint16_t type = header.u16("type");
  header.u16("reserved");
  const std::uint32_t length = header.u32("length");
  out.status = HelloPeek::Status::NotHello;
  if (magic != kFrameMagic) {
    out.why = "it does not start with a migration frame";
    return out;
  }
  if (type != static_cast<std::uint16_t>(MessageType::Hello)) {
    out.why = "its first message is not Hello";
    return out;
  }
  if (length != max_payload(MessageType::Hello)) {
    out.why = "its Hello has " + std::to_string(length) + " bytes";
    return out;
  }
  out.needed = kFrameHeaderBytes + length;
  if (start.size() < out.needed) {
    out.status = HelloPeek::Status::NeedMore;
    return out;
  }
  try {
    out.id = decode_hello(start.subspan(kFrameHeaderBytes, length)).id;
    out.status = HelloPeek::Status::Found;
  } catch (const std::exception& e) {
    out.why = e.what();
  }
  return out;
}

bool from_hex(const std::string& text, std::span<std::uint8_t> out) {
  if (text.size() != out.size() * 2) return false;
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < out.size(); ++i) {
    const int high = digit(text[2 * i]), low = digit(text[2 * i + 1]);
    if (high < 0 || low < 0) return false;
    out[i] = static_cast<std::uint8_t>(high << 4 | low);
  }
  return true;
}

void random_bytes(std::span<std::uint8_t> out) {
  if (RAND_bytes(out.data(), static_cast<int>(out.size())) != 1)
    throw MigrationError(MigrationError::Kind::Local, "the random generator failed (OpenSSL RAND_bytes)");
}

Nonce make_nonce() {
  Nonce n;
  random_bytes(n);
  return n;
}

MigrationId make_migration_id() {
  MigrationId id;
  random_bytes(id);
  return id;
}

std::string to_hex(std::span<const std::uint8_t> bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (auto b : bytes) {
    out.push_back(digits[b >> 4]);
    out.push_back(digits[b & 15]);
  }
  return out;
}

}  // namespace modevisor::host::migration
