// BT64's translator against this host's own CPU: random 64-bit instruction
// sequences run natively and translated (guest memory mapped 1:1 through the
// slot table), registers, flags and memory compared.  And the confinement:
// guest addresses outside the mapped slots never reach host memory.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <Zydis/Zydis.h>

#include <array>
#include <csetjmp>
#include <csignal>
#include <optional>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bt64/context_block.hpp"
#include "bt64/translator64.hpp"
#include "bt64_flat_runner.hpp"
#include "emitter.hpp"
#include "encoder_operands.hpp"

namespace modevisor::bt::bt64 {
namespace {

using encode::I;
using encode::M;
using encode::R;


std::string describe(const State& s) {
  static const char* names[16] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                                  "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};
  std::string out;
  char line[64];
  for (int i = 0; i < 16; ++i) {
    std::snprintf(line, sizeof line, "%s=%016llx ", names[i], static_cast<unsigned long long>(s.gpr[i]));
    out += line;
  }
  std::snprintf(line, sizeof line, "flags=%03llx", static_cast<unsigned long long>(s.flags));
  return out + line;
}

// Memory below 2 GiB (MAP_32BIT): reachable by rel32 from code there, by
// absolute disp32 addressing, and by 32-bit address-size operands.
std::uint8_t* low_map(std::size_t bytes, int prot) {
  void* p = mmap(nullptr, bytes, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error("mmap MAP_32BIT");
  return static_cast<std::uint8_t*>(p);
}

// Runs code natively with every general register and the arithmetic flags
// taken from a State, and stores them back when the code jumps to exit().
class NativeRunner {
 public:
  NativeRunner() : page_(low_map(4096, PROT_READ | PROT_WRITE | PROT_EXEC)) {
    const auto slot = [&](int i) { return static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(page_) + 0x800 + 8 * i); };
    const std::int64_t host_rsp = slot(0), state_ptr = slot(1), tmp = slot(2), code_ptr = slot(3), flags = slot(4);
    Emitter e(page_, page_ + 0x800);
    const ZydisRegister saved[6] = {ZYDIS_REGISTER_RBX, ZYDIS_REGISTER_RBP, ZYDIS_REGISTER_R12,
                                    ZYDIS_REGISTER_R13, ZYDIS_REGISTER_R14, ZYDIS_REGISTER_R15};
    const ZydisRegister gpr[16] = {ZYDIS_REGISTER_RAX, ZYDIS_REGISTER_RCX, ZYDIS_REGISTER_RDX, ZYDIS_REGISTER_RBX,
                                   ZYDIS_REGISTER_RSP, ZYDIS_REGISTER_RBP, ZYDIS_REGISTER_RSI, ZYDIS_REGISTER_RDI,
                                   ZYDIS_REGISTER_R8,  ZYDIS_REGISTER_R9,  ZYDIS_REGISTER_R10, ZYDIS_REGISTER_R11,
                                   ZYDIS_REGISTER_R12, ZYDIS_REGISTER_R13, ZYDIS_REGISTER_R14, ZYDIS_REGISTER_R15};
    entry_ = e.pos();
    for (auto r : saved) e.ins(ZYDIS_MNEMONIC_PUSH, {R(r)});
    e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_NONE, host_rsp, 8), R(ZYDIS_REGISTER_RSP)});
    e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_NONE, state_ptr, 8), R(ZYDIS_REGISTER_RDI)});
    e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_NONE, code_ptr, 8), R(ZYDIS_REGISTER_RSI)});
    e.ins(ZYDIS_MNEMONIC_PUSH, {M(ZYDIS_REGISTER_RDI, offsetof(State, flags), 8)});
    e.ins(ZYDIS_MNEMONIC_POPFQ, {});
    for (int i = 0; i < 16; ++i)
      if (i != 4 && i != 7) e.ins(ZYDIS_MNEMONIC_MOV, {R(gpr[i]), M(ZYDIS_REGISTER_RDI, 8 * i, 8)});
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RSP), M(ZYDIS_REGISTER_RDI, 8 * 4, 8)});
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RDI), M(ZYDIS_REGISTER_RDI, 8 * 7, 8)});
    e.ins(ZYDIS_MNEMONIC_JMP, {M(ZYDIS_REGISTER_NONE, code_ptr, 8)});
    exit_ = e.pos();
    e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_NONE, tmp, 8), R(ZYDIS_REGISTER_RAX)});
    e.b(0x9f);  // lahf
    e.ins(ZYDIS_MNEMONIC_SETO, {R(ZYDIS_REGISTER_AL)});
    e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_NONE, flags, 2), R(ZYDIS_REGISTER_AX)});
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RAX), M(ZYDIS_REGISTER_NONE, state_ptr, 8)});
    for (int i = 1; i < 16; ++i) e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_RAX, 8 * i, 8), R(gpr[i])});
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RCX), M(ZYDIS_REGISTER_NONE, tmp, 8)});
    e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_RAX, 0, 8), R(ZYDIS_REGISTER_RCX)});
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RSP), M(ZYDIS_REGISTER_NONE, host_rsp, 8)});
    for (int i = 5; i >= 0; --i) e.ins(ZYDIS_MNEMONIC_POP, {R(saved[i])});
    e.ins(ZYDIS_MNEMONIC_RET, {});
    if (!e.ok()) throw std::runtime_error("native runner");
    flags_ = reinterpret_cast<std::uint16_t*>(page_ + 0x800 + 32);
  }
  ~NativeRunner() { munmap(page_, 4096); }
  const std::uint8_t* exit_address() const { return exit_; }
  void run(State& s, const std::uint8_t* code) {
    s.flags = (s.flags & kArithFlags) | 2;
    reinterpret_cast<void (*)(State*, const void*)>(entry_)(&s, code);
    const std::uint16_t ax = *flags_;
    s.flags = ((ax >> 8) & 0xd5) | (std::uint64_t(ax & 1) << 11) | 2;
  }

 private:
  std::uint8_t* page_;
  std::uint8_t* entry_ = nullptr;
  std::uint8_t* exit_ = nullptr;
  std::uint16_t* flags_ = nullptr;
};

