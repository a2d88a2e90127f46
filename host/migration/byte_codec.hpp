// Little-endian binary payloads: a writer, and a reader that checks every
// read against what is left and names the field it could not read.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "migration/protocol.hpp"

namespace modevisor::host::migration {

class ByteWriter {
 public:
  void u8(std::uint8_t v) { out_.push_back(v); }
  void u16(std::uint16_t v) { put(v, 2); }
  void u32(std::uint32_t v) { put(v, 4); }
  void u64(std::uint64_t v) { put(v, 8); }
  void bytes(std::span<const std::uint8_t> b) { out_.insert(out_.end(), b.begin(), b.end()); }
  std::vector<std::uint8_t>& buffer() { return out_; }
  std::vector<std::uint8_t> take() { return std::move(out_); }

 private:
  void put(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  std::vector<std::uint8_t> out_;
};

class ByteReader {
 public:
  ByteReader(std::span<const std::uint8_t> in, const char* message) : in_(in), message_(message) {}
  std::uint8_t u8(const char* field) { return static_cast<std::uint8_t>(get(1, field)); }
  std::uint16_t u16(const char* field) { return static_cast<std::uint16_t>(get(2, field)); }
  std::uint32_t u32(const char* field) { return static_cast<std::uint32_t>(get(4, field)); }
  std::uint64_t u64(const char* field) { return get(8, field); }
  std::span<const std::uint8_t> bytes(std::size_t n, const char* field) {
    need(n, field);
    auto out = in_.subspan(at_, n);
    at_ += n;
    return out;
  }
  // A fixed-size field (an id, a nonce, a proof) read into its array.
  template <std::size_t N>
  void fill(std::array<std::uint8_t, N>& out, const char* field) {
    const auto in = bytes(N, field);
    std::copy(in.begin(), in.end(), out.begin());
  }
  std::size_t remaining() const { return in_.size() - at_; }
  void expect_end() const {
    if (remaining() != 0)
      throw MigrationError(MigrationError::Kind::Protocol,
                           std::string(message_) + ": " + std::to_string(remaining()) + " unexpected trailing bytes");
  }

 private:
  void need(std::size_t n, const char* field) const {
    if (n > remaining())
      throw MigrationError(MigrationError::Kind::Protocol, std::string(message_) + ": field '" + field + "' needs " +
                                                               std::to_string(n) + " bytes, " +
                                                               std::to_string(remaining()) + " left");
  }
  std::uint64_t get(int n, const char* field) {
    need(static_cast<std::size_t>(n), field);
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= std::uint64_t{in_[at_ + i]} << (8 * i);
    at_ += static_cast<std::size_t>(n);
    return v;
  }
  std::span<const std::uint8_t> in_;
  std::size_t at_ = 0;
  const char* message_;
};

}  // namespace modevisor::host::migration
