// Differential testing at scale (a bench, not a test): random 32-bit
// instruction sequences run natively on this host's CPU (a persistent 32-bit
// helper, native32_server.c) and under the BT-swMMU translator; every
// sequence's registers and arithmetic flags, and each program's scratch
// memory, must match.  Reports sequences, instructions and divergences.
//
//   bt_diff_bench [--sequences N] [--seed S] [--per-program K] [--show D] [--no-bcd | --bcd-raw] [--only P]
//
// AAA/AAS/DAA/DAS/AAM/AAD are invalid in 64-bit mode, so the engine emulates
// them, and the flags the SDM leaves undefined after them need not match this
// CPU's.  By default each is followed by code that clears those flags on both
// sides (pushfd; and [esp], ~undefined; popfd), so only defined results are
// compared; --bcd-raw compares this CPU's undefined flags too, --no-bcd
// leaves the BCD instructions out.
//
// Unlike test_diff.cpp (hand-written templates), instructions come from
// random bytes: decoded with Zydis in 32-bit mode, kept when they are
// user-mode integer instructions of the P6 ISA (ALU, shifts, bit ops, moves,
// cmov/setcc, conversions, flag ops, BCD, cmpxchg/xadd/cmpxchg8b, NOPs, LEA)
// without branches, stack, I/O, segment or system effects; every memory
// operand is re-encoded to an absolute address in the scratch buffer.  So odd
// encodings (prefix mixes, 16-bit forms, redundant forms) reach the
// translator too.  Division by a nonzero register comes from a template.
// Each sequence starts from random registers and flags and ends in a
// checkpoint that stores EAX..EDI and EFLAGS; a program chains K sequences.
// A quarter of the programs run with 32-bit paging on (the scratch buffer's
// pages backed elsewhere, A/D bits clear), all at CPL 3.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <Zydis/Zydis.h>

#include <condition_variable>
#include <mutex>
#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bt_test_support.hpp"
#include "encoder_operands.hpp"
#include "vcpu.hpp"

using namespace bttest;
using modevisor::bt::Vcpu;
using modevisor::bt::encode::I;
using modevisor::bt::encode::M;
using modevisor::bt::encode::Op;
using modevisor::bt::encode::R;

namespace {

// Must match native32_server.c.
constexpr std::uint32_t kCode = 0x100000, kCodeSize = 0x40000, kScratch = 0x200000, kScratchSize = 0x4000;
constexpr std::uint32_t kOut = 0x210000, kReturn = 0x21fff0, kStackTop = 0x2f8000;
constexpr std::uint32_t kCheckpoint = 0x40;  // bytes per sequence: 8 registers, EFLAGS
constexpr std::uint32_t kPagedScratchPa = 0x380000, kPd = 0x3f0000, kPt = 0x3f1000;
constexpr std::uint32_t kFlagsMask = 0xcd5;  // CF PF AF ZF SF OF DF

struct Asm32 {
  std::vector<std::uint8_t> code;
  bool ins(ZydisMnemonic m, std::initializer_list<Op> ops) {
    ZydisEncoderRequest req;
    std::memset(&req, 0, sizeof req);
    req.machine_mode = ZYDIS_MACHINE_MODE_LEGACY_32;
    req.mnemonic = m;
    req.operand_count = static_cast<ZyanU8>(ops.size());
    int i = 0;
    for (auto& o : ops) req.operands[i++] = o.o;
    return encode(req);
  }
  bool encode(const ZydisEncoderRequest& req) {
    std::uint8_t buf[ZYDIS_MAX_INSTRUCTION_LENGTH];
    ZyanUSize len = sizeof buf;
    if (!ZYAN_SUCCESS(ZydisEncoderEncodeInstruction(&req, buf, &len))) return false;
    code.insert(code.end(), buf, buf + len);
    return true;
  }
  void bytes(std::initializer_list<std::uint8_t> b) { code.insert(code.end(), b); }
};

const ZydisRegister kR32[] = {ZYDIS_REGISTER_EAX, ZYDIS_REGISTER_ECX, ZYDIS_REGISTER_EDX, ZYDIS_REGISTER_EBX,
                              ZYDIS_REGISTER_ESP, ZYDIS_REGISTER_EBP, ZYDIS_REGISTER_ESI, ZYDIS_REGISTER_EDI};

bool allowed_category(ZydisInstructionCategory c) {
  switch (c) {
    case ZYDIS_CATEGORY_BINARY: case ZYDIS_CATEGORY_LOGICAL: case ZYDIS_CATEGORY_SHIFT:
    case ZYDIS_CATEGORY_ROTATE: case ZYDIS_CATEGORY_BITBYTE: case ZYDIS_CATEGORY_DATAXFER:
    case ZYDIS_CATEGORY_CMOV: case ZYDIS_CATEGORY_SETCC: case ZYDIS_CATEGORY_CONVERT:
    case ZYDIS_CATEGORY_FLAGOP: case ZYDIS_CATEGORY_DECIMAL: case ZYDIS_CATEGORY_SEMAPHORE:
    case ZYDIS_CATEGORY_NOP: case ZYDIS_CATEGORY_WIDENOP:
      return true;
    default:
      return false;
  }
}

class Generator {
 public:
  Generator(std::uint64_t seed, bool bcd, bool bcd_raw) : rng_(seed), bcd_(bcd), bcd_raw_(bcd_raw) {
    ZydisDecoderInit(&dec_, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32);
  }
  std::uint32_t u(std::uint32_t lo, std::uint32_t hi) { return std::uniform_int_distribution<std::uint32_t>(lo, hi)(rng_); }

