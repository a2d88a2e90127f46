// The platform every monitor mode runs a VM against: the port-I/O and MMIO
// buses that devices attach to, the interrupt controller hook and guest time.
// Device models live in their own files and keep mode-neutral state, so a
// VM's devices are the same whichever plugin runs its vCPUs.  Unclaimed ports
// and MMIO read as all ones and ignore writes, as on a PC.
//
// Concurrency: one (recursive) platform lock serialises device accesses,
// interrupt queries and timer evaluation; vCPU threads and the host's input
// thread take it through the Machine.  A device that keeps itself consistent
// (atomics, no interrupt state: the POST and system ports) is called without
// it, and unclaimed ports and MMIO never take it.  Access counters are flat
// relaxed atomics.
//
// Timers have no threads and are evaluated lazily, but not on every device
// access: the Machine caches the earliest deadline (guest time) and polls
// every timer only when an interrupt query, a wait, next_timer_deadline_ns()
// or an access to a time-dependent device finds it due.  Accessing a device
// that is itself a timer (PIT, RTC) first brings that device up to now (its
// reads compute counts from now) and after a write polls every timer at the
// next question; the local APIC reports a timer it changes (timers_changed).
// An access to any other device reads no clock at all; a timer falling due
// meanwhile is raised by whoever polls at the deadline (the VM's timer
// thread, a monitor's host timer armed from next_timer_deadline_ns()).
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <modevisor/api/platform.hpp>

#include "platform/clock.hpp"

namespace modevisor::host {

class PortDevice {
 public:
  virtual ~PortDevice() = default;
  virtual std::string_view name() const = 0;
  virtual std::uint32_t port_read(std::uint16_t port, unsigned size) = 0;
  virtual void port_write(std::uint16_t port, unsigned size, std::uint32_t value) = 0;
  // True for a device whose state is atomics and that touches no interrupt
  // state: it is called without the platform lock, from any vCPU at once.
  virtual bool self_synchronised() const { return false; }
};

// `vcpu` is the accessing vCPU (the local APIC window is per vCPU).
class MmioDevice {
 public:
  virtual ~MmioDevice() = default;
  virtual std::string_view name() const = 0;
  virtual std::uint64_t mmio_read(unsigned vcpu, std::uint64_t offset, unsigned size) = 0;
  virtual void mmio_write(unsigned vcpu, std::uint64_t offset, unsigned size, std::uint64_t value) = 0;
  // True when every write that can make an interrupt or CPU event deliverable
  // calls Machine::interrupt_raised and every timer it arms is reported
  // (Machine::timers_changed): its writes then leave change_count() alone
  // unless they do so.  Otherwise any write counts as a possible change.
  virtual bool announces_changes() const { return false; }
};

// A device whose interrupts depend on time (PIT, RTC, local APIC timer).
class TimerDevice {
 public:
  virtual ~TimerDevice() = default;
  // Raise whatever interrupts fell due by `now_ns`; return the guest time of
  // the next one (UINT64_MAX: none armed).
  virtual std::uint64_t poll_timers(std::uint64_t now_ns) = 0;
};

// INIT and STARTUP that reached a vCPU and are not yet applied to its state.
struct StartupEvents {
  bool init = false;                         // first: reset the vCPU
  std::optional<std::uint8_t> sipi_vector;   // then: start it at vector << 12
  bool any() const { return init || sipi_vector.has_value(); }
};

// Where external interrupts and processor events come from (the PC's
// PIC/I/O APIC/local APICs).
class InterruptController {
 public:
  virtual ~InterruptController() = default;
  virtual bool interrupt_pending(unsigned vcpu) = 0;
  virtual std::uint8_t acknowledge_interrupt(unsigned vcpu) = 0;
  virtual api::CpuEvents cpu_events(unsigned vcpu) = 0;
  virtual bool acknowledge_nmi(unsigned vcpu) = 0;
  virtual StartupEvents take_startup(unsigned vcpu) = 0;
  virtual std::uint64_t apic_base(unsigned vcpu) = 0;
  virtual void set_apic_base(unsigned vcpu, std::uint64_t value) = 0;
};

class Machine : public api::Platform {
 public:
  // Without a time source the host's monotonic clock is used.
  explicit Machine(std::shared_ptr<TimeSource> clock = nullptr);
  ~Machine() override;
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;

