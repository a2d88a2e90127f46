// What INIT and a STARTUP IPI do to a processor's architectural state
// (SDM Vol. 3A, 9.1.1 Table 9-1 "IA-32 and Intel 64 Processor States
// Following Power-up, Reset, or INIT", and 8.4.4.1 / 10.4.7.3 on
// wait-for-SIPI).  Mode-neutral: the host applies them to a vCPU's
// api::VcpuState between runs, whichever monitor runs it.
#pragma once

#include <cstdint>

#include <modevisor/api/arch_state.hpp>

namespace modevisor::host {

// INIT: the general, segment, control and debug registers and EFLAGS take
// their reset values (real mode, CS F000 with base FFFF0000, IP FFF0; CR0
// 60000010 with CD and NW kept; EDX 0x600, the family-6 signature KVM also
// uses; GDTR/IDTR base 0 limit FFFF; DR6 FFFF0FF0, DR7 400; EFER 0), pending
// events are dropped; the x87/SSE state, XCR0, the other MSRs and the local
// APIC part are kept (the platform resets the APIC itself).  The bootstrap
// processor (`bsp`) then runs from the reset vector; an application
// processor waits for SIPI (run_state WaitForSipi).
api::VcpuState state_after_init(const api::VcpuState& before, bool bsp);

// STARTUP with `vector` to a processor waiting for SIPI: real mode at
// CS = vector << 8 (base vector << 12, limit FFFF), IP 0, Runnable; the rest
// as INIT left it.
api::VcpuState state_after_startup(const api::VcpuState& waiting, std::uint8_t vector);

}  // namespace modevisor::host
