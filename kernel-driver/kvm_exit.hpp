// The KVM exit handler: one kvm_run exit in, platform calls out.  A plain
// function over a kvm_run buffer, so unit tests feed it made-up exits without
// /dev/kvm.  Counters are plain fields bumped inline (Firecracker style).
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <string>
#include <unordered_map>

#include <modevisor/api/monitor.hpp>
#include <modevisor/api/platform.hpp>

namespace modevisor::kvm {

struct ExitCounters {
  std::uint64_t runs = 0;            // KVM_RUN calls that returned an exit
  std::uint64_t io_in = 0, io_out = 0;
  std::uint64_t io_string = 0;       // of those, string I/O with count > 1
  std::uint64_t mmio_read = 0, mmio_write = 0;
  std::uint64_t apic_mmio = 0;       // MMIO exits on the local APIC page
  std::uint64_t apic_tpr_write = 0;  // ... of them writes to the TPR (APIC+0x80)
  std::uint64_t hlt = 0;
  std::uint64_t irq_window_open = 0;
  std::uint64_t interrupts_injected = 0;
  std::uint64_t interrupts_held = 0;  // held back one guest run so the interrupted code progresses
  std::uint64_t nmis_injected = 0;
  std::uint64_t set_tpr = 0;         // KVM_EXIT_SET_TPR (CR8 lowered, userspace APIC)
  std::uint64_t intr = 0;            // KVM_RUN interrupted (kick, timer) / KVM_EXIT_INTR
  std::uint64_t shutdown = 0, internal_error = 0, fail_entry = 0, other = 0;
  std::unordered_map<std::uint16_t, std::uint64_t> io_ports;  // I/O exits by port

  std::uint64_t exits() const {
    return io_in + io_out + mmio_read + mmio_write + hlt + irq_window_open + set_tpr + shutdown + internal_error +
           fail_entry + other;
  }
  api::Counters to_counters() const;  // "kvm.exit.io_in", ..., "kvm.io_port.0x3f8"
};

enum class ExitOutcome {
  Continue,  // handled: run again
  Halt,      // HLT: the caller waits for an interrupt
  Shutdown,  // triple fault / system event
  Error,     // the driver cannot go on
};

struct ExitContext {
  api::Platform& platform;
  unsigned vcpu = 0;
  std::uint64_t apic_base = 0xfee00000;  // the xAPIC page, for counting APIC/TPR exits
  ExitCounters& counters;
  std::string reason;                    // set for Shutdown/Error
};

// `run` is the vCPU's kvm_run mapping; string I/O data lies at
// run->io.data_offset bytes from its start.
ExitOutcome handle_exit(kvm_run& run, ExitContext& context);

const char* exit_reason_name(std::uint32_t reason);

}  // namespace modevisor::kvm
