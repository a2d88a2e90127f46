// emulator64's instructions of ordinary state: string instructions, I/O,
// PUSHF/POPF, CLI/STI, INT/IRET/SYSCALL/SYSRET/SWAPGS (through
// long_mode_events), CPUID, RDMSR/WRMSR, RDTSC(P), XGETBV/XSETBV,
// RD/WRFSBASE and the PUSH/POP forms the translator leaves.
#include "bt64/emulator64_step.hpp"
#include "io_permission.hpp"

namespace modevisor::bt::bt64::detail {

namespace {

using api::gpr::rax;
using api::gpr::rbp;
using api::gpr::rcx;
using api::gpr::rdi;
using api::gpr::rdx;
using api::gpr::rsi;
using api::gpr::rsp;

constexpr std::uint32_t kMsrFsBase = 0xc0000100, kMsrGsBase = 0xc0000101, kMsrTscAux = 0xc0000103;
constexpr std::uint64_t kEferLme = 1u << 8, kEferNxe = 1u << 11;
constexpr std::uint64_t kCr0Pg = 1ull << 31;
constexpr std::uint64_t kCr4Pvi = 1u << 1, kCr4Tsd = 1u << 2, kCr4FsGsBase = 1u << 16, kCr4OsXsave = 1u << 18;

bool cpuid_bit(Step& st, std::uint32_t leaf, unsigned reg, unsigned bit) {
  return (st.env.cpuid(leaf, 0)[reg] >> bit) & 1;
}

// SDM vol. 1 19.5 (64-bit TSS in IA-32e mode): at CPL > IOPL the I/O
// permission bitmap of the TSS decides; a TR that is not a 64-bit TSS
// (type 9 or 0xb) or whose bitmap word lies beyond its limit refuses.
void check_io_permission(Step& st, std::uint16_t port, unsigned size) {
  if (st.cpl <= st.iopl()) return;
  const api::Segment& tr = st.s.tr;
  if (tr.unusable || !tr.present || (tr.type & ~2u) != 9 || tr.limit < kTssIoMapBase + 1) Step::raise(Fault::gp(0));
  const auto iomap = static_cast<std::uint16_t>(st.read(tr.base + kTssIoMapBase, 2, Privilege::ImplicitSupervisor));
  const std::optional<std::uint32_t> at = io_bitmap_word_offset(tr.limit, iomap, port);
  if (!at) Step::raise(Fault::gp(0));
  const auto word = static_cast<std::uint16_t>(st.read(tr.base + *at, 2, Privilege::ImplicitSupervisor));
  if (!io_bits_allow(word, port, size)) Step::raise(Fault::gp(0));
}

// ---- String instructions ----

enum class StringOp { Movs, Cmps, Stos, Lods, Scas, Ins, Outs };

StringOp string_op(const ZydisDecodedInstruction& insn) {
  switch (insn.opcode & 0xfe) {
    case 0xa4: return StringOp::Movs;
    case 0xa6: return StringOp::Cmps;
    case 0xaa: return StringOp::Stos;
    case 0xac: return StringOp::Lods;
    case 0xae: return StringOp::Scas;
    case 0x6c: return StringOp::Ins;
    case 0x6e: return StringOp::Outs;
    default: Step::not_emulated("unexpected string instruction");
  }
}

// One string instruction's fixed parts: element size, address size,
// direction, the source segment (DS or its override; the destination is
// always ES).
struct StringShape {
  StringOp op;
  unsigned size;
  unsigned address_size;
  std::uint64_t delta;  // added to RSI/RDI per element (two's complement when DF = 1)
  ZydisRegister source_segment;
};

StringShape string_shape(const Step& st) {
  StringShape sh{};
  sh.op = string_op(st.insn);
  const bool io = sh.op == StringOp::Ins || sh.op == StringOp::Outs;
  sh.size = (st.insn.opcode & 1) ? std::min(st.operand_bytes(), io ? 4u : 8u) : 1;
  sh.address_size = st.insn.address_width / 8;
  sh.delta = (st.s.rflags & kDF) ? std::uint64_t{0} - sh.size : sh.size;
  sh.source_segment = ZYDIS_REGISTER_DS;
  for (unsigned i = 0; i < st.insn.operand_count; ++i) {  // the operand addressed by rSI
    const ZydisDecodedOperand& o = st.ops[i];
    if (o.type == ZYDIS_OPERAND_TYPE_MEMORY &&
        ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, o.mem.base) == ZYDIS_REGISTER_RSI)
      sh.source_segment = o.mem.segment;
  }
  return sh;
}

// Moves RSI/RDI (or ESI/EDI, SI/DI) by one element.
void advance_index(Step& st, const StringShape& sh, unsigned index) {
  st.set_gpr(index, sh.address_size, st.gpr(index, sh.address_size) + sh.delta);
}

std::uint64_t read_source(Step& st, const StringShape& sh) {
  const std::uint64_t la = st.linear(sh.source_segment, st.gpr(rsi, sh.address_size), sh.size, false);
  return st.read(la, sh.size, st.data_privilege());
}

std::uint64_t destination(Step& st, const StringShape& sh, bool write) {
  return st.linear(ZYDIS_REGISTER_ES, st.gpr(rdi, sh.address_size), sh.size, write);
}

void set_arithmetic_flags(Step& st, std::uint64_t flags) {
  st.s.rflags = (st.s.rflags & ~kArithmeticFlags) | flags;
}

// One element; the index registers move only when it completed.
void string_element(Step& st, const StringShape& sh) {
  const Privilege who = st.data_privilege();
  const auto port = static_cast<std::uint16_t>(st.gpr(rdx, 2));
  switch (sh.op) {
    case StringOp::Movs: {
      const std::uint64_t v = read_source(st, sh);
      st.write(destination(st, sh, true), sh.size, v, who);
      advance_index(st, sh, rsi);
      advance_index(st, sh, rdi);
      break;
    }
    case StringOp::Cmps: {  // SDM CMPS: flags of [source] - [destination]
      const std::uint64_t a = read_source(st, sh);
      const std::uint64_t b = st.read(destination(st, sh, false), sh.size, who);
      set_arithmetic_flags(st, cmp_flags(a, b, sh.size));
      advance_index(st, sh, rsi);
      advance_index(st, sh, rdi);
      break;
    }
    case StringOp::Stos:
      st.write(destination(st, sh, true), sh.size, st.gpr(rax, sh.size), who);
      advance_index(st, sh, rdi);
      break;
    case StringOp::Lods:
      st.set_gpr(rax, sh.size, read_source(st, sh));
      advance_index(st, sh, rsi);
      break;
    case StringOp::Scas: {  // SDM SCAS: flags of rAX - [destination]
      const std::uint64_t b = st.read(destination(st, sh, false), sh.size, who);
      set_arithmetic_flags(st, cmp_flags(st.gpr(rax, sh.size), b, sh.size));
      advance_index(st, sh, rdi);
      break;
    }
    case StringOp::Ins: {  // the destination is checked before the port is read
      const std::uint64_t la = destination(st, sh, true);
      st.write(la, sh.size, st.env.port_in(port, sh.size), who);
      advance_index(st, sh, rdi);
      break;
    }
    case StringOp::Outs:
      st.env.port_out(port, sh.size, read_source(st, sh));
      advance_index(st, sh, rsi);
      break;
  }
}

}  // namespace