  // One random instruction that passes the filter, appended to `a`.
  void instruction(Asm32& a) {
    if (u(0, 40) == 0) return division(a);
    for (;;) {
      ++tried_;
      std::uint8_t raw[ZYDIS_MAX_INSTRUCTION_LENGTH];
      for (auto& b : raw) b = static_cast<std::uint8_t>(u(0, 255));
      // Bias towards one-byte opcodes and ModRM forms of the classic ALU map.
      if (u(0, 1)) raw[0] = static_cast<std::uint8_t>(u(0, 0x3f) | (u(0, 3) == 0 ? 0x80 : 0));
      ZydisDecodedInstruction insn;
      ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
      if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&dec_, raw, sizeof raw, &insn, ops))) continue;
      if (!acceptable(insn, ops)) continue;
      if (!has_memory_access(insn, ops)) {
        a.code.insert(a.code.end(), raw, raw + insn.length);
        clear_undefined_flags(a, insn);
        return;
      }
      ZydisEncoderRequest req;
      if (!ZYAN_SUCCESS(ZydisEncoderDecodedInstructionToEncoderRequest(&insn, ops, insn.operand_count_visible, &req)))
        continue;
      req.prefixes &= ~static_cast<ZyanU64>(ZYDIS_ATTRIB_HAS_SEGMENT);  // FS/GS differ between the two sides
      for (unsigned i = 0; i < req.operand_count; ++i) {
        auto& o = req.operands[i];
        if (o.type != ZYDIS_OPERAND_TYPE_MEMORY) continue;
        o.mem.base = o.mem.index = ZYDIS_REGISTER_NONE;
        o.mem.scale = 0;
        o.mem.displacement = kScratch + u(0, kScratchSize - 16);
      }
      req.address_size_hint = ZYDIS_ADDRESS_SIZE_HINT_32;
      if (a.encode(req)) return;
    }
  }
  std::uint64_t tried() const { return tried_; }

 private:
  bool acceptable(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops) {
    if (!allowed_category(insn.meta.category)) return false;
    // P6 integer ISA only: no VEX/EVEX/XOP forms and no SSE/MMX conversions
    // with a GPR operand (the engine's CPU model has no AVX: its #UD is right).
    if (insn.encoding != ZYDIS_INSTRUCTION_ENCODING_LEGACY) return false;
    switch (insn.meta.isa_set) {
      case ZYDIS_ISA_SET_I86: case ZYDIS_ISA_SET_I186: case ZYDIS_ISA_SET_I286REAL: case ZYDIS_ISA_SET_I386:
      case ZYDIS_ISA_SET_I486REAL: case ZYDIS_ISA_SET_PENTIUMREAL: case ZYDIS_ISA_SET_PPRO:
      case ZYDIS_ISA_SET_CMOV: case ZYDIS_ISA_SET_LAHF: case ZYDIS_ISA_SET_FAT_NOP:
        break;
      default:
        return false;
    }
    if (!bcd_ && insn.meta.category == ZYDIS_CATEGORY_DECIMAL) return false;
    switch (insn.mnemonic) {  // within the categories: stack, flags image, faults, models
      case ZYDIS_MNEMONIC_PUSHFD: case ZYDIS_MNEMONIC_POPFD: case ZYDIS_MNEMONIC_PUSHF: case ZYDIS_MNEMONIC_POPF:
      case ZYDIS_MNEMONIC_CLI: case ZYDIS_MNEMONIC_STI: case ZYDIS_MNEMONIC_CLAC: case ZYDIS_MNEMONIC_STAC:
      case ZYDIS_MNEMONIC_DIV: case ZYDIS_MNEMONIC_IDIV: case ZYDIS_MNEMONIC_AAM:
      case ZYDIS_MNEMONIC_XLAT: case ZYDIS_MNEMONIC_MOVBE: case ZYDIS_MNEMONIC_CMPXCHG16B:
        return false;
      default: break;
    }
    if (insn.attributes & ZYDIS_ATTRIB_HAS_LOCK && !has_memory_access(insn, ops)) return false;
    for (unsigned i = 0; i < insn.operand_count; ++i) {
      const auto& o = ops[i];
      if (o.type == ZYDIS_OPERAND_TYPE_REGISTER) {
        const ZydisRegisterClass c = ZydisRegisterGetClass(o.reg.value);
        if (c == ZYDIS_REGCLASS_FLAGS || c == ZYDIS_REGCLASS_IP) continue;
        if (c != ZYDIS_REGCLASS_GPR8 && c != ZYDIS_REGCLASS_GPR16 && c != ZYDIS_REGCLASS_GPR32) return false;
        const bool esp = o.reg.value == ZYDIS_REGISTER_ESP || o.reg.value == ZYDIS_REGISTER_SP;
        if (esp && (o.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE)) return false;
      } else if (o.type == ZYDIS_OPERAND_TYPE_MEMORY) {
        if (o.mem.type == ZYDIS_MEMOP_TYPE_AGEN) continue;  // LEA-like: no access
        if (o.visibility != ZYDIS_OPERAND_VISIBILITY_EXPLICIT) return false;  // stack, strings
        if (o.size == 0 || o.size > 64) return false;
        if (o.mem.segment != ZYDIS_REGISTER_DS && o.mem.segment != ZYDIS_REGISTER_SS &&
            o.mem.segment != ZYDIS_REGISTER_ES && o.mem.segment != ZYDIS_REGISTER_CS &&
            o.mem.segment != ZYDIS_REGISTER_FS && o.mem.segment != ZYDIS_REGISTER_GS)
          return false;
      } else if (o.type == ZYDIS_OPERAND_TYPE_POINTER) {
        return false;
      }
    }
    // A bit test with a register offset addresses memory outside the operand.
    const bool bit_test = insn.mnemonic == ZYDIS_MNEMONIC_BT || insn.mnemonic == ZYDIS_MNEMONIC_BTS ||
                          insn.mnemonic == ZYDIS_MNEMONIC_BTR || insn.mnemonic == ZYDIS_MNEMONIC_BTC;
    if (bit_test && ops[0].type == ZYDIS_OPERAND_TYPE_MEMORY && ops[1].type == ZYDIS_OPERAND_TYPE_REGISTER)
      return false;
    return true;
  }
  // After an emulated BCD instruction (--bcd-raw leaves them), clear the
  // flags the SDM leaves undefined: pushfd; and dword [esp], ~mask; popfd.
  void clear_undefined_flags(Asm32& a, const ZydisDecodedInstruction& insn) {
    if (bcd_raw_) return;
    std::uint32_t undefined = 0;
    switch (insn.mnemonic) {
      case ZYDIS_MNEMONIC_AAA: case ZYDIS_MNEMONIC_AAS: undefined = 0x8c4; break;  // OF SF ZF PF
      case ZYDIS_MNEMONIC_DAA: case ZYDIS_MNEMONIC_DAS: undefined = 0x800; break;  // OF
      case ZYDIS_MNEMONIC_AAM: case ZYDIS_MNEMONIC_AAD: undefined = 0x811; break;  // OF AF CF
      default: return;
    }
    a.bytes({0x9c});
    a.ins(ZYDIS_MNEMONIC_AND, {M(ZYDIS_REGISTER_ESP, 0, 4), I(static_cast<std::int32_t>(~undefined))});
    a.bytes({0x9d});
  }
  static bool has_memory_access(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops) {
    for (unsigned i = 0; i < insn.operand_count; ++i)
      if (ops[i].type == ZYDIS_OPERAND_TYPE_MEMORY && ops[i].mem.type != ZYDIS_MEMOP_TYPE_AGEN) return true;
    return false;
  }
  void division(Asm32& a) {
    const ZydisRegister d[] = {ZYDIS_REGISTER_EBX, ZYDIS_REGISTER_ECX, ZYDIS_REGISTER_ESI, ZYDIS_REGISTER_EDI};
    const ZydisRegister r = d[u(0, 3)];
    a.ins(ZYDIS_MNEMONIC_MOV, {R(r), I(u(1, 0xffff))});
    if (u(0, 1)) {
      a.ins(ZYDIS_MNEMONIC_XOR, {R(ZYDIS_REGISTER_EDX), R(ZYDIS_REGISTER_EDX)});
      a.ins(ZYDIS_MNEMONIC_DIV, {R(r)});
    } else {
      a.ins(ZYDIS_MNEMONIC_AND, {R(ZYDIS_REGISTER_EAX), I(0x7fffffff)});
      a.ins(ZYDIS_MNEMONIC_CDQ, {});
      a.ins(ZYDIS_MNEMONIC_IDIV, {R(r)});
    }
  }

  std::mt19937_64 rng_;
  bool bcd_, bcd_raw_;
  ZydisDecoder dec_;
  std::uint64_t tried_ = 0;
};

