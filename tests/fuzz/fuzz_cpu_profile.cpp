// CPU profiles (configs/cpus/*.yaml).
#include "capabilities/cpu_profile.hpp"
#include "fuzz_support.hpp"

using namespace modevisor;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static fuzz::ScratchFile file{"cpu.yaml"};
  const auto& path = file.write({data, size});
  fuzz::expect_clear_error([&] { host::load_cpu_profile(path); });
  return 0;
}