void string_instruction(Step& st) {
  const StringShape sh = string_shape(st);
  if (sh.op == StringOp::Ins || sh.op == StringOp::Outs)
    check_io_permission(st, static_cast<std::uint16_t>(st.gpr(rdx, 2)), sh.size);
  const auto attrs = st.insn.attributes;
  const bool repe = attrs & ZYDIS_ATTRIB_HAS_REPE, repne = attrs & ZYDIS_ATTRIB_HAS_REPNE;
  const bool rep = repe || repne || (attrs & ZYDIS_ATTRIB_HAS_REP);
  const bool compares = sh.op == StringOp::Cmps || sh.op == StringOp::Scas;
  if (!rep) return string_element(st, sh);
  std::uint64_t n = 0;
  // Forward REP MOVS/STOS: up to a page's worth of elements per step of the
  // environment (one walk per page, not per element).
  if ((sh.op == StringOp::Movs || sh.op == StringOp::Stos) && !(st.s.rflags & kDF)) {
    const Privilege who = st.data_privilege();
    const std::uint64_t wrap = sh.address_size == 8 ? 0 : (std::uint64_t{1} << (8 * sh.address_size));
    while (st.gpr(rcx, sh.address_size) != 0 && n < kMaxStringIterations) {
      const std::uint64_t di = st.gpr(rdi, sh.address_size), si = st.gpr(rsi, sh.address_size);
      const std::uint64_t dst = st.linear(ZYDIS_REGISTER_ES, di, sh.size, true);
      const std::uint64_t src = sh.op == StringOp::Movs ? st.linear(sh.source_segment, si, sh.size, false) : 0;
      constexpr std::uint64_t kPageBytes = 4096;
      std::uint64_t room = kPageBytes - (dst & (kPageBytes - 1));
      if (sh.op == StringOp::Movs) room = std::min(room, kPageBytes - (src & (kPageBytes - 1)));
      std::uint64_t k = std::min(std::min(room / sh.size, st.gpr(rcx, sh.address_size)), kMaxStringIterations - n);
      const std::uint64_t bytes = k * sh.size;
      const bool wraps = wrap && (di + bytes > wrap || (sh.op == StringOp::Movs && si + bytes > wrap));
      const bool overlaps = sh.op == StringOp::Movs && dst > src && dst < src + bytes;
      bool done = false;
      if (k >= 2 && !wraps && !overlaps)
        done = sh.op == StringOp::Movs
                   ? st.env.copy_block(dst, src, static_cast<unsigned>(bytes), who)
                   : st.env.fill_block(dst, st.gpr(rax, sh.size), sh.size, static_cast<unsigned>(bytes), who);
      if (!done) {
        k = 1;  // element by element (it faults where the SDM says)
        string_element(st, sh);
      } else {
        st.set_gpr(rdi, sh.address_size, di + bytes);
        if (sh.op == StringOp::Movs) st.set_gpr(rsi, sh.address_size, si + bytes);
      }
      if (done) st.set_gpr(rcx, sh.address_size, st.gpr(rcx, sh.address_size) - k);
      else st.set_gpr(rcx, sh.address_size, st.gpr(rcx, sh.address_size) - 1);
      n += k;
    }
    if (st.gpr(rcx, sh.address_size) != 0) {  // as if interrupted: RIP stays at the instruction
      st.rip_set = true;
      st.result.string_interrupted = true;
    }
    return;
  }
  // SDM REP: the count register is the address size's; CMPS and SCAS also
  // stop on ZF (REPE while equal, REPNE while different).
  for (; st.gpr(rcx, sh.address_size) != 0; ++n) {
    if (n == kMaxStringIterations) {  // as if interrupted: RIP stays at the instruction
      st.rip_set = true;
      st.result.string_interrupted = true;
      return;
    }
    string_element(st, sh);
    st.set_gpr(rcx, sh.address_size, st.gpr(rcx, sh.address_size) - 1);
    if (compares && (repe ? !(st.s.rflags & kZF) : (repne && (st.s.rflags & kZF)))) return;
  }
}

