#include "kernel-driver/kvm_state.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace modevisor::kvm {

namespace {
// kvm_regs order differs from the architectural encoding order of VcpuState::gpr.
struct GprMap {
  unsigned index;
  __u64 kvm_regs::*field;
};
constexpr GprMap kGprMap[] = {
    {api::gpr::rax, &kvm_regs::rax}, {api::gpr::rcx, &kvm_regs::rcx}, {api::gpr::rdx, &kvm_regs::rdx},
    {api::gpr::rbx, &kvm_regs::rbx}, {api::gpr::rsp, &kvm_regs::rsp}, {api::gpr::rbp, &kvm_regs::rbp},
    {api::gpr::rsi, &kvm_regs::rsi}, {api::gpr::rdi, &kvm_regs::rdi}, {api::gpr::r8, &kvm_regs::r8},
    {api::gpr::r9, &kvm_regs::r9},   {api::gpr::r10, &kvm_regs::r10}, {api::gpr::r11, &kvm_regs::r11},
    {api::gpr::r12, &kvm_regs::r12}, {api::gpr::r13, &kvm_regs::r13}, {api::gpr::r14, &kvm_regs::r14},
    {api::gpr::r15, &kvm_regs::r15},
};
}  // namespace

void regs_to_state(const kvm_regs& regs, api::VcpuState& state) {
  for (const auto& m : kGprMap) state.gpr[m.index] = regs.*m.field;
  state.rip = regs.rip;
  state.rflags = regs.rflags;
}

kvm_regs regs_from_state(const api::VcpuState& state) {
  kvm_regs regs{};
  for (const auto& m : kGprMap) regs.*m.field = state.gpr[m.index];
  regs.rip = state.rip;
  regs.rflags = state.rflags | 0x2;  // bit 1 is always set
  return regs;
}

api::Segment segment_from_kvm(const kvm_segment& seg) {
  api::Segment s;
  s.selector = seg.selector;
  s.base = seg.base;
  s.limit = seg.limit;
  s.type = seg.type & 0xf;
  s.s = seg.s;
  s.dpl = seg.dpl & 3;
  s.present = seg.present;
  s.avl = seg.avl;
  s.l = seg.l;
  s.db = seg.db;
  s.g = seg.g;
  s.unusable = seg.unusable;
  return s;
}

kvm_segment segment_to_kvm(const api::Segment& s) {
  kvm_segment seg{};
  seg.selector = s.selector;
  seg.base = s.base;
  seg.limit = s.limit;
  seg.type = s.type & 0xf;
  seg.s = s.s;
  seg.dpl = s.dpl & 3;
  seg.present = s.present;
  seg.avl = s.avl;
  seg.l = s.l;
  seg.db = s.db;
  seg.g = s.g;
  seg.unusable = s.unusable;
  return seg;
}

void sregs_to_state(const kvm_sregs& sregs, api::VcpuState& state) {
  state.cs = segment_from_kvm(sregs.cs);
  state.ds = segment_from_kvm(sregs.ds);
  state.es = segment_from_kvm(sregs.es);
  state.fs = segment_from_kvm(sregs.fs);
  state.gs = segment_from_kvm(sregs.gs);
  state.ss = segment_from_kvm(sregs.ss);
  state.tr = segment_from_kvm(sregs.tr);
  state.ldtr = segment_from_kvm(sregs.ldt);
  state.gdtr = {sregs.gdt.base, sregs.gdt.limit};
  state.idtr = {sregs.idt.base, sregs.idt.limit};
  state.cr0 = sregs.cr0;
  state.cr2 = sregs.cr2;
  state.cr3 = sregs.cr3;
  state.cr4 = sregs.cr4;
  state.cr8 = sregs.cr8;
  state.efer = sregs.efer;
}

kvm_sregs sregs_from_state(const api::VcpuState& state, std::uint64_t apic_base) {
  kvm_sregs sregs{};
  sregs.cs = segment_to_kvm(state.cs);
  sregs.ds = segment_to_kvm(state.ds);
  sregs.es = segment_to_kvm(state.es);
  sregs.fs = segment_to_kvm(state.fs);
  sregs.gs = segment_to_kvm(state.gs);
  sregs.ss = segment_to_kvm(state.ss);
  sregs.tr = segment_to_kvm(state.tr);
  sregs.ldt = segment_to_kvm(state.ldtr);
  sregs.gdt.base = state.gdtr.base;
  sregs.gdt.limit = state.gdtr.limit;
  sregs.idt.base = state.idtr.base;
  sregs.idt.limit = state.idtr.limit;
  sregs.cr0 = state.cr0;
  sregs.cr2 = state.cr2;
  sregs.cr3 = state.cr3;
  sregs.cr4 = state.cr4;
  sregs.cr8 = state.cr8;
  sregs.efer = state.efer;
  sregs.apic_base = apic_base;
  return sregs;  // interrupt_bitmap all zero
}

