#include "snapshot/snapshot.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "platform/cpu_model.hpp"
#include "snapshot/byte_codec.hpp"
#include "snapshot/vcpu_codec.hpp"

namespace modevisor::host {

namespace {

constexpr std::array<std::uint8_t, 8> kMagic{'M', 'V', 'S', 'N', 'A', 'P', '\r', '\n'};
constexpr std::size_t kHeaderBytes = 8 + 4 + 4 + 8;
constexpr std::size_t kSectionHeaderBytes = 4 + 4 + 8 + 8 + 8;
constexpr std::size_t kTrailerBytes = 8;
constexpr std::uint32_t kCompressed = 1;  // section flag: stored bytes are one zstd frame
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kPageRecord = 8 + kPage;
constexpr std::uint64_t kMinRam = 1 << 20, kMaxRam = std::uint64_t{64} << 30;

enum class Section : std::uint32_t { Declaration = 1, CpuModel = 2, Vcpus = 3, Devices = 4, Ram = 5 };
constexpr std::array kSectionOrder{Section::Declaration, Section::CpuModel, Section::Vcpus, Section::Devices,
                                   Section::Ram};

const char* section_name(Section s) {
  switch (s) {
    case Section::Declaration: return "declaration";
    case Section::CpuModel: return "CPU model";
    case Section::Vcpus: return "vCPUs";
    case Section::Devices: return "devices";
    case Section::Ram: return "RAM";
  }
  return "unknown";
}

std::uint64_t xxh3(std::span<const std::uint8_t> bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

bool all_zero(const std::uint8_t* page) {
  return page[0] == 0 && std::memcmp(page, page + 1, kPage - 1) == 0;
}

// One zstd frame of the pages that are not all zeros, as (page number, bytes) records.
std::vector<std::uint8_t> compress_ram(const std::uint8_t* base, std::uint64_t size, std::uint64_t& raw_length) {
  std::unique_ptr<ZSTD_CCtx, decltype(&ZSTD_freeCCtx)> cctx(ZSTD_createCCtx(), ZSTD_freeCCtx);
  if (!cctx) throw SnapshotError("snapshot: cannot create a zstd compressor");
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, 3);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_checksumFlag, 0);  // XXH3 covers the section
  std::vector<std::uint8_t> out;
  std::vector<std::uint8_t> chunk(ZSTD_CStreamOutSize());
  raw_length = 0;
  auto feed = [&](const void* data, std::size_t length, ZSTD_EndDirective mode) {
    ZSTD_inBuffer in{data, length, 0};
    for (;;) {
      ZSTD_outBuffer o{chunk.data(), chunk.size(), 0};
      const std::size_t left = ZSTD_compressStream2(cctx.get(), &o, &in, mode);
      if (ZSTD_isError(left)) throw SnapshotError(std::string("snapshot: zstd: ") + ZSTD_getErrorName(left));
      out.insert(out.end(), chunk.data(), chunk.data() + o.pos);
      if (mode == ZSTD_e_end ? left == 0 : in.pos == in.size) break;
    }
  };
  std::array<std::uint8_t, 8> number{};
  for (std::uint64_t page = 0; page < size / kPage; ++page) {
    const std::uint8_t* data = base + page * kPage;
    if (all_zero(data)) continue;
    for (int i = 0; i < 8; ++i) number[i] = static_cast<std::uint8_t>(page >> (8 * i));
    feed(number.data(), number.size(), ZSTD_e_continue);
    feed(data, kPage, ZSTD_e_continue);
    raw_length += kPageRecord;
  }
  feed(nullptr, 0, ZSTD_e_end);
  return out;
}

struct SectionView {
  Section kind;
  std::uint32_t flags;
  std::uint64_t raw_length;
  std::span<const std::uint8_t> stored;
};

class SnapshotReader {
 public:
  explicit SnapshotReader(const std::filesystem::path& file) : file_(file) {}