struct Program {
  std::vector<std::uint8_t> body;  // sequences and checkpoints, no epilogue
  std::vector<std::uint8_t> scratch;
  std::vector<std::uint32_t> seq_offsets;  // where each sequence starts in body
  unsigned sequences = 0;
  std::uint64_t instructions = 0;
};

Program make_program(Generator& g, unsigned sequences) {
  Program p;
  Asm32 a;
  for (unsigned s = 0; s < sequences; ++s) {
    p.seq_offsets.push_back(static_cast<std::uint32_t>(a.code.size()));
    a.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_ESP), I(kStackTop)});
    for (auto r : kR32)
      if (r != ZYDIS_REGISTER_ESP) a.ins(ZYDIS_MNEMONIC_MOV, {R(r), I(static_cast<std::int32_t>(g.u(0, 0xffffffff)))});
    a.ins(ZYDIS_MNEMONIC_PUSH, {I(static_cast<std::int32_t>(g.u(0, 0xffff) & kFlagsMask))});
    a.bytes({0x9d});  // popfd
    const unsigned n = g.u(6, 24);
    for (unsigned i = 0; i < n; ++i) {
      if (g.u(0, 15) == 0) {  // a forward conditional branch over one instruction
        Asm32 skipped;
        g.instruction(skipped);
        a.bytes({static_cast<std::uint8_t>(0x70 | g.u(0, 15)), static_cast<std::uint8_t>(skipped.code.size())});
        a.code.insert(a.code.end(), skipped.code.begin(), skipped.code.end());
        p.instructions += 2;
        continue;
      }
      g.instruction(a);
      ++p.instructions;
    }
    const std::uint32_t out = kOut + s * kCheckpoint;
    for (int r = 0; r < 8; ++r) a.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_NONE, out + 4 * r, 4), R(kR32[r])});
    a.bytes({0x9c});  // pushfd
    a.ins(ZYDIS_MNEMONIC_POP, {M(ZYDIS_REGISTER_NONE, out + 0x20, 4)});
  }
  p.body = std::move(a.code);
  p.sequences = sequences;
  p.scratch.resize(kScratchSize);
  for (auto& b : p.scratch) b = static_cast<std::uint8_t>(g.u(0, 255));
  return p;
}

