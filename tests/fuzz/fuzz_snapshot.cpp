// Snapshot files (host/snapshot: read_snapshot, every section, the RAM
// pages, zstd) as a restore reads them.  Bad input ends in SnapshotError
// naming the file and the defect, never a crash, a sanitizer report or
// another exception.  The guest RAM a file declares is bounded by the
// reader before it allocates; -rss_limit_mb catches one that is not.
//
// Every section and the file carry XXH3 checksums, which would stop almost
// every mutation at the first check: when the input's first byte is odd,
// the target first recomputes the checksums of the rest (header, each
// section it can walk, the trailer), so mutations reach the section
// decoders; an even first byte passes the rest as it is.
//
// MODEVISOR_FUZZ_WRITE_SEEDS=DIR MODEVISOR_FUZZ_SNAPSHOT=FILE: writes FILE
// (a snapshot `vm save` wrote) to DIR, behind a selector byte of 1.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "fuzz_support.hpp"
#include "snapshot/snapshot.hpp"

using namespace modevisor;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* dir = std::getenv("MODEVISOR_FUZZ_WRITE_SEEDS");
  const char* file = std::getenv("MODEVISOR_FUZZ_SNAPSHOT");
  if (dir && file) {
    std::ifstream in(file, std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    std::ofstream(std::string(dir) + "/saved-vm.snap", std::ios::binary) << '\x01' << bytes.str();
    std::exit(0);
  }
  return 0;
}

namespace {

std::uint64_t load64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | p[i];
  return v;
}
void store64(std::uint8_t* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}

// The layout of host/snapshot/snapshot.hpp: header 24 bytes (sum at 16),
// sections of a 32-byte header (stored length at 8, sum at 24) and data,
// trailer 8 bytes.
void fix_checksums(std::vector<std::uint8_t>& f) {
  constexpr std::size_t kHeader = 24, kSection = 32, kTrailer = 8;
  if (f.size() < kHeader + kTrailer) return;
  store64(f.data() + 16, XXH3_64bits(f.data(), 16));
  const std::uint32_t count = f[12] | f[13] << 8 | f[14] << 16 | static_cast<std::uint32_t>(f[15]) << 24;
  const std::size_t body_end = f.size() - kTrailer;
  std::size_t pos = kHeader;
  for (std::uint32_t i = 0; i < count && body_end - pos >= kSection; ++i) {
    const std::uint64_t stored = load64(f.data() + pos + 8);
    if (stored > body_end - pos - kSection) break;
    store64(f.data() + pos + 24, XXH3_64bits(f.data() + pos + kSection, stored));
    pos += kSection + stored;
  }
  store64(f.data() + body_end, XXH3_64bits(f.data(), body_end));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static fuzz::ScratchFile file{"vm.snap"};
  if (size == 0) return 0;
  std::vector<std::uint8_t> bytes(data + 1, data + size);
  if (data[0] & 1) fix_checksums(bytes);
  const auto& path = file.write(bytes);
  try {
    host::LoadedSnapshot loaded = host::read_snapshot(path);
    (void)loaded;
  } catch (const host::SnapshotError& e) {
    if (std::string(e.what()).empty()) std::abort();
  }
  return 0;
}