  LoadedSnapshot read();

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw SnapshotError(fmt::format("snapshot {}: {}", file_.string(), why));
  }
  std::vector<SectionView> parse_layout();
  void decode_section(const SectionView& section, MachineState& state);
  std::unique_ptr<GuestRam> decode_ram(const SectionView& section);
  void check_cpu_model(const MachineState& state) const;

  std::span<const std::uint8_t> view() const { return bytes_; }

  std::filesystem::path file_;
  std::vector<std::uint8_t> bytes_;
};

std::vector<SectionView> SnapshotReader::parse_layout() {
  if (bytes_.size() < kHeaderBytes + kTrailerBytes)
    fail(fmt::format("truncated: {} bytes, shorter than a snapshot header", bytes_.size()));
  if (!std::equal(kMagic.begin(), kMagic.end(), bytes_.begin())) fail("not a modevisor snapshot (bad magic)");
  ByteReader header(view().first(kHeaderBytes), "header");
  header.get_bytes(8, "magic");
  const auto format = header.get<std::uint32_t>("format version");
  const auto count = header.get<std::uint32_t>("section count");
  const auto header_sum = header.get<std::uint64_t>("header checksum");
  if (header_sum != xxh3(view().first(kHeaderBytes - 8)))
    fail("corrupted: the header's checksum does not match");
  if (format != kSnapshotFormat)
    fail(fmt::format("format version {}; this build reads version {} only", format, kSnapshotFormat));
  if (count > 64) fail(fmt::format("corrupted: {} sections", count));

  std::vector<SectionView> sections;
  std::size_t pos = kHeaderBytes;
  const std::size_t body_end = bytes_.size() - kTrailerBytes;
  for (std::uint32_t i = 0; i < count; ++i) {
    if (body_end < pos || body_end - pos < kSectionHeaderBytes)
      fail(fmt::format("truncated: section {} of {} has no complete header", i + 1, count));
    ByteReader r(view().subspan(pos, kSectionHeaderBytes), "section header");
    const auto kind = r.get<std::uint32_t>("kind");
    const auto flags = r.get<std::uint32_t>("flags");
    const auto stored = r.get<std::uint64_t>("stored length");
    const auto raw = r.get<std::uint64_t>("raw length");
    const auto sum = r.get<std::uint64_t>("checksum");
    pos += kSectionHeaderBytes;
    if (stored > body_end - pos)
      fail(fmt::format("truncated: section {} of {} (kind {}) declares {} bytes, {} are left", i + 1, count, kind,
                       stored, body_end - pos));
    const auto data = view().subspan(pos, stored);
    if (xxh3(data) != sum) fail(fmt::format("corrupted: the checksum of section {} (kind {}) does not match", i + 1, kind));
    if (kind < 1 || kind > kSectionOrder.size())
      fail(fmt::format("unknown section kind {} (section {} of {}); this build knows kinds 1-{}", kind, i + 1, count,
                       kSectionOrder.size()));
    if (flags & ~kCompressed) fail(fmt::format("section {}: unknown flags {:#x}", i + 1, flags));
    sections.push_back({static_cast<Section>(kind), flags, raw, data});
    pos += stored;
  }
  if (pos != body_end)
    fail(fmt::format("corrupted: {} bytes between the last section and the file checksum", body_end - pos));
  ByteReader trailer(view().subspan(body_end), "trailer");
  if (trailer.get<std::uint64_t>("file checksum") != xxh3(view().first(body_end)))
    fail("corrupted: the file's checksum does not match");
  if (sections.size() != kSectionOrder.size())
    fail(fmt::format("{} sections; a snapshot has {}", sections.size(), kSectionOrder.size()));
  for (std::size_t i = 0; i < sections.size(); ++i)
    if (sections[i].kind != kSectionOrder[i])
      fail(fmt::format("section {} is {}, expected {}", i + 1, section_name(sections[i].kind),
                       section_name(kSectionOrder[i])));
  return sections;
}