struct Outcome {
  std::vector<std::uint8_t> out;  // sequences * kCheckpoint
  std::vector<std::uint8_t> scratch;
  std::string error;
  std::uint32_t eip = 0;  // BT: where the guest was when the run ended
};

// The persistent native helper; restarted when a program kills it.
class NativeRunner {
 public:
  explicit NativeRunner(std::string path) : path_(std::move(path)) { start(); }
  ~NativeRunner() { stop(); }
  Outcome run(const Program& p) {
    Outcome o;
    if (pid_ <= 0) start();
    Asm32 a;
    a.code = p.body;
    a.ins(ZYDIS_MNEMONIC_JMP, {M(ZYDIS_REGISTER_NONE, kReturn, 4)});
    const std::uint32_t len = static_cast<std::uint32_t>(a.code.size()), out_len = p.sequences * kCheckpoint;
    std::vector<std::uint8_t> msg(8);
    std::memcpy(msg.data(), &len, 4);
    std::memcpy(msg.data() + 4, &out_len, 4);
    msg.insert(msg.end(), a.code.begin(), a.code.end());
    msg.insert(msg.end(), p.scratch.begin(), p.scratch.end());
    std::vector<std::uint8_t> in(out_len + kScratchSize);
    if (!write_all(msg) || !read_all(in)) {
      o.error = "the native helper died (the program faulted natively)";
      stop();
      return o;
    }
    o.out.assign(in.begin(), in.begin() + out_len);
    o.scratch.assign(in.begin() + out_len, in.end());
    return o;
  }

