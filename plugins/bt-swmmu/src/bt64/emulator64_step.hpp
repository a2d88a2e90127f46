// The emulator64 internals: one instruction's emulation context (operands,
// addresses, memory, stack, descriptors with the long-mode checks) and the
// instruction groups, each in the file that emulates it.  Faults unwind as a
// thrown Fault and unemulated instructions as NotEmulated; emulate_one turns
// both into its StepResult.
#pragma once

#include <Zydis/Zydis.h>

#include <string>

#include "bt64/emulator64.hpp"

namespace modevisor::bt::bt64::detail {

struct NotEmulated {
  std::string why;
};

inline constexpr std::uint64_t kCF = 1, kPF = 4, kAF = 0x10, kZF = 0x40, kSF = 0x80, kTF = 0x100, kIF = 0x200,
                               kDF = 0x400, kOF = 0x800, kIOPL = 0x3000, kNT = 0x4000, kRF = 0x10000,
                               kVM = 0x20000, kAC = 0x40000, kVIF = 0x80000, kVIP = 0x100000, kID = 0x200000;
inline constexpr std::uint64_t kArithmeticFlags = kCF | kPF | kAF | kZF | kSF | kOF;

// The guest memory as the step reaches it: every access goes to the engine's
// LinearMemory; the address of a #PF is kept for the caller's CR2 (also for
// the accesses long_mode_events makes).
class RecordingMemory final : public LinearMemory {
 public:
  explicit RecordingMemory(LinearMemory& inner) : inner_(inner) {}
  Outcome<std::uint64_t> read(std::uint64_t la, unsigned size, Privilege who) override {
    Outcome<std::uint64_t> r = inner_.read(la, size, who);
    if (!r.ok()) note(r.fault(), la);
    return r;
  }
  Check write(std::uint64_t la, unsigned size, std::uint64_t value, Privilege who) override {
    Check f = inner_.write(la, size, value, who);
    if (f) note(*f, la);
    return f;
  }
  std::optional<std::uint64_t> fault_address;

 private:
  void note(const Fault& f, std::uint64_t la) {
    if (f.vector == 14) fault_address = la;
  }
  LinearMemory& inner_;
};

class Step {
 public:
  Step(api::VcpuState& state, Emulator64Env& env, Vendor vendor, const ZydisDecodedInstruction& insn,
       const ZydisDecodedOperand* ops);

  api::VcpuState& s;
  Emulator64Env& env;
  const Vendor vendor;
  const ZydisDecodedInstruction& insn;
  const ZydisDecodedOperand* const ops;
  const bool mode64;  // 64-bit mode (CS.L); compatibility mode otherwise
  const unsigned cpl;
  const std::uint64_t next_rip;
  StepResult result;
  bool rip_set = false;       // the instruction set RIP itself (a transfer, an event)
  bool flags_loaded = false;  // RFLAGS.RF came from memory (IRET): not cleared at completion

  [[noreturn]] static void raise(Fault f) { throw f; }
  static void must(const Check& c) {
    if (c) throw *c;
  }
  template <class T>
  static T must(const Outcome<T>& o) {
    if (!o.ok()) throw o.fault();
    return o.value();
  }
  [[noreturn]] static void not_emulated(std::string why) { throw NotEmulated{std::move(why)}; }

  unsigned iopl() const { return static_cast<unsigned>((s.rflags & kIOPL) >> 12); }
  void require_cpl0() const {
    if (cpl != 0) raise(Fault::gp(0));
  }
  // SDM vol. 3 2.5: CR4.UMIP makes SGDT, SIDT, SLDT, SMSW and STR #GP(0) above CPL 0.
  void require_umip_allows() const;

  // Registers by Zydis name (AH..BH are bits 15:8; a 32-bit write zero-extends).
  std::uint64_t reg(ZydisRegister r) const;
  void set_reg(ZydisRegister r, std::uint64_t v);
  // General register `index` as `size` bytes wide.
  std::uint64_t gpr(unsigned index, unsigned size) const;
  void set_gpr(unsigned index, unsigned size, std::uint64_t v);