void in_out(Step& st) {
  const bool in = st.insn.mnemonic == ZYDIS_MNEMONIC_IN;
  const ZydisDecodedOperand& data = st.ops[in ? 0 : 1];
  const ZydisDecodedOperand& port_op = st.ops[in ? 1 : 0];
  const unsigned size = data.size / 8;
  const auto port = static_cast<std::uint16_t>(st.read_operand(port_op) & 0xffff);
  check_io_permission(st, port, size);
  if (in) st.set_reg(data.reg.value, st.env.port_in(port, size));
  else st.env.port_out(port, size, st.reg(data.reg.value));
}

void pushf(Step& st) {
  // SDM PUSHF: the image has VM and RF clear.
  st.push(st.s.rflags & ~(kVM | kRF), st.operand_bytes());
}

namespace {
// SDM POPF in protected mode: IOPL changes only at CPL 0, IF only at CPL <=
// IOPL; VM, VIF, VIP and RF never (RF ends clear); a 16-bit POPF only the
// low word.
std::uint64_t popped_flags(std::uint64_t current, std::uint64_t popped, unsigned cpl, unsigned size) {
  std::uint64_t mask = kArithmeticFlags | kTF | kIF | kDF | kIOPL | kNT | kAC | kID;
  if (cpl > 0) mask &= ~kIOPL;
  if (cpl > ((current & kIOPL) >> 12)) mask &= ~kIF;
  if (size == 2) mask &= 0xffff;
  return ((current & ~mask) | (popped & mask) | 2) & ~kRF;
}
}  // namespace

