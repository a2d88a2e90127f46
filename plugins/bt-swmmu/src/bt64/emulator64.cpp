// emulate_one: decoding, the dispatch to the instruction groups, and the
// emulation context every group shares (registers, addresses, memory, the
// stack).  The groups are emulator64_basic.cpp and emulator64_system.cpp.
#include "bt64/emulator64.hpp"

#include "bt64/emulator64_step.hpp"

namespace modevisor::bt::bt64 {

namespace detail {

namespace {

constexpr std::uint64_t kCr4Umip = 1u << 11;

constexpr std::uint64_t mask_of(unsigned size) { return size >= 8 ? ~std::uint64_t{0} : (std::uint64_t{1} << (8 * size)) - 1; }

unsigned gpr_index(ZydisRegister r) {
  const ZydisRegister full = ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, r);
  if (ZydisRegisterGetClass(full) != ZYDIS_REGCLASS_GPR64) Step::not_emulated("unexpected register operand");
  return static_cast<unsigned>(full - ZYDIS_REGISTER_RAX);
}

bool high_byte_register(ZydisRegister r) { return r >= ZYDIS_REGISTER_AH && r <= ZYDIS_REGISTER_BH; }

// Within the segment's limit (SDM vol. 3 5.3): offsets up to the limit, or
// above it up to 64 KiB or 4 GiB (the B flag) for an expand-down data segment.
bool within_limit(const api::Segment& seg, std::uint64_t offset, unsigned size) {
  const std::uint64_t last = offset + size - 1;
  const bool expand_down = !(seg.type & 8) && (seg.type & 4);
  if (expand_down) return offset > seg.limit && last <= (seg.db ? 0xffffffffu : 0xffffu);
  return last <= seg.limit;
}

bool crosses_page(std::uint64_t la, unsigned size) { return (la & 0xfff) + size > 0x1000; }

}  // namespace

Step::Step(api::VcpuState& state, Emulator64Env& e, Vendor v, const ZydisDecodedInstruction& i,
           const ZydisDecodedOperand* o)
    : s(state),
      env(e),
      vendor(v),
      insn(i),
      ops(o),
      mode64(state.cs.l),
      cpl(current_privilege(state)),
      next_rip(state.cs.l ? state.rip + i.length : (state.rip + i.length) & (state.cs.db ? 0xffffffffu : 0xffffu)),
      memory_(e.memory()) {}

void Step::require_umip_allows() const {
  if ((s.cr4 & kCr4Umip) && cpl > 0) raise(Fault::gp(0));
}

std::uint64_t Step::reg(ZydisRegister r) const {
  if (r == ZYDIS_REGISTER_RIP) return next_rip;
  if (r == ZYDIS_REGISTER_EIP) return next_rip & 0xffffffffu;
  if (r == ZYDIS_REGISTER_IP) return next_rip & 0xffffu;
  if (high_byte_register(r)) return (s.gpr[r - ZYDIS_REGISTER_AH] >> 8) & 0xff;
  return gpr(gpr_index(r), ZydisRegisterGetWidth(ZYDIS_MACHINE_MODE_LONG_64, r) / 8);
}

void Step::set_reg(ZydisRegister r, std::uint64_t v) {
  if (high_byte_register(r)) {
    std::uint64_t& g = s.gpr[r - ZYDIS_REGISTER_AH];
    g = (g & ~std::uint64_t{0xff00}) | (v & 0xff) << 8;
    return;
  }
  set_gpr(gpr_index(r), ZydisRegisterGetWidth(ZYDIS_MACHINE_MODE_LONG_64, r) / 8, v);
}

std::uint64_t Step::gpr(unsigned index, unsigned size) const { return s.gpr[index] & mask_of(size); }

void Step::set_gpr(unsigned index, unsigned size, std::uint64_t v) {
  std::uint64_t& g = s.gpr[index];
  // SDM vol. 1 3.4.1.1: a 32-bit result is zero-extended, 8- and 16-bit ones merge.
  if (size >= 4) g = v & mask_of(size);
  else g = (g & ~mask_of(size)) | (v & mask_of(size));
}

api::Segment& Step::segment(ZydisRegister sreg) {
  switch (sreg) {
    case ZYDIS_REGISTER_ES: return s.es;
    case ZYDIS_REGISTER_CS: return s.cs;
    case ZYDIS_REGISTER_SS: return s.ss;
    case ZYDIS_REGISTER_FS: return s.fs;
    case ZYDIS_REGISTER_GS: return s.gs;
    default: return s.ds;
  }
}

std::uint64_t Step::linear(ZydisRegister sreg, std::uint64_t offset, unsigned size, bool write_access) {
  const Fault fault = sreg == ZYDIS_REGISTER_SS ? Fault::ss(0) : Fault::gp(0);
  if (mode64) {
    // SDM vol. 3 3.4.4: only FS and GS have bases in 64-bit mode; a
    // non-canonical address is #SS(0) through SS and #GP(0) otherwise.
    std::uint64_t la = offset;
    if (sreg == ZYDIS_REGISTER_FS || sreg == ZYDIS_REGISTER_GS) la += segment(sreg).base;
    if (!is_canonical(la) || !is_canonical(la + size - 1)) raise(fault);
    return la;
  }
  const api::Segment& seg = segment(sreg);
  const bool code = seg.type & 8;
  const bool allowed = write_access ? !code && (seg.type & 2) : !code || (seg.type & 2);
  if (seg.unusable || !allowed || !within_limit(seg, offset, size)) raise(fault);
  return (seg.base + offset) & 0xffffffffu;
}

std::uint64_t Step::effective_offset(const ZydisDecodedOperand& op) const {
  std::uint64_t a = op.mem.disp.has_displacement ? static_cast<std::uint64_t>(op.mem.disp.value) : 0;
  if (op.mem.base != ZYDIS_REGISTER_NONE) a += reg(op.mem.base);
  if (op.mem.index != ZYDIS_REGISTER_NONE) a += reg(op.mem.index) * op.mem.scale;
  return a & mask_of(insn.address_width / 8);
}

std::uint64_t Step::read(std::uint64_t la, unsigned size, Privilege who) {
  if (crosses_page(la, size)) {
    // Byte by byte, so a #PF names the page that faulted (CR2).
    std::uint64_t v = 0;
    for (unsigned i = 0; i < size; ++i) v |= read((la + i) & (mode64 ? ~0ull : 0xffffffffull), 1, who) << (8 * i);
    return v;
  }
  return must(memory_.read(la, size, who));
}

void Step::write(std::uint64_t la, unsigned size, std::uint64_t v, Privilege who) {
  if (crosses_page(la, size)) {
    // The lower page is probed first (a #PF there is a write's), then the
    // upper page's bytes go first: a fault leaves memory unchanged unless
    // the lower page refuses only writes (then the upper bytes are written).
    const std::uint64_t wrap = mode64 ? ~0ull : 0xffffffffull;
    const Outcome<std::uint64_t> probe = memory_.read(la, 1, who);
    if (!probe.ok()) {
      Fault f = probe.fault();
      if (f.vector == 14) f.error |= 2;
      raise(f);
    }
    const unsigned low = 0x1000 - static_cast<unsigned>(la & 0xfff);
    for (unsigned i = low; i < size; ++i) write((la + i) & wrap, 1, v >> (8 * i), who);
    for (unsigned i = 0; i < low; ++i) write((la + i) & wrap, 1, v >> (8 * i), who);
    return;
  }
  must(memory_.write(la, size, v & mask_of(size), who));
}

std::uint64_t Step::read_operand(const ZydisDecodedOperand& op, unsigned size) {
  if (size == 0) size = op.size / 8;
  switch (op.type) {
    case ZYDIS_OPERAND_TYPE_REGISTER: return reg(op.reg.value) & mask_of(size);
    case ZYDIS_OPERAND_TYPE_IMMEDIATE: return op.imm.value.u & mask_of(size);
    case ZYDIS_OPERAND_TYPE_MEMORY: return read(operand_linear(op, size, false), size, data_privilege());
    default: not_emulated("unexpected operand");
  }
}

void Step::write_operand(const ZydisDecodedOperand& op, std::uint64_t v, unsigned size) {
  if (size == 0) size = op.size / 8;
  if (op.type == ZYDIS_OPERAND_TYPE_REGISTER) return set_reg(op.reg.value, v);
  if (op.type != ZYDIS_OPERAND_TYPE_MEMORY) not_emulated("unexpected operand");
  write(operand_linear(op, size, true), size, v, data_privilege());
}

void Step::push_at(std::uint64_t& sp, std::uint64_t v, unsigned size) {
  const std::uint64_t at = (sp - size) & mask_of(stack_address_size());
  write(linear(ZYDIS_REGISTER_SS, at, size, true), size, v, data_privilege());
  sp = at;
}

std::uint64_t Step::pop_at(std::uint64_t& sp, unsigned size) {
  const std::uint64_t v = read(linear(ZYDIS_REGISTER_SS, sp, size, false), size, data_privilege());
  sp = (sp + size) & mask_of(stack_address_size());
  return v;
}

void Step::push(std::uint64_t v, unsigned size) {
  std::uint64_t sp = stack_pointer();
  push_at(sp, v, size);
  set_stack_pointer(sp);
}

void Step::mark_accessed(std::uint16_t sel, std::uint64_t raw) {
  if (raw & (std::uint64_t{1} << 40)) return;
  const std::uint64_t table = (sel & 4) ? s.ldtr.base : s.gdtr.base;
  write(table + (sel & ~7u) + 5, 1, ((raw >> 40) & 0xff) | 1, Privilege::ImplicitSupervisor);
}

std::uint64_t cmp_flags(std::uint64_t a, std::uint64_t b, unsigned size) {
  const std::uint64_t m = mask_of(size), sign = std::uint64_t{1} << (8 * size - 1);
  a &= m;
  b &= m;
  const std::uint64_t r = (a - b) & m;
  std::uint64_t f = 0;
  if (a < b) f |= kCF;
  if (!__builtin_parityll(r & 0xff)) f |= kPF;
  if ((a ^ b ^ r) & 0x10) f |= kAF;
  if (r == 0) f |= kZF;
  if (r & sign) f |= kSF;
  if ((a ^ b) & (a ^ r) & sign) f |= kOF;
  return f;
}

namespace {

bool far_branch(const ZydisDecodedInstruction& insn) { return insn.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR; }

ZydisRegisterClass class_of(const ZydisDecodedOperand& op) {
  return op.type == ZYDIS_OPERAND_TYPE_REGISTER ? ZydisRegisterGetClass(op.reg.value) : ZYDIS_REGCLASS_INVALID;
}

// MOV with a control, debug or segment register.
void mov_special(Step& st) {
  const ZydisRegisterClass c0 = class_of(st.ops[0]), c1 = class_of(st.ops[1]);
  if (c0 == ZYDIS_REGCLASS_CONTROL || c1 == ZYDIS_REGCLASS_CONTROL) return mov_control_register(st);
  if (c0 == ZYDIS_REGCLASS_DEBUG || c1 == ZYDIS_REGCLASS_DEBUG) return mov_debug_register(st);
  if (c0 == ZYDIS_REGCLASS_SEGMENT || c1 == ZYDIS_REGCLASS_SEGMENT) return mov_segment(st);
  Step::not_emulated("a plain MOV is the translator's");
}

void dispatch(Step& st) {
  if (st.insn.meta.category == ZYDIS_CATEGORY_STRINGOP || st.insn.meta.category == ZYDIS_CATEGORY_IOSTRINGOP)
    return string_instruction(st);
  switch (st.insn.mnemonic) {
    case ZYDIS_MNEMONIC_IN: case ZYDIS_MNEMONIC_OUT: return in_out(st);
    case ZYDIS_MNEMONIC_PUSHF: case ZYDIS_MNEMONIC_PUSHFD: case ZYDIS_MNEMONIC_PUSHFQ: return pushf(st);
    case ZYDIS_MNEMONIC_POPF: case ZYDIS_MNEMONIC_POPFD: case ZYDIS_MNEMONIC_POPFQ: return popf(st);
    case ZYDIS_MNEMONIC_CLI: case ZYDIS_MNEMONIC_STI: return cli_sti(st);
    case ZYDIS_MNEMONIC_INT: case ZYDIS_MNEMONIC_INT1: case ZYDIS_MNEMONIC_INT3: case ZYDIS_MNEMONIC_INTO:
      return software_interrupt(st);
    case ZYDIS_MNEMONIC_IRET: case ZYDIS_MNEMONIC_IRETD: case ZYDIS_MNEMONIC_IRETQ: return iret(st);
    case ZYDIS_MNEMONIC_SYSCALL: case ZYDIS_MNEMONIC_SYSRET: case ZYDIS_MNEMONIC_SWAPGS: return system_call(st);
    case ZYDIS_MNEMONIC_CPUID: return cpuid(st);
    case ZYDIS_MNEMONIC_STAC: case ZYDIS_MNEMONIC_CLAC: return stac_clac(st);
    case ZYDIS_MNEMONIC_RDMSR: return rdmsr(st);
    case ZYDIS_MNEMONIC_WRMSR: return wrmsr(st);
    case ZYDIS_MNEMONIC_RDTSC: case ZYDIS_MNEMONIC_RDTSCP: return read_tsc(st);
    case ZYDIS_MNEMONIC_XGETBV: case ZYDIS_MNEMONIC_XSETBV: return xcr(st);
    case ZYDIS_MNEMONIC_RDFSBASE: case ZYDIS_MNEMONIC_RDGSBASE: case ZYDIS_MNEMONIC_WRFSBASE:
    case ZYDIS_MNEMONIC_WRGSBASE:
      return fs_gs_base(st);
    case ZYDIS_MNEMONIC_HLT:
      st.require_cpl0();  // SDM HLT: #GP(0) above CPL 0
      st.result.kind = StepKind::Halt;
      return;
    case ZYDIS_MNEMONIC_UD0: case ZYDIS_MNEMONIC_UD1: case ZYDIS_MNEMONIC_UD2: Step::raise(Fault::ud());
    case ZYDIS_MNEMONIC_INVD: case ZYDIS_MNEMONIC_WBINVD:
      st.require_cpl0();  // the caches are the host's: nothing to do
      return;
    case ZYDIS_MNEMONIC_CLTS: return clts(st);
    case ZYDIS_MNEMONIC_LMSW: return lmsw(st);
    case ZYDIS_MNEMONIC_SMSW: return smsw(st);
    case ZYDIS_MNEMONIC_LGDT: case ZYDIS_MNEMONIC_LIDT: return load_descriptor_table(st);
    case ZYDIS_MNEMONIC_SGDT: case ZYDIS_MNEMONIC_SIDT: return store_descriptor_table(st);
    case ZYDIS_MNEMONIC_LLDT: return lldt(st);
    case ZYDIS_MNEMONIC_LTR: return ltr(st);
    case ZYDIS_MNEMONIC_SLDT: case ZYDIS_MNEMONIC_STR: return store_system_selector(st);
    case ZYDIS_MNEMONIC_LAR: case ZYDIS_MNEMONIC_LSL: case ZYDIS_MNEMONIC_VERR: case ZYDIS_MNEMONIC_VERW:
      return descriptor_query(st);
    case ZYDIS_MNEMONIC_INVLPG: return invlpg(st);
    case ZYDIS_MNEMONIC_MOV: return mov_special(st);
    case ZYDIS_MNEMONIC_PUSH:
      return class_of(st.ops[0]) == ZYDIS_REGCLASS_SEGMENT ? push_segment(st) : push_pop(st);
    case ZYDIS_MNEMONIC_POP:
      return class_of(st.ops[0]) == ZYDIS_REGCLASS_SEGMENT ? pop_segment(st) : push_pop(st);
    case ZYDIS_MNEMONIC_LDS: case ZYDIS_MNEMONIC_LES: case ZYDIS_MNEMONIC_LFS: case ZYDIS_MNEMONIC_LGS:
    case ZYDIS_MNEMONIC_LSS:
      return load_far_pointer(st);
    case ZYDIS_MNEMONIC_JMP: case ZYDIS_MNEMONIC_CALL:
      if (far_branch(st.insn)) return far_jump_or_call(st);
      return near_branch(st);
    case ZYDIS_MNEMONIC_RET:
      if (far_branch(st.insn)) return far_return(st);
      return near_branch(st);
    case ZYDIS_MNEMONIC_LEAVE: return near_branch(st);
    default: break;
  }
  Step::not_emulated("not emulated in long mode");
}

// A successful instruction: RIP past it unless it set RIP; RF clear unless
// it loaded RFLAGS (SDM vol. 3 17.3.1.1: RF is cleared after each instruction).
void complete(Step& st) {
  if (!st.flags_loaded) st.s.rflags &= ~kRF;
  if (!st.rip_set) st.s.rip = st.next_rip;
}

std::string describe(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops, std::uint64_t rip) {
  ZydisFormatter f;
  ZydisFormatterInit(&f, ZYDIS_FORMATTER_STYLE_INTEL);
  char buf[128];
  if (!ZYAN_SUCCESS(ZydisFormatterFormatInstruction(&f, &insn, ops, insn.operand_count_visible, buf, sizeof buf, rip,
                                                    nullptr)))
    return ZydisMnemonicGetString(insn.mnemonic);
  return buf;
}

// A decoding failure: past the bytes given (the caller fetches more), longer
// than 15 bytes (#GP(0), SDM vol. 2 2.3.11), anything else #UD.
StepResult undecodable(ZyanStatus status) {
  StepResult r;
  if (status == ZYDIS_STATUS_NO_MORE_DATA) {
    r.kind = StepKind::Unsupported;
    r.what = "the instruction runs past the bytes given";
    return r;
  }
  r.kind = StepKind::Fault;
  r.fault = status == ZYDIS_STATUS_INSTRUCTION_TOO_LONG ? Fault::gp(0) : Fault::ud();
  r.what = "undecodable";
  return r;
}

}  // namespace
}  // namespace detail

