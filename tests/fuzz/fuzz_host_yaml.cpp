// Host configurations (configs/hosts/*.yaml).
#include <cstdlib>

#include "config/host_config.hpp"
#include "fuzz_support.hpp"

using namespace modevisor;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const bool env = ::setenv("MODEVISOR_PLUGIN_DIR", "/nonexistent-plugins", 1) == 0;
  (void)env;
  static fuzz::ScratchFile file{"host.yaml"};
  const auto& path = file.write({data, size});
  fuzz::expect_clear_error([&] { host::load_host_config(path); });
  return 0;
}