 private:
  void start() {
    int to[2], from[2];
    if (pipe(to) || pipe(from)) std::abort();
    pid_ = fork();
    if (pid_ == 0) {
      dup2(to[0], 0);
      dup2(from[1], 1);
      close(to[1]);
      close(from[0]);
      execl(path_.c_str(), path_.c_str(), nullptr);
      _exit(127);
    }
    close(to[0]);
    close(from[1]);
    to_ = to[1];
    from_ = from[0];
  }
  void stop() {
    if (pid_ <= 0) return;
    const std::uint32_t zero = 0;
    (void)!write(to_, &zero, 4);
    close(to_);
    close(from_);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  bool write_all(const std::vector<std::uint8_t>& b) {
    std::size_t done = 0;
    while (done < b.size()) {
      ssize_t n = write(to_, b.data() + done, b.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      done += static_cast<std::size_t>(n);
    }
    return true;
  }
  bool read_all(std::vector<std::uint8_t>& b) {
    std::size_t got = 0;
    while (got < b.size()) {
      ssize_t n = read(from_, b.data() + got, b.size() - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      got += static_cast<std::size_t>(n);
    }
    return true;
  }
  std::string path_;
  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
};

Outcome run_bt(const Program& p, bool paging) {
  MemfdMemory mem(4u << 20);
  FakePlatform plat;
  NullLogger log;
  Vcpu cpu(mem, plat, log, 0, 8u << 20);
  std::vector<std::uint8_t> code = p.body;
  code.insert(code.end(), {0xe6, 0xf4});  // out 0xf4, al
  mem.load(kCode, code.data(), code.size());
  const std::uint32_t scratch_pa = paging ? kPagedScratchPa : kScratch;
  mem.load(scratch_pa, p.scratch.data(), p.scratch.size());
  VcpuState s = multiboot_state(kCode);
  if (paging) {
    mem.w32(kPd, kPt | 7);
    for (std::uint32_t i = 0; i < 1024; ++i) {
      std::uint32_t pa = i << 12;
      if (i >= kScratch >> 12 && i < (kScratch + kScratchSize) >> 12) pa = kPagedScratchPa + (pa - kScratch);
      mem.w32(kPt + 4 * i, pa | 7);
    }
    s.cr3 = kPd;
    s.cr0 = 0x80010011;
  }
  s.cs = flat_segment(0x1b, true, 3);
  s.ss = s.ds = s.es = flat_segment(0x23, false, 3);
  s.rflags = 0x3002;  // IOPL 3 for the final OUT
  cpu.load(s);
  // A program that loops (it cannot: branches only go forward) is stopped after 10 s.
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::thread watchdog([&] {
    std::unique_lock lock(mu);
    if (!cv.wait_for(lock, std::chrono::seconds(10), [&] { return done; })) cpu.kick();
  });
  const RunExit ex = cpu.run();
  {
    std::lock_guard lock(mu);
    done = true;
  }
  cv.notify_one();
  watchdog.join();
  Outcome o;
  o.eip = static_cast<std::uint32_t>(cpu.save().rip);
  if (ex.kind != ExitKind::Stopped || plat.exit_code < 0) {
    o.error = "the BT run did not finish: " + ex.diagnostic.substr(0, ex.diagnostic.find(';'));
    return o;
  }
  const std::uint32_t out_len = p.sequences * kCheckpoint;
  o.out.assign(mem.host_base() + kOut, mem.host_base() + kOut + out_len);
  o.scratch.assign(mem.host_base() + scratch_pa, mem.host_base() + scratch_pa + kScratchSize);
  return o;
}

std::string disasm(const std::uint8_t* code, std::size_t size, std::uint32_t at) {
  ZydisDecoder d;
  ZydisDecoderInit(&d, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32);
  ZydisFormatter f;
  ZydisFormatterInit(&f, ZYDIS_FORMATTER_STYLE_INTEL);
  std::string out;
  std::size_t off = 0;
  while (off < size) {
    ZydisDecodedInstruction insn;
    ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
    if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&d, code + off, size - off, &insn, ops))) break;
    char buf[128];
    ZydisFormatterFormatInstruction(&f, &insn, ops, insn.operand_count_visible, buf, sizeof buf, at + off, nullptr);
    char hex[64] = {};
    for (unsigned i = 0; i < insn.length && i < 15; ++i) std::snprintf(hex + 3 * i, 4, "%02x ", code[off + i]);
    out += "    " + std::string(hex) + std::string(48 - std::strlen(hex), ' ') + buf + "\n";
    off += insn.length;
  }
  return out;
}