void SnapshotReader::decode_section(const SectionView& section, MachineState& state) {
  if (section.flags & kCompressed) fail(fmt::format("section {} is compressed; only RAM is", section_name(section.kind)));
  if (section.raw_length != section.stored.size())
    fail(fmt::format("section {}: raw length {} does not match its {} stored bytes", section_name(section.kind),
                     section.raw_length, section.stored.size()));
  ByteReader r(section.stored, std::string(section_name(section.kind)) + " section");
  switch (section.kind) {
    case Section::Declaration: decode_declaration(r, state); break;
    case Section::CpuModel: decode_cpu_model(r, state); break;
    case Section::Vcpus: decode_vcpus(r, state); break;
    case Section::Devices: decode_devices(r, state); break;
    case Section::Ram: break;
  }
  r.expect_end();
}

std::unique_ptr<GuestRam> SnapshotReader::decode_ram(const SectionView& section) {
  if (!(section.flags & kCompressed)) fail("the RAM section is not compressed");
  ByteReader r(section.stored, "RAM section");
  const auto ram_size = r.get<std::uint64_t>("RAM size");
  if (ram_size < kMinRam || ram_size > kMaxRam || ram_size % kPage)
    fail(fmt::format("RAM section: a RAM of {} bytes is not 1 MiB-64 GiB in 4 KiB pages", ram_size));
  const std::uint64_t pages = ram_size / kPage;
  if (section.raw_length % kPageRecord || section.raw_length / kPageRecord > pages)
    fail(fmt::format("RAM section: {} bytes of page records do not fit a RAM of {} pages", section.raw_length, pages));
  const auto frame = section.stored.subspan(r.position());
  auto ram = std::make_unique<GuestRam>(ram_size);

  std::unique_ptr<ZSTD_DCtx, decltype(&ZSTD_freeDCtx)> dctx(ZSTD_createDCtx(), ZSTD_freeDCtx);
  if (!dctx) fail("cannot create a zstd decompressor");
  std::array<std::uint8_t, kPageRecord> record{};
  std::size_t filled = 0;
  std::uint64_t produced = 0;
  std::int64_t last_page = -1;
  ZSTD_inBuffer in{frame.data(), frame.size(), 0};
  std::size_t left = 1;
  while (left != 0) {
    ZSTD_outBuffer out{record.data() + filled, record.size() - filled, 0};
    left = ZSTD_decompressStream(dctx.get(), &out, &in);
    if (ZSTD_isError(left)) fail(std::string("RAM section: corrupted compressed data: ") + ZSTD_getErrorName(left));
    filled += out.pos;
    produced += out.pos;
    if (produced > section.raw_length) fail("RAM section: more page data than its raw length");
    if (filled == record.size()) {
      std::uint64_t page = 0;
      for (int i = 0; i < 8; ++i) page |= std::uint64_t{record[i]} << (8 * i);
      if (page >= pages) fail(fmt::format("RAM section: page {} is beyond the RAM's {} pages", page, pages));
      if (static_cast<std::int64_t>(page) <= last_page)
        fail(fmt::format("RAM section: page {} is out of order (after page {})", page, last_page));
      last_page = static_cast<std::int64_t>(page);
      std::memcpy(ram->host_base() + page * kPage, record.data() + 8, kPage);
      filled = 0;
    }
    if (left != 0 && in.pos == in.size && out.pos == 0) fail("RAM section: the compressed data ends early");
  }
  if (in.pos != in.size) fail("RAM section: bytes after the compressed data");
  if (produced != section.raw_length || filled != 0)
    fail(fmt::format("RAM section: {} bytes of page data, its header says {}", produced, section.raw_length));
  ram->take_host_dirty();  // restoring is not a guest write
  return ram;
}

// The restoring host presents each CPU model from its own table: the saved
// leaves must be exactly those (a guest that read other CPUID would break).
void SnapshotReader::check_cpu_model(const MachineState& state) const {
  const auto names = cpu_model_names();
  if (std::find(names.begin(), names.end(), state.cpu_model) == names.end())
    fail(fmt::format("the VM has CPU model '{}', which this host does not know (it presents: {})", state.cpu_model,
                     fmt::join(names, ", ")));
  if (state.cpu_model == "host") return;
  const api::CpuidTable here = cpu_model(state.cpu_model);
  auto same = [](const api::CpuidLeaf& a, const api::CpuidLeaf& b) {
    return a.function == b.function && a.index == b.index && a.indexed == b.indexed && a.eax == b.eax &&
           a.ebx == b.ebx && a.ecx == b.ecx && a.edx == b.edx;
  };
  if (here.size() != state.cpuid.size() || !std::equal(here.begin(), here.end(), state.cpuid.begin(), same))
    fail(fmt::format("the VM's CPU model {} has CPUID leaves that differ from what this host presents as {}",
                     state.cpu_model, state.cpu_model));
}

