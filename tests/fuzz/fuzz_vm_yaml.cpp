// VM declarations (configs/vms/*.yaml): any bytes as a VM file give a VmConfig
// or an InputError naming file, line and column.
#include <cstdlib>

#include "config/vm_config.hpp"
#include "fuzz_support.hpp"
#include "selection/guest_os.hpp"

using namespace modevisor;

namespace {
struct Setup {
  // The shipped guest OS table; kernels resolve to the placeholder guests so
  // valid seeds get past the "kernel exists" check into the rest of the checks.
  Setup() { ::setenv("MODEVISOR_GUEST_DIR", MODEVISOR_FIXTURE_DIR "/guests-placeholder", 1); }
  host::GuestOsTable guest_os = host::GuestOsTable::load(MODEVISOR_CONFIG_DIR "/guest-os.yaml");
  fuzz::ScratchFile file{"vm.yaml"};
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Setup setup;
  const auto& path = setup.file.write({data, size});
  fuzz::expect_clear_error([&] { host::load_vm_config(path, setup.guest_os); });
  return 0;
}
