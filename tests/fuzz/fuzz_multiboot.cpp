// The multiboot loader on any image, command line and modules: a MultibootBoot
// or an InputError naming the kernel or module, and nothing written outside
// guest RAM (the RAM has guard regions on both sides).
//
// Input: u8 RAM size selector, u8 flags (bit 0: Plain memory map), u16 args
// length, u8 module count (0-3), per module u16 length, then the args, the
// modules' bytes and the kernel image (the rest).
#include <vector>

#include "fuzz_support.hpp"
#include "platform/multiboot_loader.hpp"

using namespace modevisor;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::uint64_t kRamSizes[] = {16u << 20, 2u << 20, (1u << 20) + (64u << 10), 64u << 10};
  static fuzz::GuardedRam* rams[4] = {};
  fuzz::Reader in{{data, size}};
  const unsigned ram_index = in.u(1) % 4;
  const std::uint32_t flags = in.u(1);
  const std::uint32_t args_len = in.u(2);
  const unsigned module_count = in.u(1) % 4;
  std::uint32_t module_len[3] = {};
  for (unsigned i = 0; i < module_count; ++i) module_len[i] = in.u(2);
  const auto args = in.take(args_len);
  std::vector<host::MultibootModuleImage> modules;
  for (unsigned i = 0; i < module_count; ++i) {
    const auto bytes = in.take(module_len[i]);
    modules.push_back({"mod" + std::to_string(i), i == 1 ? "arg=1" : "", {bytes.begin(), bytes.end()}});
  }
  const auto kernel = in.in;
  if (!rams[ram_index]) rams[ram_index] = new fuzz::GuardedRam(kRamSizes[ram_index]);
  fuzz::expect_clear_error([&] {
    host::load_multiboot(*rams[ram_index], "fuzz.elf", kernel, std::string(args.begin(), args.end()), modules,
                         (flags & 1) ? host::MultibootMemoryMap::Plain : host::MultibootMemoryMap::Qemu);
  });
  return 0;
}
