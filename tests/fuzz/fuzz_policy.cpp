// Selection policies (configs/policies/*.yaml).
#include "fuzz_support.hpp"
#include "selection/policy.hpp"

using namespace modevisor;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static fuzz::ScratchFile file{"policy.yaml"};
  const auto& path = file.write({data, size});
  fuzz::expect_clear_error([&] { host::load_policy(path); });
  return 0;
}