// FXSAVE image offsets (64-bit format).
namespace fx {
constexpr std::size_t fcw = 0, fsw = 2, ftw = 4, fop = 6, fip = 8, fdp = 16, mxcsr = 24, mxcsr_mask = 28, st = 32,
                      xmm = 160;
}

void fpu_to_state(const kvm_fpu& fpu, api::FpuState& state) {
  auto& img = state.fxsave;
  img.fill(0);
  std::memcpy(&img[fx::fcw], &fpu.fcw, 2);
  std::memcpy(&img[fx::fsw], &fpu.fsw, 2);
  img[fx::ftw] = fpu.ftwx;
  std::memcpy(&img[fx::fop], &fpu.last_opcode, 2);
  std::memcpy(&img[fx::fip], &fpu.last_ip, 8);
  std::memcpy(&img[fx::fdp], &fpu.last_dp, 8);
  std::memcpy(&img[fx::mxcsr], &fpu.mxcsr, 4);
  const std::uint32_t mask = 0xffff;  // KVM_GET_FPU does not carry MXCSR_MASK; the common value
  std::memcpy(&img[fx::mxcsr_mask], &mask, 4);
  for (int i = 0; i < 8; ++i) std::memcpy(&img[fx::st + 16 * i], fpu.fpr[i], 16);
  for (int i = 0; i < 16; ++i) std::memcpy(&img[fx::xmm + 16 * i], fpu.xmm[i], 16);
  state.xcr0 = 1;
  state.xsave_extended.clear();
}

kvm_fpu fpu_from_state(const api::FpuState& state) {
  kvm_fpu fpu{};
  const auto& img = state.fxsave;
  std::memcpy(&fpu.fcw, &img[fx::fcw], 2);
  std::memcpy(&fpu.fsw, &img[fx::fsw], 2);
  fpu.ftwx = img[fx::ftw];
  std::memcpy(&fpu.last_opcode, &img[fx::fop], 2);
  std::memcpy(&fpu.last_ip, &img[fx::fip], 8);
  std::memcpy(&fpu.last_dp, &img[fx::fdp], 8);
  std::memcpy(&fpu.mxcsr, &img[fx::mxcsr], 4);
  for (int i = 0; i < 8; ++i) std::memcpy(fpu.fpr[i], &img[fx::st + 16 * i], 16);
  for (int i = 0; i < 16; ++i) std::memcpy(fpu.xmm[i], &img[fx::xmm + 16 * i], 16);
  return fpu;
}

void xsave_to_state(const kvm_xsave& xsave, std::uint64_t xcr0, api::FpuState& state) {
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(xsave.region);
  std::memcpy(state.fxsave.data(), bytes, kXsaveLegacyBytes);
  state.xcr0 = xcr0;
  std::uint64_t xstate_bv = 0;
  std::memcpy(&xstate_bv, bytes + kXsaveLegacyBytes, 8);
  state.xsave_extended.clear();
  // Components beyond x87/SSE: keep the extended area up to its last non-zero
  // 64-byte block (an all-zero tail is the init state of every component there).
  if (xstate_bv & ~std::uint64_t{3}) {
    const std::uint8_t* ext = bytes + kXsaveLegacyBytes + kXsaveHeaderBytes;
    std::size_t n = kXsaveBytes - kXsaveLegacyBytes - kXsaveHeaderBytes;
    while (n > 0 && std::all_of(ext + n - 64, ext + n, [](std::uint8_t b) { return b == 0; })) n -= 64;
    state.xsave_extended.assign(ext, ext + n);
  }
}

kvm_xsave xsave_from_state(const api::FpuState& state, std::uint64_t supported_xcr0) {
  kvm_xsave xsave{};
  auto* bytes = reinterpret_cast<std::uint8_t*>(xsave.region);
  std::memcpy(bytes, state.fxsave.data(), kXsaveLegacyBytes);
  // Every enabled component is loaded from the image (a zero image is the init
  // state for the extended ones), x87 and SSE always.
  std::uint64_t xstate_bv = 3;
  if (!state.xsave_extended.empty()) xstate_bv |= state.xcr0 & supported_xcr0;
  std::memcpy(bytes + kXsaveLegacyBytes, &xstate_bv, 8);
  const std::size_t room = kXsaveBytes - kXsaveLegacyBytes - kXsaveHeaderBytes;
  // An empty vector's data() may be null, which memcpy must not see even for 0 bytes.
  if (!state.xsave_extended.empty())
    std::memcpy(bytes + kXsaveLegacyBytes + kXsaveHeaderBytes, state.xsave_extended.data(),
                std::min(room, state.xsave_extended.size()));
  return xsave;
}

