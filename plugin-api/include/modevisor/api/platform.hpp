// The platform a monitor runs its vCPUs against: the I/O and MMIO bus, the
// interrupt controllers and the clock.  The host implements it once for every
// mode, so device state never depends on the monitor mode.
#pragma once

#include <cstdint>
#include <string_view>

namespace modevisor::api {

// Processor events other than vectored interrupts that the local APICs send
// a vCPU (the ICR's and the I/O APIC's delivery modes NMI, INIT and StartUp).
struct CpuEvents {
  bool nmi = false;      // an NMI waits to be taken (acknowledge_nmi) and injected
  bool init = false;     // INIT arrived: the host resets the vCPU
  bool startup = false;  // a STARTUP IPI arrived while the vCPU waited for one: the host starts it
  bool any() const { return nmi || init || startup; }
};

enum class LogLevel { Trace, Debug, Info, Warn, Error };

// Messages from a plugin go to the VM's log, tagged with its log token.
class Logger {
 public:
  virtual ~Logger() = default;
  virtual void log(LogLevel level, std::string_view message) = 0;
};

class Platform {
 public:
  virtual ~Platform() = default;

  // Port I/O; `size` is 1, 2 or 4.  Unclaimed ports read as all ones.
  virtual std::uint32_t io_in(unsigned vcpu, std::uint16_t port, unsigned size) = 0;
  virtual void io_out(unsigned vcpu, std::uint16_t port, unsigned size, std::uint32_t value) = 0;

  // MMIO outside guest RAM; `size` is 1, 2, 4 or 8.  Unclaimed reads give all ones.
  virtual std::uint64_t mmio_read(unsigned vcpu, std::uint64_t gpa, unsigned size) = 0;
  virtual void mmio_write(unsigned vcpu, std::uint64_t gpa, unsigned size, std::uint64_t value) = 0;

  // External interrupts (PIC/local APIC), for a vCPU whose IF allows them.
  virtual bool interrupt_pending(unsigned vcpu) = 0;
  virtual std::uint8_t acknowledge_interrupt(unsigned vcpu) = 0;  // INTA: returns the vector

  // HLT: block until an interrupt or one of cpu_events() is pending for this
  // vCPU, or the vCPU is asked to stop (kicked, stop_requested).
  virtual void wait_for_interrupt(unsigned vcpu) = 0;
  // HLT with interrupts disabled: only cpu_events() (an NMI, INIT or STARTUP
  // from another vCPU or a device) can wake it; block until one is pending or
  // the vCPU is asked to stop.  When every vCPU of the VM waits like this or
  // for a STARTUP, nothing can wake the machine again: the platform stops the
  // VM (reason "halted"), which is how a guest that halts the machine
  // (Linux's `poweroff` without ACPI) ends.
  virtual void wait_for_cpu_event(unsigned vcpu) = 0;

  // NMI, INIT and STARTUP for this vCPU.
  //
  // INIT and STARTUP replace the vCPU's architectural state, so the host
  // applies them, mode-neutrally, between runs: it saves the vCPU, loads the
  // INIT state (run_state WaitForSipi; the bootstrap processor restarts at
  // the reset vector instead) or, for STARTUP, real mode at CS = vector << 8
  // (base vector << 12), IP 0, Runnable.  A run loop that sees `init` or
  // `startup` therefore returns Stopped at once (the host also kicks it).
  //
  // An NMI is the monitor's: it takes it with acknowledge_nmi() as soon as it
  // sees one and injects it (vector 2) once the guest is not blocking NMIs
  // (from an NMI's delivery until the next IRET).
  virtual CpuEvents cpu_events(unsigned vcpu) = 0;
  // Takes the pending NMI: true when there was one (now the monitor's to inject).
  virtual bool acknowledge_nmi(unsigned vcpu) = 0;

  // The IA32_APIC_BASE MSR (0x1b) of this vCPU's local APIC.  The local APIC
  // is the platform's, this MSR included: a monitor forwards the guest's
  // RDMSR/WRMSR of it here, and one whose hardware keeps a copy (KVM's sregs)
  // loads it from here and reports the guest's changes back.
  virtual std::uint64_t apic_base(unsigned vcpu) = 0;
  virtual void set_apic_base(unsigned vcpu, std::uint64_t value) = 0;

  // The VM must leave its run loop (guest exit, pause for migration or a mode
  // switch, operator stop).  Monitors check this after every platform call
  // and whenever they are kicked.
  virtual bool stop_requested() const = 0;

  // Guest time in nanoseconds since power-on; drives the PIT, RTC and APIC timer.
  virtual std::uint64_t now_ns() const = 0;

  // The guest time at which a device timer next raises an interrupt
  // (UINT64_MAX: none armed).  Device timers are evaluated lazily when the
  // platform is called, so a monitor that runs guest code for long stretches
  // without calling in (translated code, KVM_RUN) arranges to come back by
  // then, e.g. with a host timer that kicks the vCPU.
  virtual std::uint64_t next_timer_deadline_ns() = 0;

  // A lock-free count that moves whenever something a monitor looks at after
  // a device access may have changed: an interrupt raised or unmasked, a CPU
  // event, a device timer armed earlier than the last deadline, a write to a
  // device that does not announce its interrupt changes.  A monitor that
  // remembers it when it last looked (interrupt_pending, cpu_events,
  // next_timer_deadline_ns) may skip the next look after a device write while
  // it stays the same.  kUnknownChanges: the platform does not track changes
  // (look every time).
  static constexpr std::uint64_t kUnknownChanges = ~0ull;
  virtual std::uint64_t change_count() const { return kUnknownChanges; }
};

}  // namespace modevisor::api
