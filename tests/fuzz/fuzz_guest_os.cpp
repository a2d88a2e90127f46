// The guest OS type table (configs/guest-os.yaml).
#include "fuzz_support.hpp"
#include "selection/guest_os.hpp"

using namespace modevisor;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static fuzz::ScratchFile file{"guest-os.yaml"};
  const auto& path = file.write({data, size});
  fuzz::expect_clear_error([&] { host::GuestOsTable::load(path); });
  return 0;
}