void events_to_state(const kvm_vcpu_events& ev, api::PendingEvents& state) {
  state = {};
  if (ev.exception.injected || ev.exception.pending) {
    api::PendingException e;
    e.vector = ev.exception.nr;
    e.has_error_code = ev.exception.has_error_code;
    e.error_code = ev.exception.error_code;
    e.injected = ev.exception.injected;
    state.exception = e;
  }
  if (ev.interrupt.injected && !ev.interrupt.soft) state.interrupt = ev.interrupt.nr;
  state.interrupt_shadow = ev.interrupt.shadow != 0;
  state.nmi_pending = ev.nmi.pending || ev.nmi.injected;
  state.nmi_masked = ev.nmi.masked;
}

kvm_vcpu_events events_from_state(const api::PendingEvents& state) {
  kvm_vcpu_events ev{};
  if (state.exception) {
    // Without KVM_CAP_EXCEPTION_PAYLOAD KVM knows only "injected": a pending
    // exception is delivered the same way on the next entry.
    ev.exception.injected = 1;
    ev.exception.nr = state.exception->vector;
    ev.exception.has_error_code = state.exception->has_error_code;
    ev.exception.error_code = state.exception->error_code;
  }
  if (state.interrupt) {
    ev.interrupt.injected = 1;
    ev.interrupt.nr = *state.interrupt;
  }
  ev.interrupt.shadow = state.interrupt_shadow ? 1 : 0;  // KVM_X86_SHADOW_INT_MOV_SS|STI: either blocks
  ev.nmi.pending = state.nmi_pending;
  ev.nmi.masked = state.nmi_masked;
  ev.flags = KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW;
  return ev;
}

void debugregs_to_state(const kvm_debugregs& dr, api::VcpuState& state) {
  for (int i = 0; i < 4; ++i) state.dr[i] = dr.db[i];
  state.dr[6] = dr.dr6;
  state.dr[7] = dr.dr7;
}

kvm_debugregs debugregs_from_state(const api::VcpuState& state) {
  kvm_debugregs dr{};
  for (int i = 0; i < 4; ++i) dr.db[i] = state.dr[i];
  dr.dr6 = state.dr[6];
  dr.dr7 = state.dr[7];
  return dr;
}

namespace {
void append(std::string& out, const char* fmt, auto... args) {
  char buf[256];
  std::snprintf(buf, sizeof buf, fmt, args...);
  out += buf;
}
void append_segment(std::string& out, const char* name, const api::Segment& s) {
  append(out, "%-4s=%04x base=%016llx limit=%08x type=%x s=%d dpl=%d p=%d l=%d db=%d g=%d%s\n", name, s.selector,
         static_cast<unsigned long long>(s.base), s.limit, s.type, s.s, s.dpl, s.present, s.l, s.db, s.g,
         s.unusable ? " unusable" : "");
}
}  // namespace

std::string format_state(const api::VcpuState& st) {
  static const char* const names[16] = {"RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI",
                                        "R8",  "R9",  "R10", "R11", "R12", "R13", "R14", "R15"};
  std::string out;
  for (int i = 0; i < 16; ++i)
    append(out, "%-3s=%016llx%s", names[i], static_cast<unsigned long long>(st.gpr[i]), (i % 4 == 3) ? "\n" : " ");
  append(out, "RIP=%016llx RFLAGS=%08llx\n", static_cast<unsigned long long>(st.rip),
         static_cast<unsigned long long>(st.rflags));
  append_segment(out, "ES", st.es);
  append_segment(out, "CS", st.cs);
  append_segment(out, "SS", st.ss);
  append_segment(out, "DS", st.ds);
  append_segment(out, "FS", st.fs);
  append_segment(out, "GS", st.gs);
  append_segment(out, "LDTR", st.ldtr);
  append_segment(out, "TR", st.tr);
  append(out, "GDT=%016llx/%04x IDT=%016llx/%04x\n", static_cast<unsigned long long>(st.gdtr.base), st.gdtr.limit,
         static_cast<unsigned long long>(st.idtr.base), st.idtr.limit);
  append(out, "CR0=%08llx CR2=%016llx CR3=%016llx CR4=%08llx CR8=%llx EFER=%llx\n",
         static_cast<unsigned long long>(st.cr0), static_cast<unsigned long long>(st.cr2),
         static_cast<unsigned long long>(st.cr3), static_cast<unsigned long long>(st.cr4),
         static_cast<unsigned long long>(st.cr8), static_cast<unsigned long long>(st.efer));
  if (st.events.exception)
    append(out, "pending exception: vector %u%s error code %#x\n", st.events.exception->vector,
           st.events.exception->injected ? " (injected)" : "", st.events.exception->error_code);
  if (st.events.interrupt) append(out, "pending interrupt: vector %#x\n", *st.events.interrupt);
  return out;
}

}  // namespace modevisor::kvm
