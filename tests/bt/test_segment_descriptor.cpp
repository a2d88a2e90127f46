// The segment/gate descriptor unit on its own: decoding real descriptor
// encodings and the protection checks of segment loads, without a VM.
#include <gtest/gtest.h>

#include "segment_descriptor.hpp"

namespace modevisor::bt {
namespace {

// Builds a descriptor the way a guest's GDT holds it.
std::uint64_t descriptor(std::uint32_t base, std::uint32_t limit20, unsigned type, bool s, unsigned dpl, bool present,
                         bool db, bool g) {
  std::uint64_t d = limit20 & 0xffff;
  d |= static_cast<std::uint64_t>(base & 0xffffff) << 16;
  d |= static_cast<std::uint64_t>(type & 0xf) << 40;
  d |= static_cast<std::uint64_t>(s) << 44;
  d |= static_cast<std::uint64_t>(dpl & 3) << 45;
  d |= static_cast<std::uint64_t>(present) << 47;
  d |= static_cast<std::uint64_t>((limit20 >> 16) & 0xf) << 48;
  d |= static_cast<std::uint64_t>(db) << 54;
  d |= static_cast<std::uint64_t>(g) << 55;
  d |= static_cast<std::uint64_t>(base >> 24) << 56;
  return d;
}

TEST(BtSegmentDescriptor, DecodesFlatKernelCode) {
  // The classic flat ring-0 code descriptor.
  const api::Segment s = decode_segment_descriptor(0x00cf9a000000ffffull, 0x08);
  EXPECT_EQ(s.selector, 0x08);
  EXPECT_EQ(s.base, 0u);
  EXPECT_EQ(s.limit, 0xffffffffu);
  EXPECT_EQ(s.type, 0xau);
  EXPECT_TRUE(s.s);
  EXPECT_EQ(s.dpl, 0u);
  EXPECT_TRUE(s.present);
  EXPECT_TRUE(s.db);
  EXPECT_TRUE(s.g);
  EXPECT_FALSE(s.l);
}

TEST(BtSegmentDescriptor, DecodesSplitBaseAndByteGranularLimit) {
  const std::uint64_t raw = descriptor(0x12345678, 0x0abcd, 0x3, true, 3, true, true, false);
  const api::Segment s = decode_segment_descriptor(raw, 0x2b);
  EXPECT_EQ(s.base, 0x12345678u);
  EXPECT_EQ(s.limit, 0x0abcdu);
  EXPECT_EQ(s.dpl, 3u);
  EXPECT_EQ(s.type, 0x3u);
  EXPECT_FALSE(s.g);
}

TEST(BtSegmentDescriptor, LocatesInGdtAndLdtWithinLimits) {
  api::DescriptorTable gdtr;
  gdtr.base = 0x1000;
  gdtr.limit = 0x1f;  // four descriptors
  api::Segment ldtr;
  ldtr.unusable = true;
  auto at = locate_descriptor(0x18, gdtr, ldtr, 0x18);
  ASSERT_TRUE(at.ok());
  EXPECT_EQ(at.value(), 0x1018u);
  auto beyond = locate_descriptor(0x20, gdtr, ldtr, 0x20);
  ASSERT_FALSE(beyond.ok());
  EXPECT_EQ(beyond.fault(), Fault::gp(0x20));
  // An LDT selector while no LDT is loaded.
  auto no_ldt = locate_descriptor(0x0c, gdtr, ldtr, 0x0c);
  ASSERT_FALSE(no_ldt.ok());
  EXPECT_EQ(no_ldt.fault(), Fault::gp(0x0c));
  ldtr.unusable = false;
  ldtr.present = true;
  ldtr.base = 0x8000;
  ldtr.limit = 0xf;
  auto in_ldt = locate_descriptor(0x0f, gdtr, ldtr, 0x0c);
  ASSERT_TRUE(in_ldt.ok());
  EXPECT_EQ(in_ldt.value(), 0x8008u);
}

TEST(BtSegmentDescriptor, DataSegmentLoadChecksPrivilegeAndPresence) {
  const api::Segment user_data = decode_segment_descriptor(descriptor(0, 0xfffff, 0x3, true, 3, true, true, true), 0x23);
  EXPECT_FALSE(check_data_segment_load(user_data, 0x23, 3));
  EXPECT_FALSE(check_data_segment_load(user_data, 0x23, 0));
  const api::Segment kernel_data = decode_segment_descriptor(0x00cf93000000ffffull, 0x10);
  EXPECT_EQ(check_data_segment_load(kernel_data, 0x10, 3), Fault::gp(0x10));  // DPL < CPL
  EXPECT_EQ(check_data_segment_load(kernel_data, 0x13, 0), Fault::gp(0x10));  // DPL < RPL
  const api::Segment exec_only = decode_segment_descriptor(descriptor(0, 0xfffff, 0x8, true, 0, true, true, true), 0x08);
  EXPECT_EQ(check_data_segment_load(exec_only, 0x08, 0), Fault::gp(0x08));
  // A readable conforming code segment loads whatever its DPL.
  const api::Segment conforming = decode_segment_descriptor(descriptor(0, 0xfffff, 0xe, true, 0, true, true, true), 0x08);
  EXPECT_FALSE(check_data_segment_load(conforming, 0x0b, 3));
  const api::Segment absent = decode_segment_descriptor(descriptor(0, 0xfffff, 0x3, true, 3, false, true, true), 0x23);
  EXPECT_EQ(check_data_segment_load(absent, 0x23, 3), Fault::np(0x20));
  const api::Segment system = decode_segment_descriptor(descriptor(0, 0x67, 0x9, false, 3, true, false, false), 0x28);
  EXPECT_EQ(check_data_segment_load(system, 0x28, 0), Fault::gp(0x28));
}

TEST(BtSegmentDescriptor, StackSegmentLoadNeedsWritableDataAtCpl) {
  const api::Segment kstack = decode_segment_descriptor(0x00cf93000000ffffull, 0x10);
  EXPECT_FALSE(check_stack_segment_load(kstack, 0x10, 0));
  EXPECT_EQ(check_stack_segment_load(kstack, 0x13, 0), Fault::gp(0x10));  // RPL != CPL
  EXPECT_EQ(check_stack_segment_load(kstack, 0x10, 3), Fault::gp(0x10));  // DPL != CPL
  const api::Segment read_only = decode_segment_descriptor(descriptor(0, 0xfffff, 0x1, true, 0, true, true, true), 0x10);
  EXPECT_EQ(check_stack_segment_load(read_only, 0x10, 0), Fault::gp(0x10));
  const api::Segment absent = decode_segment_descriptor(descriptor(0, 0xfffff, 0x3, true, 0, false, true, true), 0x10);
  EXPECT_EQ(check_stack_segment_load(absent, 0x10, 0), Fault::ss(0x10));
  // The same faults on an interrupt's stack switch are #TS, absence stays #SS.
  EXPECT_EQ(check_interrupt_stack(read_only, 0x10, 0), Fault::ts(0x10));
  EXPECT_EQ(check_interrupt_stack(absent, 0x10, 0), Fault::ss(0x10));
  EXPECT_FALSE(check_interrupt_stack(kstack, 0x10, 0));
}

TEST(BtSegmentDescriptor, CodeAndFarTransferTargets) {
  const api::Segment kcode = decode_segment_descriptor(0x00cf9a000000ffffull, 0x08);
  EXPECT_FALSE(check_code_segment(kcode, 0x08));
  EXPECT_FALSE(check_far_transfer_target(kcode, 0x08, 0));
  EXPECT_EQ(check_far_transfer_target(kcode, 0x08, 3), Fault::gp(0x08));  // non-conforming: DPL must be CPL
  EXPECT_EQ(check_far_transfer_target(kcode, 0x0b, 0), Fault::gp(0x08));  // RPL > CPL
  const api::Segment conforming = decode_segment_descriptor(descriptor(0, 0xfffff, 0xe, true, 0, true, true, true), 0x08);
  EXPECT_FALSE(check_far_transfer_target(conforming, 0x0b, 3));
  const api::Segment data = decode_segment_descriptor(0x00cf93000000ffffull, 0x10);
  EXPECT_EQ(check_code_segment(data, 0x10), Fault::gp(0x10));
  const api::Segment absent = decode_segment_descriptor(descriptor(0, 0xfffff, 0xa, true, 0, false, true, true), 0x08);
  EXPECT_EQ(check_code_segment(absent, 0x08), Fault::np(0x08));
}

TEST(BtSegmentDescriptor, SystemDescriptorsForLldtAndLtr) {
  const api::Segment ldt = decode_segment_descriptor(descriptor(0x5000, 0xff, 0x2, false, 0, true, false, false), 0x30);
  EXPECT_FALSE(check_ldt_descriptor(ldt, 0x30));
  EXPECT_EQ(check_tss_descriptor(ldt, 0x30), Fault::gp(0x30));
  const api::Segment tss = decode_segment_descriptor(descriptor(0x6000, 0x67, 0x9, false, 0, true, false, false), 0x28);
  EXPECT_FALSE(check_tss_descriptor(tss, 0x28));
  EXPECT_EQ(tss.base, 0x6000u);
  EXPECT_EQ(tss.limit, 0x67u);
  const api::Segment busy = decode_segment_descriptor(descriptor(0x6000, 0x67, 0xb, false, 0, true, false, false), 0x28);
  EXPECT_EQ(check_tss_descriptor(busy, 0x28), Fault::gp(0x28));
  const api::Segment absent_tss = decode_segment_descriptor(descriptor(0x6000, 0x67, 0x9, false, 0, false, false, false), 0x28);
  EXPECT_EQ(check_tss_descriptor(absent_tss, 0x28), Fault::np(0x28));
}

TEST(BtSegmentDescriptor, DecodesInterruptAndTrapGates) {
  // 32-bit interrupt gate, DPL 0, handler 0x08:0xc0101234.
  const std::uint64_t raw = 0xc0108e0000081234ull;
  const GateDescriptor g = decode_gate_descriptor(raw);
  EXPECT_TRUE(g.interrupt_gate());
  EXPECT_TRUE(g.trap_or_interrupt_gate());
  EXPECT_TRUE(g.present);
  EXPECT_EQ(g.dpl, 0u);
  EXPECT_EQ(g.selector, 0x08);
  EXPECT_EQ(g.offset, 0xc0101234u);
  // A DPL-3 trap gate (INT 0x80 style).
  const GateDescriptor t = decode_gate_descriptor(0x0000ef0000080000ull);
  EXPECT_FALSE(t.interrupt_gate());
  EXPECT_TRUE(t.trap_or_interrupt_gate());
  EXPECT_EQ(t.dpl, 3u);
  EXPECT_TRUE(decode_gate_descriptor(0x0000850000280000ull).task_gate());
  EXPECT_EQ(idt_error_code(14, false), 14u * 8 + 3);
  EXPECT_EQ(idt_error_code(0x80, true), 0x80u * 8 + 2);
}

// A 32-bit call gate: selector, offset split in two, parameter count, and
// the checks of a far CALL/JMP through it and of the segment it names.
TEST(BtSegmentDescriptor, CallGatesDecodeAndCheckAsTheSdmSays) {
  const std::uint64_t raw = 0x1234ull | (0x08ull << 16) | (2ull << 32) | (0xecull << 40) | (0x0010ull << 48);
  const GateDescriptor g = decode_gate_descriptor(raw);
  EXPECT_EQ(g.type, 0x0cu);
  EXPECT_EQ(g.dpl, 3u);
  EXPECT_TRUE(g.present);
  EXPECT_EQ(g.selector, 0x08);
  EXPECT_EQ(g.offset, 0x00101234u);
  EXPECT_EQ(g.parameter_count, 2u);
  EXPECT_FALSE(check_call_gate(g, 0x33, 3));
  GateDescriptor kernel_only = g;
  kernel_only.dpl = 0;
  EXPECT_EQ(check_call_gate(kernel_only, 0x3b, 3), Fault::gp(0x38)) << "DPL < CPL";
  EXPECT_EQ(check_call_gate(kernel_only, 0x3b, 0), Fault::gp(0x38)) << "DPL < RPL";
  GateDescriptor absent = g;
  absent.present = false;
  EXPECT_EQ(check_call_gate(absent, 0x4b, 3), Fault::np(0x48));

  const api::Segment ring0_code = decode_segment_descriptor(descriptor(0, 0xfffff, 0xa, true, 0, true, true, true), 0x08);
  const api::Segment ring3_code = decode_segment_descriptor(descriptor(0, 0xfffff, 0xa, true, 3, true, true, true), 0x1b);
  const api::Segment conforming0 = decode_segment_descriptor(descriptor(0, 0xfffff, 0xe, true, 0, true, true, true), 0x08);
  const api::Segment data0 = decode_segment_descriptor(descriptor(0, 0xfffff, 0x2, true, 0, true, true, true), 0x10);
  EXPECT_FALSE(check_call_gate_target(ring0_code, 0x08, 3, true)) << "CALL inward";
  EXPECT_EQ(check_call_gate_target(ring0_code, 0x08, 3, false), Fault::gp(0x08)) << "JMP cannot change privilege";
  EXPECT_FALSE(check_call_gate_target(conforming0, 0x08, 3, false)) << "JMP to conforming code";
  EXPECT_FALSE(check_call_gate_target(ring0_code, 0x08, 0, false));
  EXPECT_EQ(check_call_gate_target(ring3_code, 0x1b, 0, true), Fault::gp(0x18)) << "outward";
  EXPECT_EQ(check_call_gate_target(data0, 0x10, 0, true), Fault::gp(0x10)) << "data";
  api::Segment absent_code = ring0_code;
  absent_code.present = false;
  EXPECT_EQ(check_call_gate_target(absent_code, 0x08, 3, true), Fault::np(0x08));
}

}  // namespace
}  // namespace modevisor::bt