// Assembles guest code into a buffer with Zydis' encoder (64-bit mode).
class Assembler {
 public:
  explicit Assembler(std::uint8_t* at, std::size_t size) : start_(at), p_(at), end_(at + size) {}
  std::uint8_t* pos() const { return p_; }
  bool ins(ZydisMnemonic m, std::initializer_list<encode::Op> ops, ZyanU8 operand_size_hint = 0) {
    ZydisEncoderRequest req;
    std::memset(&req, 0, sizeof req);
    req.machine_mode = ZYDIS_MACHINE_MODE_LONG_64;
    req.mnemonic = m;
    req.operand_count = static_cast<ZyanU8>(ops.size());
    int i = 0;
    for (auto& o : ops) req.operands[i++] = o.o;
    (void)operand_size_hint;
    ZyanUSize len = static_cast<ZyanUSize>(end_ - p_);
    if (!ZYAN_SUCCESS(ZydisEncoderEncodeInstruction(&req, p_, &len))) return false;
    p_ += len;
    return true;
  }
  void bytes(std::initializer_list<std::uint8_t> b) {
    for (auto v : b) *p_++ = v;
  }
  void rewind(std::uint8_t* to) { p_ = to; }
  std::uint8_t* start() const { return start_; }

 private:
  std::uint8_t* start_;
  std::uint8_t* p_;
  std::uint8_t* end_;
};

ZydisRegister reg(int index, unsigned bits) {
  static const ZydisRegister r64[16] = {ZYDIS_REGISTER_RAX, ZYDIS_REGISTER_RCX, ZYDIS_REGISTER_RDX, ZYDIS_REGISTER_RBX,
                                        ZYDIS_REGISTER_RSP, ZYDIS_REGISTER_RBP, ZYDIS_REGISTER_RSI, ZYDIS_REGISTER_RDI,
                                        ZYDIS_REGISTER_R8,  ZYDIS_REGISTER_R9,  ZYDIS_REGISTER_R10, ZYDIS_REGISTER_R11,
                                        ZYDIS_REGISTER_R12, ZYDIS_REGISTER_R13, ZYDIS_REGISTER_R14, ZYDIS_REGISTER_R15};
  static const ZydisRegister r32[16] = {ZYDIS_REGISTER_EAX, ZYDIS_REGISTER_ECX, ZYDIS_REGISTER_EDX, ZYDIS_REGISTER_EBX,
                                        ZYDIS_REGISTER_ESP, ZYDIS_REGISTER_EBP, ZYDIS_REGISTER_ESI, ZYDIS_REGISTER_EDI,
                                        ZYDIS_REGISTER_R8D, ZYDIS_REGISTER_R9D, ZYDIS_REGISTER_R10D, ZYDIS_REGISTER_R11D,
                                        ZYDIS_REGISTER_R12D, ZYDIS_REGISTER_R13D, ZYDIS_REGISTER_R14D, ZYDIS_REGISTER_R15D};
  static const ZydisRegister r16[16] = {ZYDIS_REGISTER_AX, ZYDIS_REGISTER_CX, ZYDIS_REGISTER_DX, ZYDIS_REGISTER_BX,
                                        ZYDIS_REGISTER_SP, ZYDIS_REGISTER_BP, ZYDIS_REGISTER_SI, ZYDIS_REGISTER_DI,
                                        ZYDIS_REGISTER_R8W, ZYDIS_REGISTER_R9W, ZYDIS_REGISTER_R10W, ZYDIS_REGISTER_R11W,
                                        ZYDIS_REGISTER_R12W, ZYDIS_REGISTER_R13W, ZYDIS_REGISTER_R14W, ZYDIS_REGISTER_R15W};
  static const ZydisRegister r8[16] = {ZYDIS_REGISTER_AL, ZYDIS_REGISTER_CL, ZYDIS_REGISTER_DL, ZYDIS_REGISTER_BL,
                                       ZYDIS_REGISTER_SPL, ZYDIS_REGISTER_BPL, ZYDIS_REGISTER_SIL, ZYDIS_REGISTER_DIL,
                                       ZYDIS_REGISTER_R8B, ZYDIS_REGISTER_R9B, ZYDIS_REGISTER_R10B, ZYDIS_REGISTER_R11B,
                                       ZYDIS_REGISTER_R12B, ZYDIS_REGISTER_R13B, ZYDIS_REGISTER_R14B, ZYDIS_REGISTER_R15B};
  switch (bits) {
    case 64: return r64[index];
    case 32: return r32[index];
    case 16: return r16[index];
    default: return r8[index];
  }
}

