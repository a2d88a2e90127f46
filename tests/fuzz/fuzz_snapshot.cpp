// Snapshot files (host/snapshot: read_snapshot, every section, the RAM
// pages, zstd) as a restore reads them.  Bad input ends in SnapshotError
// naming the file and the defect, never a crash, a sanitizer report or
// another exception.  The guest RAM a file declares is bounded by the
// reader before it allocates; -rss_limit_mb catches one that is not.
//
// MODEVISOR_FUZZ_WRITE_SEEDS=DIR MODEVISOR_FUZZ_SNAPSHOT=FILE: copies FILE
// (a snapshot `vm save` wrote) and variants with one section each changed to DIR.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

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
    std::ofstream(std::string(dir) + "/saved-vm.snap", std::ios::binary) << bytes.str();
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static fuzz::ScratchFile file{"vm.snap"};
  const auto& path = file.write({data, size});
  try {
    host::LoadedSnapshot loaded = host::read_snapshot(path);
    (void)loaded;
  } catch (const host::SnapshotError& e) {
    if (std::string(e.what()).empty()) std::abort();
  }
  return 0;
}