  // Devices are attached before the VM runs and outlive the machine's use.
  void attach_ports(std::uint16_t first, std::uint16_t count, PortDevice& device);  // throws on overlap
  void attach_mmio(std::uint64_t base, std::uint64_t size, MmioDevice& device);     // throws on overlap
  void attach_timer(TimerDevice& device);
  void set_interrupt_controller(InterruptController* controller) { controller_ = controller; }
  // How many vCPUs the VM has (to know when all of them are halted for good).
  void set_vcpu_count(unsigned count) { vcpu_count_ = count; }

  // api::Platform
  std::uint32_t io_in(unsigned vcpu, std::uint16_t port, unsigned size) override;
  void io_out(unsigned vcpu, std::uint16_t port, unsigned size, std::uint32_t value) override;
  std::uint64_t mmio_read(unsigned vcpu, std::uint64_t gpa, unsigned size) override;
  void mmio_write(unsigned vcpu, std::uint64_t gpa, unsigned size, std::uint64_t value) override;
  bool interrupt_pending(unsigned vcpu) override;
  std::uint8_t acknowledge_interrupt(unsigned vcpu) override;
  void wait_for_interrupt(unsigned vcpu) override;
  void wait_for_cpu_event(unsigned vcpu) override;
  api::CpuEvents cpu_events(unsigned vcpu) override;
  bool acknowledge_nmi(unsigned vcpu) override;
  std::uint64_t apic_base(unsigned vcpu) override;
  void set_apic_base(unsigned vcpu, std::uint64_t value) override;
  // True while the VM ends or is paused: either way every vCPU leaves its run loop.
  bool stop_requested() const override {
    return stop_.load(std::memory_order_acquire) || paused_.load(std::memory_order_acquire);
  }
  std::uint64_t now_ns() const override;
  std::uint64_t next_timer_deadline_ns() override;
  std::uint64_t change_count() const override { return changes_.load(std::memory_order_acquire); }

  // The VM ends (debug-exit port, reset, operator, fatal error): every vCPU
  // leaves its loop.  The first reason wins; true when this call was first.
  bool request_stop(std::string reason, std::optional<int> exit_status = std::nullopt);
  std::string stop_reason() const;
  std::optional<int> exit_status() const;
  // The VM ends (request_stop was called), as opposed to a pause.
  bool stopping() const { return stop_.load(std::memory_order_acquire); }

  // Pause: stop_requested() turns true so every vCPU leaves its run loop, and
  // guest time stands still until the pause ends, then goes on from where it
  // stood (no jump: the time the VM spent paused does not exist for the guest).
  void set_paused(bool paused);
  bool paused() const { return paused_.load(std::memory_order_acquire); }

  // Wake vCPU `vcpu` from wait_for_interrupt (a monitor's kick).
  void wake(unsigned vcpu);

  // The host's side of INIT and STARTUP: take what reached `vcpu` (to apply
  // to its state), and, for a vCPU waiting for SIPI, block until one of them
  // arrives, wake(vcpu) is called or the VM stops.
  StartupEvents take_startup(unsigned vcpu);
  void wait_for_startup(unsigned vcpu);
  // Devices call this (under the platform lock) when an interrupt may have
  // become pending for `vcpu`: wakes waiters and calls the notifier, which a
  // monitor uses to kick a vCPU that is running guest code.  The notifier must
  // not call back into the Machine.
  void interrupt_raised(unsigned vcpu);
  void set_interrupt_notifier(std::function<void(unsigned vcpu)> notifier) { notifier_ = std::move(notifier); }

  // A device armed, re-armed or stopped a timer outside an access the
  // Machine knows is timed (the local APIC's initial count), or device state
  // was replaced (restore): every timer is polled at the next question, and
  // change_count() moves (monitors re-arm their host timers).
  void timers_changed();

  // The platform lock, for host threads that touch devices (console input,
  // state capture).  Recursive: device code may call back into the Machine.
  std::unique_lock<std::recursive_mutex> lock() const { return std::unique_lock(mutex_); }

  // Guest time is part of the platform state: a restored VM continues from
  // the guest time it was saved at.
  void set_guest_time(std::uint64_t now_ns);
  // Bring every timer up to now (before saving device state).
  std::uint64_t poll_timers();

  // I/O exits by port, MMIO exits by device name (ports and devices never
  // accessed are left out), for the VM log and `run --stats`.
  std::map<std::uint16_t, std::uint64_t> port_accesses() const;
  std::map<std::string, std::uint64_t, std::less<>> mmio_accesses() const;