// Random sequences over all sixteen registers.  Two of them (RSP aside)
// point into the data buffer and are never written; memory operands are
// [pointer + disp] (64- or 32-bit address size), RIP-relative, or through
// RSP on the stack area.
class Generator {
 public:
  Generator(std::uint32_t seed, std::uint8_t* data) : rng_(seed), data_(data) {
    std::vector<int> pool = {0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    std::shuffle(pool.begin(), pool.end(), rng_);
    ptr_[0] = pool[0];
    ptr_[1] = pool[1];
  }

  State initial_state() {
    State s;
    for (int i = 0; i < 16; ++i) s.gpr[i] = value();
    s.gpr[4] = reinterpret_cast<std::uint64_t>(data_) + kStackTop;
    for (int p : ptr_) s.gpr[p] = reinterpret_cast<std::uint64_t>(data_) + kPointerAt;
    s.flags = rng_() & kArithFlags;
    return s;
  }

  // One instruction (or a small group) at the assembler's position.
  void emit(Assembler& a) {
    for (int attempt = 0; attempt < 20; ++attempt) {
      std::uint8_t* before = a.pos();
      if (emit_one(a)) return;
      a.rewind(before);
    }
    a.ins(ZYDIS_MNEMONIC_NOP, {});
  }

  static constexpr std::size_t kDataSize = 0x10000;
  static constexpr std::size_t kPointerAt = 0x1000;
  static constexpr std::size_t kStackTop = 0xf000;

 private:
  std::uint64_t value() {
    switch (rng_() % 6) {
      case 0: return rng_() % 64;
      case 1: return ~std::uint64_t{0} - rng_() % 4;
      case 2: return std::uint64_t{rng_()};
      case 3: return std::uint64_t{0x80000000} + rng_() % 4;
      case 4: return std::uint64_t{1} << (rng_() % 64);
      default: return (std::uint64_t{rng_()} << 32) | rng_();
    }
  }
  int data_reg() {  // any register but RSP and the pointers
    for (;;) {
      const int r = static_cast<int>(rng_() % 16);
      if (r != 4 && r != ptr_[0] && r != ptr_[1]) return r;
    }
  }
  int any_reg() {  // readable: anything but RSP
    for (;;) {
      const int r = static_cast<int>(rng_() % 16);
      if (r != 4) return r;
    }
  }
  unsigned width() {
    static const unsigned w[4] = {8, 16, 32, 64};
    return w[rng_() % 4];
  }
  encode::Op mem(unsigned bytes) {
    const std::int64_t disp = static_cast<std::int64_t>(rng_() % 0x1000) - 0x800;
    const int p = ptr_[rng_() % 2];
    if (rng_() % 5 == 0) return M(reg(p, 32), disp, bytes);  // 32-bit address size
    if (rng_() % 4 == 0) {
      // [pointer + other pointer * 0 ...]: an index that is a pointer minus itself is not expressible;
      // use the other pointer as base and a scaled small index from a fresh register value.
      return M(reg(p, 64), disp, bytes);
    }
    return M(reg(p, 64), disp, bytes);
  }
  encode::Op stack_mem(unsigned bytes) {
    return M(ZYDIS_REGISTER_RSP, static_cast<std::int64_t>(rng_() % 0x100) * 4, bytes);
  }
  encode::Op imm(unsigned bits) {
    const std::int64_t v = static_cast<std::int64_t>(value());
    if (bits == 8) return I(static_cast<std::int8_t>(v));
    if (bits == 16) return I(static_cast<std::int16_t>(v));
    return I(static_cast<std::int32_t>(v));
  }

  void emit_or_nop(Assembler& a) {
    std::uint8_t* before = a.pos();
    if (emit_one(a)) return;
    a.rewind(before);
    a.ins(ZYDIS_MNEMONIC_NOP, {});
  }

  bool emit_one(Assembler& a) {
    static const ZydisMnemonic alu[] = {ZYDIS_MNEMONIC_ADD, ZYDIS_MNEMONIC_OR,  ZYDIS_MNEMONIC_ADC,
                                        ZYDIS_MNEMONIC_SBB, ZYDIS_MNEMONIC_AND, ZYDIS_MNEMONIC_SUB,
                                        ZYDIS_MNEMONIC_XOR, ZYDIS_MNEMONIC_CMP, ZYDIS_MNEMONIC_TEST,
                                        ZYDIS_MNEMONIC_MOV, ZYDIS_MNEMONIC_XCHG};
    static const ZydisMnemonic shifts[] = {ZYDIS_MNEMONIC_SHL, ZYDIS_MNEMONIC_SHR, ZYDIS_MNEMONIC_SAR,
                                           ZYDIS_MNEMONIC_ROL, ZYDIS_MNEMONIC_ROR, ZYDIS_MNEMONIC_RCL,
                                           ZYDIS_MNEMONIC_RCR};
    static const ZydisMnemonic unary[] = {ZYDIS_MNEMONIC_INC, ZYDIS_MNEMONIC_DEC, ZYDIS_MNEMONIC_NEG,
                                          ZYDIS_MNEMONIC_NOT, ZYDIS_MNEMONIC_MUL, ZYDIS_MNEMONIC_IMUL};
    const unsigned w = width();
    const auto m_alu = alu[rng_() % std::size(alu)];
    switch (rng_() % 22) {
      case 0: case 1:
        return a.ins(m_alu, {R(reg(data_reg(), w)), R(reg(m_alu == ZYDIS_MNEMONIC_XCHG ? data_reg() : any_reg(), w))});
      case 2: return a.ins(m_alu == ZYDIS_MNEMONIC_XCHG ? ZYDIS_MNEMONIC_ADD : m_alu, {R(reg(data_reg(), w)), imm(w)});
      case 3: return a.ins(m_alu, {R(reg(data_reg(), w)), mem(w / 8)});
      case 4: return a.ins(m_alu, {mem(w / 8), R(reg(m_alu == ZYDIS_MNEMONIC_XCHG ? data_reg() : any_reg(), w))});
      case 5: return a.ins(m_alu == ZYDIS_MNEMONIC_XCHG ? ZYDIS_MNEMONIC_SUB : m_alu, {mem(w / 8), imm(w)});
      case 6: {
        const auto m = shifts[rng_() % std::size(shifts)];
        auto dst = rng_() % 3 == 0 ? mem(w / 8) : R(reg(data_reg(), w));
        if (rng_() % 2) return a.ins(m, {dst, I(static_cast<std::int64_t>(rng_() % 70))});
        return a.ins(m, {dst, R(ZYDIS_REGISTER_CL)});
      }
      case 7: {
        const auto m = unary[rng_() % std::size(unary)];
        auto dst = rng_() % 3 == 0 ? mem(w / 8) : R(reg(m == ZYDIS_MNEMONIC_MUL || m == ZYDIS_MNEMONIC_IMUL
                                                         ? any_reg() : data_reg(), w));
        if ((m == ZYDIS_MNEMONIC_MUL || m == ZYDIS_MNEMONIC_IMUL) && (ptr_[0] <= 2 || ptr_[1] <= 2)) return false;
        return a.ins(m, {dst});
      }
      case 8: {
        if (w == 8) return false;
        return a.ins(ZYDIS_MNEMONIC_IMUL, {R(reg(data_reg(), w)), rng_() % 2 ? R(reg(any_reg(), w)) : mem(w / 8)});
      }
      case 9: {
        const auto cc = static_cast<ZydisMnemonic>(ZYDIS_MNEMONIC_CMOVB + rng_() % 16);
        if (w == 8) return false;
        return a.ins(cc, {R(reg(data_reg(), w)), rng_() % 2 ? R(reg(any_reg(), w)) : mem(w / 8)});
      }
      case 10: {
        static const ZydisMnemonic setcc[] = {ZYDIS_MNEMONIC_SETB, ZYDIS_MNEMONIC_SETBE, ZYDIS_MNEMONIC_SETL,
                                              ZYDIS_MNEMONIC_SETLE, ZYDIS_MNEMONIC_SETNB, ZYDIS_MNEMONIC_SETNBE,
                                              ZYDIS_MNEMONIC_SETNL, ZYDIS_MNEMONIC_SETNLE, ZYDIS_MNEMONIC_SETNO,
                                              ZYDIS_MNEMONIC_SETNP, ZYDIS_MNEMONIC_SETNS, ZYDIS_MNEMONIC_SETNZ,
                                              ZYDIS_MNEMONIC_SETO, ZYDIS_MNEMONIC_SETP, ZYDIS_MNEMONIC_SETS,
                                              ZYDIS_MNEMONIC_SETZ};
        return a.ins(setcc[rng_() % 16], {rng_() % 2 ? R(reg(data_reg(), 8)) : mem(1)});
      }
      case 11: {
        // LEA with any base and index (no access).
        const int b = any_reg(), x = any_reg();
        const unsigned aw = rng_() % 4 == 0 ? 32 : 64;
        return a.ins(ZYDIS_MNEMONIC_LEA,
                     {R(reg(data_reg(), w == 8 ? 64 : w)),
                      M(reg(b, aw), static_cast<std::int32_t>(rng_()), 0, reg(x, aw), 1u << (rng_() % 4))});
      }
      case 12: {
        // PUSH/POP pairs and singles on the guest stack (not inside a
        // subroutine, whose RET needs the stack as its CALL left it).
        if (in_subroutine_) return false;
        switch (rng_() % 4) {
          case 0: return a.ins(ZYDIS_MNEMONIC_PUSH, {R(reg(any_reg(), 64))});
          case 1: return a.ins(ZYDIS_MNEMONIC_PUSH, {I(static_cast<std::int32_t>(value()))});
          case 2: return a.ins(ZYDIS_MNEMONIC_PUSH, {mem(8)});
          default: return a.ins(ZYDIS_MNEMONIC_POP, {R(reg(data_reg(), 64))});
        }
      }
      case 13: {
        // A stack access through RSP and a stack-relative add.
        return a.ins(m_alu == ZYDIS_MNEMONIC_XCHG ? ZYDIS_MNEMONIC_MOV : m_alu,
                     {R(reg(data_reg(), w)), stack_mem(w / 8)});
      }
      case 14: {
        static const ZydisMnemonic bits[] = {ZYDIS_MNEMONIC_BSF, ZYDIS_MNEMONIC_BSR, ZYDIS_MNEMONIC_BT,
                                             ZYDIS_MNEMONIC_BTS, ZYDIS_MNEMONIC_BTR, ZYDIS_MNEMONIC_BTC,
                                             ZYDIS_MNEMONIC_POPCNT, ZYDIS_MNEMONIC_LZCNT, ZYDIS_MNEMONIC_TZCNT};
        if (w == 8) return false;
        const auto m = bits[rng_() % std::size(bits)];
        if (m == ZYDIS_MNEMONIC_BT || m == ZYDIS_MNEMONIC_BTS || m == ZYDIS_MNEMONIC_BTR || m == ZYDIS_MNEMONIC_BTC)
          return a.ins(m, {R(reg(data_reg(), w)), rng_() % 2 ? R(reg(any_reg(), w)) : I(rng_() % 64)});
        return a.ins(m, {R(reg(data_reg(), w)), rng_() % 2 ? R(reg(any_reg(), w)) : mem(w / 8)});
      }
      case 15: {
        if (w < 32) return false;
        if (rng_() % 2) return a.ins(ZYDIS_MNEMONIC_BSWAP, {R(reg(data_reg(), w))});
        return a.ins(rng_() % 2 ? ZYDIS_MNEMONIC_MOVZX : ZYDIS_MNEMONIC_MOVSX,
                     {R(reg(data_reg(), w)), rng_() % 2 ? R(reg(any_reg(), 8)) : mem(2)});
      }
      case 16: {
        if (rng_() % 2) return a.ins(ZYDIS_MNEMONIC_MOVSXD, {R(reg(data_reg(), 64)), rng_() % 2 ? R(reg(any_reg(), 32)) : mem(4)});
        return a.ins(ZYDIS_MNEMONIC_MOV, {R(reg(data_reg(), 64)), I(static_cast<std::int64_t>(value()))});  // movabs
      }
      case 17: {
        if (rng_() % 2) return a.ins(ZYDIS_MNEMONIC_XADD, {mem(w / 8), R(reg(data_reg(), w))});
        if (ptr_[0] == 0 || ptr_[1] == 0) return false;  // CMPXCHG writes RAX
        return a.ins(ZYDIS_MNEMONIC_CMPXCHG, {mem(w / 8), R(reg(any_reg(), w))});
      }
      case 18: {
        // A forward conditional branch over the next instruction.
        static const ZydisMnemonic jcc_list[] = {
            ZYDIS_MNEMONIC_JB,  ZYDIS_MNEMONIC_JBE, ZYDIS_MNEMONIC_JL,  ZYDIS_MNEMONIC_JLE,
            ZYDIS_MNEMONIC_JNB, ZYDIS_MNEMONIC_JNBE, ZYDIS_MNEMONIC_JNL, ZYDIS_MNEMONIC_JNLE,
            ZYDIS_MNEMONIC_JNO, ZYDIS_MNEMONIC_JNP, ZYDIS_MNEMONIC_JNS, ZYDIS_MNEMONIC_JNZ,
            ZYDIS_MNEMONIC_JO,  ZYDIS_MNEMONIC_JP,  ZYDIS_MNEMONIC_JS,  ZYDIS_MNEMONIC_JZ};
        const auto cc = jcc_list[rng_() % 16];
        std::uint8_t* jcc = a.pos();
        if (!a.ins(cc, {I(0)})) return false;  // rel8 placeholder, patched below
        std::uint8_t* body = a.pos();
        emit_or_nop(a);
        const auto skip = a.pos() - body;
        if (skip > 127 || body - jcc != 2) return false;
        jcc[1] = static_cast<std::uint8_t>(skip);
        return true;
      }
      case 19: {
        // CALL to a subroutine right after a JMP over it; the subroutine ends with RET.
        std::uint8_t* call = a.pos();
        a.bytes({0xe8, 5, 0, 0, 0});  // call over the jmp below
        a.bytes({0xe9, 0, 0, 0, 0});  // jmp over the subroutine (patched)
        std::uint8_t* sub = a.pos();
        if (in_subroutine_) return false;
        in_subroutine_ = true;
        emit_or_nop(a);
        in_subroutine_ = false;
        if (rng_() % 2) a.bytes({0xc3});
        else a.bytes({0xc2, 0, 0});  // ret imm16 0
        const std::int32_t rel = static_cast<std::int32_t>(a.pos() - sub);
        std::memcpy(call + 6, &rel, 4);
        return true;
      }
      case 20: {
        // RIP-relative access into the data buffer, or an indirect jump to a
        // label formed by a RIP-relative LEA.
        if (rng_() % 2) {
          std::uint8_t* at = a.pos();
          const auto target = reinterpret_cast<std::int64_t>(data_) + 0x2000 + rng_() % 0x100;
          if (!a.ins(ZYDIS_MNEMONIC_MOV, {R(reg(data_reg(), w)), M(ZYDIS_REGISTER_RIP, 0x12345678, w / 8)})) return false;
          const auto len = a.pos() - at;
          const std::int32_t disp = static_cast<std::int32_t>(target - reinterpret_cast<std::int64_t>(a.pos()));
          a.rewind(at);
          if (!a.ins(ZYDIS_MNEMONIC_MOV, {R(reg(data_reg(), w)), M(ZYDIS_REGISTER_RIP, disp, w / 8)})) return false;
          return a.pos() - at == len;
        }
        const int r = data_reg();
        std::uint8_t* lea = a.pos();
        if (!a.ins(ZYDIS_MNEMONIC_LEA, {R(reg(r, 64)), M(ZYDIS_REGISTER_RIP, 0x1000, 8)})) return false;
        std::uint8_t* jmp = a.pos();
        if (!a.ins(ZYDIS_MNEMONIC_JMP, {R(reg(r, 64))})) return false;
        std::uint8_t* skipped = a.pos();
        a.ins(ZYDIS_MNEMONIC_INC, {R(reg(r, 64))});  // jumped over
        const std::int32_t disp = static_cast<std::int32_t>(a.pos() - jmp);
        std::memcpy(jmp - 4, &disp, 4);
        (void)lea;
        (void)skipped;
        return true;
      }
      default: {
        // High-byte registers (no memory operand beside them).
        static const ZydisRegister hi[] = {ZYDIS_REGISTER_AH, ZYDIS_REGISTER_CH, ZYDIS_REGISTER_DH,
                                           ZYDIS_REGISTER_BH};
        const ZydisRegister d = hi[rng_() % 4];
        if (ptr_[0] < 4 || ptr_[1] < 4) return false;  // AH..BH would change a pointer's bits 15:8
        ++high_byte_cases;
        const auto m = m_alu == ZYDIS_MNEMONIC_XCHG ? ZYDIS_MNEMONIC_ADD : m_alu;
        // Beside a memory operand (encodable only when the pointer needs no REX).
        if (rng_() % 2) return rng_() % 2 ? a.ins(m, {R(d), mem(1)}) : a.ins(m, {mem(1), R(d)});
        return a.ins(m, {R(d), R(rng_() % 2 ? hi[rng_() % 4] : reg(rng_() % 4, 8))});
      }
    }
  }

  std::mt19937 rng_;
  bool in_subroutine_ = false;

 public:
  int high_byte_cases = 0;

 private:
  std::uint8_t* data_;
  int ptr_[2];
};

class Bt64Differential : public ::testing::TestWithParam<int> {};

TEST_P(Bt64Differential, RandomSequencesMatchTheHostCpu) {
  NativeRunner native;
  TranslatedRunner translated;
  std::uint8_t* code = low_map(1 << 16, PROT_READ | PROT_WRITE | PROT_EXEC);
  std::uint8_t* data = low_map(Generator::kDataSize, PROT_READ | PROT_WRITE);
  std::vector<std::uint8_t> initial(Generator::kDataSize), after_native(Generator::kDataSize);
  const int batch = GetParam();
  int high_byte_cases = 0;
  for (int seq = 0; seq < 50; ++seq) {
    const std::uint32_t seed = static_cast<std::uint32_t>(batch * 1000 + seq);
    Generator gen(seed, data);
    Assembler a(code, 1 << 16);
    const int n = 10 + static_cast<int>(seed % 40);
    for (int i = 0; i < n; ++i) gen.emit(a);
    const auto end = reinterpret_cast<std::uint64_t>(a.pos());
    // The native run leaves through the harness's exit.
    a.bytes({0xe9, 0, 0, 0, 0});
    const std::int32_t rel = static_cast<std::int32_t>(native.exit_address() - a.pos());
    std::memcpy(a.pos() - 4, &rel, 4);

    std::mt19937 fill(seed);
    for (auto& b : initial) b = static_cast<std::uint8_t>(fill());
    const State start = gen.initial_state();

    std::memcpy(data, initial.data(), initial.size());
    State want = start;
    native.run(want, code);
    std::memcpy(after_native.data(), data, Generator::kDataSize);

    // Twice: cold (every branch through the dispatcher) and warm (chained
    // blocks, indirect-table hits).
    for (int round = 0; round < 2; ++round) {
      std::memcpy(data, initial.data(), initial.size());
      State got = start;
      const std::string err = translated.run(got, reinterpret_cast<std::uint64_t>(code), end);
      ASSERT_EQ(err, "") << "seed " << seed;
      ASSERT_EQ(describe(got), describe(want)) << "seed " << seed << " round " << round;
      ASSERT_EQ(0, std::memcmp(data, after_native.data(), Generator::kDataSize)) << "memory differs, seed " << seed;
    }
    translated.translator().flush();
    translated.block().clear_fast();
    high_byte_cases += gen.high_byte_cases;
  }
  // The rarest shape (AH..BH, some beside a memory operand) came up.
  EXPECT_GT(high_byte_cases, 0);
  munmap(code, 1 << 16);
  munmap(data, Generator::kDataSize);
}

INSTANTIATE_TEST_SUITE_P(Batches, Bt64Differential, ::testing::Range(0, 8));

}  // namespace
}  // namespace modevisor::bt::bt64

