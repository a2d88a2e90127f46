#include "migration/page_batch.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include <zstd.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "migration/byte_codec.hpp"

namespace modevisor::host::migration {
namespace {
using Kind = MigrationError::Kind;
constexpr std::uint64_t kZeroFlag = 1ull << 63;
constexpr std::size_t kBatchHeaderBytes = 12;
}  // namespace

bool is_zero_page(const std::uint8_t* page) {
  const auto* words = reinterpret_cast<const std::uint64_t*>(page);
  std::uint64_t acc = 0;
  for (std::size_t i = 0; i < kPageBytes / 8; i += 8)
    acc |= words[i] | words[i + 1] | words[i + 2] | words[i + 3] | words[i + 4] | words[i + 5] | words[i + 6] |
           words[i + 7];
  return acc == 0;
}

struct PageBatchEncoder::Context {
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ~Context() { ZSTD_freeCCtx(cctx); }
};

PageBatchEncoder::PageBatchEncoder(PageEncoding encoding, int zstd_level)
    : encoding_(encoding), level_(zstd_level), zstd_(std::make_unique<Context>()) {
  if (!zstd_->cctx) throw MigrationError(Kind::Local, "zstd: cannot create a compression context");
  raw_.reserve(kMaxPagesPerBatch * kPageBytes);
  entries_.reserve(kMaxPagesPerBatch);
}

PageBatchEncoder::~PageBatchEncoder() = default;

void PageBatchEncoder::begin(std::uint32_t round) {
  round_ = round;
  entries_.clear();
  raw_.clear();
}

void PageBatchEncoder::add_zero(std::uint64_t index) { entries_.push_back(index | kZeroFlag); }

const std::uint8_t* PageBatchEncoder::add_page(std::uint64_t index, const std::uint8_t* page) {
  entries_.push_back(index);
  raw_.insert(raw_.end(), page, page + kPageBytes);
  return raw_.data() + raw_.size() - kPageBytes;
}

std::span<const std::uint8_t> PageBatchEncoder::finish() {
  out_.resize(kBatchHeaderBytes + 8 * entries_.size() + ZSTD_compressBound(raw_.size()));
  std::uint8_t* data = out_.data() + kBatchHeaderBytes + 8 * entries_.size();
  std::size_t data_len = raw_.size();
  PageEncoding used = PageEncoding::Raw;
  if (encoding_ == PageEncoding::Zstd && !raw_.empty()) {
    std::size_t n = ZSTD_compressCCtx(zstd_->cctx, data, ZSTD_compressBound(raw_.size()), raw_.data(), raw_.size(),
                                      level_);
    if (ZSTD_isError(n)) throw MigrationError(Kind::Local, std::string("zstd: ") + ZSTD_getErrorName(n));
    data_len = n;
    used = PageEncoding::Zstd;
  } else if (!raw_.empty()) {
    std::memcpy(data, raw_.data(), raw_.size());
  }
  ByteWriter w;
  w.u32(round_);
  w.u16(static_cast<std::uint16_t>(entries_.size()));
  w.u8(static_cast<std::uint8_t>(used));
  w.u8(0);
  w.u32(static_cast<std::uint32_t>(data_len));
  for (auto e : entries_) w.u64(e);
  std::memcpy(out_.data(), w.buffer().data(), w.buffer().size());
  out_.resize(w.buffer().size() + data_len);
  return out_;
}

struct PageBatchDecoder::Context {
  ZSTD_DCtx* dctx = ZSTD_createDCtx();
  ~Context() { ZSTD_freeDCtx(dctx); }
};

PageBatchDecoder::PageBatchDecoder(std::span<std::uint8_t> ram, bool allow_zstd)
    : ram_(ram), allow_zstd_(allow_zstd), zstd_(std::make_unique<Context>()) {
  if (!zstd_->dctx) throw MigrationError(Kind::Local, "zstd: cannot create a decompression context");
  scratch_.resize(kMaxPagesPerBatch * kPageBytes);
  page_hashes_.assign(ram.size() / kPageBytes, 0);  // fresh guest RAM is all zeros
}

void PageBatchDecoder::record(std::uint64_t index, const std::uint8_t* page) { page_hashes_[index] = page_hash(page); }

RamDigest PageBatchDecoder::digest() const { return digest_of_page_hashes(page_hashes_); }

std::uint64_t page_hash(const std::uint8_t* page) {
  if (is_zero_page(page)) return 0;
  const std::uint64_t h = XXH3_64bits(page, kPageBytes);
  return h ? h : 1;  // 0 means "zero page"
}

RamDigest digest_of_page_hashes(const std::vector<std::uint64_t>& hashes) {
  XXH3_state_t state;
  XXH3_128bits_reset(&state);
  for (std::uint64_t index = 0; index < hashes.size(); ++index) {
    if (hashes[index] == 0) continue;
    const std::uint64_t record[2] = {index, hashes[index]};
    XXH3_128bits_update(&state, record, sizeof record);
  }
  XXH128_hash_t h = XXH3_128bits_digest(&state);
  return RamDigest{h.high64, h.low64};
}

PageBatchDecoder::~PageBatchDecoder() = default;

AppliedBatch PageBatchDecoder::apply(std::span<const std::uint8_t> payload) {
  ByteReader r(payload, "Pages");
  AppliedBatch out;
  out.round = r.u32("round");
  const std::uint32_t count = r.u16("entries");
  const auto encoding = r.u8("encoding");
  if (r.u8("reserved") != 0) throw MigrationError(Kind::Protocol, "Pages: reserved byte is not zero");
  const std::uint32_t data_len = r.u32("data_length");
  if (count == 0 || count > kMaxPagesPerBatch)
    throw MigrationError(Kind::Protocol, "Pages: " + std::to_string(count) + " entries; 1 to " +
                                             std::to_string(kMaxPagesPerBatch) + " allowed");
  if (encoding > 1 || (encoding == 1 && !allow_zstd_))
    throw MigrationError(Kind::Protocol, "Pages: encoding " + std::to_string(encoding) +
                                             " is not allowed by the negotiated protocol version");
  const std::uint64_t page_count = ram_.size() / kPageBytes;
  std::uint64_t entries[kMaxPagesPerBatch];
  std::uint32_t data_pages = 0;
  for (std::uint32_t i = 0; i < count; ++i) {
    entries[i] = r.u64("entry");
    const std::uint64_t index = entries[i] & ~kZeroFlag;
    if (index >= page_count)
      throw MigrationError(Kind::Protocol, "Pages: page " + std::to_string(index) + " is beyond guest RAM (" +
                                               std::to_string(page_count) + " pages)");
    if (entries[i] & kZeroFlag) ++out.zero_pages; else ++data_pages;
  }
  if (data_len != r.remaining())
    throw MigrationError(Kind::Protocol, "Pages: data length " + std::to_string(data_len) + " but " +
                                             std::to_string(r.remaining()) + " bytes follow");
  auto data = r.bytes(data_len, "data");
  const std::size_t expected = std::size_t{data_pages} * kPageBytes;
  const std::uint8_t* pages = data.data();
  if (encoding == 0) {
    if (data_len != expected)
      throw MigrationError(Kind::Protocol, "Pages: " + std::to_string(data_pages) + " raw pages need " +
                                               std::to_string(expected) + " bytes, got " + std::to_string(data_len));
  } else if (data_pages == 0) {
    if (data_len != 0) throw MigrationError(Kind::Protocol, "Pages: compressed data without a page to hold it");
  } else {
    auto content = ZSTD_getFrameContentSize(data.data(), data.size());
    if (content != expected)
      throw MigrationError(Kind::Integrity, "Pages: the zstd frame does not declare the " + std::to_string(expected) +
                                                " bytes of its " + std::to_string(data_pages) + " pages");
    std::size_t n = ZSTD_decompressDCtx(zstd_->dctx, scratch_.data(), expected, data.data(), data.size());
    if (ZSTD_isError(n) || n != expected)
      throw MigrationError(Kind::Integrity, std::string("Pages: zstd data is corrupt (") +
                                                (ZSTD_isError(n) ? ZSTD_getErrorName(n) : "short") + ")");
    pages = scratch_.data();
  }
  for (std::uint32_t i = 0; i < count; ++i) {
    const std::uint64_t index = entries[i] & ~kZeroFlag;
    std::uint8_t* target = ram_.data() + index * kPageBytes;
    if (entries[i] & kZeroFlag) {
      std::memset(target, 0, kPageBytes);
      page_hashes_[index] = 0;
    } else {
      std::memcpy(target, pages, kPageBytes);
      record(index, target);
      pages += kPageBytes;
    }
  }
  out.entries = count;
  return out;
}

std::vector<std::pair<std::uint64_t, std::uint64_t>> data_extents(int fd, std::uint64_t size) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  if (fd < 0) return {{0, size}};
  off_t at = 0;
  while (static_cast<std::uint64_t>(at) < size) {
    off_t data = ::lseek(fd, at, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // nothing but holes from here
      return {{0, size}};
    }
    off_t hole = ::lseek(fd, data, SEEK_HOLE);
    if (hole < 0) return {{0, size}};
    const std::uint64_t begin = static_cast<std::uint64_t>(data) / kPageBytes * kPageBytes;
    const std::uint64_t end =
        std::min<std::uint64_t>(size, (static_cast<std::uint64_t>(hole) + kPageBytes - 1) / kPageBytes * kPageBytes);
    if (begin < end) out.emplace_back(begin, end);
    at = hole;
  }
  return out;
}

