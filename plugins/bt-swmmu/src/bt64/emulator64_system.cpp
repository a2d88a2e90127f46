// emulator64's system instructions: control and debug registers, CLTS,
// LMSW/SMSW, the descriptor-table registers (10-byte forms in 64-bit mode),
// LLDT/LTR with the 16-byte system descriptors of long mode, LAR/LSL/VERR/
// VERW, INVLPG, segment-register loads and stores, and far JMP/CALL/RET.
#include "bt64/emulator64_step.hpp"
#include "segment_descriptor.hpp"

namespace modevisor::bt::bt64::detail {

namespace {

constexpr std::uint64_t kCr0Pe = 1, kCr0Ts = 8, kCr0Et = 0x10, kCr0Wp = 1u << 16, kCr0Nw = 1u << 29,
                        kCr0Cd = 1u << 30, kCr0Pg = 1ull << 31;
constexpr std::uint64_t kCr0Defined = 0xe005003f;  // PE MP EM TS ET NE WP AM NW CD PG
constexpr std::uint64_t kCr4De = 1u << 3, kCr4Pse = 1u << 4, kCr4Pae = 1u << 5, kCr4Pge = 1u << 7,
                        kCr4Umip = 1u << 11, kCr4La57 = 1u << 12, kCr4Vmxe = 1u << 13, kCr4Smxe = 1u << 14,
                        kCr4FsGsBase = 1u << 16, kCr4Pcide = 1u << 17, kCr4OsXsave = 1u << 18,
                        kCr4Smep = 1u << 20, kCr4Smap = 1u << 21, kCr4Pke = 1u << 22;
constexpr std::uint64_t kCr4Paging = kCr4Pse | kCr4Pae | kCr4Pge | kCr4Pcide | kCr4Smep | kCr4Smap | kCr4Pke | kCr4La57;
constexpr std::uint64_t kDr6Bd = 1u << 13, kDr7Gd = 1u << 13;

constexpr std::uint64_t mask_of(unsigned size) {
  return size >= 8 ? ~std::uint64_t{0} : (std::uint64_t{1} << (8 * size)) - 1;
}
std::uint32_t selector_error(std::uint16_t sel) { return sel & 0xfffc; }
bool is_null(std::uint16_t sel) { return selector_error(sel) == 0; }
ZydisRegisterClass class_of(const ZydisDecodedOperand& op) {
  return op.type == ZYDIS_OPERAND_TYPE_REGISTER ? ZydisRegisterGetClass(op.reg.value) : ZYDIS_REGCLASS_INVALID;
}

// ---- Control registers ----

// MAXPHYADDR: CPUID 0x80000008 EAX[7:0] (36 without the leaf, SDM vol. 3 4.1.4).
unsigned physical_address_bits(Step& st) {
  if (st.env.cpuid(0x80000000, 0)[0] < 0x80000008) return 36;
  return st.env.cpuid(0x80000008, 0)[0] & 0xff;
}

// The CR4 bits the CPU model offers (SDM vol. 3 2.5: setting any other is #GP(0)).
std::uint64_t cr4_offered(Step& st) {
  std::uint64_t bits = 0x7ff;  // VME PVI TSD DE PSE PAE MCE PGE PCE OSFXSR OSXMMEXCPT
  const std::uint32_t ecx1 = st.env.cpuid(1, 0)[2];
  if (ecx1 & (1u << 5)) bits |= kCr4Vmxe;
  if (ecx1 & (1u << 6)) bits |= kCr4Smxe;
  if (ecx1 & (1u << 17)) bits |= kCr4Pcide;
  if (ecx1 & (1u << 26)) bits |= kCr4OsXsave;
  if (st.env.cpuid(0, 0)[0] >= 7) {
    const auto leaf7 = st.env.cpuid(7, 0);
    if (leaf7[1] & 1) bits |= kCr4FsGsBase;
    if (leaf7[1] & (1u << 7)) bits |= kCr4Smep;
    if (leaf7[1] & (1u << 20)) bits |= kCr4Smap;
    if (leaf7[2] & (1u << 2)) bits |= kCr4Umip;
    if (leaf7[2] & (1u << 3)) bits |= kCr4Pke;
    if (leaf7[2] & (1u << 16)) bits |= kCr4La57;
  }
  return bits;
}

void write_cr0(Step& st, std::uint64_t v) {
  // SDM MOV CR0: bits 63:32 reserved; PG without PE, NW without CD: #GP(0).
  if ((v >> 32) || ((v & kCr0Pg) && !(v & kCr0Pe)) || ((v & kCr0Nw) && !(v & kCr0Cd))) Step::raise(Fault::gp(0));
  const std::uint64_t old = st.s.cr0;
  const bool paging_off = (old & kCr0Pg) && !(v & kCr0Pg);
  // SDM vol. 3 10.8.5: paging cannot be turned off in 64-bit mode (nor with
  // CR4.PCIDE); from compatibility mode doing so leaves long mode.
  if (paging_off && (st.mode64 || (st.s.cr4 & kCr4Pcide))) Step::raise(Fault::gp(0));
  st.s.cr0 = (v & kCr0Defined) | kCr0Et;  // other low bits are ignored; ET is fixed
  if (paging_off) st.s.efer &= ~kEferLma;
  if ((old ^ st.s.cr0) & (kCr0Pe | kCr0Wp | kCr0Pg | kCr0Cd | kCr0Nw)) st.env.paging_changed();
}

void write_cr3(Step& st, std::uint64_t v) {
  // SDM MOV CR3: with CR4.PCIDE bit 63 asks not to flush and is not stored;
  // bits beyond MAXPHYADDR are reserved (#GP(0)).
  if (st.s.cr4 & kCr4Pcide) v &= ~(std::uint64_t{1} << 63);
  if (v >> physical_address_bits(st)) Step::raise(Fault::gp(0));
  st.s.cr3 = v;
  st.env.paging_changed();
}

void write_cr4(Step& st, std::uint64_t v) {
  // SDM MOV CR4 (IA-32e mode): bits the model does not offer, clearing PAE,
  // changing LA57, setting PCIDE while CR3[11:0] != 0: #GP(0).
  if ((v & ~cr4_offered(st)) || !(v & kCr4Pae) || ((v ^ st.s.cr4) & kCr4La57)) Step::raise(Fault::gp(0));
  if ((v & kCr4Pcide) && !(st.s.cr4 & kCr4Pcide) && (st.s.cr3 & 0xfff)) Step::raise(Fault::gp(0));
  const std::uint64_t old = st.s.cr4;
  st.s.cr4 = v;
  if ((old ^ v) & kCr4Paging) st.env.paging_changed();
}

std::uint64_t control_register(const api::VcpuState& s, unsigned n) {
  switch (n) {
    case 0: return s.cr0;
    case 2: return s.cr2;
    case 3: return s.cr3;
    case 4: return s.cr4;
    default: return s.cr8;
  }
}

}  // namespace

void mov_control_register(Step& st) {
  const bool to_cr = class_of(st.ops[0]) == ZYDIS_REGCLASS_CONTROL;
  const ZydisDecodedOperand& gpr_op = st.ops[to_cr ? 1 : 0];
  const unsigned n = st.ops[to_cr ? 0 : 1].reg.value - ZYDIS_REGISTER_CR0;
  // SDM MOV CR: CR1, CR5-7, CR9-15 are #UD; any other above CPL 0 #GP(0).
  if (n != 0 && n != 2 && n != 3 && n != 4 && n != 8) Step::raise(Fault::ud());
  st.require_cpl0();
  if (!to_cr) return st.set_reg(gpr_op.reg.value, control_register(st.s, n));
  const std::uint64_t v = st.reg(gpr_op.reg.value);
  switch (n) {
    case 0: return write_cr0(st, v);
    case 2: st.s.cr2 = v; return;
    case 3: return write_cr3(st, v);
    case 4: return write_cr4(st, v);
    default:  // CR8, the TPR: bits 63:4 reserved
      if (v >> 4) Step::raise(Fault::gp(0));
      st.s.cr8 = v;
      return;
  }
}

void mov_debug_register(Step& st) {
  const bool to_dr = class_of(st.ops[0]) == ZYDIS_REGCLASS_DEBUG;
  const ZydisDecodedOperand& gpr_op = st.ops[to_dr ? 1 : 0];
  unsigned n = st.ops[to_dr ? 0 : 1].reg.value - ZYDIS_REGISTER_DR0;
  if (n > 7) Step::raise(Fault::ud());
  st.require_cpl0();
  // SDM MOV DR: DR4/DR5 are #UD with CR4.DE, else DR6/DR7.
  if (n == 4 || n == 5) {
    if (st.s.cr4 & kCr4De) Step::raise(Fault::ud());
    n += 2;
  }
  // SDM vol. 3 18.2.4: with DR7.GD any access is a #DB (a fault) with DR6.BD
  // set; the CPU clears GD to let the handler in.
  if (st.s.dr[7] & kDr7Gd) {
    st.s.dr[6] |= kDr6Bd;
    st.s.dr[7] &= ~kDr7Gd;
    Step::raise(Fault{1, false, 0});
  }
  if (!to_dr) return st.set_reg(gpr_op.reg.value, st.s.dr[n]);
  const std::uint64_t v = st.reg(gpr_op.reg.value);
  if (n < 4) {
    st.s.dr[n] = v;
    return;
  }
  if (v >> 32) Step::raise(Fault::gp(0));  // SDM MOV DR: DR6/DR7 bits 63:32 are reserved
  // DR6: bits 4-11 and 16-31 read as 1, bit 12 as 0; DR7: bit 10 as 1, 11, 12, 14, 15 as 0.
  st.s.dr[n] = n == 6 ? (v | 0xffff0ff0u) & ~std::uint64_t{0x1000} : (v | 0x400) & ~std::uint64_t{0xd800};
}

void clts(Step& st) {
  st.require_cpl0();
  st.s.cr0 &= ~kCr0Ts;
}

void lmsw(Step& st) {
  st.require_cpl0();
  // SDM LMSW: loads PE, MP, EM and TS; it can set PE but never clear it.
  const std::uint64_t v = st.read_operand(st.ops[0], 2);
  st.s.cr0 = (st.s.cr0 & ~std::uint64_t{0xe}) | (v & 0xf) | (st.s.cr0 & kCr0Pe);
}

void smsw(Step& st) {
  st.require_umip_allows();
  // SDM SMSW: 16 bits to memory; a register gets CR0 at its own width.
  const ZydisDecodedOperand& op = st.ops[0];
  if (op.type == ZYDIS_OPERAND_TYPE_MEMORY) return st.write_operand(op, st.s.cr0, 2);
  st.set_reg(op.reg.value, st.s.cr0);
}

namespace {

api::DescriptorTable& descriptor_table(Step& st) {
  const auto m = st.insn.mnemonic;
  return (m == ZYDIS_MNEMONIC_LGDT || m == ZYDIS_MNEMONIC_SGDT) ? st.s.gdtr : st.s.idtr;
}

// The base part of a pseudo-descriptor: 8 bytes in 64-bit mode, 4 otherwise.
unsigned pseudo_descriptor_base_size(const Step& st) { return st.mode64 ? 8 : 4; }

}  // namespace

void load_descriptor_table(Step& st) {
  st.require_cpl0();
  const ZydisDecodedOperand& op = st.ops[0];
  const unsigned base_size = pseudo_descriptor_base_size(st);
  const std::uint64_t offset = st.effective_offset(op);
  const std::uint64_t address_mask = mask_of(st.insn.address_width / 8);
  const std::uint64_t limit_at = st.linear(op.mem.segment, offset, 2, false);
  const std::uint64_t base_at = st.linear(op.mem.segment, (offset + 2) & address_mask, base_size, false);
  const auto limit = static_cast<std::uint16_t>(st.read(limit_at, 2, st.data_privilege()));
  std::uint64_t base = st.read(base_at, base_size, st.data_privilege());
  // SDM LGDT: a 16-bit operand size loads 24 bits of base (outside 64-bit
  // mode); a non-canonical base is #GP(0) in 64-bit mode.
  if (!st.mode64 && st.operand_bytes() == 2) base &= 0xffffff;
  if (st.mode64 && !is_canonical(base)) Step::raise(Fault::gp(0));
  descriptor_table(st) = api::DescriptorTable{base, limit};
}

void store_descriptor_table(Step& st) {
  st.require_umip_allows();
  const ZydisDecodedOperand& op = st.ops[0];
  const unsigned base_size = pseudo_descriptor_base_size(st);
  const std::uint64_t offset = st.effective_offset(op);
  const std::uint64_t address_mask = mask_of(st.insn.address_width / 8);
  const std::uint64_t limit_at = st.linear(op.mem.segment, offset, 2, true);
  const std::uint64_t base_at = st.linear(op.mem.segment, (offset + 2) & address_mask, base_size, true);
  const api::DescriptorTable& table = descriptor_table(st);
  st.write(limit_at, 2, table.limit, st.data_privilege());
  st.write(base_at, base_size, table.base, st.data_privilege());
}

namespace {

// An LDT or TSS descriptor of long mode (SDM vol. 3 8.2.3, 9.2.3): 16 bytes
// in the GDT, the upper 8 holding base 63:32 and a type field that must be 0;
// the base must be canonical.  `raw` gets the low 8 bytes.
api::Segment system_descriptor(Step& st, std::uint16_t sel, std::uint8_t type, std::uint64_t& raw) {
  const std::uint32_t err = selector_error(sel);
  const std::uint32_t index = sel & ~7u;
  if ((sel & 4) || index + 15 > st.s.gdtr.limit) Step::raise(Fault::gp(err));
  raw = st.read(st.s.gdtr.base + index, 8, Privilege::ImplicitSupervisor);
  api::Segment seg = decode_segment_descriptor(raw, sel);
  if (seg.s || seg.type != type) Step::raise(Fault::gp(err));
  if (!seg.present) Step::raise(Fault::np(err));
  const std::uint64_t high = st.read(st.s.gdtr.base + index + 8, 8, Privilege::ImplicitSupervisor);
  if ((high >> 40) & 0x1f) Step::raise(Fault::gp(err));
  seg.base |= (high & 0xffffffffu) << 32;
  if (!is_canonical(seg.base)) Step::raise(Fault::gp(err));
  return seg;
}

}  // namespace

void lldt(Step& st) {
  st.require_cpl0();
  const auto sel = static_cast<std::uint16_t>(st.read_operand(st.ops[0], 2));
  if (is_null(sel)) {  // SDM LLDT: a null selector leaves the LDT unusable
    st.s.ldtr = api::Segment{};
    st.s.ldtr.selector = sel;
    st.s.ldtr.unusable = true;
    return;
  }
  std::uint64_t raw = 0;
  st.s.ldtr = system_descriptor(st, sel, 2, raw);
}

void ltr(Step& st) {
  st.require_cpl0();
  const auto sel = static_cast<std::uint16_t>(st.read_operand(st.ops[0], 2));
  if (is_null(sel)) Step::raise(Fault::gp(0));
  // SDM LTR (IA-32e mode): an available 64-bit TSS (type 9), then marked busy in the GDT.
  std::uint64_t raw = 0;
  api::Segment tss = system_descriptor(st, sel, 9, raw);
  st.write(st.s.gdtr.base + (sel & ~7u) + 5, 1, ((raw >> 40) & 0xff) | 2, Privilege::ImplicitSupervisor);
  tss.type |= 2;
  st.s.tr = tss;
}

void store_system_selector(Step& st) {
  st.require_umip_allows();
  // SDM SLDT/STR: 16 bits to memory, a register zero-extended.
  const std::uint16_t sel = st.insn.mnemonic == ZYDIS_MNEMONIC_SLDT ? st.s.ldtr.selector : st.s.tr.selector;
  const ZydisDecodedOperand& op = st.ops[0];
  if (op.type == ZYDIS_OPERAND_TYPE_MEMORY) return st.write_operand(op, sel, 2);
  st.set_reg(op.reg.value, sel);
}

namespace {

// Whether LAR/LSL/VERR/VERW "see" descriptor `raw` (SDM LAR, LSL, VERR,
// VERW; the system types are long mode's: LDT, 64-bit TSS, and for LAR the
// 64-bit call gate).
bool query_sees(ZydisMnemonic m, std::uint64_t raw, std::uint16_t sel, unsigned cpl) {
  const api::Segment d = decode_segment_descriptor(raw, sel);
  const bool code = d.type & 8, conforming = code && (d.type & 4);
  const bool privileged_enough = d.dpl >= cpl && d.dpl >= (sel & 3u);
  if (d.s) {
    if (m == ZYDIS_MNEMONIC_VERR) return (!code || (d.type & 2)) && (conforming || privileged_enough);
    if (m == ZYDIS_MNEMONIC_VERW) return !code && (d.type & 2) && privileged_enough;
    return conforming || privileged_enough;
  }
  const bool lar_type = d.type == 2 || d.type == 9 || d.type == 0xb || d.type == 0xc;
  const bool lsl_type = d.type == 2 || d.type == 9 || d.type == 0xb;
  if (m == ZYDIS_MNEMONIC_LAR) return lar_type && privileged_enough;
  if (m == ZYDIS_MNEMONIC_LSL) return lsl_type && privileged_enough;
  return false;
}

}  // namespace

void descriptor_query(Step& st) {
  const auto m = st.insn.mnemonic;
  const bool verify = m == ZYDIS_MNEMONIC_VERR || m == ZYDIS_MNEMONIC_VERW;
  const auto sel = static_cast<std::uint16_t>(st.read_operand(st.ops[verify ? 0 : 1], 2));
  // A null or out-of-table selector only clears ZF (no fault); a #PF reading the table faults.
  std::optional<std::uint64_t> raw;
  if (!is_null(sel)) {
    const Outcome<std::uint64_t> r = read_descriptor(st.s, st.memory(), sel, 0);
    if (r.ok()) raw = r.value();
    else if (r.fault().vector != 13) Step::raise(r.fault());
  }
  const bool seen = raw && query_sees(m, *raw, sel, st.cpl);
  st.s.rflags = seen ? st.s.rflags | kZF : st.s.rflags & ~kZF;
  if (!seen || verify) return;
  std::uint64_t value;
  if (m == ZYDIS_MNEMONIC_LAR) {
    value = (*raw >> 32) & 0x00f0ff00u;
  } else {
    value = (*raw & 0xffff) | ((*raw >> 48) & 0xf) << 16;
    if ((*raw >> 55) & 1) value = (value << 12) | 0xfff;  // G
  }
  st.set_reg(st.ops[0].reg.value, value);
}

void invlpg(Step& st) {
  st.require_cpl0();
  // SDM INVLPG: no segment checks; a non-canonical address in 64-bit mode is a no-op.
  const ZydisDecodedOperand& op = st.ops[0];
  const std::uint64_t offset = st.effective_offset(op);
  const ZydisRegister sreg = op.mem.segment;
  std::uint64_t la;
  if (st.mode64) {
    la = offset + ((sreg == ZYDIS_REGISTER_FS || sreg == ZYDIS_REGISTER_GS) ? st.segment(sreg).base : 0);
    if (!is_canonical(la)) return;
  } else {
    la = (st.segment(sreg).base + offset) & 0xffffffffu;
  }
  st.env.invlpg(la);
}

// ---- Segment registers ----

namespace {

// DS, ES, FS or GS loaded with `sel` (SDM MOV to a segment register).  A
// null selector leaves the register unusable: Intel clears its hidden base,
// AMD keeps it (observable through FS and GS in 64-bit mode).
api::Segment data_segment(Step& st, ZydisRegister sreg, std::uint16_t sel) {
  if (is_null(sel)) {
    api::Segment seg{};
    seg.selector = sel;
    seg.unusable = true;
    if (st.vendor == Vendor::Amd) seg.base = st.segment(sreg).base;
    return seg;
  }
  const std::uint64_t raw = st.descriptor(sel, selector_error(sel));
  api::Segment seg = decode_segment_descriptor(raw, sel);
  Step::must(check_data_segment_load(seg, sel, st.cpl));
  st.mark_accessed(sel, raw);
  seg.type |= 1;
  return seg;
}

// SS loaded with `sel`: a null selector only in 64-bit mode at CPL < 3 with
// RPL = CPL (SDM MOV, POP, LSS in 64-bit mode).
api::Segment stack_segment(Step& st, std::uint16_t sel) {
  if (is_null(sel)) {
    if (!st.mode64 || st.cpl == 3 || (sel & 3u) != st.cpl) Step::raise(Fault::gp(0));
    return null_stack_segment(sel, st.cpl);
  }
  const std::uint64_t raw = st.descriptor(sel, selector_error(sel));
  api::Segment seg = decode_segment_descriptor(raw, sel);
  Step::must(check_stack_segment_load(seg, sel, st.cpl));
  st.mark_accessed(sel, raw);
  seg.type |= 1;
  return seg;
}

api::Segment loaded_segment(Step& st, ZydisRegister sreg, std::uint16_t sel) {
  if (sreg == ZYDIS_REGISTER_CS) Step::raise(Fault::ud());  // CS is loaded only by far transfers
  return sreg == ZYDIS_REGISTER_SS ? stack_segment(st, sel) : data_segment(st, sreg, sel);
}

// `shadowing`: MOV and POP to SS make interrupts wait until after the next
// instruction (SDM MOV, POP); LSS does not.
void commit_segment(Step& st, ZydisRegister sreg, const api::Segment& seg, bool shadowing = true) {
  st.segment(sreg) = seg;
  if (sreg == ZYDIS_REGISTER_SS && shadowing) st.result.interrupt_shadow = true;
}

}  // namespace

void mov_segment(Step& st) {
  if (class_of(st.ops[0]) != ZYDIS_REGCLASS_SEGMENT) {
    // SDM MOV r/m, Sreg: 16 bits to memory; a register gets the selector zero-extended.
    const std::uint16_t sel = st.segment(st.ops[1].reg.value).selector;
    if (st.ops[0].type == ZYDIS_OPERAND_TYPE_MEMORY) return st.write_operand(st.ops[0], sel, 2);
    return st.set_reg(st.ops[0].reg.value, sel);
  }
  const ZydisRegister sreg = st.ops[0].reg.value;
  const auto sel = static_cast<std::uint16_t>(st.read_operand(st.ops[1], 2));
  commit_segment(st, sreg, loaded_segment(st, sreg, sel));
}

void push_segment(Step& st) {
  // The selector zero-extended to the operand size (SDM PUSH; some CPUs
  // write only 16 bits of a 32-bit slot).
  st.push(st.segment(st.ops[0].reg.value).selector, st.operand_bytes());
}

void pop_segment(Step& st) {
  const unsigned size = st.operand_bytes();
  std::uint64_t sp = st.stack_pointer();
  const auto sel = static_cast<std::uint16_t>(st.pop_at(sp, size));
  const ZydisRegister sreg = st.ops[0].reg.value;
  const api::Segment seg = loaded_segment(st, sreg, sel);
  st.set_stack_pointer(sp);
  commit_segment(st, sreg, seg);
}

namespace {

struct FarPointer {
  std::uint16_t selector;
  std::uint64_t offset;
};

// A far pointer in memory: the offset (operand-size bytes), then the selector.
FarPointer read_far_pointer(Step& st, const ZydisDecodedOperand& op, unsigned offset_size) {
  const std::uint64_t ea = st.effective_offset(op);
  const std::uint64_t address_mask = mask_of(st.insn.address_width / 8);
  const std::uint64_t offset_at = st.linear(op.mem.segment, ea, offset_size, false);
  const std::uint64_t selector_at = st.linear(op.mem.segment, (ea + offset_size) & address_mask, 2, false);
  const std::uint64_t offset = st.read(offset_at, offset_size, st.data_privilege());
  const auto sel = static_cast<std::uint16_t>(st.read(selector_at, 2, st.data_privilege()));
  return {sel, offset};
}

ZydisRegister far_pointer_register(ZydisMnemonic m) {
  switch (m) {
    case ZYDIS_MNEMONIC_LDS: return ZYDIS_REGISTER_DS;
    case ZYDIS_MNEMONIC_LES: return ZYDIS_REGISTER_ES;
    case ZYDIS_MNEMONIC_LFS: return ZYDIS_REGISTER_FS;
    case ZYDIS_MNEMONIC_LGS: return ZYDIS_REGISTER_GS;
    default: return ZYDIS_REGISTER_SS;
  }
}

// CS's hidden part after a far transfer: the descriptor with RPL = CPL, accessed.
void load_code_segment(Step& st, const api::Segment& code, std::uint16_t sel, unsigned cpl) {
  st.s.cs = code;
  st.s.cs.selector = static_cast<std::uint16_t>((sel & ~3u) | cpl);
  st.s.cs.type |= 1;
}

// SDM far JMP/CALL/RET: a target in 64-bit code must be canonical, one in
// compatibility-mode code within CS.limit (#GP(0)).
void check_target_rip(const api::Segment& code, std::uint64_t rip) {
  if (code.l ? !is_canonical(rip) : rip > code.limit) Step::raise(Fault::gp(0));
}

// The code segment a far JMP/CALL names (SDM JMP/CALL, protected mode):
// not null (#GP(0)); a code segment the CPL may enter directly; in IA-32e
// mode L and D not both set.  Call gates are not emulated; TSS and task
// gates are #GP(selector) in IA-32e mode.
api::Segment far_target(Step& st, std::uint16_t sel, std::uint64_t& raw) {
  if (is_null(sel)) Step::raise(Fault::gp(0));
  raw = st.descriptor(sel, selector_error(sel));
  const api::Segment code = decode_segment_descriptor(raw, sel);
  if (!code.s) {
    if (code.type == 0xc) Step::not_emulated("a far transfer through a call gate is not emulated");
    Step::raise(Fault::gp(selector_error(sel)));
  }
  Step::must(check_far_transfer_target(code, sel, st.cpl));
  if (code.l && code.db) Step::raise(Fault::gp(selector_error(sel)));
  return code;
}

// The code segment a far RET returns to (SDM RET, protected mode): not null
// (#GP(0)); code, RPL >= CPL, conforming DPL <= RPL, else DPL = RPL, L and D
// not both set (#GP(selector)); present (#NP(selector)).
api::Segment return_target(Step& st, std::uint16_t sel, std::uint64_t& raw) {
  if (is_null(sel)) Step::raise(Fault::gp(0));
  const std::uint32_t err = selector_error(sel);
  raw = st.descriptor(sel, err);
  const api::Segment code = decode_segment_descriptor(raw, sel);
  const unsigned rpl = sel & 3;
  const bool is_code = code.s && (code.type & 8), conforming = is_code && (code.type & 4);
  if (!is_code || rpl < st.cpl || (conforming ? code.dpl > rpl : code.dpl != rpl) || (code.l && code.db))
    Step::raise(Fault::gp(err));
  if (!code.present) Step::raise(Fault::np(err));
  return code;
}

}  // namespace

void load_far_pointer(Step& st) {
  // SDM LDS/LES/LFS/LGS/LSS: the offset then the selector; the register
  // and the segment change only when the load succeeds.
  const FarPointer p = read_far_pointer(st, st.ops[1], st.operand_bytes());
  const ZydisRegister sreg = far_pointer_register(st.insn.mnemonic);
  const api::Segment seg = loaded_segment(st, sreg, p.selector);
  st.set_reg(st.ops[0].reg.value, p.offset);
  commit_segment(st, sreg, seg, false);
}

void far_jump_or_call(Step& st) {
  const unsigned size = st.operand_bytes();
  const ZydisDecodedOperand& op = st.ops[0];
  const FarPointer target = op.type == ZYDIS_OPERAND_TYPE_POINTER ? FarPointer{op.ptr.segment, op.ptr.offset}
                                                                  : read_far_pointer(st, op, size);
  std::uint64_t raw = 0;
  const api::Segment code = far_target(st, target.selector, raw);
  const std::uint64_t rip = target.offset & mask_of(size);
  check_target_rip(code, rip);
  std::uint64_t sp = st.stack_pointer();
  const bool call = st.insn.mnemonic == ZYDIS_MNEMONIC_CALL;
  if (call) {  // CS then the return RIP, at the operand size
    st.push_at(sp, st.s.cs.selector, size);
    st.push_at(sp, st.next_rip, size);
  }
  st.mark_accessed(target.selector, raw);
  if (call) st.set_stack_pointer(sp);
  load_code_segment(st, code, target.selector, st.cpl);
  st.s.rip = rip;
  st.rip_set = true;
}

void far_return(Step& st) {
  const unsigned size = st.operand_bytes();
  const std::uint64_t release = st.ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE ? st.ops[0].imm.value.u & 0xffff : 0;
  const std::uint64_t stack_mask = mask_of(st.stack_address_size());
  std::uint64_t sp = st.stack_pointer();
  const std::uint64_t rip = st.pop_at(sp, size) & mask_of(size);
  const auto sel = static_cast<std::uint16_t>(st.pop_at(sp, size));
  std::uint64_t raw = 0;
  const api::Segment code = return_target(st, sel, raw);
  const unsigned rpl = sel & 3;
  sp = (sp + release) & stack_mask;
  if (rpl == st.cpl) {
    check_target_rip(code, rip);
    st.mark_accessed(sel, raw);
    st.set_stack_pointer(sp);
  } else {
    // To an outer ring: SS:RSP come off the stack too (SDM RET, return to
    // outer privilege level); a null SS only back to 64-bit mode below CPL 3.
    const std::uint64_t new_sp = st.pop_at(sp, size);
    const auto ss_sel = static_cast<std::uint16_t>(st.pop_at(sp, size));
    api::Segment stack;
    if (is_null(ss_sel)) {
      if (!code.l || rpl == 3) Step::raise(Fault::gp(0));
      stack = null_stack_segment(ss_sel, rpl);
    } else {
      const std::uint64_t ss_raw = st.descriptor(ss_sel, selector_error(ss_sel));
      stack = decode_segment_descriptor(ss_raw, ss_sel);
      Step::must(check_stack_segment_load(stack, ss_sel, rpl));
      stack.type |= 1;
    }
    check_target_rip(code, rip);
    st.mark_accessed(sel, raw);
    st.s.ss = stack;
    const unsigned new_stack_size = code.l ? 8 : (stack.db ? 4 : 2);
    st.set_gpr(api::gpr::rsp, new_stack_size, new_sp + release);
    null_inaccessible_data_segments(st.s, rpl);
  }
  load_code_segment(st, code, sel, rpl);
  st.s.rip = rip;
  st.rip_set = true;
}

}  // namespace modevisor::bt::bt64::detail
