// Monitor-side emulation of the instructions translated code leaves to the
// monitor: privileged and sensitive instructions, instructions invalid in
// 64-bit mode, string instructions, and accesses that hit MMIO.
#include <sys/mman.h>
#include <x86intrin.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "io_permission.hpp"
#include "vcpu.hpp"

namespace modevisor::bt {

namespace {
constexpr std::uint32_t kIF = 0x200, kIOPL = 0x3000, kAC = 0x40000, kVM = 0x20000, kRF = 0x10000, kTF = 0x100;
constexpr std::uint32_t kPopfMask = 0x00257fd5;
constexpr std::uint32_t kCF = 1, kPF = 4, kAF = 0x10, kZF = 0x40, kSF = 0x80, kOF = 0x800, kDF = 0x400;

std::uint32_t flags_of_cmp(std::uint32_t a, std::uint32_t b, unsigned size) {
  std::uint64_t f;
  switch (size) {
    case 1: asm volatile("cmpb %b2, %b1\n\tpushfq\n\tpopq %0" : "=r"(f) : "q"(a), "q"(b) : "cc"); break;
    case 2: asm volatile("cmpw %w2, %w1\n\tpushfq\n\tpopq %0" : "=r"(f) : "r"(a), "r"(b) : "cc"); break;
    default: asm volatile("cmpl %2, %1\n\tpushfq\n\tpopq %0" : "=r"(f) : "r"(a), "r"(b) : "cc"); break;
  }
  return static_cast<std::uint32_t>(f) & 0x8d5;
}

// Jcc/SETcc/CMOVcc condition `cc` (the opcode's low nibble) on EFLAGS.
bool condition_holds(unsigned cc, std::uint32_t f) {
  const bool cf = f & kCF, zf = f & kZF, sf = f & kSF, of = f & kOF, pf = f & kPF;
  bool r = false;
  switch (cc >> 1) {
    case 0: r = of; break;
    case 1: r = cf; break;
    case 2: r = zf; break;
    case 3: r = cf || zf; break;
    case 4: r = sf; break;
    case 5: r = pf; break;
    case 6: r = sf != of; break;
    default: r = zf || sf != of; break;
  }
  return (cc & 1) ? !r : r;
}

std::uint32_t szp(std::uint8_t v) {
  return (v == 0 ? kZF : 0) | (v & 0x80 ? kSF : 0) | (__builtin_parity(v) ? 0 : kPF);
}

std::string describe(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops, std::uint32_t eip) {
  ZydisFormatter f;
  ZydisFormatterInit(&f, ZYDIS_FORMATTER_STYLE_INTEL);
  char buf[128];
  ZydisFormatterFormatInstruction(&f, &insn, ops, insn.operand_count_visible, buf, sizeof buf, eip, nullptr);
  return buf;
}
}  // namespace

std::uint32_t Vcpu::get_reg(int zr) const {
  auto r = static_cast<ZydisRegister>(zr);
  const auto& g = ctx_->gpr;
  switch (ZydisRegisterGetClass(r)) {
    case ZYDIS_REGCLASS_GPR32: return static_cast<std::uint32_t>(g[r - ZYDIS_REGISTER_EAX]);
    case ZYDIS_REGCLASS_GPR16: return static_cast<std::uint32_t>(g[r - ZYDIS_REGISTER_AX]) & 0xffff;
    case ZYDIS_REGCLASS_GPR8: {
      int id = r - ZYDIS_REGISTER_AL;
      if (id < 4) return static_cast<std::uint32_t>(g[id]) & 0xff;
      return (static_cast<std::uint32_t>(g[id - 4]) >> 8) & 0xff;
    }
    default: throw std::runtime_error("bt-swmmu: emulator: unexpected register operand");
  }
}

void Vcpu::set_reg(int zr, std::uint32_t v) {
  auto r = static_cast<ZydisRegister>(zr);
  auto& g = ctx_->gpr;
  switch (ZydisRegisterGetClass(r)) {
    case ZYDIS_REGCLASS_GPR32: g[r - ZYDIS_REGISTER_EAX] = v; break;
    case ZYDIS_REGCLASS_GPR16: {
      auto& x = g[r - ZYDIS_REGISTER_AX];
      x = (x & 0xffff0000u) | (v & 0xffff);
      break;
    }
    case ZYDIS_REGCLASS_GPR8: {
      int id = r - ZYDIS_REGISTER_AL;
      if (id < 4) g[id] = (g[id] & 0xffffff00u) | (v & 0xff);
      else g[id - 4] = (g[id - 4] & 0xffff00ffu) | ((v & 0xff) << 8);
      break;
    }
    default: throw std::runtime_error("bt-swmmu: emulator: unexpected register operand");
  }
}

std::uint32_t Vcpu::effective_offset(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand& op) {
  std::uint32_t a = op.mem.disp.has_displacement ? static_cast<std::uint32_t>(op.mem.disp.value) : 0;
  if (op.mem.base != ZYDIS_REGISTER_NONE) a += get_reg(op.mem.base);
  if (op.mem.index != ZYDIS_REGISTER_NONE) a += get_reg(op.mem.index) * op.mem.scale;
  return insn.address_width == 16 ? a & 0xffff : a;
}

namespace {
// The flat 4 GiB code (type 0xb) or data (type 3) segment SYSENTER and
// SYSEXIT load, built in one piece (no field-by-field copy on this path).
api::Segment flat_segment(std::uint16_t selector, std::uint8_t type, std::uint8_t dpl) {
  return api::Segment{.selector = selector, .base = 0, .limit = 0xffffffffu, .type = type, .s = true, .dpl = dpl,
                      .present = true, .avl = false, .l = false, .db = true, .g = true, .unusable = false};
}
}  // namespace

std::uint32_t Vcpu::ea(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand& op) {
  std::uint32_t a = effective_offset(insn, op);
  int s = op.mem.segment - ZYDIS_REGISTER_ES;
  if (s >= 0 && s < 6) {
    check_segment_access(s, a, op.size / 8, (op.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) != 0);
    a += static_cast<std::uint32_t>(ctx_->seg_base[s]);
  }
  return a;
}

std::uint32_t Vcpu::linear_unchecked(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand& op) {
  std::uint32_t a = effective_offset(insn, op);
  int s = op.mem.segment - ZYDIS_REGISTER_ES;
  if (s >= 0 && s < 6) a += static_cast<std::uint32_t>(ctx_->seg_base[s]);
  return a;
}

void Vcpu::check_segment_access(int sreg, std::uint32_t offset, unsigned size, bool write) {
  if (!limited()) {  // the flat flavour's rule: nothing limits an offset, but a null FS/GS refuses it
    if (sreg >= 4 && ctx_->null_fs_gs_bias[sreg - 4] != 0) raise(13, true, 0);
    return;
  }
  if (!ctx_->seg_window[write ? 1 : 0][sreg].allows(offset, size == 0 ? 1 : size))
    raise(limit_fault_vector(sreg), true, 0);
}

std::vector<std::string> Vcpu::set_cpu_model(const api::CpuidTable& model) { return cpuid_.set(model); }

void Vcpu::do_cpuid() {
  const CpuidAnswer a = cpuid_.answer(reg32(0), reg32(1), index_);
  reg32(0) = a.eax; reg32(3) = a.ebx; reg32(1) = a.ecx; reg32(2) = a.edx;
}

void Vcpu::do_rdtscp() {
  if (!cpuid_.features().rdtscp) raise(6);
  if ((cr4_ & 4) && cpl_ != 0) raise(13, true, 0);  // CR4.TSD
  const std::uint64_t t = msrs_.tsc(__rdtsc());
  reg32(0) = static_cast<std::uint32_t>(t);
  reg32(2) = static_cast<std::uint32_t>(t >> 32);
  reg32(1) = msrs_.tsc_aux();
}

void Vcpu::do_rdpid(const ZydisDecodedOperand& dest) {
  if (!cpuid_.features().rdpid) raise(6);
  set_reg(dest.reg.value, msrs_.tsc_aux());
}

void Vcpu::do_stac_clac(bool set) {
  if (!cpuid_.features().smap || cpl_ != 0) raise(6);
  if (set) ctx_->sysflags |= kAC;
  else ctx_->sysflags &= ~kAC;
  monitor_tlb_flush();  // the SMAP view changes with AC
}

void Vcpu::check_umip() const {
  if ((cr4_ & kCr4Umip) && cpl_ > 0) throw GuestException{13, true, 0};
}

void Vcpu::check_io_permission(std::uint16_t port, unsigned size) {
  if (real_mode()) return;
  // Virtual-8086 mode: I/O is not IOPL-sensitive, the bitmap always decides.
  if (cpl_ <= ((ctx_->sysflags & kIOPL) >> 12) && !v86()) return;
  // CPL > IOPL: the TSS I/O bitmap decides (a 32-bit TSS only).
  if (tr_.unusable || !tr_.present || (tr_.type & ~2u) != 9 || tr_.limit < 0x67) raise(13, true, 0);
  const std::uint32_t base = static_cast<std::uint32_t>(tr_.base);
  const auto iomap = static_cast<std::uint16_t>(read(base + kTssIoMapBase, 2, false));
  const std::optional<std::uint32_t> at = io_bitmap_word_offset(static_cast<std::uint32_t>(tr_.limit), iomap, port);
  if (!at || !io_bits_allow(static_cast<std::uint16_t>(read(base + *at, 2, false)), port, size)) raise(13, true, 0);
}

void Vcpu::do_rdmsr() {
  if (cpl_ != 0) raise(13, true, 0);
  const std::uint32_t idx = reg32(1);
  if (idx == MsrFile::kTscAux && !cpuid_.features().tsc_aux()) raise(13, true, 0);
  std::uint64_t v = 0;
  if (idx == 0x1b) {
    v = platform_.apic_base(index_);  // the platform's local APIC
  } else if (idx == 0xc0000080) {
    v = efer_;
  } else {
    const Outcome<std::uint64_t> r = msrs_.read(idx, __rdtsc());
    if (!r.ok()) throw r.fault();
    v = r.value();
  }
  reg32(0) = static_cast<std::uint32_t>(v);
  reg32(2) = static_cast<std::uint32_t>(v >> 32);
}

void Vcpu::do_wrmsr() {
  if (cpl_ != 0) raise(13, true, 0);
  const std::uint32_t idx = reg32(1);
  const std::uint64_t v = reg32(0) | (static_cast<std::uint64_t>(reg32(2)) << 32);
  if (idx == MsrFile::kTscAux && !cpuid_.features().tsc_aux()) raise(13, true, 0);
  if (idx == 0x1b) {
    platform_.set_apic_base(index_, v);
  } else if (idx == 0xc0000080) {
    // NXE, and LME and SCE where the CPU model offers long mode and SYSCALL
    // (for BT64 to use; SYSCALL itself is #UD under BT32).  LMA is the CPU's
    // (read-only); LME cannot change while paging is on.
    const std::uint64_t writable = 0x800ull | (cpuid_.features().long_mode ? 0x100ull : 0) |
                                   (cpuid_.features().syscall ? 0x1ull : 0);
    if (v & ~(writable | 0x400ull)) raise(13, true, 0);
    if ((cr0_ & 0x80000000u) && ((v ^ efer_) & 0x100)) raise(13, true, 0);
    efer_ = (v & writable) | (efer_ & 0x400);
    monitor_tlb_flush();
  } else {
    require(msrs_.write(idx, v, __rdtsc()));
  }
}

// MOV to/from DRn (after the CPL check): DR4 and DR5 are DR6 and DR7 while
// CR4.DE is clear, #UD while it is set; then, with DR7.GD set, the
// general-detect #DB fault (DR6.BD) instead of the access.  (QEMU 7.2 has
// no GD; KVM and the SDM do.)
unsigned Vcpu::debug_register_index(ZydisRegister reg) {
  unsigned n = reg - ZYDIS_REGISTER_DR0;
  if (n == 4 || n == 5) {
    if (cr4_ & debug_registers::kCr4De) raise(6);
    n += 2;
  }
  if (n > 7) raise(6);
  if (dr_[7] & debug_registers::kDr7GeneralDetect) {
    dr_[6] |= debug_registers::kDr6GeneralDetect;
    raise(1);
  }
  return n;
}

void Vcpu::write_dr(unsigned n, std::uint32_t v) {
  if (n == 6) v |= debug_registers::kDr6Fixed;
  if (n == 7) v |= debug_registers::kDr7Fixed;
  dr_[n] = v;
  debug_registers_changed();
}

// After DR0-DR3 or DR7 changed: the shadow MMU stops mapping the data
// breakpoints' pages, and the translations follow the instruction
// breakpoints (all are dropped).
void Vcpu::debug_registers_changed() {
  const DataBreakpoints data = DataBreakpoints::from(dr_);
  if (!(data == data_breakpoints_)) {
    data_breakpoints_ = data;
    std::uint32_t pages[8];
    const unsigned n = data.pages(pages);
    shadow_->set_watched_pages(pages, n);
  }
  const CodeBreakpoints now = CodeBreakpoints::from(dr_);
  if (now == code_breakpoints_) return;
  code_breakpoints_ = now;
  translator_->set_code_breakpoints(now);
  // The translations go at the dispatcher's next step (step_instructions):
  // the instruction being emulated may be one of their blocks.
  breakpoints_flush_pending_ = true;
}

// An I/O breakpoint on the ports of the IN/OUT just done: the #DB trap
// (DR6.Bn, the saved EIP the next instruction's).  True when delivered.
bool Vcpu::io_breakpoint(std::uint16_t port, unsigned size, std::uint32_t next) {
  const unsigned hits = debug_registers::io_hits(dr_, static_cast<std::uint32_t>(cr4_), port, size);
  if (!hits) return false;
  dr_[6] = (dr_[6] & ~0xfull) | hits;
  eip_ = next;
  deliver(1, false, 0, false, next);
  return true;
}

void Vcpu::write_cr(unsigned n, std::uint32_t v) {
  monitor_tlb_flush();
  switch (n) {
    case 0:
      v |= 0x10;
      if ((v & 0x80000000u) && !(v & 1)) raise(13, true, 0);
      if ((v & 0x80000000u) && !(cr0_ & 0x80000000u) && (efer_ & 0x100)) {
        // Paging on with EFER.LME: long mode activates (without CR4.PAE, #GP).
        // BT32 stops here with the instruction done; a hardware mode goes on.
        if (!(cr4_ & 0x20)) raise(13, true, 0);
        efer_ |= 0x400;
        cr0_ = v;
        long_mode_entered_ = "the guest activated long mode (EFER.LME set, CR0.PG turned on: EFER.LMA)";
        break;
      }
      if (!(v & 0x80000000u)) efer_ &= ~0x400ull;  // paging off leaves long mode
      // Clearing PE enters real mode: the segment caches keep their hidden
      // parts until reloaded (the CPU's rule), CPL is 0 (MOV CR0 needs it).
      cr0_ = v;
      break;
    case 2: cr2_ = v; break;
    case 3: cr3_ = v; break;
    case 4:
      if (v & ~cpuid_.features().cr4_mask()) raise(13, true, 0);
      cr4_ = v;
      break;
    default: raise(6);
  }
}

void Vcpu::string_op(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops) {
  (void)ops;
  const bool rep = insn.attributes & (ZYDIS_ATTRIB_HAS_REP | ZYDIS_ATTRIB_HAS_REPE | ZYDIS_ATTRIB_HAS_REPNE);
  const bool repne = insn.attributes & ZYDIS_ATTRIB_HAS_REPNE;
  const unsigned size = insn.operand_width / 8;
  const bool user = cpl_ == 3;
  int src_sreg = 3;  // DS unless overridden
  for (unsigned i = 0; i < insn.operand_count; ++i)
    if (ops[i].type == ZYDIS_OPERAND_TYPE_MEMORY &&
        (ops[i].mem.base == ZYDIS_REGISTER_ESI || ops[i].mem.base == ZYDIS_REGISTER_SI))
      src_sreg = ops[i].mem.segment - ZYDIS_REGISTER_ES;
  const std::uint32_t src_base = static_cast<std::uint32_t>(ctx_->seg_base[src_sreg]);
  const std::uint32_t es_base = static_cast<std::uint32_t>(ctx_->seg_base[0]);
  const std::int32_t step = (ctx_->rflags & kDF) ? -static_cast<std::int32_t>(size) : static_cast<std::int32_t>(size);
  const std::uint32_t mask = size == 4 ? 0xffffffffu : (1u << (8 * size)) - 1;
  const auto m = insn.mnemonic;
  // Fast path for REP MOVS/STOS over RAM: whole page-bounded chunks straight
  // on guest memory, element by element (so overlapping copies behave like
  // the CPU's).  Falls back to the general loop at MMIO or page boundaries.
  const bool is_movs = m == ZYDIS_MNEMONIC_MOVSB || m == ZYDIS_MNEMONIC_MOVSW || m == ZYDIS_MNEMONIC_MOVSD;
  const bool is_stos = m == ZYDIS_MNEMONIC_STOSB || m == ZYDIS_MNEMONIC_STOSW || m == ZYDIS_MNEMONIC_STOSD;
  // A 16-bit address size: SI, DI and CX, wrapping at 64 KiB (general loop only).
  const bool a16 = insn.address_width == 16;
  const std::uint32_t amask = a16 ? 0xffffu : 0xffffffffu;
  auto reg_a = [&](unsigned i) { return reg32(i) & amask; };
  auto set_a = [&](unsigned i, std::uint32_t v) { reg32(i) = (reg32(i) & ~amask) | (v & amask); };
  const bool trap_flag = ctx_->sysflags & kTF;  // one iteration per step (the general loop)
  // (Not under data breakpoints: their accesses are noted one by one.)
  if (rep && (is_movs || is_stos) && !a16 && !limited() && !trap_flag && !data_breakpoints_.any()) {
    for (int chunks = 0; chunks < 64 && reg32(1) != 0; ++chunks) {
      std::uint32_t& esi = reg32(6);
      std::uint32_t& edi = reg32(7);
      const std::uint32_t dla = es_base + edi;
      const std::uint32_t sla = src_base + esi;
      auto room = [&](std::uint32_t la) {  // whole elements before leaving the page
        const std::uint32_t in_page = la & 0xfff;
        const std::uint32_t bytes = step > 0 ? 0x1000 - in_page : in_page + size;
        return bytes / size;
      };
      if ((dla & 0xfff) % size || (is_movs && (sla & 0xfff) % size)) break;  // misaligned: general loop
      std::uint32_t n = std::min<std::uint32_t>(reg32(1), room(dla));
      if (is_movs) n = std::min(n, room(sla));
      if (n == 0) break;
      const std::uint64_t dpa = lin_to_phys(dla, true, user, false);
      const std::uint64_t spa = is_movs ? lin_to_phys(sla, false, user, false) : 0;
      if (dpa + size > mem_.size() || (is_movs && spa + size > mem_.size())) break;
      note_guest_write(dpa & ~0xfffull, 4096);  // the page's rest may be written: all of it
      std::uint8_t* base = mem_.host_base();
      for (std::uint32_t i = 0; i < n; ++i) {
        const std::int64_t off = static_cast<std::int64_t>(i) * step;
        std::uint32_t v = reg32(0) & mask;
        if (is_movs) std::memcpy(&v, base + spa + off, size);
        std::memcpy(base + dpa + off, &v, size);
      }
      edi += static_cast<std::uint32_t>(step * static_cast<std::int32_t>(n));
      if (is_movs) esi += static_cast<std::uint32_t>(step * static_cast<std::int32_t>(n));
      reg32(1) -= n;
    }
    if (reg32(1) == 0) return;
  }
  // Bounded work per call: long REP loops resume through the dispatcher so
  // interrupts and stop requests are seen.  Under TF one iteration: the
  // single-step trap comes after each (EIP still the instruction's).
  const int iterations = trap_flag ? 1 : 4096;
  for (int budget = iterations; budget > 0; --budget) {
    if (rep && reg_a(1) == 0) return;
    std::uint32_t esi = reg_a(6), edi = reg_a(7);  // written back once the iteration has succeeded
    bool stop = false;
    if (limited()) {  // the element's source and destination within their segments' limits
      const bool reads_src = !(is_stos || m == ZYDIS_MNEMONIC_SCASB || m == ZYDIS_MNEMONIC_SCASW ||
                               m == ZYDIS_MNEMONIC_SCASD || m == ZYDIS_MNEMONIC_INSB || m == ZYDIS_MNEMONIC_INSW ||
                               m == ZYDIS_MNEMONIC_INSD);
      const bool uses_dst = !(m == ZYDIS_MNEMONIC_LODSB || m == ZYDIS_MNEMONIC_LODSW || m == ZYDIS_MNEMONIC_LODSD ||
                              m == ZYDIS_MNEMONIC_OUTSB || m == ZYDIS_MNEMONIC_OUTSW || m == ZYDIS_MNEMONIC_OUTSD);
      const bool writes_dst = uses_dst && !(m == ZYDIS_MNEMONIC_CMPSB || m == ZYDIS_MNEMONIC_CMPSW ||
                                            m == ZYDIS_MNEMONIC_CMPSD || m == ZYDIS_MNEMONIC_SCASB ||
                                            m == ZYDIS_MNEMONIC_SCASW || m == ZYDIS_MNEMONIC_SCASD);
      if (reads_src) check_segment_access(src_sreg, esi, size, false);
      if (uses_dst) check_segment_access(0, edi, size, writes_dst);
    }
    switch (m) {
      case ZYDIS_MNEMONIC_MOVSB: case ZYDIS_MNEMONIC_MOVSW: case ZYDIS_MNEMONIC_MOVSD:
        write(es_base + edi, size, read(src_base + esi, size, user), user);
        esi += step; edi += step;
        break;
      case ZYDIS_MNEMONIC_STOSB: case ZYDIS_MNEMONIC_STOSW: case ZYDIS_MNEMONIC_STOSD:
        write(es_base + edi, size, reg32(0) & mask, user);
        edi += step;
        break;
      case ZYDIS_MNEMONIC_LODSB: case ZYDIS_MNEMONIC_LODSW: case ZYDIS_MNEMONIC_LODSD: {
        std::uint32_t v = read(src_base + esi, size, user);
        reg32(0) = size == 4 ? v : (reg32(0) & ~mask) | v;
        esi += step;
        break;
      }
      case ZYDIS_MNEMONIC_CMPSB: case ZYDIS_MNEMONIC_CMPSW: case ZYDIS_MNEMONIC_CMPSD: {
        std::uint32_t a = read(src_base + esi, size, user), b = read(es_base + edi, size, user);
        std::uint32_t f = flags_of_cmp(a, b, size);
        ctx_->rflags = (ctx_->rflags & ~0x8d5ull) | f;
        esi += step; edi += step;
        if (rep) stop = repne ? (f & kZF) : !(f & kZF);
        break;
      }
      case ZYDIS_MNEMONIC_SCASB: case ZYDIS_MNEMONIC_SCASW: case ZYDIS_MNEMONIC_SCASD: {
        std::uint32_t b = read(es_base + edi, size, user);
        std::uint32_t f = flags_of_cmp(reg32(0) & mask, b, size);
        ctx_->rflags = (ctx_->rflags & ~0x8d5ull) | f;
        edi += step;
        if (rep) stop = repne ? (f & kZF) : !(f & kZF);
        break;
      }
      case ZYDIS_MNEMONIC_INSB: case ZYDIS_MNEMONIC_INSW: case ZYDIS_MNEMONIC_INSD: {
        check_io_permission(static_cast<std::uint16_t>(reg32(2)), size);
        // Probe the destination first so a #PF does not lose the port read.
        lin_to_phys(es_base + edi, true, user, false);
        ++counters_.io_exits;
        std::uint32_t v = platform_read().io_in(index_, static_cast<std::uint16_t>(reg32(2)), size);
        write(es_base + edi, size, v & mask, user);
        edi += step;
        break;
      }
      case ZYDIS_MNEMONIC_OUTSB: case ZYDIS_MNEMONIC_OUTSW: case ZYDIS_MNEMONIC_OUTSD: {
        check_io_permission(static_cast<std::uint16_t>(reg32(2)), size);
        std::uint32_t v = read(src_base + esi, size, user);
        ++counters_.io_exits;
        platform_write().io_out(index_, static_cast<std::uint16_t>(reg32(2)), size, v);
        esi += step;
        break;
      }
      default:
        throw std::runtime_error("bt-swmmu: emulator: unexpected string instruction");
    }
    set_a(6, esi);
    set_a(7, edi);
    if (!rep) return;
    set_a(1, reg_a(1) - 1);
    if (stop || reg_a(1) == 0) return;
    if (data_hits_) break;  // a data breakpoint: the trap comes after this iteration
  }
  throw 0;  // budget exhausted: caller resumes this instruction later
}

// Guest-linear bytes through the guest's page tables, split at page
// boundaries (each page may be RAM or a device) and into naturally sized
// pieces of at most 8 bytes (what a device access can be).  Unassigned
// physical addresses read as all ones and ignore writes (the platform's
// answer, as on a PC and in QEMU).
void Vcpu::read_linear(std::uint32_t la, std::uint8_t* bytes, unsigned size, bool user) {
  note_data_access(la, size, false);
  unsigned done = 0;
  while (done < size) {
    const std::uint32_t at = la + done;
    unsigned piece = std::min(size - done, 0x1000 - (at & 0xfff));
    piece = piece >= 8 ? 8 : piece >= 4 ? 4 : piece >= 2 ? 2 : 1;
    const std::uint64_t v = read_phys(lin_to_phys(at, false, user, false), piece);
    std::memcpy(bytes + done, &v, piece);
    done += piece;
  }
}

void Vcpu::write_linear(std::uint32_t la, const std::uint8_t* bytes, unsigned size, bool user) {
  note_data_access(la, size, true);
  // Every page is checked before anything is written, as the CPU does.
  for (std::uint32_t at = la; at - la < size; at = (at & ~0xfffu) + 0x1000) lin_to_phys(at, true, user, false);
  unsigned done = 0;
  while (done < size) {
    const std::uint32_t at = la + done;
    unsigned piece = std::min(size - done, 0x1000 - (at & 0xfff));
    piece = piece >= 8 ? 8 : piece >= 4 ? 4 : piece >= 2 ? 2 : 1;
    std::uint64_t v = 0;
    std::memcpy(&v, bytes + done, piece);
    write_phys(lin_to_phys(at, true, user, false), piece, v);
    done += piece;
  }
}

// BT/BTS/BTR/BTC with a register bit offset reach memory at the operand's
// address plus the signed offset divided by 8 (up to +-256 MiB): run natively
// on the stage that would be outside it.  The word holding the bit is read
// (and written back) through the guest's page tables instead.
bool Vcpu::emulate_bit_string_access(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops,
                                 std::uint32_t next) {
  const auto m = insn.mnemonic;
  if (m != ZYDIS_MNEMONIC_BT && m != ZYDIS_MNEMONIC_BTS && m != ZYDIS_MNEMONIC_BTR && m != ZYDIS_MNEMONIC_BTC)
    return false;
  if (ops[0].type != ZYDIS_OPERAND_TYPE_MEMORY) return false;
  const bool user = cpl_ == 3;
  const unsigned bits = ops[0].size;  // 16 or 32
  const unsigned bytes = bits / 8;
  std::int32_t offset;
  if (ops[1].type == ZYDIS_OPERAND_TYPE_REGISTER) {
    offset = bits == 16 ? static_cast<std::int16_t>(get_reg(ops[1].reg.value))
                        : static_cast<std::int32_t>(get_reg(ops[1].reg.value));
  } else {
    offset = static_cast<std::int32_t>(ops[1].imm.value.u & (bits - 1));  // immediate: within the operand
  }
  // Floor division: a negative offset reaches the words below the operand.
  const std::int32_t word = offset >= 0 ? offset / static_cast<std::int32_t>(bits)
                                        : -((-(offset + 1)) / static_cast<std::int32_t>(bits)) - 1;
  const unsigned bit = static_cast<unsigned>(offset - word * static_cast<std::int32_t>(bits));
  // The word the bit lies in, which may be outside the operand: its own limit check.
  std::uint32_t word_offset = effective_offset(insn, ops[0]) + static_cast<std::uint32_t>(word) * bytes;
  if (insn.address_width == 16) word_offset &= 0xffff;  // formed with the address size, as the operand's
  const int sreg = ops[0].mem.segment - ZYDIS_REGISTER_ES;
  check_segment_access(sreg, word_offset, bytes, m != ZYDIS_MNEMONIC_BT);
  const std::uint32_t la = static_cast<std::uint32_t>(ctx_->seg_base[sreg]) + word_offset;
  std::uint8_t raw[4] = {};
  read_linear(la, raw, bytes, user);
  std::uint32_t value = 0;
  std::memcpy(&value, raw, bytes);
  const bool was_set = (value >> bit) & 1;
  std::uint32_t updated = value;
  if (m == ZYDIS_MNEMONIC_BTS) updated |= 1u << bit;
  if (m == ZYDIS_MNEMONIC_BTR) updated &= ~(1u << bit);
  if (m == ZYDIS_MNEMONIC_BTC) updated ^= 1u << bit;
  if (m != ZYDIS_MNEMONIC_BT) {
    std::memcpy(raw, &updated, bytes);
    write_linear(la, raw, bytes, user);
  }
  ctx_->rflags = (ctx_->rflags & ~std::uint64_t{kCF}) | (was_set ? kCF : 0);  // other flags: as the CPU leaves them
  eip_ = next;
  return true;
}

// Stack and near-branch instructions whose stack or memory operand is MMIO
// or unassigned (e.g. ESP above guest RAM): the stack accesses go to the
// device or read all ones, as on hardware, instead of being refused.
bool Vcpu::emulate_mmio_stack_or_branch(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops,
                                        std::uint32_t next) {
  const bool user = cpl_ == 3;
  const auto ss = static_cast<std::uint32_t>(ss_.base);
  const unsigned width = insn.operand_width / 8;  // 2 or 4
  auto value_of = [&](const ZydisDecodedOperand& o) -> std::uint32_t {
    switch (o.type) {
      case ZYDIS_OPERAND_TYPE_REGISTER: return get_reg(o.reg.value);
      case ZYDIS_OPERAND_TYPE_MEMORY: return read(ea(insn, o), o.size / 8, user);
      case ZYDIS_OPERAND_TYPE_IMMEDIATE: return static_cast<std::uint32_t>(o.imm.value.s);
      default: throw std::runtime_error("bt-swmmu: emulator: unexpected operand");
    }
  };
  auto is_segment = [](const ZydisDecodedOperand& o) {
    return o.type == ZYDIS_OPERAND_TYPE_REGISTER && ZydisRegisterGetClass(o.reg.value) == ZYDIS_REGCLASS_SEGMENT;
  };
  auto mask = [&](std::uint32_t v) { return width == 2 ? v & 0xffff : v; };
  const std::uint32_t esp = reg32(4);
  switch (insn.mnemonic) {
    case ZYDIS_MNEMONIC_PUSH: {
      if (is_segment(ops[0])) return false;
      const std::uint32_t v = value_of(ops[0]);  // ESP as it was before the push
      write(ss + esp - width, width, v, user);
      reg32(4) = esp - width;
      eip_ = next;
      return true;
    }
    case ZYDIS_MNEMONIC_POP: {
      if (is_segment(ops[0])) return false;
      const std::uint32_t v = read(ss + esp, width, user);
      reg32(4) = esp + width;  // a memory destination is addressed with the incremented ESP
      try {
        if (ops[0].type == ZYDIS_OPERAND_TYPE_MEMORY) write(ea(insn, ops[0]), width, v, user);
        else set_reg(ops[0].reg.value, v);
      } catch (...) {
        reg32(4) = esp;
        throw;
      }
      eip_ = next;
      return true;
    }
    case ZYDIS_MNEMONIC_LEAVE: {
      const std::uint32_t ebp = reg32(5);
      const std::uint32_t v = read(ss + ebp, width, user);
      reg32(4) = ebp + width;
      if (width == 2) reg32(5) = (reg32(5) & 0xffff0000u) | (v & 0xffff);
      else reg32(5) = v;
      eip_ = next;
      return true;
    }
    case ZYDIS_MNEMONIC_CALL: {
      if (insn.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR) return false;
      const std::uint32_t target = ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE
                                       ? next + static_cast<std::uint32_t>(ops[0].imm.value.s)
                                       : value_of(ops[0]);
      write(ss + esp - width, width, next, user);
      reg32(4) = esp - width;
      eip_ = mask(target);
      return true;
    }
    case ZYDIS_MNEMONIC_RET: {
      if (insn.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR) return false;
      const std::uint32_t target = read(ss + esp, width, user);
      const std::uint32_t extra = insn.operand_count_visible ? static_cast<std::uint32_t>(ops[0].imm.value.u) : 0;
      reg32(4) = esp + width + extra;
      eip_ = mask(target);
      return true;
    }
    case ZYDIS_MNEMONIC_JMP: {
      if (insn.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR || ops[0].type != ZYDIS_OPERAND_TYPE_MEMORY) return false;
      eip_ = mask(value_of(ops[0]));
      return true;
    }
    default:
      return false;
  }
}

// An instruction whose one memory operand is MMIO: read the device (if the
// instruction reads memory) into the stage, run the instruction natively with
// that operand redirected to the stage, then write the device (if it writes).
// Only instructions whose whole access is their operand get here: the
// operand's size bounds what they touch, and the stage holds the widest.
bool Vcpu::emulate_mmio_native(std::uint32_t eip, const ZydisDecodedInstruction& insn,
                               const ZydisDecodedOperand* ops, Block* block) {
  int mi = -1;
  for (unsigned i = 0; i < insn.operand_count; ++i) {
    if (ops[i].type != ZYDIS_OPERAND_TYPE_MEMORY) continue;
    if (mi >= 0 || ops[i].visibility != ZYDIS_OPERAND_VISIBILITY_EXPLICIT) return false;
    mi = static_cast<int>(i);
  }
  if (mi < 0 || insn.mnemonic == ZYDIS_MNEMONIC_LEA) return false;
  const auto& op = ops[mi];
  // VSIB operands address a vector of places; a bit test's register offset
  // reaches beyond its operand (emulate_bit_string_access handles it).
  if (op.mem.type != ZYDIS_MEMOP_TYPE_MEM) return false;
  const unsigned size = op.size / 8;
  if (size == 0 || size > MmioStage::kBytes) return false;
  const bool reads = op.actions & ZYDIS_OPERAND_ACTION_MASK_READ;
  const bool writes = op.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE;
  const bool user = cpl_ == 3;
  const std::uint32_t la = ea(insn, op);
  // Permission checks on every page of the operand, before any device access.
  for (std::uint32_t at = la; at - la < size; at = (at & ~0xfffu) + 0x1000) lin_to_phys(at, writes, user, false);
  std::uint8_t* stage = mmio_stage_.data();
  Block* b = block && block->valid && block->eip == eip && block->tkey == tkey_ ? block->staged : nullptr;
  if (!b) {
    // Translate the single instruction with the operand redirected.
    const PhysMem& pm = shadow_->phys();
    const std::uint32_t code_la = code_linear(eip);
    WalkResult w = walk(pm, paging(), code_la, Access{false, user, true}, false);
    if (!w.ok || w.pa >= pm.size) return false;
    std::uint8_t buf[4096 + 16];
    CodeWindow cw;
    cw.cs_base = static_cast<std::uint32_t>(cs_.base);
    const std::uint32_t next_page = (code_la & ~0xfffu) + 0x1000;
    cw.first_page_bytes = next_page - code_la;
    std::memcpy(buf, pm.base + w.pa, cw.first_page_bytes);
    cw.total = cw.first_page_bytes;
    cw.pa_page[0] = w.pa & ~0xfffull;
    WalkResult w2 = walk(pm, paging(), next_page, Access{false, user, true}, false);
    if (w2.ok && w2.pa < pm.size) {
      cw.pa_page[1] = w2.pa & ~0xfffull;
      std::memcpy(buf + cw.total, pm.base + cw.pa_page[1], 16);
      cw.total += 16;
    }
    cw.bytes = buf;
    if (translator_->needs_flush()) {
      translator_->flush();  // `block` is gone with it
      shadow_->clear_block_maps();
      pending_patch_ = 0;
      block = nullptr;
    }
    if (translator_->translate(eip, tkey_, cw, &b, 1, true, stage) != TranslateStatus::Ok || b->special ||
        b->n_insns != 1)
      return false;
    if (block && block->valid && block->eip == eip && block->tkey == tkey_) block->staged = b;
  }
  std::memset(stage, 0, size);
  if (reads) read_linear(la, stage, size, user);
  std::uint64_t reason;
  do {
    if (poll_blocked_.exchange(false)) mprotect(poll_page(), 4096, PROT_READ);
    refresh_windows();
    in_guest_ = true;
    reason = translator_->enter(ctx_, b->entry);
    in_guest_ = false;
  } while (reason == kExitInterrupt);
  if (reason == kExitFault) {
    eip_ = ctx_->fault_eip;
    raise(static_cast<std::uint8_t>(ctx_->fault_vector), ctx_->fault_vector == 13 || ctx_->fault_vector == 12, 0);
  }
  if (writes) write_linear(la, stage, size, user);
  eip_ = static_cast<std::uint32_t>(ctx_->next_eip);
  return true;
}

// The instruction at `eip`, decoded.  A special block's instruction is
// decoded once and kept with the block (the block is dropped when its code
// is written, and its lookup checked the fetch); anything else is fetched
// through the guest's page tables, one walk per page.
const DecodedInsn& Vcpu::fetch_decoded(std::uint32_t eip, Block* b, DecodedInsn& scratch) {
  if (b && b->decoded && b->eip == eip) return *b->decoded;
  const bool user = cpl_ == 3;
  const std::uint32_t la = code_linear(eip);
  std::uint8_t bytes[16];
  unsigned n = std::min(15u, 0x1000 - (la & 0xfff));
  const std::uint64_t pa = lin_to_phys(la, false, user, true);
  for (unsigned i = 0; i < n; ++i) bytes[i] = static_cast<std::uint8_t>(read_phys(pa + i, 1));
  if (n < 15) {
    try {
      const std::uint64_t pa2 = lin_to_phys(la + n, false, user, true);
      for (unsigned i = 0; n < 15; ++i, ++n) bytes[n] = static_cast<std::uint8_t>(read_phys(pa2 + i, 1));
    } catch (const GuestException&) {
    }
  }
  static const ZydisDecoder dec32 = [] {
    ZydisDecoder d;
    ZydisDecoderInit(&d, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32);
    return d;
  }();
  static const ZydisDecoder dec16 = [] {
    ZydisDecoder d;
    ZydisDecoderInit(&d, ZYDIS_MACHINE_MODE_LEGACY_16, ZYDIS_STACK_WIDTH_16);
    return d;
  }();
  if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(cs_.db ? &dec32 : &dec16, bytes, n, &scratch.insn, scratch.ops))) {
    if (n < 15) read(la + n, 1, user, true);  // a fetch #PF, if that is why
    raise(6);
  }
  if (b && b->special && b->eip == eip && (la & 0xfff) + scratch.insn.length <= 0x1000) {
    b->decoded = std::make_unique<DecodedInsn>(scratch);
    return *b->decoded;
  }
  return scratch;
}

