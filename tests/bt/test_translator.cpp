// Translator unit tests: block formation, re-encoding of memory operands,
// classification of special instructions, side tables.
#include <gtest/gtest.h>

#include <Zydis/Zydis.h>

#include <string>
#include <vector>

#include "translator.hpp"

using namespace modevisor::bt;

namespace {

std::vector<std::string> disasm64(const std::uint8_t* p, std::size_t n) {
  ZydisDecoder d;
  ZydisDecoderInit(&d, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
  ZydisFormatter f;
  ZydisFormatterInit(&f, ZYDIS_FORMATTER_STYLE_INTEL);
  std::vector<std::string> out;
  std::size_t off = 0;
  while (off < n) {
    ZydisDecodedInstruction insn;
    ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
    if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&d, p + off, n - off, &insn, ops))) {
      out.push_back("??");
      break;
    }
    char buf[128];
    ZydisFormatterFormatInstruction(&f, &insn, ops, insn.operand_count_visible, buf, sizeof buf,
                                    reinterpret_cast<std::uint64_t>(p + off), nullptr);
    out.emplace_back(buf);
    off += insn.length;
  }
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (auto& x : v) s += x + "\n";
  return s;
}

Block* translate(Translator& t, const std::vector<std::uint8_t>& code, std::uint32_t eip = 0x1000,
                 TranslateStatus* st = nullptr, TKey tkey = 0) {
  std::vector<std::uint8_t> buf(code);
  buf.resize(4096 - (eip & 0xfff), 0xcc);
  CodeWindow cw;
  cw.bytes = buf.data();
  cw.first_page_bytes = static_cast<std::uint32_t>(buf.size());
  cw.total = cw.first_page_bytes;
  cw.pa_page[0] = eip & ~0xfffu;
  Block* b = nullptr;
  TranslateStatus s = t.translate(eip, tkey, cw, &b);
  if (st) *st = s;
  return b;
}

}  // namespace

// Guest memory is [r12 + 32-bit offset], r12 the active region's base: a
// base register with a displacement directly, an index through an LEA.
TEST(BtTranslator, ReencodesMemoryOperandsAgainstTheRegionBaseRegister) {
  Translator t;
  // mov eax, [ebx+ecx*4+8]; mov [esp+4], edx; add dword [0x1234], 5; lea eax,[esp+8]; ret
  Block* b = translate(t, {0x8b, 0x44, 0x8b, 0x08, 0x89, 0x54, 0x24, 0x04, 0x83, 0x05, 0x34, 0x12, 0x00, 0x00,
                           0x05, 0x8d, 0x44, 0x24, 0x08, 0xc3});
  ASSERT_NE(b, nullptr);
  ASSERT_FALSE(b->special);
  EXPECT_EQ(b->n_insns, 5u);
  auto code = join(disasm64(b->entry, b->host_size - (b->entry - b->host)));
  EXPECT_NE(code.find("lea r13d, [ebx+ecx*4+0x08]\nmov eax, [r12+r13*1]"), std::string::npos) << code;
  EXPECT_NE(code.find("mov [r12+r14*1+0x04], edx"), std::string::npos) << code;
  EXPECT_NE(code.find("add dword ptr [r12+0x1234], 0x05"), std::string::npos) << code;
  EXPECT_EQ(code.find("gs:"), std::string::npos) << "no segment override: " << code;
  EXPECT_EQ(code.find("rip"), std::string::npos) << code;
  EXPECT_NE(code.find("lea eax, [r14d+0x08]"), std::string::npos) << code;
  EXPECT_NE(code.find("mov r13d, [r12+r14*1]"), std::string::npos) << code;
  EXPECT_EQ(code.find("??"), std::string::npos) << code;
}

TEST(BtTranslator, PrologueAndExitStubsDisassemble) {
  Translator t;
  Block* b = translate(t, {0x40, 0x75, 0xfd});  // inc eax; jnz -3
  ASSERT_NE(b, nullptr);
  auto code = join(disasm64(b->host, b->host_size));
  EXPECT_NE(code.find("mov r13d, [r15+0x1000]"), std::string::npos) << code;  // poll page
  EXPECT_NE(code.find("inc eax"), std::string::npos) << code;
  EXPECT_NE(code.find("jnz"), std::string::npos) << code;
  EXPECT_EQ(code.find("??"), std::string::npos) << code;
}