std::vector<std::uint64_t> hash_data_pages(std::span<const std::uint8_t> ram, int fd) {
  std::vector<std::uint64_t> hashes(ram.size() / kPageBytes, 0);
  const auto extents = data_extents(fd, ram.size());
  std::uint64_t total = 0;
  for (const auto& [begin, end] : extents) total += (end - begin) / kPageBytes;
  // The pages of the extents in equal shares, one thread each: this runs
  // while the guest is paused, so every core that helps shortens downtime.
  const std::uint64_t cores = std::clamp(std::thread::hardware_concurrency(), 1u, 4u);
  const std::uint64_t threads = total >= 4096 ? cores : 1;  // below 16 MiB a thread costs more than it saves
  auto hash_share = [&](std::uint64_t first, std::uint64_t last) {  // indices into the extents' pages
    std::uint64_t index = 0;
    for (const auto& [begin, end] : extents) {
      const std::uint64_t pages = (end - begin) / kPageBytes;
      if (index + pages > first && index < last) {
        const std::uint64_t from = std::max(first, index) - index, to = std::min(last, index + pages) - index;
        for (std::uint64_t p = from; p < to; ++p) {
          const std::uint64_t at = begin + p * kPageBytes;
          hashes[at / kPageBytes] = page_hash(ram.data() + at);
        }
      }
      index += pages;
    }
  };
  std::vector<std::thread> helpers;
  for (std::uint64_t t = 1; t < threads; ++t)
    helpers.emplace_back(hash_share, total * t / threads, total * (t + 1) / threads);
  hash_share(0, total / threads);
  for (auto& helper : helpers) helper.join();
  return hashes;
}

RamDigest digest_ram(std::span<const std::uint8_t> ram, int fd) { return digest_of_page_hashes(hash_data_pages(ram, fd)); }

}  // namespace modevisor::host::migration
