// The Linux boot protocol loader on any image, command line and initrd: a
// LinuxBoot or an InputError naming the kernel or initrd, and nothing written
// outside guest RAM (the RAM has guard regions on both sides).
//
// Input: u8 RAM size selector, u16 command line length, u16 initrd length
// (in 16-byte units), then the command line, the initrd and the image (the rest).
#include "fuzz_support.hpp"
#include "platform/linux_loader.hpp"

using namespace modevisor;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::uint64_t kRamSizes[] = {32u << 20, 4u << 20, (1u << 20) + 4096, 0x21000};
  static fuzz::GuardedRam* rams[4] = {};
  fuzz::Reader in{{data, size}};
  const unsigned ram_index = in.u(1) % 4;
  const std::uint32_t cmdline_len = in.u(2);
  const std::uint32_t initrd_len = in.u(2) * 16;
  const auto cmdline = in.take(cmdline_len);
  const auto initrd = in.take(initrd_len);
  const auto kernel = in.in;
  if (!rams[ram_index]) rams[ram_index] = new fuzz::GuardedRam(kRamSizes[ram_index]);
  fuzz::expect_clear_error([&] {
    host::load_linux(*rams[ram_index], "fuzz-bzImage", kernel, std::string(cmdline.begin(), cmdline.end()),
                     initrd.empty() ? "" : "fuzz-initrd", initrd);
  });
  return 0;
}
