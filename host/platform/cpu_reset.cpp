#include "platform/cpu_reset.hpp"

namespace modevisor::host {

namespace {

api::Segment real_mode_segment(std::uint16_t selector, std::uint64_t base, std::uint8_t type, bool s = true) {
  api::Segment seg;
  seg.selector = selector;
  seg.base = base;
  seg.limit = 0xffff;
  seg.type = type;
  seg.s = s;
  seg.present = true;
  return seg;
}

}  // namespace

api::VcpuState state_after_init(const api::VcpuState& before, bool bsp) {
  api::VcpuState s;
  // Kept by INIT.
  s.fpu = before.fpu;
  s.msrs = before.msrs;
  // Reset values.
  s.gpr.fill(0);
  s.gpr[api::gpr::rdx] = 0x600;
  s.rip = 0xfff0;
  s.rflags = 0x2;
  s.cs = real_mode_segment(0xf000, 0xffff0000, 0xb);  // execute/read, accessed
  s.ds = s.es = s.fs = s.gs = s.ss = real_mode_segment(0, 0, 0x3);  // read/write, accessed
  s.ldtr = real_mode_segment(0, 0, 0x2, false);  // LDT
  s.tr = real_mode_segment(0, 0, 0xb, false);    // busy TSS, as VMX entry and KVM want it
  s.gdtr = {0, 0xffff};
  s.idtr = {0, 0xffff};
  s.cr0 = (before.cr0 & 0x60000000) | 0x10;  // CD and NW unchanged, ET set
  s.cr2 = s.cr3 = s.cr4 = s.cr8 = 0;
  s.efer = 0;
  s.dr = {0, 0, 0, 0, 0, 0, 0xffff0ff0, 0x400};
  s.events = {};
  s.run_state = bsp ? api::RunState::Runnable : api::RunState::WaitForSipi;
  return s;
}

api::VcpuState state_after_startup(const api::VcpuState& waiting, std::uint8_t vector) {
  api::VcpuState s = waiting;
  s.cs = real_mode_segment(static_cast<std::uint16_t>(vector << 8), std::uint64_t{vector} << 12, 0xb);
  s.rip = 0;
  s.events = {};
  s.run_state = api::RunState::Runnable;
  return s;
}

}  // namespace modevisor::host
