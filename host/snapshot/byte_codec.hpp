// Little-endian binary writing and bounds-checked reading for the snapshot
// and state codecs.  A ByteReader never reads past its span: every read
// checks the bytes left and throws SnapshotError naming the field.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "snapshot/snapshot_error.hpp"

namespace modevisor::host {

class ByteWriter {
 public:
  template <typename T>
  void put(T value) {
    static_assert(std::is_integral_v<T>);
    for (std::size_t i = 0; i < sizeof(T); ++i) out_.push_back(static_cast<std::uint8_t>(static_cast<std::uint64_t>(value) >> (8 * i)));
  }
  void put_bool(bool value) { put<std::uint8_t>(value ? 1 : 0); }
  void put_bytes(std::span<const std::uint8_t> bytes) { out_.insert(out_.end(), bytes.begin(), bytes.end()); }
  // A u32 length, then the bytes.
  void put_blob(std::span<const std::uint8_t> bytes) {
    put(static_cast<std::uint32_t>(bytes.size()));
    put_bytes(bytes);
  }
  void put_string(std::string_view text) {
    put_blob({reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
  }
  std::vector<std::uint8_t>& bytes() { return out_; }

 private:
  std::vector<std::uint8_t> out_;
};

class ByteReader {
 public:
  // `what` names the record in messages ("vCPU state").
  ByteReader(std::span<const std::uint8_t> bytes, std::string what) : bytes_(bytes), what_(std::move(what)) {}

  template <typename T>
  T get(std::string_view field) {
    static_assert(std::is_integral_v<T>);
    need(sizeof(T), field);
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) v |= std::uint64_t{bytes_[pos_ + i]} << (8 * i);
    pos_ += sizeof(T);
    return static_cast<T>(v);
  }
  bool get_bool(std::string_view field) {
    const auto b = get<std::uint8_t>(field);
    if (b > 1) fail(field, fmt::format("{} is not a boolean (0 or 1)", b));
    return b == 1;
  }
  std::span<const std::uint8_t> get_bytes(std::size_t count, std::string_view field) {
    need(count, field);
    auto out = bytes_.subspan(pos_, count);
    pos_ += count;
    return out;
  }
  // A u32 length (at most `max`), then the bytes.
  std::span<const std::uint8_t> get_blob(std::size_t max, std::string_view field) {
    const auto length = get<std::uint32_t>(field);
    if (length > max) fail(field, fmt::format("length {} exceeds the limit {}", length, max));
    return get_bytes(length, field);
  }
  std::string get_string(std::size_t max, std::string_view field) {
    const auto b = get_blob(max, field);
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
  }
  std::size_t left() const { return bytes_.size() - pos_; }
  std::size_t position() const { return pos_; }
  void expect_end() {
    if (left()) throw SnapshotError(fmt::format("{}: {} unexpected bytes after the end", what_, left()));
  }
  [[noreturn]] void fail(std::string_view field, std::string_view why) const {
    throw SnapshotError(fmt::format("{}: {} (at byte {}): {}", what_, field, pos_, why));
  }

 private:
  void need(std::size_t count, std::string_view field) const {
    if (count > left())
      throw SnapshotError(fmt::format("{}: truncated in {} (needs {} bytes at byte {}, {} left)", what_, field, count,
                                      pos_, left()));
  }
  std::span<const std::uint8_t> bytes_;
  std::string what_;
  std::size_t pos_ = 0;
};

}  // namespace modevisor::host
