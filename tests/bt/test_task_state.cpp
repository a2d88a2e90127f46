// The pure rules of hardware task switches (task_state.hpp): what each way of
// switching does with the busy bits, the back link and NT; the TSS layout;
// the checks on the target TSS and on the incoming task's segments.
#include <gtest/gtest.h>

#include "io_permission.hpp"
#include "segment_descriptor.hpp"
#include "task_state.hpp"

namespace modevisor::bt {
namespace {

api::Segment system_descriptor(unsigned type, unsigned dpl = 0, bool present = true) {
  api::Segment s;
  s.s = false;
  s.type = type;
  s.dpl = dpl;
  s.present = present;
  s.limit = 0x67;
  return s;
}
api::Segment segment(unsigned type, unsigned dpl, bool present = true) {
  api::Segment s;
  s.s = true;
  s.type = type;
  s.dpl = dpl;
  s.present = present;
  return s;
}

TEST(BtTaskState, EachWayOfSwitchingNestsAndMarksBusyAsTheSdmSays) {
  using K = TaskSwitchKind;
  EXPECT_FALSE(nests(K::Jump));
  EXPECT_TRUE(nests(K::Call));
  EXPECT_TRUE(nests(K::Interrupt));
  EXPECT_FALSE(nests(K::Return));
  EXPECT_TRUE(releases_old_task(K::Jump));
  EXPECT_FALSE(releases_old_task(K::Call));
  EXPECT_FALSE(releases_old_task(K::Interrupt));
  EXPECT_TRUE(releases_old_task(K::Return));
  EXPECT_TRUE(marks_new_task_busy(K::Jump));
  EXPECT_TRUE(marks_new_task_busy(K::Call));
  EXPECT_TRUE(marks_new_task_busy(K::Interrupt));
  EXPECT_FALSE(marks_new_task_busy(K::Return)) << "an IRET's target is busy already";
  // NT: cleared in the image IRET saves, set in the task a CALL/interrupt enters.
  EXPECT_EQ(outgoing_eflags(K::Return, 0x4202), 0x202u);
  EXPECT_EQ(outgoing_eflags(K::Call, 0x4202), 0x4202u);
  EXPECT_EQ(outgoing_eflags(K::Jump, 0x4202), 0x4202u);
  EXPECT_EQ(incoming_eflags(K::Call, 0x2), 0x4002u);
  EXPECT_EQ(incoming_eflags(K::Interrupt, 0x2), 0x4002u);
  EXPECT_EQ(incoming_eflags(K::Jump, 0x2), 0x2u);
  EXPECT_EQ(incoming_eflags(K::Return, 0x4002), 0x4002u) << "the returning-to task keeps its own NT";
}

TEST(BtTaskState, TssImageDecodesTheSdmOffsets) {
  std::array<std::uint8_t, Tss32::kMinimumLimit + 1> image{};
  auto put = [&](std::uint32_t at, std::uint32_t v) { std::memcpy(image.data() + at, &v, 4); };
  put(0x00, 0xffff0028);  // upper half of the link field is reserved
  put(0x1c, 0x123000);
  put(0x20, 0x100abc);
  put(0x24, 0x246);
  for (unsigned i = 0; i < 8; ++i) put(0x28 + 4 * i, 0x1000 + i);
  const std::uint16_t segs[6] = {0x10, 0x08, 0x18, 0x20, 0x2b, 0x33};
  for (unsigned i = 0; i < 6; ++i) put(0x48 + 4 * i, 0xabcd0000u | segs[i]);
  put(0x60, 0x50);
  put(0x64, 0x00680001);
  const Tss32 t = Tss32::decode(image);
  EXPECT_EQ(t.link, 0x28);
  EXPECT_EQ(t.cr3, 0x123000u);
  EXPECT_EQ(t.eip, 0x100abcu);
  EXPECT_EQ(t.eflags, 0x246u);
  for (unsigned i = 0; i < 8; ++i) EXPECT_EQ(t.gprs[i], 0x1000 + i);
  for (unsigned i = 0; i < 6; ++i) EXPECT_EQ(t.segments[i], segs[i]);
  EXPECT_EQ(t.ldt, 0x50);
  EXPECT_TRUE(t.trap);
  EXPECT_EQ(Tss32::kSavedEnd - Tss32::kSavedFirst, 0x40u) << "EIP, EFLAGS, 8 registers, 6 selectors";
}

// A 16-bit TSS: word fields; the upper halves of EFLAGS and the registers
// stay the current ones; no CR3; FS and GS null.
TEST(BtTaskState, SixteenBitTssDecodesWordsOverTheCurrentUpperHalves) {
  std::array<std::uint8_t, Tss32::kMinimumLimit + 1> image{};
  auto put = [&](std::uint32_t at, std::uint16_t v) { std::memcpy(image.data() + at, &v, 2); };
  put(0x00, 0x28);
  put(0x0e, 0x7123);
  put(0x10, 0x0246);
  for (unsigned i = 0; i < 8; ++i) put(0x12 + 2 * i, static_cast<std::uint16_t>(0x100 + i));
  const std::uint16_t segs[4] = {0x10, 0x08, 0x18, 0x20};
  for (unsigned i = 0; i < 4; ++i) put(0x22 + 2 * i, segs[i]);
  put(0x2a, 0x40);
  std::array<std::uint32_t, 8> current;
  for (unsigned i = 0; i < 8; ++i) current[i] = 0xabcd0000u + i;
  const Tss32 t = Tss16::decode(image, current, 0x00240202);
  EXPECT_EQ(t.link, 0x28);
  EXPECT_EQ(t.eip, 0x7123u);
  EXPECT_EQ(t.eflags, 0x00240246u);
  for (unsigned i = 0; i < 8; ++i) EXPECT_EQ(t.gprs[i], 0xabcd0100u + i);
  for (unsigned i = 0; i < 4; ++i) EXPECT_EQ(t.segments[i], segs[i]);
  EXPECT_EQ(t.segments[4], 0);
  EXPECT_EQ(t.segments[5], 0);
  EXPECT_EQ(t.ldt, 0x40);
  EXPECT_EQ(t.cr3, 0u);
  EXPECT_TRUE(is_32bit_tss(9) && is_32bit_tss(0xb));
  EXPECT_FALSE(is_32bit_tss(1) || is_32bit_tss(3));
  EXPECT_EQ(Tss16::kSavedEnd - Tss16::kSavedFirst, 0x1cu) << "IP, FLAGS, 8 registers, 4 selectors";
}

TEST(BtTaskState, TargetChecksGiveTheFaultsOfEachPath) {
  // JMP/CALL naming a TSS: available only, privilege against CPL and RPL.
  EXPECT_FALSE(check_task_jump_target(system_descriptor(9), 0x30, 0));
  EXPECT_EQ(check_task_jump_target(system_descriptor(0xb), 0x30, 0), Fault::gp(0x30)) << "busy";
  EXPECT_EQ(check_task_jump_target(system_descriptor(9, 0), 0x30, 3), Fault::gp(0x30)) << "DPL < CPL";
  EXPECT_EQ(check_task_jump_target(system_descriptor(9, 2), 0x33, 2), Fault::gp(0x30)) << "DPL < RPL";
  EXPECT_FALSE(check_task_jump_target(system_descriptor(9, 3), 0x33, 3));
  EXPECT_EQ(check_task_jump_target(system_descriptor(9, 0, false), 0x30, 0), Fault::np(0x30));
  EXPECT_EQ(check_task_jump_target(system_descriptor(2), 0x30, 0), Fault::gp(0x30)) << "an LDT";
  // Through a task gate (privilege was the gate's): GDT only, available, EXT kept.
  EXPECT_FALSE(check_task_gate_target(system_descriptor(9, 0), 0x30, 0));
  EXPECT_EQ(check_task_gate_target(system_descriptor(0xb), 0x30, 1), Fault::gp(0x31));
  EXPECT_EQ(check_task_gate_target(system_descriptor(9), 0x34, 0), Fault::gp(0x34)) << "local selector";
  EXPECT_EQ(check_task_gate_target(system_descriptor(9, 0, false), 0x30, 1), Fault::np(0x31));
  // IRET's back link: busy only, #TS otherwise.
  EXPECT_FALSE(check_task_return_target(system_descriptor(0xb), 0x28));
  EXPECT_EQ(check_task_return_target(system_descriptor(9), 0x28), Fault::ts(0x28)) << "not busy";
  EXPECT_EQ(check_task_return_target(system_descriptor(0xb, 0, false), 0x28), Fault::np(0x28));
}

TEST(BtTaskState, IncomingSegmentsFaultWithTs) {
  EXPECT_FALSE(check_task_code_segment(segment(0xb, 0), 0x08));
  EXPECT_EQ(check_task_code_segment(segment(0x3, 0), 0x08), Fault::ts(0x08)) << "data as CS";
  EXPECT_EQ(check_task_code_segment(segment(0xb, 0), 0x0b), Fault::ts(0x08)) << "nonconforming DPL != RPL";
  EXPECT_FALSE(check_task_code_segment(segment(0xf, 0), 0x0b)) << "conforming DPL <= RPL";
  EXPECT_EQ(check_task_code_segment(segment(0xb, 0, false), 0x08), Fault::np(0x08));
  EXPECT_FALSE(check_task_stack_segment(segment(0x3, 0), 0x10, 0));
  EXPECT_EQ(check_task_stack_segment(segment(0x1, 0), 0x10, 0), Fault::ts(0x10)) << "read-only";
  EXPECT_EQ(check_task_stack_segment(segment(0x3, 3), 0x13, 0), Fault::ts(0x10)) << "RPL != CPL";
  EXPECT_EQ(check_task_stack_segment(segment(0x3, 0, false), 0x10, 0), Fault::ss(0x10));
  EXPECT_FALSE(check_task_data_segment(segment(0x3, 3), 0x23, 3));
  EXPECT_EQ(check_task_data_segment(segment(0x3, 0), 0x10, 3), Fault::ts(0x10)) << "DPL < CPL";
  EXPECT_EQ(check_task_data_segment(segment(0x9, 0), 0x08, 0), Fault::ts(0x08)) << "execute-only code";
  EXPECT_EQ(check_task_data_segment(segment(0x3, 0, false), 0x10, 0), Fault::np(0x10));
  EXPECT_FALSE(check_task_ldt(system_descriptor(2), 0x50));
  EXPECT_EQ(check_task_ldt(system_descriptor(9), 0x50), Fault::ts(0x50));
  EXPECT_EQ(check_task_ldt(system_descriptor(2), 0x54), Fault::ts(0x54)) << "LDT selector in the LDT";
}

// The TSS I/O bitmap (io_permission.hpp): the word holding a port's bit must
// lie within the TSS limit; every bit of a multi-byte access must be clear.
TEST(BtIoPermission, BitmapWordsAndBits) {
  EXPECT_EQ(io_bitmap_word_offset(0x2068, 0x68, 0x80), std::optional<std::uint32_t>(0x68 + 0x10));
  EXPECT_EQ(io_bitmap_word_offset(0x68 + 0x11, 0x68, 0x80), std::optional<std::uint32_t>(0x78)) << "word just fits";
  EXPECT_EQ(io_bitmap_word_offset(0x68 + 0x10, 0x68, 0x80), std::nullopt) << "second byte beyond the limit";
  EXPECT_EQ(io_bitmap_word_offset(0x67, 0x68, 0), std::nullopt) << "no bitmap (base past the limit)";
  EXPECT_EQ(io_bitmap_word_offset(0xffff + 0x2000, 0xffff, 0xffff), std::optional<std::uint32_t>(0xffffu + 0x1fff))
      << "no 16-bit wrap-around";
  // Ports 0x70 and 0x71 allowed (bits 0 and 1 clear), 0x72 and up not.
  const std::uint16_t word = 0xfffc;
  EXPECT_TRUE(io_bits_allow(word, 0x70, 1));
  EXPECT_TRUE(io_bits_allow(word, 0x71, 1));
  EXPECT_TRUE(io_bits_allow(word, 0x70, 2));
  EXPECT_FALSE(io_bits_allow(word, 0x70, 4));
  EXPECT_FALSE(io_bits_allow(word, 0x72, 1));
  // An access crossing into the next byte uses the word's high byte.
  EXPECT_TRUE(io_bits_allow(0xfe7f, 0x7f, 2)) << "0x7f (bit 7) and 0x80 (bit 8, the high byte) clear";
  EXPECT_FALSE(io_bits_allow(0x0100, 0x7f, 2)) << "0x7f clear, 0x80 set";
}

}  // namespace
}  // namespace modevisor::bt