namespace modevisor::bt::bt64 {
namespace {

// Where a fault in translated code hit (recorded by a handler that jumps out).
struct FaultSeen {
  bool hit = false;
  std::uintptr_t address = 0;
  int code = 0;
};
sigjmp_buf g_probe_jmp;
FaultSeen g_fault;

void probe_handler(int, siginfo_t* info, void*) {
  g_fault.hit = true;
  g_fault.address = reinterpret_cast<std::uintptr_t>(info->si_addr);
  g_fault.code = info->si_code;
  siglongjmp(g_probe_jmp, 1);
}

// Runs `mov rax, [rbx]` translated with RBX = `address`; what RAX read, or
// the fault it took.
class ConfinementProbe {
 public:
  ConfinementProbe() : code_(low_map(4096, PROT_READ | PROT_WRITE | PROT_EXEC)) {
    Assembler a(code_, 4096);
    a.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RAX), M(ZYDIS_REGISTER_RBX, 0, 8)});
    end_ = reinterpret_cast<std::uint64_t>(a.pos());
  }
  ~ConfinementProbe() { munmap(code_, 4096); }
  TranslatedRunner& runner() { return runner_; }

  std::optional<std::uint64_t> load(std::uint64_t address) {
    struct sigaction sa = {}, old_segv = {}, old_bus = {};
    sa.sa_sigaction = probe_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
    g_fault = {};
    std::optional<std::uint64_t> result;
    State s;
    s.gpr[3] = address;
    s.gpr[4] = 0;
    if (sigsetjmp(g_probe_jmp, 1) == 0) {
      const std::string err = runner_.run(s, reinterpret_cast<std::uint64_t>(code_), end_);
      if (err.empty()) result = s.gpr[0];
    }
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    return result;
  }

 private:
  std::uint8_t* code_;
  std::uint64_t end_ = 0;
  TranslatedRunner runner_;
};