TEST(BtTranslator, SpecialInstructionsEndBlocks) {
  Translator t;
  TranslateStatus st;
  // cli in user-mode code as the first instruction: the whole "block" is the monitor's.
  Block* b = translate(t, {0xfa, 0x90}, 0x2000, &st, kTKeyUser);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(st, TranslateStatus::Special);
  EXPECT_TRUE(b->special);
  // At CPL 0, cli, pushfd, popfd and sti (followed by a plain instruction) are inline.
  b = translate(t, {0xfa, 0x9c, 0x9d, 0xfb, 0x90, 0xc3}, 0x2800, &st);
  EXPECT_EQ(st, TranslateStatus::Ok);
  EXPECT_EQ(b->n_insns, 6u);
  // sti; hlt keeps STI in the monitor (the shadow must cover the HLT).
  b = translate(t, {0xfb, 0xf4}, 0x2900, &st);
  EXPECT_EQ(st, TranslateStatus::Special);
  // nop; nop; out 0x80, al: two instructions translated, then an exit.
  b = translate(t, {0x90, 0x90, 0xe6, 0x80}, 0x3000, &st);
  EXPECT_EQ(st, TranslateStatus::Ok);
  EXPECT_EQ(b->n_insns, 2u);
  EXPECT_EQ(b->end_eip, 0x3002u);
  // pusha, daa, les, push ds, mov eax, cr0, rep movsb, int 0x80: all special
  for (std::vector<std::uint8_t> c : std::vector<std::vector<std::uint8_t>>{
           {0x60}, {0x27}, {0xc4, 0x06}, {0x1e}, {0x0f, 0x20, 0xc0}, {0xf3, 0xa4}, {0xcd, 0x80}, {0x9d}, {0xfb}, {0xcb}, {0xca, 0x04, 0x00},
           {0xea, 0, 0, 0, 0, 8, 0}, {0x9a, 0, 0, 0, 0, 8, 0}, {0xff, 0x18}, {0xff, 0x28}}) {
    b = translate(t, c, 0x4000 + 0x100 * c[0] + c.back(), &st, kTKeyUser);
    EXPECT_EQ(st, TranslateStatus::Special) << int(c[0]);
  }
}

TEST(BtTranslator, SideTableMapsHostPcToGuestEip) {
  Translator t;
  Block* b = translate(t, {0x01, 0xd8, 0x8b, 0x03, 0x29, 0xc8, 0xc3}, 0x5000);  // add; mov eax,[ebx]; sub; ret
  ASSERT_NE(b, nullptr);
  ASSERT_EQ(b->side.size(), 4u);
  EXPECT_EQ(b->side[1].second, 0x5002u);
  auto pc = reinterpret_cast<std::uintptr_t>(b->host) + b->side[1].first + 1;
  EXPECT_EQ(t.block_at(pc), b);
  EXPECT_EQ(t.guest_eip_at(b, pc), 0x5002u);
}

TEST(BtTranslator, UndefinedOpcodeFirstIsReported) {
  Translator t;
  TranslateStatus st;
  translate(t, {0xff, 0xff}, 0x6000, &st);
  EXPECT_EQ(st, TranslateStatus::Undefined);
}

TEST(BtTranslator, InvalidateByPhysicalPage) {
  Translator t;
  Block* b = translate(t, {0x90, 0xc3}, 0x7000);
  EXPECT_EQ(t.find(0x7000, 0x7000, 0), b);
  EXPECT_TRUE(t.invalidate_page(0x7000));
  EXPECT_EQ(t.find(0x7000, 0x7000, 0), nullptr);
  EXPECT_FALSE(b->valid);
}

TEST(BtTranslator, AbsoluteAddressesAboveTwoGigabytesStay32Bit) {
  Translator t;
  // mov ecx, [0xc0001000]; mov [0xfe000000], eax; ret
  Block* b = translate(t, {0x8b, 0x0d, 0x00, 0x10, 0x00, 0xc0, 0xa3, 0x00, 0x00, 0x00, 0xfe, 0xc3}, 0x8000);
  ASSERT_NE(b, nullptr);
  auto code = join(disasm64(b->entry, b->host_size - (b->entry - b->host)));
  EXPECT_NE(code.find("mov r13d, 0xC0001000"), std::string::npos) << code;
  EXPECT_NE(code.find("mov ecx, [r12+r13*1]"), std::string::npos) << code;
  EXPECT_EQ(code.find("0xFFFFFFFF"), std::string::npos) << code;
}

// A small displacement goes straight into the host operand (a sum that
// wraps lands in a region guard); a large negative one, as 32-bit kernels
// write addresses >= 2 GiB ([reg + 0xc0000000]), is summed by an LEA, which
// wraps at 4 GiB as the guest's CPU does.
TEST(BtTranslator, LargeNegativeDisplacementsAreSummedByAnLea) {
  Translator t;
  // mov eax, [ebp-8]; mov ecx, [ebx+0xc0000000]; ret
  Block* b = translate(t, {0x8b, 0x45, 0xf8, 0x8b, 0x8b, 0x00, 0x00, 0x00, 0xc0, 0xc3}, 0x8800);
  ASSERT_NE(b, nullptr);
  auto code = join(disasm64(b->entry, b->host_size - (b->entry - b->host)));
  EXPECT_NE(code.find("mov eax, [r12+rbp*1-0x08]"), std::string::npos) << code;
  EXPECT_NE(code.find("lea r13d, [ebx-0x40000000]\nmov ecx, [r12+r13*1]"), std::string::npos) << code;
}

