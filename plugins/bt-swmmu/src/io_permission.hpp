// The TSS I/O permission bitmap (SDM vol. 1 section 19.5.2): IN, OUT, INS and
// OUTS at CPL > IOPL may use ports [port, port + size) only when a 32-bit TSS
// is loaded and every bit for those ports in its bitmap is clear.  The bitmap
// starts at the TSS offset held at 0x66; the 16-bit word holding the port's
// first bit must lie within the TSS limit.  Pure rules; the vCPU reads.
#pragma once

#include <cstdint>
#include <optional>

namespace modevisor::bt {

inline constexpr std::uint32_t kTssIoMapBase = 0x66;

// The TSS offset of the 16-bit word holding `port`'s bit, or none when that
// word is not inside a TSS of limit `tss_limit` (then the access faults).
constexpr std::optional<std::uint32_t> io_bitmap_word_offset(std::uint32_t tss_limit, std::uint16_t iomap_base,
                                                             std::uint16_t port) {
  const std::uint32_t at = std::uint32_t{iomap_base} + port / 8u;
  if (at + 1 > tss_limit) return std::nullopt;
  return at;
}

// Whether the bits for `size` ports from `port` are all clear in `word`
// (the bitmap word at io_bitmap_word_offset).
constexpr bool io_bits_allow(std::uint16_t word, std::uint16_t port, unsigned size) {
  return ((word >> (port & 7u)) & ((1u << size) - 1)) == 0;
}

}  // namespace modevisor::bt