LoadedSnapshot SnapshotReader::read() {
  {
    std::ifstream in(file_, std::ios::binary);
    if (!in) fail("cannot open the file");
    bytes_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (in.bad()) fail("cannot read the file");
  }
  const auto sections = parse_layout();
  LoadedSnapshot out;
  try {
    for (const auto& s : sections)
      if (s.kind != Section::Ram) decode_section(s, out.state);
  } catch (const SnapshotError& e) {
    fail(e.what());
  }
  check_cpu_model(out.state);
  const auto& lapics = out.state.devices.find("lapic");
  if (lapics == out.state.devices.end() || !lapics->is_array() || lapics->size() != out.state.vcpus.size())
    fail(fmt::format("the device state's local APICs do not match its {} vCPUs", out.state.vcpus.size()));
  out.ram = decode_ram(sections.back());
  return out;
}

void put_section(ByteWriter& w, Section kind, std::uint32_t flags, std::span<const std::uint8_t> stored,
                 std::uint64_t raw_length) {
  w.put(static_cast<std::uint32_t>(kind));
  w.put(flags);
  w.put(static_cast<std::uint64_t>(stored.size()));
  w.put(raw_length);
  w.put(xxh3(stored));
  w.put_bytes(stored);
}

}  // namespace

void write_snapshot(const std::filesystem::path& file, const MachineState& state, const GuestRam& ram) {
  ByteWriter w;
  w.put_bytes(kMagic);
  w.put(kSnapshotFormat);
  w.put(static_cast<std::uint32_t>(kSectionOrder.size()));
  w.put(xxh3(w.bytes()));
  for (Section kind : {Section::Declaration, Section::CpuModel, Section::Vcpus, Section::Devices}) {
    ByteWriter section;
    switch (kind) {
      case Section::Declaration: encode_declaration(section, state); break;
      case Section::CpuModel: encode_cpu_model(section, state); break;
      case Section::Vcpus: encode_vcpus(section, state); break;
      default: encode_devices(section, state); break;
    }
    put_section(w, kind, 0, section.bytes(), section.bytes().size());
  }
  ByteWriter ram_section;
  ram_section.put(ram.size());
  std::uint64_t raw_length = 0;
  auto& guest = const_cast<GuestRam&>(ram);  // host_base() is not const in api::GuestMemory; only read here
  ram_section.put_bytes(compress_ram(guest.host_base(), ram.size(), raw_length));
  put_section(w, Section::Ram, kCompressed, ram_section.bytes(), raw_length);
  w.put(xxh3(w.bytes()));

  const std::filesystem::path temporary = file.string() + ".partial";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) throw SnapshotError(fmt::format("snapshot {}: cannot create {}", file.string(), temporary.string()));
    out.write(reinterpret_cast<const char*>(w.bytes().data()), static_cast<std::streamsize>(w.bytes().size()));
    out.flush();
    if (!out) {
      std::error_code ignored;
      std::filesystem::remove(temporary, ignored);
      throw SnapshotError(fmt::format("snapshot {}: cannot write {}", file.string(), temporary.string()));
    }
  }
  std::error_code ec;
  std::filesystem::rename(temporary, file, ec);
  if (ec) {
    std::filesystem::remove(temporary, ec);
    throw SnapshotError(fmt::format("snapshot {}: cannot move the written file into place", file.string()));
  }
}

LoadedSnapshot read_snapshot(const std::filesystem::path& file) { return SnapshotReader(file).read(); }

}  // namespace modevisor::host