TEST(Bt64Confinement, AMappedSlotReachesItsHostWindow) {
  ConfinementProbe probe;
  std::vector<std::uint64_t> window(512);
  window[2] = 0x1122334455667788ull;
  // Guest slot 3 (3 GiB..4 GiB) -> the host vector.
  const std::uint64_t guest = 3ull << 30;
  probe.runner().block().set_slot(3, reinterpret_cast<std::uint64_t>(window.data()) - guest);
  EXPECT_EQ(probe.load(guest + 16), 0x1122334455667788ull);
  // High canonical addresses have slots of their own (a 64-bit kernel's).
  const std::uint64_t kernel = 0xffffffff80000000ull;
  probe.runner().block().set_slot(kernel >> kSlotShift, reinterpret_cast<std::uint64_t>(window.data()) - kernel);
  EXPECT_EQ(probe.load(kernel + 16), 0x1122334455667788ull);
}

TEST(Bt64Confinement, AnUnmappedSlotInABackedTablePageFaultsNonCanonical) {
  ConfinementProbe probe;
  // Slot 5 shares the table's first page with the test's slots 0 and 1.
  EXPECT_EQ(probe.load(5ull << 30), std::nullopt);
  ASSERT_TRUE(g_fault.hit);
  // The host's #GP (a non-canonical address): SIGSEGV with no address.
  EXPECT_EQ(g_fault.address, 0u);
  EXPECT_FALSE(probe.runner().block().is_table_miss(g_fault.address, nullptr));
}