  api::Segment& segment(ZydisRegister sreg);
  // The linear address of `offset` through `sreg` for an access of `size`
  // bytes: 64-bit mode adds only FS/GS bases and wants it canonical (#SS(0)
  // through SS, else #GP(0)); compatibility mode checks the segment (usable,
  // readable or writable, within the limit) and wraps at 4 GiB.
  std::uint64_t linear(ZydisRegister sreg, std::uint64_t offset, unsigned size, bool write);
  // A memory operand's offset (the address size's width; RIP-relative from the next RIP).
  std::uint64_t effective_offset(const ZydisDecodedOperand& op) const;
  std::uint64_t operand_linear(const ZydisDecodedOperand& op, unsigned size, bool write) {
    return linear(op.mem.segment, effective_offset(op), size, write);
  }

  RecordingMemory& memory() { return memory_; }
  // Guest memory (through memory()).
  std::uint64_t read(std::uint64_t la, unsigned size, Privilege who);
  void write(std::uint64_t la, unsigned size, std::uint64_t v, Privilege who);
  Privilege data_privilege() const { return privilege_at(cpl); }

  // A register, memory or immediate operand of `size` bytes (default: its own size).
  std::uint64_t read_operand(const ZydisDecodedOperand& op, unsigned size = 0);
  void write_operand(const ZydisDecodedOperand& op, std::uint64_t v, unsigned size = 0);
  // Read, modify and write one operand (the address checked for writing first).
  template <class F>
  void modify_operand(const ZydisDecodedOperand& op, F f) {
    if (op.type != ZYDIS_OPERAND_TYPE_MEMORY) {
      set_reg(op.reg.value, f(reg(op.reg.value)));
      return;
    }
    const unsigned size = op.size / 8;
    const std::uint64_t la = operand_linear(op, size, true);
    write(la, size, f(read(la, size, data_privilege())), data_privilege());
  }

  // The stack: RSP in 64-bit mode, ESP or SP (SS.B) in compatibility mode.
  // push_at/pop_at access below/at `sp` and move it; set_stack_pointer commits.
  unsigned stack_address_size() const { return mode64 ? 8 : (s.ss.db ? 4 : 2); }
  std::uint64_t stack_pointer() const { return gpr(api::gpr::rsp, stack_address_size()); }
  void push_at(std::uint64_t& sp, std::uint64_t v, unsigned size);
  std::uint64_t pop_at(std::uint64_t& sp, unsigned size);
  void set_stack_pointer(std::uint64_t sp) { set_gpr(api::gpr::rsp, stack_address_size(), sp); }
  void push(std::uint64_t v, unsigned size);

  // The 8-byte GDT/LDT descriptor of `sel`, or #GP(error).
  std::uint64_t descriptor(std::uint16_t sel, std::uint32_t error) {
    return must(read_descriptor(s, memory_, sel, error));
  }
  // Sets the accessed bit of the code or data descriptor `raw` of `sel` in its table.
  void mark_accessed(std::uint16_t sel, std::uint64_t raw);

  unsigned operand_bytes() const { return insn.operand_width / 8; }

 private:
  RecordingMemory memory_;
};

// Flags of CMP a, b at `size` bytes (CF PF AF ZF SF OF).
std::uint64_t cmp_flags(std::uint64_t a, std::uint64_t b, unsigned size);

// emulator64_basic.cpp: strings, I/O, flags, interrupts, system calls, CPUID, MSRs, the TSC, XCR0.
void string_instruction(Step& st);
void in_out(Step& st);
void pushf(Step& st);
void popf(Step& st);
void cli_sti(Step& st);
void software_interrupt(Step& st);
void iret(Step& st);
void system_call(Step& st);
void cpuid(Step& st);
void stac_clac(Step& st);  // EFLAGS.AC: SMAP suspended or not
void rdmsr(Step& st);
void wrmsr(Step& st);
void read_tsc(Step& st);
void xcr(Step& st);
void fs_gs_base(Step& st);
void push_pop(Step& st);

// emulator64_system.cpp: control and debug registers, descriptor tables,
// segment registers and far transfers.
void mov_control_register(Step& st);
void mov_debug_register(Step& st);
void clts(Step& st);
void lmsw(Step& st);
void smsw(Step& st);
void load_descriptor_table(Step& st);
void store_descriptor_table(Step& st);
void lldt(Step& st);
void ltr(Step& st);
void store_system_selector(Step& st);
void descriptor_query(Step& st);
void invlpg(Step& st);
void mov_segment(Step& st);
void push_segment(Step& st);
void pop_segment(Step& st);
void load_far_pointer(Step& st);
void far_jump_or_call(Step& st);
void far_return(Step& st);
void near_branch(Step& st);

}  // namespace modevisor::bt::bt64::detail
