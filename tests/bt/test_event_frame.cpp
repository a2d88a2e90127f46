// Event-delivery frames and IRET's flag rules, without a VM.
#include <gtest/gtest.h>

#include "event_frame.hpp"

namespace modevisor::bt {
namespace {

using namespace eflags_bits;

TEST(BtEventFrame, SamePrivilegeInterruptGateWithoutErrorCode) {
  const EventFrame f = build_event_frame(EventFrameInput{0x202 | kTF | kRF, 0x08, 0xc0101000, false, 0, false, 0, 0, true});
  ASSERT_EQ(f.count, 3u);
  EXPECT_EQ(f.on_old_stack_info, 0u);
  EXPECT_EQ(f.words[0], 0x202u | kTF | kRF);  // EFLAGS as they were
  EXPECT_EQ(f.words[1], 0x08u);
  EXPECT_EQ(f.words[2], 0xc0101000u);
  EXPECT_EQ(f.new_eflags, 0x2u);  // IF, TF, RF cleared by an interrupt gate
}

TEST(BtEventFrame, TrapGateKeepsIfAndPushesTheErrorCodeLast) {
  const EventFrame f = build_event_frame(EventFrameInput{0x202 | kNT, 0x08, 0x1000, true, 0x1c, false, 0, 0, false});
  ASSERT_EQ(f.count, 4u);
  EXPECT_EQ(f.words[3], 0x1cu);
  EXPECT_EQ(f.new_eflags, 0x202u);  // IF stays, NT cleared
}

TEST(BtEventFrame, StackSwitchPushesTheOldStackFirst) {
  // A page fault from CPL 3 to a ring-0 handler.
  const EventFrame f =
      build_event_frame(EventFrameInput{0x3202, 0x1b, 0x08048000, true, 0x7, true, 0x23, 0xbffff000, true});
  ASSERT_EQ(f.count, 6u);
  EXPECT_EQ(f.on_old_stack_info, 2u);
  const std::uint32_t expected[6] = {0x23, 0xbffff000, 0x3202, 0x1b, 0x08048000, 0x7};
  for (unsigned i = 0; i < 6; ++i) EXPECT_EQ(f.words[i], expected[i]) << "word " << i;
  EXPECT_EQ(f.new_eflags, 0x3002u);  // IOPL kept, IF cleared
}

TEST(BtEventFrame, IretFlagsFollowCplAndIopl) {
  const std::uint32_t popped = 0x3202 | kNT | kRF | 0x80000000u;  // bit 31 is no flag
  // CPL 0 restores IOPL, IF, NT and RF, never reserved bits.
  EXPECT_EQ(iret_eflags(0x2, popped, 0), 0x3202u | kNT | kRF);
  // CPL 3 with IOPL 0: neither IOPL nor IF change.
  EXPECT_EQ(iret_eflags(0x2, popped, 3), 0x2u | kNT | kRF);
  // CPL 3 with IOPL 3: IF may change, IOPL still may not.
  EXPECT_EQ(iret_eflags(0x3002, 0x0202, 3), 0x3202u);
  // Arithmetic flags and DF always come from the frame.
  EXPECT_EQ(iret_eflags(0x2 | 0x8d5, 0x2 | 0x400, 3), 0x2u | 0x400u);
}

}  // namespace
}  // namespace modevisor::bt