// DIV/IDIV translated as a monitor call (it raised #DE before): #DE for a
// zero divisor or a quotient that does not fit, else the host instruction on
// the same operands, so the (architecturally undefined) flags are the CPU's.
bool Vcpu::divide_faults(const ZydisDecodedInstruction& insn, std::uint32_t divisor) const {
  const bool is_signed = insn.mnemonic == ZYDIS_MNEMONIC_IDIV;
  const std::uint64_t lo = static_cast<std::uint32_t>(ctx_->gpr[0]), hi = static_cast<std::uint32_t>(ctx_->gpr[2]);
  switch (insn.operand_width) {
    case 8: {
      const std::uint16_t ax = static_cast<std::uint16_t>(lo);
      const std::uint8_t d = static_cast<std::uint8_t>(divisor);
      if (d == 0) return true;
      if (!is_signed) return ax / d > 0xff;
      const int q = int(std::int16_t(ax)) / int(std::int8_t(d));
      return q > 127 || q < -128;
    }
    case 16: {
      const std::uint32_t n = static_cast<std::uint32_t>((hi & 0xffff) << 16 | (lo & 0xffff));
      const std::uint16_t d = static_cast<std::uint16_t>(divisor);
      if (d == 0) return true;
      if (!is_signed) return n / d > 0xffff;
      const std::int64_t q = std::int64_t(std::int32_t(n)) / std::int16_t(d);
      return q > 0x7fff || q < -0x8000;
    }
    default: {
      const std::uint64_t n = hi << 32 | lo;
      if (divisor == 0) return true;
      if (!is_signed) return n / divisor > 0xffffffffull;
      const std::int64_t sn = static_cast<std::int64_t>(n), sd = static_cast<std::int32_t>(divisor);
      if (sn == INT64_MIN) return true;  // any divisor: |quotient| >= 2^32
      const std::int64_t q = sn / sd;
      return q > INT32_MAX || q < INT32_MIN;
    }
  }
}