TEST(BtTranslator, AddressSizePrefixMattersOnlyWithMemoryOperands) {
  Translator t;
  TranslateStatus st;
  Block* b = translate(t, {0x67, 0x97, 0xc3}, 0x9000, &st);  // addr16 xchg edi, eax: no address formed
  EXPECT_EQ(st, TranslateStatus::Ok);
  EXPECT_EQ(b->n_insns, 2u);
  translate(t, {0x67, 0x8b, 0x00}, 0x9100, &st);  // mov eax, [bx+si]: 16-bit addressing
  EXPECT_EQ(st, TranslateStatus::Special);
  translate(t, {0x67, 0x8d, 0x00}, 0x9200, &st);  // lea eax, [bx+si]
  EXPECT_EQ(st, TranslateStatus::Special);
}

// AH..BH cannot sit beside a REX prefix, which [r12 + ...] needs: the host
// address goes into a borrowed legacy register (EBP, else ESI or EDI).
TEST(BtTranslator, HighByteRegistersWithMemoryOperandsBorrowARegister) {
  Translator t;
  TranslateStatus st;
  // adc bh, [0x826feea7]; or fs:[esi-0x10], dh; mov ah, [esp+4]; ret
  Block* b = translate(t, {0x12, 0x3d, 0xa7, 0xee, 0x6f, 0x82, 0x64, 0x08, 0x76, 0xf0, 0x8a, 0x64, 0x24, 0x04, 0xc3},
                       0xa000, &st);
  ASSERT_EQ(st, TranslateStatus::Ok);
  EXPECT_EQ(b->n_insns, 4u);
  ASSERT_EQ(b->swaps.size(), 3u);
  EXPECT_FALSE(b->swaps[0].esp);
  EXPECT_FALSE(b->swaps[1].esp);
  EXPECT_FALSE(b->swaps[2].esp);
  EXPECT_EQ(b->swaps[1].reg, 5u);  // EBP: ESI is used by the instruction
  auto code = join(disasm64(b->entry, b->host_size - (b->entry - b->host)));
  EXPECT_NE(code.find("lea rbp, [r12+r13*1]\nadc bh, [rbp]"), std::string::npos) << code;
  EXPECT_NE(code.find("or [rbp], dh"), std::string::npos) << code;
  EXPECT_NE(code.find("lea rbp, [r12+r14*1+0x04]\nmov ah, [rbp]"), std::string::npos) << code;
  EXPECT_NE(code.find("mov r11, rbp"), std::string::npos) << "the guest's EBP meanwhile: " << code;
}

// A 16-bit operand size makes a near branch truncate EIP to 16 bits (and
// push/pop an IP word): left to the monitor; without it, translated.  So are
// STAC/CLAC (EFLAGS.AC picks the SMAP view).
TEST(BtTranslator, SixteenBitBranchesAndStacClacAreLeftToTheMonitor) {
  Translator t;
  TranslateStatus st;
  const std::vector<std::vector<std::uint8_t>> monitor = {
      {0x66, 0xe9, 0x00, 0x10},  // jmpw rel16
      {0x66, 0xe8, 0x00, 0x10},  // callw rel16
      {0x66, 0xc3},              // retw
      {0x66, 0x74, 0x10},        // o16 je rel8
      {0x66, 0xff, 0xe0},        // jmpw ax
      {0x0f, 0x01, 0xcb},        // stac
      {0x0f, 0x01, 0xca},        // clac
  };
  std::uint32_t at = 0xc000;
  for (const auto& bytes : monitor) {
    translate(t, bytes, at, &st);
    EXPECT_EQ(st, TranslateStatus::Special) << std::hex << int(bytes[1]);
    at += 0x100;
  }
  translate(t, {0x74, 0x10}, at, &st);  // je rel8
  EXPECT_EQ(st, TranslateStatus::Ok);
  translate(t, {0xe9, 0x00, 0x10, 0x00, 0x00}, at + 0x100, &st);  // jmp rel32
  EXPECT_EQ(st, TranslateStatus::Ok);
}

TEST(BtTranslator, VexEncodedInstructionsAreLeftToTheMonitor) {
  Translator t;
  TranslateStatus st;
  translate(t, {0xc5, 0xf8, 0x77}, 0xb000, &st);  // vzeroupper
  EXPECT_EQ(st, TranslateStatus::Special);
}

// ------------------------------------------------------- the segmented flavour

