// Guest pages on the wire: batches of up to kMaxPagesPerBatch pages, zero
// pages as bare entries, the rest zstd-compressed (protocol 2) or raw (1).
//
// Pages payload: round u32 | entries u16 | encoding u8 | reserved u8 |
// data length u32 | entries x u64 (page index, bit 63 = zero page) | data.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "migration/messages.hpp"
#include "migration/protocol.hpp"

namespace modevisor::host::migration {

enum class PageEncoding : std::uint8_t { Raw = 0, Zstd = 1 };

bool is_zero_page(const std::uint8_t* page);

class PageBatchEncoder {
 public:
  // zstd_level is ignored for Raw.
  PageBatchEncoder(PageEncoding encoding, int zstd_level);
  ~PageBatchEncoder();
  void begin(std::uint32_t round);
  void add_zero(std::uint64_t index);
  // Returns the batch's copy of the page (what will be sent), valid until finish().
  const std::uint8_t* add_page(std::uint64_t index, const std::uint8_t* page);
  bool empty() const { return entries_.empty(); }
  bool full() const { return entries_.size() >= kMaxPagesPerBatch; }
  // The Pages payload; valid until the next begin().
  std::span<const std::uint8_t> finish();

 private:
  PageEncoding encoding_;
  int level_;
  std::uint32_t round_ = 0;
  std::vector<std::uint64_t> entries_;
  std::vector<std::uint8_t> raw_;
  std::vector<std::uint8_t> out_;
  struct Context;
  std::unique_ptr<Context> zstd_;
};

struct AppliedBatch {
  std::uint32_t round = 0;
  std::uint32_t entries = 0;
  std::uint32_t zero_pages = 0;
};

class PageBatchDecoder {
 public:
  // `allow_zstd`: the negotiated version compresses.
  PageBatchDecoder(std::span<std::uint8_t> ram, bool allow_zstd);
  ~PageBatchDecoder();
  // Validates everything, then writes the pages into RAM; throws
  // MigrationError(Protocol/Integrity) naming what was wrong.
  AppliedBatch apply(std::span<const std::uint8_t> payload);
  // digest_ram() of the RAM as the batches left it, from the page hashes kept
  // as they were applied (the decoder is the only writer of this RAM): no
  // pass over all of guest RAM while the VM is down.
  RamDigest digest() const;

 private:
  void record(std::uint64_t index, const std::uint8_t* page);
  std::span<std::uint8_t> ram_;
  bool allow_zstd_;
  std::vector<std::uint64_t> page_hashes_;  // 0: an all-zero page
  std::vector<std::uint8_t> scratch_;
  struct Context;
  std::unique_ptr<Context> zstd_;
};

// The parts of guest RAM that may hold data, as [begin, end) byte ranges in
// whole pages: the memfd's data extents (SEEK_DATA/SEEK_HOLE), so pages that
// were never written are skipped without being touched (reading a hole of a
// memfd would allocate it).  Everything when `fd` is -1 or cannot tell.
std::vector<std::pair<std::uint64_t, std::uint64_t>> data_extents(int fd, std::uint64_t size);
// page_hash of every page in the data extents of `fd` (which backs `ram`);
// pages in holes are 0, as a zero page's hash is.
std::vector<std::uint64_t> hash_data_pages(std::span<const std::uint8_t> ram, int fd);

// The digest of guest RAM's content: XXH3-128 over (page number, XXH3-64 of
// the page) for every page that is not all zeros, in page order.  Zero pages
// (holes included) contribute nothing, so both sides get the same value
// whether a zero page is a hole or was written with zeros, and neither
// touches its holes.
RamDigest digest_ram(std::span<const std::uint8_t> ram, int fd = -1);
// One page's part of the digest: 0 for an all-zero page.
std::uint64_t page_hash(const std::uint8_t* page);
// The digest from per-page hashes (0: zero page), as digest_ram() computes it.
RamDigest digest_of_page_hashes(const std::vector<std::uint64_t>& hashes);

}  // namespace modevisor::host::migration