 private:
  static constexpr unsigned kCountedVcpus = 256;
  struct PortRange {
    std::uint16_t first;
    std::uint16_t count;
    PortDevice* device;
    TimerDevice* timer;  // the same device as a timer (PIT, RTC), else null
    bool self_synchronised;  // device->self_synchronised(), asked once
  };
  struct MmioRange {
    MmioRange(std::uint64_t s, MmioDevice& d) : size(s), device(&d) {}
    std::uint64_t size;
    MmioDevice* device;
    // Accesses: one slot per vCPU (its thread the only writer), and a
    // shared atomic for vCPU indexes beyond them.
    std::unique_ptr<std::uint64_t[]> by_vcpu{new std::uint64_t[kCountedVcpus]()};
    std::atomic<std::uint64_t> shared_accesses{0};
    void count(unsigned vcpu) {
      if (vcpu >= kCountedVcpus) {
        shared_accesses.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      std::atomic_ref<std::uint64_t> n(by_vcpu[vcpu]);
      n.store(n.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
    std::uint64_t total() const {
      std::uint64_t n = shared_accesses.load(std::memory_order_relaxed);
      for (unsigned v = 0; v < kCountedVcpus; ++v) n += std::atomic_ref<std::uint64_t>(by_vcpu[v]).load(std::memory_order_relaxed);
      return n;
    }
  };
  // Brings the timers up to now before an access to a timer device, and
  // takes its new deadline after (the platform lock is held).
  class TimedAccess;
  struct Waiting;
  static constexpr std::uint16_t kUnclaimed = 0xffff;
  const PortRange* port_owner(std::uint16_t port) const {
    const std::uint16_t slot = port_slot_[port];
    return slot == kUnclaimed ? nullptr : &port_ranges_[slot];
  }
  MmioRange* mmio_owner(std::uint64_t gpa, std::uint64_t& offset);
  std::uint64_t poll_timers_locked();
  std::uint64_t poll_timers_locked(std::uint64_t now);
  void lower_deadline(std::uint64_t deadline_ns);
  void note_change() { changes_.fetch_add(1, std::memory_order_acq_rel); }
  void notify_waiters() {
    if (waiters_ != 0) wake_.notify_all();
  }
  bool can_wake(unsigned vcpu);
  std::uint64_t clock_deadline(std::uint64_t guest_ns) const;
  void stop_if_halted_for_good();

  std::shared_ptr<TimeSource> clock_;
  std::vector<PortRange> port_ranges_;
  std::unique_ptr<std::uint16_t[]> port_slot_;  // port -> index in port_ranges_ (kUnclaimed)
  std::map<std::uint64_t, MmioRange> mmio_;   // by base address
  std::vector<TimerDevice*> timers_;
  InterruptController* controller_ = nullptr;
  std::function<void(unsigned)> notifier_;
  // Port access counts, one table per vCPU (allocated at its first access;
  // pages never touched stay unbacked): a vCPU's thread is the only writer of
  // its table, so counting is a relaxed load and store, not a locked add.
  // vCPU indexes beyond the tables share port_counts_ (atomic adds).
  std::array<std::atomic<std::uint64_t*>, kCountedVcpus> vcpu_port_counts_{};
  std::unique_ptr<std::atomic<std::uint64_t>[]> port_counts_;  // by port
  void count_port(unsigned vcpu, std::uint16_t port);
  std::atomic<std::uint64_t> unclaimed_mmio_{0};
  // The earliest timer deadline (guest time) as of the last poll or arming; 0: poll.
  std::atomic<std::uint64_t> next_deadline_{0};
  std::atomic<std::uint64_t> changes_{0};
  unsigned waiters_ = 0;  // vCPUs blocked in a wait_* (under the lock)
  std::atomic<std::int64_t> time_offset_{0};  // guest time = clock + offset
  std::atomic<bool> stop_{false};
  std::atomic<bool> paused_{false};
  std::atomic<std::uint64_t> frozen_time_{0};  // guest time while paused
  std::string stop_reason_;
  std::optional<int> exit_status_;
  std::set<unsigned> woken_;
  unsigned vcpu_count_ = 1;
  std::set<unsigned> halted_interrupts_off_;  // in wait_for_cpu_event
  std::set<unsigned> waiting_startup_;        // in wait_for_startup
  mutable std::recursive_mutex mutex_;
  std::condition_variable_any wake_;
};

}  // namespace modevisor::host