TEST(BtTranslatorSegmented, SixteenBitAddressesWrapAndAddTheSegmentBaseAtRunTime) {
  Translator t;
  // mov ax, [bx+si+4]; mov es:[di], cl; ret  (16-bit code)
  Block* b = translate(t, {0x8b, 0x40, 0x04, 0x26, 0x88, 0x0d, 0xc3}, 0x1000, nullptr,
                       kTKeySegmented | kTKeyCode16 | kTKeyStack16);
  ASSERT_NE(b, nullptr);
  const std::string code = join(disasm64(b->host, b->host_size));
  // The 16-bit offset: a 32-bit LEA zero-extended from 16 bits, then DS's base (Context::seg_base[3]).
  EXPECT_NE(code.find("lea r13d, [ebx+esi*1+0x04]"), std::string::npos) << code;
  EXPECT_NE(code.find("movzx r13d, r13w"), std::string::npos) << code;
  EXPECT_NE(code.find("mov r9d, [r15+0x90]"), std::string::npos) << code;
  EXPECT_NE(code.find("mov ax, [r12+r13*1]"), std::string::npos) << code;
  EXPECT_NE(code.find("mov r9d, [r15+0x78]"), std::string::npos) << "ES base: " << code;
  // RET: an IP word from SS:SP (SS base at seg_base[2]), only SP changes.
  EXPECT_NE(code.find("mov r9d, [r15+0x88]"), std::string::npos) << code;
  EXPECT_NE(code.find("movzx r11d, word ptr [r12+r9*1]"), std::string::npos) << code;
  EXPECT_NE(code.find("mov r14w, r13w"), std::string::npos) << code;
}

TEST(BtTranslatorSegmented, FlatCodeIsTranslatedAsBefore) {
  Translator t;
  // mov eax, [ebx+8]; push eax; ret
  Block* b = translate(t, {0x8b, 0x43, 0x08, 0x50, 0xc3});
  ASSERT_NE(b, nullptr);
  const std::string code = join(disasm64(b->host, b->host_size));
  EXPECT_NE(code.find("mov eax, [r12+rbx*1+0x08]"), std::string::npos) << code;
  EXPECT_EQ(code.find("r9"), std::string::npos) << "no segment base in flat code: " << code;
  EXPECT_EQ(code.find("movzx r13d"), std::string::npos) << code;
}

TEST(BtTranslatorSegmented, BlocksUnderACsBaseAreKeyedByItAndTheLookupKeyAddsIt) {
  Translator t;
  std::vector<std::uint8_t> buf(4096 - 0x10, 0xcc);
  buf[0] = 0xc3;  // ret
  CodeWindow cw;
  cw.cs_base = 0x12340;
  cw.bytes = buf.data();
  cw.first_page_bytes = static_cast<std::uint32_t>(buf.size());  // linear 0x12350 .. the page end
  cw.total = cw.first_page_bytes;
  cw.pa_page[0] = 0x12000;
  Block* b = nullptr;
  ASSERT_EQ(t.translate(0x10, kTKeySegmented | kTKeyCode16 | kTKeyStack16, cw, &b), TranslateStatus::Ok);
  EXPECT_EQ(b->linear(), 0x12350u);
  EXPECT_EQ(t.find(0x10, 0x12350, kTKeySegmented | kTKeyCode16 | kTKeyStack16, 0x12340), b);
  EXPECT_EQ(t.find(0x10, 0x12350, kTKeySegmented | kTKeyCode16 | kTKeyStack16, 0), nullptr);
  const std::string code = join(disasm64(b->host, b->host_size));
  // The RET's lookup key: EIP + cs_base * (2^32 + 1); on a miss the EIP again.
  EXPECT_NE(code.find("mov r11, 0x1234000012340"), std::string::npos) << code;
  EXPECT_NE(code.find("lea r13d, [r13-0x12340]"), std::string::npos) << code;
  EXPECT_EQ(fast_key(0x12340, 0x10), 0x0001234000012350ull);
  EXPECT_EQ(fast_key(0, 0x401000), 0x401000ull) << "flat code: the key is the EIP";
}

TEST(BtTranslatorSegmented, SixteenBitBranchTargetsWrapAt64KiB) {
  Translator t;
  // At IP 2: jmp short -8 -> (4 - 8) & 0xffff = 0xfffc, translated (not a monitor call).
  TranslateStatus st;
  Block* b = translate(t, {0xeb, 0xf8}, 2, &st, kTKeySegmented | kTKeyCode16);
  ASSERT_EQ(st, TranslateStatus::Ok);
  ASSERT_NE(b, nullptr);
  const std::string code = join(disasm64(b->host, b->host_size));
  EXPECT_NE(code.find("mov dword ptr [r15+0x58], 0xFFFC"), std::string::npos) << code;
}
