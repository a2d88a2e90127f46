// DR7's decoding (debug_registers.hpp): I/O breakpoint matches, the
// translator's instruction breakpoints and the DR6 bits they report.
#include <gtest/gtest.h>

#include <array>
#include <cstdint>

#include "debug_registers.hpp"

using modevisor::bt::BreakpointKind;
using modevisor::bt::CodeBreakpoints;
namespace dbg = modevisor::bt::debug_registers;

namespace {
using Regs = std::array<std::uint64_t, 8>;
constexpr std::uint32_t kDe = 1u << 3;

// DR7 with breakpoint i enabled locally, of `rw` kind and `len` encoding.
std::uint64_t dr7_with(unsigned i, unsigned rw, unsigned len) {
  return dbg::kDr7Fixed | (1ull << (2 * i)) | (std::uint64_t{rw} << (16 + 4 * i)) | (std::uint64_t{len} << (18 + 4 * i));
}
}  // namespace

TEST(DebugRegisters, DecodesEnableKindAndLength) {
  const std::uint64_t dr7 = dr7_with(2, 3, 3) | (2ull << 6);  // G3 too, as an instruction breakpoint
  EXPECT_TRUE(dbg::enabled(dr7, 2));
  EXPECT_TRUE(dbg::enabled(dr7, 3));
  EXPECT_FALSE(dbg::enabled(dr7, 0));
  EXPECT_EQ(dbg::kind(dr7, 2), BreakpointKind::DataReadWrite);
  EXPECT_EQ(dbg::kind(dr7, 3), BreakpointKind::Instruction);
  EXPECT_EQ(dbg::length(dr7, 2), 4u);
  EXPECT_EQ(dbg::length(dr7_with(0, 1, 1), 0), 2u);
  EXPECT_EQ(dbg::length(dr7_with(0, 1, 2), 0), 8u);
}

TEST(DebugRegisters, IoBreakpointsMatchOverlappingPortsOnlyWithCr4De) {
  Regs dr{};
  dr[1] = 0x80;
  dr[7] = dr7_with(1, 2, 0);  // one byte at 0x80
  EXPECT_EQ(dbg::io_hits(dr, kDe, 0x80, 1), 2u);
  EXPECT_EQ(dbg::io_hits(dr, 0, 0x80, 1), 0u);  // R/W 10 without CR4.DE: undefined, never matches
  EXPECT_EQ(dbg::io_hits(dr, kDe, 0x81, 1), 0u);
  EXPECT_EQ(dbg::io_hits(dr, kDe, 0x7f, 2), 2u);  // a word at 0x7f covers 0x80
  EXPECT_EQ(dbg::io_hits(dr, kDe, 0x7e, 2), 0u);
  dr[7] = dr7_with(1, 2, 1);  // two bytes: 0x80-0x81
  EXPECT_EQ(dbg::io_hits(dr, kDe, 0x81, 1), 2u);
  EXPECT_EQ(dbg::io_hits(dr, kDe, 0x82, 4), 0u);
  dr[7] &= ~3ull << 2;  // disabled
  EXPECT_EQ(dbg::io_hits(dr, kDe, 0x80, 1), 0u);
}

TEST(DebugRegisters, OnlyEnabledInstructionBreakpointsReachTheTranslator) {
  Regs dr{};
  dr[0] = 0x1000;
  dr[1] = 0x2000;
  dr[2] = 0x3000;
  dr[3] = 0x1000;
  dr[7] = dr7_with(0, 0, 0) | dr7_with(1, 1, 3) | dr7_with(2, 2, 0);  // DR3 not enabled
  const CodeBreakpoints c = CodeBreakpoints::from(dr);
  EXPECT_EQ(c.enabled, 1u);
  EXPECT_TRUE(c.at(0x1000));
  EXPECT_FALSE(c.at(0x2000));  // a data breakpoint
  EXPECT_FALSE(c.at(0x3000));  // an I/O breakpoint
  EXPECT_FALSE(c.at(0x1001));
  // DR6 reports every instruction-kind DRn at that address, DR3 included.
  EXPECT_EQ(CodeBreakpoints::hits(dr, 0x1000), 0x9u);
  EXPECT_FALSE(CodeBreakpoints::from(Regs{}).any());
}

TEST(DebugRegisters, DataBreakpointsCoverTheirAlignedRangeAndKind) {
  Regs dr{};
  dr[0] = 0x1003;  // LEN 4: the dword at 0x1000
  dr[1] = 0x2ffe;  // LEN 2, reads and writes: 0x2ffe-0x2fff
  dr[2] = 0x5000;  // an instruction breakpoint: not a data one
  dr[3] = 0x3ffc;  // LEN 8 across no page: 0x3ff8-0x3fff
  dr[7] = dr7_with(0, 1, 3) | dr7_with(1, 3, 1) | dr7_with(2, 0, 0) | dr7_with(3, 1, 2);
  const modevisor::bt::DataBreakpoints d = modevisor::bt::DataBreakpoints::from(dr);
  EXPECT_EQ(d.enabled, 0xbu);
  EXPECT_EQ(d.hits(0x1000, 1, true), 1u);
  EXPECT_EQ(d.hits(0x1000, 4, false), 0u);  // DR0 watches writes only
  EXPECT_EQ(d.hits(0x0ffe, 4, true), 1u);   // overlaps from below
  EXPECT_EQ(d.hits(0x1004, 4, true), 0u);
  EXPECT_EQ(d.hits(0x2ffc, 4, false), 2u);  // reads count for R/W 11
  EXPECT_EQ(d.hits(0x3000, 4, true), 0u);
  EXPECT_EQ(d.hits(0x3ffc, 4, true), 8u);
  EXPECT_EQ(d.hits(0x5000, 4, true), 0u);
  std::uint32_t pages[8];
  const unsigned n = d.pages(pages);
  ASSERT_EQ(n, 3u);
  EXPECT_EQ(pages[0], 0x1000u);
  EXPECT_EQ(pages[1], 0x2000u);
  EXPECT_EQ(pages[2], 0x3000u);
  dr[0] = 0x1ffe;
  dr[7] = dr7_with(0, 3, 3);  // LEN 4 aligns it to 0x1ffc: one page
  EXPECT_EQ(modevisor::bt::DataBreakpoints::from(dr).pages(pages), 1u);
}