std::uint32_t word(const std::vector<std::uint8_t>& b, std::size_t at) {
  std::uint32_t v;
  std::memcpy(&v, b.data() + at, 4);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t want = 1000000, seed = 1;
  unsigned per_program = 64, show = 5;
  bool bcd = true, bcd_raw = false;
  std::uint64_t only = 0;  // run only this program (1-based), to look at one failure
  for (int i = 1; i < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--no-bcd" || k == "--bcd-raw") {  // flags without a value
      if (k == "--no-bcd") bcd = false;
      else bcd_raw = true;
      --i;
      continue;
    }
    if (i + 1 >= argc) k.clear();
    const std::uint64_t v = k.empty() ? 0 : std::strtoull(argv[i + 1], nullptr, 0);
    if (k == "--sequences") want = v;
    else if (k == "--seed") seed = v;
    else if (k == "--per-program") per_program = static_cast<unsigned>(v < 1 ? 1 : v > 512 ? 512 : v);
    else if (k == "--show") show = static_cast<unsigned>(v);
    else if (k == "--only") only = v;
    else {
      std::fprintf(stderr, "usage: %s [--sequences N] [--seed S] [--per-program K] [--show D] [--no-bcd | --bcd-raw] [--only P]\n", argv[0]);
      return 2;
    }
  }
  NativeRunner native(BT_NATIVE32_SERVER);
  Generator g(seed, bcd, bcd_raw);
  std::uint64_t sequences = 0, instructions = 0, divergences = 0, programs = 0, native_faults = 0, bt_failures = 0;
  std::uint64_t failed_sequences = 0;  // in programs whose BT run did not finish
  const auto start = std::chrono::steady_clock::now();
  auto report = [&](const Program& p, unsigned s, const std::string& what) {
    if (divergences + bt_failures > show) return;
    const std::size_t b = p.seq_offsets[s];
    const std::size_t e = s + 1 < p.seq_offsets.size() ? p.seq_offsets[s + 1] : p.body.size();
    std::printf("DIVERGENCE program %llu sequence %u: %s\n%s", static_cast<unsigned long long>(programs), s,
                what.c_str(), disasm(p.body.data() + b, e - b, kCode + static_cast<std::uint32_t>(b)).c_str());
  };
  while (sequences < want) {
    const bool paging = programs % 4 == 3;
    Program p = make_program(g, per_program);
    ++programs;
    if (only && programs != only) {
      if (programs > only) break;
      continue;
    }
    const Outcome n = native.run(p);
    if (!n.error.empty()) {  // the filter let through something that faults natively
      ++native_faults;
      continue;
    }
    const Outcome b = run_bt(p, paging);
    sequences += p.sequences;
    instructions += p.instructions;
    if (!b.error.empty()) {  // the CPU ran the program, the translator did not: a divergence too
      ++bt_failures;
      failed_sequences += p.sequences;
      if (bt_failures <= show) {
        std::printf("BT FAILURE program %llu%s: %s at EIP %#x:\n", static_cast<unsigned long long>(programs),
                    paging ? " (paging on)" : "", b.error.c_str(), b.eip);
        const std::size_t off = b.eip - kCode;
        if (off < p.body.size()) std::printf("%s", disasm(p.body.data() + off, std::min<std::size_t>(15, p.body.size() - off), b.eip).c_str());
      }
      continue;
    }
    static const char* names[] = {"EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI"};
    bool first = true;
    for (unsigned s = 0; s < p.sequences; ++s) {
      std::string what;
      for (int r = 0; r < 8; ++r) {
        const std::uint32_t nv = word(n.out, s * kCheckpoint + 4 * r), bv = word(b.out, s * kCheckpoint + 4 * r);
        if (nv != bv) what += std::string(names[r]) + " native " + std::to_string(nv) + " bt " + std::to_string(bv) + "; ";
      }
      const std::uint32_t nf = word(n.out, s * kCheckpoint + 0x20), bf = word(b.out, s * kCheckpoint + 0x20);
      if ((nf ^ bf) & kFlagsMask) what += "EFLAGS native " + std::to_string(nf & kFlagsMask) + " bt " +
                                          std::to_string(bf & kFlagsMask) + "; ";
      if (!what.empty()) {
        ++divergences;
        if (first) report(p, s, what + (paging ? "(paging on)" : ""));
        first = false;
      }
    }
    if (n.scratch != b.scratch) {
      ++divergences;
      if (divergences <= show) std::printf("DIVERGENCE program %llu: scratch memory differs%s\n",
                                           static_cast<unsigned long long>(programs), paging ? " (paging on)" : "");
    }
    if (programs % 1000 == 0) {
      std::fprintf(stderr, "  %llu sequences, %llu divergences, %llu BT failures...\n",
                   static_cast<unsigned long long>(sequences), static_cast<unsigned long long>(divergences),
                   static_cast<unsigned long long>(bt_failures));
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("bt_diff_bench: seed %llu: %llu sequences (%llu instructions, %llu programs of %u) in %.0f s\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(sequences),
              static_cast<unsigned long long>(instructions), static_cast<unsigned long long>(programs), per_program,
              secs);
  std::printf("bt_diff_bench: divergences %llu, BT runs that did not finish %llu (%llu sequences not compared), "
              "programs skipped (faulted natively) %llu, random decodes tried %llu\n",
              static_cast<unsigned long long>(divergences), static_cast<unsigned long long>(bt_failures),
              static_cast<unsigned long long>(failed_sequences),
              static_cast<unsigned long long>(native_faults), static_cast<unsigned long long>(g.tried()));
  return divergences || bt_failures ? 1 : 0;
}