StepResult emulate_one(api::VcpuState& state, Emulator64Env& env, const std::uint8_t* bytes, std::size_t size,
                       Vendor vendor) {
  ZydisDecoder decoder;
  if (state.cs.l) ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
  else if (state.cs.db) ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LONG_COMPAT_32, ZYDIS_STACK_WIDTH_32);
  else ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LONG_COMPAT_16, ZYDIS_STACK_WIDTH_16);
  ZydisDecodedInstruction insn;
  ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
  const ZyanStatus status = ZydisDecoderDecodeFull(&decoder, bytes, size, &insn, ops);
  if (!ZYAN_SUCCESS(status)) return detail::undecodable(status);

  detail::Step step(state, env, vendor, insn, ops);
  try {
    detail::dispatch(step);
    detail::complete(step);
  } catch (const Fault& f) {
    step.result.kind = StepKind::Fault;
    step.result.fault = f;
    if (f.vector == 14) step.result.fault_address = step.memory().fault_address;
    step.result.interrupt_shadow = false;
  } catch (const detail::NotEmulated& n) {
    step.result = StepResult{};
    step.result.kind = StepKind::Unsupported;
    step.result.what = detail::describe(insn, ops, state.rip) + ": " + n.why;
  }
  return step.result;
}

}  // namespace modevisor::bt::bt64