TEST(Bt64Confinement, EveryOtherAddressFaultsOnTheSlotTable) {
  ConfinementProbe probe;
  const std::uint64_t mapped = reinterpret_cast<std::uint64_t>(&probe) & 0x3fffffffull;  // some offset in a slot
  const std::uint64_t cases[] = {
      (1ull << 46) + mapped,           // aliases of slot 0 in bits 46 and 47
      (1ull << 47) + mapped,           // non-canonical
      (3ull << 46) + mapped,
      0xffff800000000000ull + mapped,  // high canonical, no slot mapped
      0x8000000000000000ull,
      0xffffffffffffffffull,           // the last slot
      512ull << 30,                    // first slot of the table's second page
  };
  for (std::uint64_t la : cases) {
    SCOPED_TRACE(la);
    EXPECT_EQ(probe.load(la), std::nullopt);
    ASSERT_TRUE(g_fault.hit);
    std::uint64_t slot = 0;
    EXPECT_TRUE(probe.runner().block().is_table_miss(g_fault.address, &slot));
    EXPECT_EQ(slot, la >> kSlotShift);
  }
}

TEST(Bt64Confinement, SlotsAreSetClearedAndReadBack) {
  ContextBlock block;
  EXPECT_EQ(block.slot_bias(7), kGuardBias);
  block.set_slot(7, 0x1234000);
  EXPECT_EQ(block.slot_bias(7), 0x1234000u);
  EXPECT_EQ(block.slot_bias(8), kGuardBias);  // backed page, other entries guarded
  block.clear_slot(7);
  EXPECT_EQ(block.slot_bias(7), kGuardBias);
  block.set_slot(kSlotEntries - 1, 42);
  EXPECT_EQ(block.slot_bias(kSlotEntries - 1), 42u);
  block.clear_all_slots();
  EXPECT_EQ(block.slot_bias(kSlotEntries - 1), kGuardBias);
  EXPECT_THROW(block.set_slot(kSlotEntries, 0), std::out_of_range);
}

}  // namespace
}  // namespace modevisor::bt::bt64