// DIV/IDIV translated as a monitor call (it raised #DE before): #DE for a
// zero divisor or a quotient that does not fit, else the host instruction on
// the same operands, so the (architecturally undefined) flags are the CPU's.
void Vcpu::emulate_divide(const ZydisDecodedInstruction& insn, std::uint32_t divisor) {
  if (divide_faults(insn, divisor)) raise(0);
  const bool is_signed = insn.mnemonic == ZYDIS_MNEMONIC_IDIV;
  auto& g = ctx_->gpr;
  const std::uint64_t lo = static_cast<std::uint32_t>(g[0]), hi = static_cast<std::uint32_t>(g[2]);
  std::uint64_t fl = ctx_->rflags;
  if (insn.operand_width == 8) {
    const std::uint8_t d = static_cast<std::uint8_t>(divisor);
    std::uint16_t r = static_cast<std::uint16_t>(lo);
    if (is_signed)
      asm("pushq %[f]\n\tpopfq\n\tidivb %[d]\n\tpushfq\n\tpopq %[f]\n\tcld" : "+a"(r), [f] "+r"(fl) : [d] "q"(d) : "cc");
    else
      asm("pushq %[f]\n\tpopfq\n\tdivb %[d]\n\tpushfq\n\tpopq %[f]\n\tcld" : "+a"(r), [f] "+r"(fl) : [d] "q"(d) : "cc");
    g[0] = (lo & 0xffff0000u) | r;
  } else if (insn.operand_width == 16) {
    const std::uint16_t d = static_cast<std::uint16_t>(divisor);
    std::uint16_t a = static_cast<std::uint16_t>(lo), dx = static_cast<std::uint16_t>(hi);
    if (is_signed)
      asm("pushq %[f]\n\tpopfq\n\tidivw %[d]\n\tpushfq\n\tpopq %[f]\n\tcld" : "+a"(a), "+d"(dx), [f] "+r"(fl) : [d] "r"(d) : "cc");
    else
      asm("pushq %[f]\n\tpopfq\n\tdivw %[d]\n\tpushfq\n\tpopq %[f]\n\tcld" : "+a"(a), "+d"(dx), [f] "+r"(fl) : [d] "r"(d) : "cc");
    g[0] = (lo & 0xffff0000u) | a;
    g[2] = (hi & 0xffff0000u) | dx;
  } else {
    std::uint32_t a = static_cast<std::uint32_t>(lo), dx = static_cast<std::uint32_t>(hi);
    if (is_signed)
      asm("pushq %[f]\n\tpopfq\n\tidivl %[d]\n\tpushfq\n\tpopq %[f]\n\tcld" : "+a"(a), "+d"(dx), [f] "+r"(fl) : [d] "r"(divisor) : "cc");
    else
      asm("pushq %[f]\n\tpopfq\n\tdivl %[d]\n\tpushfq\n\tpopq %[f]\n\tcld" : "+a"(a), "+d"(dx), [f] "+r"(fl) : [d] "r"(divisor) : "cc");
    g[0] = a;
    g[2] = dx;
  }
  ctx_->rflags = (ctx_->rflags & ~0x8d5ull) | (fl & 0x8d5);
}

