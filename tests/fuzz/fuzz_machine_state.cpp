// encode_machine_state's payload (host/snapshot/vcpu_codec): what a
// migration's State message carries and a snapshot's sections hold, decoded
// by decode_machine_state.  Bad input ends in SnapshotError, never a crash,
// a sanitizer report or another exception; what decodes encodes again to
// the same bytes' meaning (decode(encode(decode(x))) == decode(x) on re-encoding).
//
// MODEVISOR_FUZZ_WRITE_SEEDS=DIR MODEVISOR_FUZZ_SNAPSHOT=FILE: writes the
// machine state of the snapshot FILE, encoded, to DIR.
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "fuzz_support.hpp"
#include "snapshot/snapshot.hpp"
#include "snapshot/vcpu_codec.hpp"

using namespace modevisor;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* dir = std::getenv("MODEVISOR_FUZZ_WRITE_SEEDS");
  const char* file = std::getenv("MODEVISOR_FUZZ_SNAPSHOT");
  if (dir && file) {
    const auto loaded = host::read_snapshot(file);
    const auto bytes = host::encode_machine_state(loaded.state);
    std::ofstream(std::string(dir) + "/saved-vm.state", std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const host::MachineState state = host::decode_machine_state({data, size});
    const auto again = host::encode_machine_state(state);
    const auto twice = host::encode_machine_state(host::decode_machine_state(again));
    if (again != twice) {
      std::fprintf(stderr, "fuzz: machine state does not survive encode/decode\n");
      std::abort();
    }
  } catch (const host::SnapshotError& e) {
    if (std::string(e.what()).empty()) std::abort();
  }
  return 0;
}