namespace modevisor::bt::bt64 {
namespace {

// Far branches load CS (a mode change): never translated, in either flavour.
TEST(Bt64Translator, FarBranchesEndTheBlockForTheMonitor) {
  Translator64 tr;
  struct Case {
    std::vector<std::uint8_t> bytes;
    bool compat;
  };
  const Case cases[] = {
      {{0x50, 0xcb}, true},                    // push eax; retf
      {{0x50, 0x48, 0xcb}, false},             // push rax; retfq
      {{0x50, 0xff, 0x1d, 0, 0, 0, 0}, false}, // push rax; call far [rip]
      {{0x50, 0xea, 0, 0, 0, 0, 8, 0}, true},  // push eax; jmp far 0x8:0
  };
  for (const auto& c : cases) {
    Block64* b = nullptr;
    ASSERT_EQ(tr.translate(CodeBytes{0x1000, c.bytes.data(), c.bytes.size(), c.compat}, &b),
              Translate64Status::Ok);
    EXPECT_EQ(b->n_insns, 1u);  // the PUSH; the far branch is the monitor's
    EXPECT_EQ(b->end_rip, 0x1001u);
    Block64* far = nullptr;
    EXPECT_EQ(tr.translate(CodeBytes{0x1001, c.bytes.data() + 1, c.bytes.size() - 1, c.compat}, &far),
              Translate64Status::Special);
    tr.flush();
  }
}

}  // namespace
}  // namespace modevisor::bt::bt64