void Vcpu::emulate(std::uint32_t eip, bool mmio, Block* block) {
  if (!data_breakpoints_.any()) {
    emulate_instruction(eip, mmio, block);
    return;
  }
  data_hits_ = 0;
  const std::uint64_t deliveries = deliveries_;
  emulate_instruction(eip, mmio, block);
  const unsigned hits = std::exchange(data_hits_, 0u);
  if (!hits || deliveries_ != deliveries) return;
  // A trap: the saved EIP is the next instruction's (a REP string
  // instruction's own while iterations remain).
  dr_[6] = (dr_[6] & ~0xfull) | hits;
  deliver(1, false, 0, false, eip_);
}

void Vcpu::emulate_instruction(std::uint32_t eip, bool mmio, Block* block) {
  const bool user = cpl_ == 3;
  DecodedInsn scratch;
  const DecodedInsn& decoded = fetch_decoded(eip, block, scratch);
  const ZydisDecodedInstruction& insn = decoded.insn;
  const ZydisDecodedOperand* ops = decoded.ops;
  if (insn.encoding != ZYDIS_INSTRUCTION_ENCODING_LEGACY && insn.encoding != ZYDIS_INSTRUCTION_ENCODING_3DNOW) raise(6);
  const std::uint32_t next = eip + insn.length;
  const unsigned opsize = insn.operand_width;
  const unsigned iopl = (ctx_->sysflags & kIOPL) >> 12;
  auto need_cpl0 = [&] { if (cpl_ != 0) raise(13, true, 0); };
  auto operand_value = [&](const ZydisDecodedOperand& o) -> std::uint32_t {
    switch (o.type) {
      case ZYDIS_OPERAND_TYPE_REGISTER: return get_reg(o.reg.value);
      case ZYDIS_OPERAND_TYPE_MEMORY: return read(ea(insn, o), o.size / 8, user);
      case ZYDIS_OPERAND_TYPE_IMMEDIATE: return static_cast<std::uint32_t>(o.imm.value.u);
      default: throw std::runtime_error("bt-swmmu: emulator: unexpected operand");
    }
  };
  auto store = [&](const ZydisDecodedOperand& o, std::uint32_t v) {
    if (o.type == ZYDIS_OPERAND_TYPE_REGISTER) set_reg(o.reg.value, v);
    else write(ea(insn, o), o.size / 8, v, user);
  };
  std::uint32_t new_eip = next;

  if (mmio && (emulate_bit_string_access(insn, ops, next) || emulate_mmio_stack_or_branch(insn, ops, next))) return;
  // Under segment limits a register bit offset's word is checked by the monitor (classify_segmented).
  if ((tkey_ & kTKeyLimits) && emulate_bit_string_access(insn, ops, next)) return;

  switch (insn.mnemonic) {
    case ZYDIS_MNEMONIC_CLI:
    case ZYDIS_MNEMONIC_STI:
      if (cpl_ > iopl) raise(13, true, 0);
      if (insn.mnemonic == ZYDIS_MNEMONIC_CLI) {
        ctx_->sysflags &= ~kIF;
      } else {
        if (!(ctx_->sysflags & kIF)) interrupt_shadow_ = true;
        ctx_->sysflags |= kIF;
      }
      break;
    case ZYDIS_MNEMONIC_PUSHFD:
    case ZYDIS_MNEMONIC_PUSHF:  // 16-bit: FLAGS
      if (v86() && iopl < 3) raise(13, true, 0);  // IOPL-sensitive in virtual-8086 mode
      push(eflags() & ~(kVM | kRF), opsize / 8);
      break;
    case ZYDIS_MNEMONIC_POPF:  // 16-bit: the upper half of EFLAGS stays
    case ZYDIS_MNEMONIC_POPFD: {
      if (v86() && iopl < 3) raise(13, true, 0);
      const std::uint32_t v = pop(opsize / 8);
      std::uint32_t mask = opsize == 16 ? kPopfMask & 0xffff : kPopfMask;
      if (cpl_ != 0) mask &= ~kIOPL;
      if (cpl_ > iopl) mask &= ~kIF;
      set_eflags((eflags() & ~mask) | (v & mask));
      break;
    }
    case ZYDIS_MNEMONIC_IN:
    case ZYDIS_MNEMONIC_OUT:
      emulate_port_io(decoded, eip);
      return;
    case ZYDIS_MNEMONIC_HLT:
      need_cpl0();
      ++counters_.hlt_exits;
      run_state_ = api::RunState::Halted;
      break;
    case ZYDIS_MNEMONIC_CPUID: do_cpuid(); break;
    case ZYDIS_MNEMONIC_RDTSC: {
      if ((cr4_ & 4) && cpl_ != 0) raise(13, true, 0);
      std::uint64_t t = msrs_.tsc(__rdtsc());
      reg32(0) = static_cast<std::uint32_t>(t);
      reg32(2) = static_cast<std::uint32_t>(t >> 32);
      break;
    }
    case ZYDIS_MNEMONIC_RDTSCP: do_rdtscp(); break;
    case ZYDIS_MNEMONIC_RDPID: do_rdpid(ops[0]); break;
    case ZYDIS_MNEMONIC_STAC: do_stac_clac(true); break;
    case ZYDIS_MNEMONIC_CLAC: do_stac_clac(false); break;
    case ZYDIS_MNEMONIC_RDMSR: do_rdmsr(); break;
    case ZYDIS_MNEMONIC_WRMSR: do_wrmsr(); break;
    case ZYDIS_MNEMONIC_INT:
      if (v86() && iopl < 3) raise(13, true, 0);  // IOPL-sensitive in virtual-8086 mode (no VME)
      eip_ = eip;
      deliver(static_cast<std::uint8_t>(ops[0].imm.value.u), false, 0, true, next);
      return;
    case ZYDIS_MNEMONIC_INT3:
      eip_ = eip;
      deliver(3, false, 0, true, next);
      return;
    case ZYDIS_MNEMONIC_INTO:
      if (ctx_->rflags & kOF) {
        eip_ = eip;
        deliver(4, false, 0, true, next);
        return;
      }
      break;
    case ZYDIS_MNEMONIC_INT1:
      eip_ = eip;
      deliver(1, false, 0, false, next);
      return;
    case ZYDIS_MNEMONIC_IRETD:
    case ZYDIS_MNEMONIC_IRET:
      if (v86() && iopl < 3) raise(13, true, 0);
      do_iret(opsize, next);
      return;
    case ZYDIS_MNEMONIC_SYSENTER: {
      if (real_mode()) raise(13, true, 0);
      const MsrFile::SysenterTarget t = msrs_.sysenter_target();
      if ((t.cs & 0xfffc) == 0) raise(13, true, 0);
      const auto sel = static_cast<std::uint16_t>(t.cs & 0xfffc);
      cpl_ = 0;
      ctx_->sysflags &= ~(kIF | kVM | kRF);
      reg32(4) = static_cast<std::uint32_t>(t.esp);
      replace_code_and_stack(flat_segment(sel, 0xb, 0), flat_segment(static_cast<std::uint16_t>(sel + 8), 3, 0));
      new_eip = static_cast<std::uint32_t>(t.eip);
      break;
    }
    case ZYDIS_MNEMONIC_SYSEXIT: {
      const std::uint64_t cs = msrs_.sysenter_target().cs;
      if (real_mode() || cpl_ != 0 || (cs & 0xfffc) == 0) raise(13, true, 0);
      const auto sel = static_cast<std::uint16_t>(cs & 0xfffc);
      cpl_ = 3;
      reg32(4) = reg32(1);
      new_eip = reg32(2);
      replace_code_and_stack(flat_segment(static_cast<std::uint16_t>((sel + 16) | 3), 0xb, 3),
                             flat_segment(static_cast<std::uint16_t>((sel + 24) | 3), 3, 3));
      break;
    }
    case ZYDIS_MNEMONIC_LGDT:
    case ZYDIS_MNEMONIC_LIDT: {
      need_cpl0();
      const std::uint32_t a = ea(insn, ops[0]);
      std::uint16_t limit = static_cast<std::uint16_t>(read(a, 2, user));
      std::uint32_t base = read(a + 2, 4, user);
      if (opsize == 16) base &= 0xffffff;
      auto& t = insn.mnemonic == ZYDIS_MNEMONIC_LGDT ? gdtr_ : idtr_;
      t.base = base;
      t.limit = limit;
      break;
    }
    case ZYDIS_MNEMONIC_SGDT:
    case ZYDIS_MNEMONIC_SIDT: {
      check_umip();
      const std::uint32_t a = ea(insn, ops[0]);
      auto& t = insn.mnemonic == ZYDIS_MNEMONIC_SGDT ? gdtr_ : idtr_;
      write(a, 2, t.limit, user);
      // A 16-bit operand size stores a 24-bit base (QEMU's rule; the 386 leaves the top byte undefined).
      write(a + 2, 4, static_cast<std::uint32_t>(t.base) & (opsize == 16 ? 0xffffffu : 0xffffffffu), user);
      break;
    }
    case ZYDIS_MNEMONIC_LLDT: {
      if (real_mode() || v86()) raise(6);
      need_cpl0();
      const std::uint16_t sel = static_cast<std::uint16_t>(operand_value(ops[0]));
      if ((sel & 0xfffc) == 0) {
        ldtr_ = api::Segment{};
        ldtr_.unusable = true;
        break;
      }
      if (sel & 4) raise(13, true, sel & 0xfffc);
      api::Segment s = decode_segment_descriptor(read_descriptor(sel, sel & 0xfffc), sel);
      require(check_ldt_descriptor(s, sel));
      ldtr_ = s;
      break;
    }
    case ZYDIS_MNEMONIC_LTR: {
      if (real_mode() || v86()) raise(6);
      need_cpl0();
      const std::uint16_t sel = static_cast<std::uint16_t>(operand_value(ops[0]));
      if ((sel & 0xfffc) == 0 || (sel & 4)) raise(13, true, sel & 0xfffc);
      std::uint64_t raw = read_descriptor(sel, sel & 0xfffc);
      api::Segment s = decode_segment_descriptor(raw, sel);
      require(check_tss_descriptor(s, sel));
      const std::uint32_t la = static_cast<std::uint32_t>(gdtr_.base + (sel & ~7u) + 5);
      write(la, 1, static_cast<std::uint32_t>((raw >> 40) & 0xff) | 2, false);  // busy
      s.type |= 2;
      tr_ = s;
      break;
    }
    case ZYDIS_MNEMONIC_SLDT:
    case ZYDIS_MNEMONIC_STR:
      if (real_mode() || v86()) raise(6);  // the 0F 00 group needs protected mode
      check_umip();
      store(ops[0], insn.mnemonic == ZYDIS_MNEMONIC_SLDT ? ldtr_.selector : tr_.selector);
      break;
    case ZYDIS_MNEMONIC_SMSW:
      check_umip();
      store(ops[0], ops[0].type == ZYDIS_OPERAND_TYPE_REGISTER ? static_cast<std::uint32_t>(cr0_)
                                                              : static_cast<std::uint32_t>(cr0_ & 0xffff));
      break;
    case ZYDIS_MNEMONIC_LMSW: {
      need_cpl0();
      std::uint32_t v = operand_value(ops[0]) & 0xf;
      cr0_ = (cr0_ & ~0xeull) | (v & 0xe) | (cr0_ & 1) | (v & 1);
      break;
    }
    case ZYDIS_MNEMONIC_CLTS: need_cpl0(); cr0_ &= ~8ull; break;
    case ZYDIS_MNEMONIC_INVLPG: need_cpl0(); monitor_tlb_flush(); shadow_->invlpg(linear_unchecked(insn, ops[0])); break;
    case ZYDIS_MNEMONIC_WBINVD: case ZYDIS_MNEMONIC_INVD: need_cpl0(); break;
    case ZYDIS_MNEMONIC_MOV: {
      auto cls0 = ops[0].type == ZYDIS_OPERAND_TYPE_REGISTER ? ZydisRegisterGetClass(ops[0].reg.value) : ZYDIS_REGCLASS_INVALID;
      auto cls1 = ops[1].type == ZYDIS_OPERAND_TYPE_REGISTER ? ZydisRegisterGetClass(ops[1].reg.value) : ZYDIS_REGCLASS_INVALID;
      if (cls0 == ZYDIS_REGCLASS_CONTROL) {
        need_cpl0();
        write_cr(ops[0].reg.value - ZYDIS_REGISTER_CR0, get_reg(ops[1].reg.value));
      } else if (cls1 == ZYDIS_REGCLASS_CONTROL) {
        need_cpl0();
        const unsigned n2 = ops[1].reg.value - ZYDIS_REGISTER_CR0;
        std::uint64_t v = n2 == 0 ? cr0_ : n2 == 2 ? cr2_ : n2 == 3 ? cr3_ : n2 == 4 ? cr4_ : 0;
        if (n2 == 1 || n2 > 4) raise(6);
        set_reg(ops[0].reg.value, static_cast<std::uint32_t>(v));
      } else if (cls0 == ZYDIS_REGCLASS_DEBUG) {
        need_cpl0();
        write_dr(debug_register_index(ops[0].reg.value), get_reg(ops[1].reg.value));
      } else if (cls1 == ZYDIS_REGCLASS_DEBUG) {
        need_cpl0();
        set_reg(ops[0].reg.value, static_cast<std::uint32_t>(dr_[debug_register_index(ops[1].reg.value)]));
      } else if (cls0 == ZYDIS_REGCLASS_SEGMENT) {
        const int s = ops[0].reg.value - ZYDIS_REGISTER_ES;
        if (s == 1) raise(6);
        load_segment(s, static_cast<std::uint16_t>(operand_value(ops[1])));
        if (s == 2) interrupt_shadow_ = ss_load_shadow_ = true;
      } else if (cls1 == ZYDIS_REGCLASS_SEGMENT) {
        const std::uint16_t sel = seg(ops[1].reg.value - ZYDIS_REGISTER_ES).selector;
        if (ops[0].type == ZYDIS_OPERAND_TYPE_MEMORY) write(ea(insn, ops[0]), 2, sel, user);
        else set_reg(ops[0].reg.value, sel);
      } else if (mmio || insn.address_width == 16) {  // a device, or a 16-bit address formed here
        store(ops[0], operand_value(ops[1]));
      } else {
        throw std::runtime_error("bt-swmmu: emulator: unexpected MOV form: " + describe(insn, ops, eip));
      }
      break;
    }
    case ZYDIS_MNEMONIC_DIV:
    case ZYDIS_MNEMONIC_IDIV:
      emulate_divide(insn, operand_value(ops[0]));
      break;
    case ZYDIS_MNEMONIC_MOVZX:
      set_reg(ops[0].reg.value, operand_value(ops[1]));
      break;
    case ZYDIS_MNEMONIC_MOVSX: {
      std::uint32_t v = operand_value(ops[1]);
      v = ops[1].size == 8 ? static_cast<std::uint32_t>(static_cast<std::int8_t>(v))
                           : static_cast<std::uint32_t>(static_cast<std::int16_t>(v));
      set_reg(ops[0].reg.value, v);
      break;
    }
    case ZYDIS_MNEMONIC_PUSH: {  // segment registers (a word with a 16-bit operand size)
      push(seg(ops[0].reg.value - ZYDIS_REGISTER_ES).selector, opsize / 8);
      break;
    }
    case ZYDIS_MNEMONIC_POP: {
      const int s = ops[0].reg.value - ZYDIS_REGISTER_ES;
      const std::uint32_t esp0 = reg32(4);
      std::uint16_t sel = static_cast<std::uint16_t>(pop(opsize / 8));
      try {
        load_segment(s, sel);
      } catch (...) {
        reg32(4) = esp0;
        throw;
      }
      if (s == 2) interrupt_shadow_ = ss_load_shadow_ = true;
      break;
    }
    case ZYDIS_MNEMONIC_LDS: case ZYDIS_MNEMONIC_LES: case ZYDIS_MNEMONIC_LFS: case ZYDIS_MNEMONIC_LGS:
    case ZYDIS_MNEMONIC_LSS: {
      const std::uint32_t a = ea(insn, ops[1]);
      const std::uint32_t off = read(a, opsize / 8, user);
      const std::uint16_t sel = static_cast<std::uint16_t>(read(a + opsize / 8, 2, user));
      const int s = insn.mnemonic == ZYDIS_MNEMONIC_LDS ? 3 : insn.mnemonic == ZYDIS_MNEMONIC_LES ? 0
                  : insn.mnemonic == ZYDIS_MNEMONIC_LFS ? 4 : insn.mnemonic == ZYDIS_MNEMONIC_LGS ? 5 : 2;
      load_segment(s, sel);
      set_reg(ops[0].reg.value, off);
      break;
    }
    case ZYDIS_MNEMONIC_JB: case ZYDIS_MNEMONIC_JBE: case ZYDIS_MNEMONIC_JL: case ZYDIS_MNEMONIC_JLE:
    case ZYDIS_MNEMONIC_JNB: case ZYDIS_MNEMONIC_JNBE: case ZYDIS_MNEMONIC_JNL: case ZYDIS_MNEMONIC_JNLE:
    case ZYDIS_MNEMONIC_JNO: case ZYDIS_MNEMONIC_JNP: case ZYDIS_MNEMONIC_JNS: case ZYDIS_MNEMONIC_JNZ:
    case ZYDIS_MNEMONIC_JO: case ZYDIS_MNEMONIC_JP: case ZYDIS_MNEMONIC_JS: case ZYDIS_MNEMONIC_JZ:
      // Only with a 16-bit operand size (translated otherwise): the target's EIP is 16 bits.
      eip_ = condition_holds(insn.opcode & 0xf, eflags()) ? (next + static_cast<std::uint32_t>(ops[0].imm.value.s)) & 0xffff
                                                         : next;
      return;
    case ZYDIS_MNEMONIC_LOOP: case ZYDIS_MNEMONIC_LOOPE: case ZYDIS_MNEMONIC_LOOPNE:
    case ZYDIS_MNEMONIC_JCXZ: case ZYDIS_MNEMONIC_JECXZ: {
      // Here with a 16-bit address size (the counter is CX) or operand size (EIP truncated).
      const bool cx = insn.address_width == 16;
      std::uint32_t count = cx ? reg32(1) & 0xffff : reg32(1);
      bool taken;
      if (insn.mnemonic == ZYDIS_MNEMONIC_JCXZ || insn.mnemonic == ZYDIS_MNEMONIC_JECXZ) {
        taken = count == 0;
      } else {
        count = cx ? (count - 1) & 0xffff : count - 1;
        const bool zf = eflags() & kZF;
        taken = count != 0 && (insn.mnemonic == ZYDIS_MNEMONIC_LOOP || (insn.mnemonic == ZYDIS_MNEMONIC_LOOPE) == zf);
      }
      const std::uint32_t target = next + static_cast<std::uint32_t>(ops[0].imm.value.s);
      const std::uint32_t new_eip = taken ? (opsize == 16 ? target & 0xffff : target) : next;
      // A target beyond CS's limit faults with nothing changed (ECX kept).
      if (new_eip > cs_.limit) raise(13, true, 0);
      if (insn.mnemonic != ZYDIS_MNEMONIC_JCXZ && insn.mnemonic != ZYDIS_MNEMONIC_JECXZ)
        reg32(1) = cx ? (reg32(1) & 0xffff0000u) | count : count;
      eip_ = new_eip;
      return;
    }
    case ZYDIS_MNEMONIC_JMP:
    case ZYDIS_MNEMONIC_CALL: {  // far, or near with a 16-bit operand size
      if (insn.meta.branch_type != ZYDIS_BRANCH_TYPE_FAR) {
        const std::uint32_t target =
            ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE ? next + static_cast<std::uint32_t>(ops[0].imm.value.s)
                                                        : operand_value(ops[0]);
        // Here with a 16-bit operand size (an IP word, EIP truncated) or a
        // 16-bit address size forming the memory operand.
        if (insn.mnemonic == ZYDIS_MNEMONIC_CALL) push(next, opsize / 8);
        eip_ = opsize == 16 ? target & 0xffff : target;
        return;
      }
      std::uint16_t sel;
      std::uint32_t off;
      if (ops[0].type == ZYDIS_OPERAND_TYPE_POINTER) {
        sel = ops[0].ptr.segment;
        off = ops[0].ptr.offset;
      } else {
        const std::uint32_t a = ea(insn, ops[0]);
        off = read(a, opsize / 8, user);
        sel = static_cast<std::uint16_t>(read(a + opsize / 8, 2, user));
      }
      far_transfer(sel, off, insn.mnemonic == ZYDIS_MNEMONIC_CALL, next, opsize);
      return;
    }
    case ZYDIS_MNEMONIC_RET: {  // far return, or near with a 16-bit operand size
      if (insn.meta.branch_type != ZYDIS_BRANCH_TYPE_FAR) {
        const std::uint32_t extra = insn.operand_count_visible ? static_cast<std::uint32_t>(ops[0].imm.value.u) : 0;
        const std::uint32_t ip = pop(2);
        const std::uint32_t mask = stack_mask();
        reg32(4) = (reg32(4) & ~mask) | ((reg32(4) + extra) & mask);
        eip_ = ip;
        return;
      }
      const unsigned bytes = opsize / 8;  // 16-bit: IP, CS (and SP, SS) are words
      if (real_mode() || v86()) {
        far_return_real(opsize, insn.operand_count_visible ? static_cast<std::uint32_t>(ops[0].imm.value.u) : 0);
        return;
      }
      const std::uint32_t esp0 = reg32(4);
      try {
        const std::uint32_t e2 = pop(bytes);
        const std::uint16_t sel = static_cast<std::uint16_t>(pop(bytes));
        const std::uint32_t extra = insn.operand_count_visible ? static_cast<std::uint32_t>(ops[0].imm.value.u) : 0;
        const unsigned rpl = sel & 3;
        if (rpl < cpl_) raise(13, true, sel & 0xfffc);
        if (rpl > cpl_) {
          reg32(4) += extra;
          const std::uint32_t nesp = pop(bytes);
          const std::uint16_t nss = static_cast<std::uint16_t>(pop(bytes));
          load_cs(sel, rpl);
          load_segment(2, nss);
          reg32(4) = nesp + extra;
          null_inaccessible_data_segments();
        } else {
          load_cs(sel, rpl);
          reg32(4) += extra;
        }
        eip_ = e2;
      } catch (const GuestException&) {
        reg32(4) = esp0;
        throw;
      }
      return;
    }
    case ZYDIS_MNEMONIC_PUSHAD:
    case ZYDIS_MNEMONIC_PUSHA: {  // 16-bit: the eight word registers
      const unsigned bytes = opsize / 8;
      const std::uint32_t esp0 = reg32(4);
      try {
        for (int i = 0; i < 8; ++i) push(i == 4 ? esp0 : reg32(i), bytes);
      } catch (...) {
        reg32(4) = esp0;
        throw;
      }
      break;
    }
    case ZYDIS_MNEMONIC_POPAD:
    case ZYDIS_MNEMONIC_POPA: {  // the popped (E)SP is discarded
      const unsigned bytes = opsize / 8;
      const std::uint32_t esp0 = reg32(4);
      std::uint32_t v[8];
      try {
        for (int i = 7; i >= 0; --i) v[i] = pop(bytes);
      } catch (...) {
        reg32(4) = esp0;
        throw;
      }
      for (int i = 0; i < 8; ++i) {
        if (i == 4) continue;
        if (bytes == 4) reg32(i) = v[i];
        else reg32(i) = (reg32(i) & 0xffff0000u) | (v[i] & 0xffff);
      }
      break;
    }
    case ZYDIS_MNEMONIC_ENTER: {
      const std::uint32_t frame = static_cast<std::uint32_t>(ops[0].imm.value.u);
      const unsigned level = static_cast<unsigned>(ops[1].imm.value.u) & 31;
      // Push EBP, then (nesting) level - 1 frame pointers copied from the
      // enclosing frames at [EBP - n*size] and the new frame pointer; all
      // with the operand size (a 16-bit ENTER writes only BP).  Nothing
      // changes unless every push succeeds.
      const unsigned bytes = opsize / 8;
      const std::uint32_t ss_base = static_cast<std::uint32_t>(ss_.base);
      const std::uint32_t mask = stack_mask();  // a 16-bit stack: SP and BP, wrapping at 64 KiB
      std::uint32_t esp = reg32(4) & mask, ebp = reg32(5) & mask;
      auto push = [&](std::uint32_t v) {
        esp = (esp - bytes) & mask;
        write(ss_base + esp, bytes, v, user);
      };
      push(ebp);
      const std::uint32_t frame_pointer = esp;
      if (level > 0) {
        for (unsigned i = 1; i < level; ++i) {
          ebp = (ebp - bytes) & mask;
          push(read(ss_base + ebp, bytes, user));
        }
        push(frame_pointer);
      }
      if (bytes == 4) reg32(5) = frame_pointer;
      else reg32(5) = (reg32(5) & 0xffff0000u) | (frame_pointer & 0xffff);
      reg32(4) = (reg32(4) & ~mask) | ((esp - frame) & mask);
      break;
    }
    case ZYDIS_MNEMONIC_LEA:  // with a 16-bit address size (translated otherwise)
      set_reg(ops[0].reg.value, effective_offset(insn, ops[1]));
      break;
    case ZYDIS_MNEMONIC_XLAT: {
      const int s = insn.attributes & ZYDIS_ATTRIB_HAS_SEGMENT ? ops[1].mem.segment - ZYDIS_REGISTER_ES : 3;
      std::uint32_t offset = reg32(3) + (reg32(0) & 0xff);
      if (insn.address_width == 16) offset = ((reg32(3) & 0xffff) + (reg32(0) & 0xff)) & 0xffff;  // BX + AL
      std::uint32_t v = read(static_cast<std::uint32_t>(ctx_->seg_base[s]) + offset, 1, user);
      reg32(0) = (reg32(0) & ~0xffu) | v;
      break;
    }
    case ZYDIS_MNEMONIC_SALC:
      reg32(0) = (reg32(0) & ~0xffu) | ((ctx_->rflags & kCF) ? 0xff : 0);
      break;
    case ZYDIS_MNEMONIC_DAA: case ZYDIS_MNEMONIC_DAS: {
      std::uint8_t al = reg32(0) & 0xff, old_al = al;
      bool cf = ctx_->rflags & kCF, af = ctx_->rflags & kAF, ncf = false, naf = false;
      const bool add = insn.mnemonic == ZYDIS_MNEMONIC_DAA;
      if ((al & 0xf) > 9 || af) {
        al = add ? al + 6 : al - 6;
        ncf = cf || (add ? old_al > 0xf9 : old_al < 6);
        naf = true;
      }
      if (old_al > 0x99 || cf) {
        al = add ? al + 0x60 : al - 0x60;
        ncf = true;
      }
      reg32(0) = (reg32(0) & ~0xffu) | al;
      ctx_->rflags = (ctx_->rflags & ~0x8d5ull) | szp(al) | (ncf ? kCF : 0) | (naf ? kAF : 0);
      break;
    }
    case ZYDIS_MNEMONIC_AAA: case ZYDIS_MNEMONIC_AAS: {
      std::uint32_t ax = reg32(0) & 0xffff;
      const bool add = insn.mnemonic == ZYDIS_MNEMONIC_AAA;
      bool c = false;
      if ((ax & 0xf) > 9 || (ctx_->rflags & kAF)) {
        ax = add ? ax + 0x106 : ax - 6 - 0x100;
        c = true;
      }
      ax = (ax & 0xff0f);
      reg32(0) = (reg32(0) & ~0xffffu) | (ax & 0xffff);
      ctx_->rflags = (ctx_->rflags & ~0x8d5ull) | (c ? (kCF | kAF) : 0) | (ctx_->rflags & (kZF | kSF | kPF | kOF) & 0);
      break;
    }
    case ZYDIS_MNEMONIC_AAM: {
      const std::uint8_t base = static_cast<std::uint8_t>(ops[0].imm.value.u);
      if (base == 0) raise(0);
      std::uint8_t al = reg32(0) & 0xff;
      std::uint8_t ah = al / base;
      al = al % base;
      reg32(0) = (reg32(0) & ~0xffffu) | (ah << 8) | al;
      ctx_->rflags = (ctx_->rflags & ~0x8d5ull) | szp(al);
      break;
    }
    case ZYDIS_MNEMONIC_AAD: {
      const std::uint8_t base = static_cast<std::uint8_t>(ops[0].imm.value.u);
      std::uint8_t al = static_cast<std::uint8_t>((reg32(0) & 0xff) + ((reg32(0) >> 8) & 0xff) * base);
      reg32(0) = (reg32(0) & ~0xffffu) | al;
      ctx_->rflags = (ctx_->rflags & ~0x8d5ull) | szp(al);
      break;
    }
    case ZYDIS_MNEMONIC_BOUND: {
      const std::uint32_t a = ea(insn, ops[1]);
      // A 16-bit operand size: signed word bounds.
      const bool w = opsize == 16;
      auto sx = [w](std::uint32_t v) { return w ? std::int32_t{static_cast<std::int16_t>(v)} : static_cast<std::int32_t>(v); };
      const std::int32_t idx = sx(get_reg(ops[0].reg.value));
      const std::int32_t lo = sx(read(a, w ? 2 : 4, user));
      const std::int32_t hi = sx(read(a + (w ? 2 : 4), w ? 2 : 4, user));
      if (idx < lo || idx > hi) raise(5);
      break;
    }
    case ZYDIS_MNEMONIC_MOVSB: case ZYDIS_MNEMONIC_MOVSW: case ZYDIS_MNEMONIC_MOVSD:
    case ZYDIS_MNEMONIC_STOSB: case ZYDIS_MNEMONIC_STOSW: case ZYDIS_MNEMONIC_STOSD:
    case ZYDIS_MNEMONIC_LODSB: case ZYDIS_MNEMONIC_LODSW: case ZYDIS_MNEMONIC_LODSD:
    case ZYDIS_MNEMONIC_CMPSB: case ZYDIS_MNEMONIC_CMPSW: case ZYDIS_MNEMONIC_CMPSD:
    case ZYDIS_MNEMONIC_SCASB: case ZYDIS_MNEMONIC_SCASW: case ZYDIS_MNEMONIC_SCASD:
    case ZYDIS_MNEMONIC_INSB: case ZYDIS_MNEMONIC_INSW: case ZYDIS_MNEMONIC_INSD:
    case ZYDIS_MNEMONIC_OUTSB: case ZYDIS_MNEMONIC_OUTSW: case ZYDIS_MNEMONIC_OUTSD:
      try {
        string_op(insn, ops);
      } catch (int) {
        return;  // budget exhausted: EIP stays, the dispatcher resumes the REP later
      }
      break;
    case ZYDIS_MNEMONIC_UD0: case ZYDIS_MNEMONIC_UD1: case ZYDIS_MNEMONIC_UD2:
    case ZYDIS_MNEMONIC_MONITOR: case ZYDIS_MNEMONIC_MWAIT: case ZYDIS_MNEMONIC_XGETBV:
    case ZYDIS_MNEMONIC_XSETBV: case ZYDIS_MNEMONIC_RSM: case ZYDIS_MNEMONIC_SYSCALL:
    case ZYDIS_MNEMONIC_SYSRET: case ZYDIS_MNEMONIC_RDFSBASE:
    case ZYDIS_MNEMONIC_RDGSBASE: case ZYDIS_MNEMONIC_WRFSBASE: case ZYDIS_MNEMONIC_WRGSBASE:
    case ZYDIS_MNEMONIC_SWAPGS: case ZYDIS_MNEMONIC_FXSAVE64: case ZYDIS_MNEMONIC_FXRSTOR64:
    case ZYDIS_MNEMONIC_XSAVE: case ZYDIS_MNEMONIC_XRSTOR: case ZYDIS_MNEMONIC_XSAVEOPT:
    case ZYDIS_MNEMONIC_XSAVEC: case ZYDIS_MNEMONIC_XSAVES: case ZYDIS_MNEMONIC_XRSTORS:
    case ZYDIS_MNEMONIC_RDPMC:
      raise(6);
      break;
    case ZYDIS_MNEMONIC_LAR: case ZYDIS_MNEMONIC_LSL:
      descriptor_query(insn, ops, static_cast<std::uint16_t>(operand_value(ops[1])));
      break;
    case ZYDIS_MNEMONIC_VERR: case ZYDIS_MNEMONIC_VERW:
      descriptor_query(insn, ops, static_cast<std::uint16_t>(operand_value(ops[0])));
      break;
    case ZYDIS_MNEMONIC_ARPL:
      arpl(insn, ops);
      break;
    default:
      if ((cr0_ & 0xc) && insn.meta.isa_ext == ZYDIS_ISA_EXT_X87) raise(7);
      if ((cr0_ & 0x8) && !mmio) raise(7);  // SSE/MMX with CR0.TS
      if ((cr0_ & 0x4)) raise(6);           // SSE/MMX with CR0.EM
      if (insn.attributes & ZYDIS_ATTRIB_IS_PRIVILEGED) {
        if (cpl_ != 0) raise(13, true, 0);
      }
      // A 16-bit address size: the operand's address is formed here and the
      // instruction runs natively on the stage, as for MMIO (not a bit test
      // with a register offset, which reaches beyond its operand).
      if ((mmio || (insn.address_width == 16 && !(insn.meta.category == ZYDIS_CATEGORY_BITBYTE &&
                                                   ops[1].type == ZYDIS_OPERAND_TYPE_REGISTER))) &&
          emulate_mmio_native(eip, insn, ops, block))
        return;
      throw std::runtime_error("bt-swmmu: cannot emulate '" + describe(insn, ops, eip) + "'" +
                               (mmio ? " (MMIO access)" : ""));
  }
  eip_ = new_eip;
}

}  // namespace modevisor::bt