void popf(Step& st) {
  const unsigned size = st.operand_bytes();
  std::uint64_t sp = st.stack_pointer();
  const std::uint64_t v = st.pop_at(sp, size);
  st.s.rflags = popped_flags(st.s.rflags, v, st.cpl, size);
  st.set_stack_pointer(sp);
}

void cli_sti(Step& st) {
  const bool sti = st.insn.mnemonic == ZYDIS_MNEMONIC_STI;
  // SDM CLI/STI (protected mode): IF at CPL <= IOPL; at CPL 3 with CR4.PVI
  // the virtual flag VIF (STI: #GP(0) while VIP is set); otherwise #GP(0).
  if (st.cpl <= st.iopl()) {
    // SDM STI: interrupts stay blocked until after the next instruction if IF was clear.
    if (sti && !(st.s.rflags & kIF)) st.result.interrupt_shadow = true;
    st.s.rflags = sti ? st.s.rflags | kIF : st.s.rflags & ~kIF;
    return;
  }
  if (st.cpl != 3 || !(st.s.cr4 & kCr4Pvi) || (sti && (st.s.rflags & kVIP))) Step::raise(Fault::gp(0));
  st.s.rflags = sti ? st.s.rflags | kVIF : st.s.rflags & ~kVIF;
}

void software_interrupt(Step& st) {
  std::uint8_t vector = 0;
  EventKind kind = EventKind::SoftwareInterrupt;
  switch (st.insn.mnemonic) {
    case ZYDIS_MNEMONIC_INT3: vector = 3; break;
    case ZYDIS_MNEMONIC_INT1: vector = 1; kind = EventKind::Icebp; break;
    case ZYDIS_MNEMONIC_INTO:  // SDM INTO: #UD in 64-bit mode; a trap only with OF set
      if (st.mode64) Step::raise(Fault::ud());
      if (!(st.s.rflags & kOF)) return;
      vector = 4;
      break;
    default: vector = static_cast<std::uint8_t>(st.ops[0].imm.value.u); break;
  }
  // A trap: the frame returns to the next instruction; a fault while
  // delivering is reported at the INT itself.
  const std::uint64_t rip = st.s.rip, flags = st.s.rflags;
  st.s.rip = st.next_rip;
  st.s.rflags &= ~kRF;
  if (Check f = deliver(st.s, st.memory(), vector, false, 0, kind)) {
    st.s.rip = rip;
    st.s.rflags = flags;
    Step::raise(*f);
  }
  st.rip_set = st.flags_loaded = true;
}

void iret(Step& st) {
  if (!st.mode64) Step::not_emulated("IRET in compatibility mode (a legacy frame) is not emulated");
  if (st.operand_bytes() == 2) Step::not_emulated("16-bit IRET in 64-bit mode is not emulated");
  st.result.iret = true;
  Step::must(iret64(st.s, st.memory(), st.operand_bytes()));
  st.rip_set = st.flags_loaded = true;
}

void system_call(Step& st) {
  switch (st.insn.mnemonic) {
    case ZYDIS_MNEMONIC_SYSCALL: {
      const std::uint64_t rip = st.s.rip;
      st.s.rip = st.next_rip;  // RCX gets the next instruction's RIP
      if (Check f = syscall(st.s, st.vendor)) {
        st.s.rip = rip;
        Step::raise(*f);
      }
      break;
    }
    case ZYDIS_MNEMONIC_SYSRET: Step::must(sysret(st.s, st.operand_bytes() == 8 ? 8 : 4, st.vendor)); break;
    default: Step::must(swapgs(st.s)); return;
  }
  st.rip_set = st.flags_loaded = true;
}

void stac_clac(Step& st) {
  // SDM STAC/CLAC: #UD above CPL 0 or where CPUID does not offer SMAP.
  if (st.cpl != 0 || !((st.env.cpuid(7, 0)[1] >> 20) & 1)) Step::raise(Fault::ud());
  constexpr std::uint64_t kAc = 1u << 18;
  if (st.insn.mnemonic == ZYDIS_MNEMONIC_STAC) st.s.rflags |= kAc;
  else st.s.rflags &= ~kAc;
}

void cpuid(Step& st) {
  const auto r = st.env.cpuid(static_cast<std::uint32_t>(st.gpr(rax, 4)), static_cast<std::uint32_t>(st.gpr(rcx, 4)));
  st.set_gpr(rax, 4, r[0]);
  st.set_gpr(api::gpr::rbx, 4, r[1]);
  st.set_gpr(rcx, 4, r[2]);
  st.set_gpr(rdx, 4, r[3]);
}

namespace {

// The MSRs the state holds itself: the FS/GS bases are the hidden bases, EFER
// is state.efer, the system-call MSRs and KERNEL_GS_BASE are in state.msrs
// (where long_mode_events reads them).
bool kept_in_state(std::uint32_t index) {
  switch (index) {
    case kMsrFsBase: case kMsrGsBase: case kMsrEfer: case kMsrKernelGsBase: case kMsrStar: case kMsrLstar:
    case kMsrCstar: case kMsrSfmask:
      return true;
    default: return false;
  }
}

std::uint64_t state_msr(const api::VcpuState& s, std::uint32_t index) {
  switch (index) {
    case kMsrFsBase: return s.fs.base;
    case kMsrGsBase: return s.gs.base;
    case kMsrEfer: return s.efer;
    default: return s.msr(index).value_or(0);
  }
}

// SDM vol. 4 (IA32_EFER): SCE, LME and NXE (if offered) are writable, LMA is
// read-only (a written LMA is ignored, as KVM does); LME cannot change while
// paging is on (SDM vol. 3 10.8.5).
void write_efer(Step& st, std::uint64_t value) {
  std::uint64_t writable = kEferSce | kEferLme;
  if (cpuid_bit(st, 0x80000001, 3, 20)) writable |= kEferNxe;
  if (value & ~(writable | kEferLma)) Step::raise(Fault::gp(0));
  if (((value ^ st.s.efer) & kEferLme) && (st.s.cr0 & kCr0Pg)) Step::raise(Fault::gp(0));
  const std::uint64_t old = st.s.efer;
  st.s.efer = (value & writable) | (old & kEferLma);
  if ((old ^ st.s.efer) & (kEferNxe | kEferLme)) st.env.paging_changed();
}

void write_state_msr(Step& st, std::uint32_t index, std::uint64_t value) {
  switch (index) {
    case kMsrEfer: return write_efer(st, value);
    case kMsrStar: return st.s.set_msr(index, value);
    case kMsrSfmask:  // bits 63:32 reserved
      if (value >> 32) Step::raise(Fault::gp(0));
      return st.s.set_msr(index, value);
    default: break;
  }
  // SDM WRMSR: an address MSR (FS/GS bases, KERNEL_GS_BASE, LSTAR, CSTAR) must be canonical.
  if (!is_canonical(value)) Step::raise(Fault::gp(0));
  if (index == kMsrFsBase) st.s.fs.base = value;
  else if (index == kMsrGsBase) st.s.gs.base = value;
  else st.s.set_msr(index, value);
}

}  // namespace

void rdmsr(Step& st) {
  st.require_cpl0();
  const auto index = static_cast<std::uint32_t>(st.gpr(rcx, 4));
  const std::optional<std::uint64_t> v = kept_in_state(index) ? state_msr(st.s, index) : st.env.rdmsr(index);
  if (!v) Step::raise(Fault::gp(0));
  st.set_gpr(rax, 4, *v);
  st.set_gpr(rdx, 4, *v >> 32);
}

void wrmsr(Step& st) {
  st.require_cpl0();
  const auto index = static_cast<std::uint32_t>(st.gpr(rcx, 4));
  const std::uint64_t value = st.gpr(rdx, 4) << 32 | st.gpr(rax, 4);
  if (kept_in_state(index)) return write_state_msr(st, index, value);
  if (!st.env.wrmsr(index, value)) Step::raise(Fault::gp(0));
}

void read_tsc(Step& st) {
  const bool rdtscp = st.insn.mnemonic == ZYDIS_MNEMONIC_RDTSCP;
  if (rdtscp && !cpuid_bit(st, 0x80000001, 3, 27)) Step::raise(Fault::ud());
  // SDM RDTSC: CR4.TSD makes it #GP(0) above CPL 0.
  if ((st.s.cr4 & kCr4Tsd) && st.cpl > 0) Step::raise(Fault::gp(0));
  const std::uint64_t aux = rdtscp ? st.env.rdmsr(kMsrTscAux).value_or(0) : 0;
  const std::uint64_t t = st.env.tsc();
  st.set_gpr(rax, 4, t);
  st.set_gpr(rdx, 4, t >> 32);
  if (rdtscp) st.set_gpr(rcx, 4, aux);
}

void xcr(Step& st) {
  // SDM XGETBV/XSETBV: #UD without CR4.OSXSAVE; only XCR0 (ECX = 0) here.
  if (!(st.s.cr4 & kCr4OsXsave)) Step::raise(Fault::ud());
  const std::uint64_t index = st.gpr(rcx, 4);
  if (st.insn.mnemonic == ZYDIS_MNEMONIC_XGETBV) {
    if (index == 1) Step::not_emulated("XGETBV of XINUSE (ECX = 1) is not emulated");
    if (index != 0) Step::raise(Fault::gp(0));
    st.set_gpr(rax, 4, st.s.fpu.xcr0);
    st.set_gpr(rdx, 4, st.s.fpu.xcr0 >> 32);
    return;
  }
  st.require_cpl0();
  if (index != 0) Step::raise(Fault::gp(0));
  const std::uint64_t value = st.gpr(rdx, 4) << 32 | st.gpr(rax, 4);
  const auto leaf_d = st.env.cpuid(0xd, 0);
  const std::uint64_t offered = std::uint64_t{leaf_d[3]} << 32 | leaf_d[0];
  // SDM XSETBV: only offered components; x87 always; AVX needs SSE; the
  // AVX-512 components (7:5) all or none, and with AVX.
  const std::uint64_t avx512 = value & 0xe0;
  const bool invalid = (value & ~offered) || !(value & 1) || ((value & 4) && !(value & 2)) ||
                       (avx512 && (avx512 != 0xe0 || !(value & 4)));
  if (invalid) Step::raise(Fault::gp(0));
  st.s.fpu.xcr0 = value;
}

void fs_gs_base(Step& st) {
  // SDM RDFSBASE...: #UD outside 64-bit mode and without CR4.FSGSBASE.
  if (!st.mode64 || !(st.s.cr4 & kCr4FsGsBase)) Step::raise(Fault::ud());
  const auto m = st.insn.mnemonic;
  api::Segment& seg = (m == ZYDIS_MNEMONIC_RDFSBASE || m == ZYDIS_MNEMONIC_WRFSBASE) ? st.s.fs : st.s.gs;
  if (m == ZYDIS_MNEMONIC_RDFSBASE || m == ZYDIS_MNEMONIC_RDGSBASE) return st.set_reg(st.ops[0].reg.value, seg.base);
  const std::uint64_t v = st.reg(st.ops[0].reg.value);
  if (!is_canonical(v)) Step::raise(Fault::gp(0));
  seg.base = v;
}

void push_pop(Step& st) {
  const unsigned size = st.operand_bytes();
  if (st.insn.mnemonic == ZYDIS_MNEMONIC_PUSH) {
    st.push(st.read_operand(st.ops[0], size), size);  // the operand is read before RSP moves
    return;
  }
  // SDM POP: a memory destination is addressed with RSP already incremented;
  // a fault writing it leaves RSP as it was.
  const std::uint64_t old_rsp = st.s.gpr[rsp];
  std::uint64_t sp = st.stack_pointer();
  const std::uint64_t v = st.pop_at(sp, size);
  st.set_stack_pointer(sp);
  try {
    st.write_operand(st.ops[0], v, size);
  } catch (const Fault&) {
    st.s.gpr[rsp] = old_rsp;
    throw;
  }
}

// Near JMP/CALL/RET and LEAVE: translated code runs them, but one whose
// stack access hits a page it cannot touch itself (a traced page table, a
// code page, a device) comes here.  64-bit mode: the target must be
// canonical (#GP(0)); compatibility mode: within CS's limit.
void near_branch(Step& st) {
  const unsigned size = st.operand_bytes();
  auto check_target = [&](std::uint64_t target) {
    if (st.mode64 ? !is_canonical(target) : target > st.s.cs.limit) Step::raise(Fault::gp(0));
  };
  std::uint64_t sp = st.stack_pointer();
  switch (st.insn.mnemonic) {
    case ZYDIS_MNEMONIC_LEAVE: {
      sp = st.gpr(rbp, st.stack_address_size());
      const std::uint64_t frame = st.pop_at(sp, size);
      st.set_stack_pointer(sp);
      st.set_gpr(rbp, size, frame);
      return;
    }
    case ZYDIS_MNEMONIC_RET: {
      const std::uint64_t target = st.pop_at(sp, size);
      check_target(target);
      if (st.insn.operand_count_visible > 0) sp += st.ops[0].imm.value.u;
      st.set_stack_pointer(sp);
      st.s.rip = target;
      st.rip_set = true;
      return;
    }
    default: {  // JMP, CALL: relative or through a register or memory
      const ZydisDecodedOperand& op = st.ops[0];
      const std::uint64_t target =
          op.type == ZYDIS_OPERAND_TYPE_IMMEDIATE
              ? (st.next_rip + static_cast<std::uint64_t>(op.imm.value.s)) & (size == 8 ? ~0ull : 0xffffffffull)
              : st.read_operand(op, size);
      check_target(target);
      if (st.insn.mnemonic == ZYDIS_MNEMONIC_CALL) st.push(st.next_rip, size);
      st.s.rip = target;
      st.rip_set = true;
      return;
    }
  }
}

}  // namespace modevisor::bt::bt64::detail
