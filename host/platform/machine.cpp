#include "platform/machine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>

namespace modevisor::host {

namespace {
std::uint64_t all_ones(unsigned size) { return size >= 8 ? ~0ull : (1ull << (size * 8)) - 1; }
}  // namespace

Machine::Machine(std::shared_ptr<TimeSource> clock)
    : clock_(clock ? std::move(clock) : std::make_shared<HostClock>()) {}

void Machine::attach_ports(std::uint16_t first, std::uint16_t count, PortDevice& device) {
  const unsigned end = unsigned{first} + count;
  for (const auto& [start, range] : ports_)
    if (first < start + range.count && start < end)
      throw std::logic_error(fmt::format("{} at ports {:#x}-{:#x} overlaps {}", device.name(), first, end - 1,
                                         range.device->name()));
  ports_[first] = {count, &device};
}

void Machine::attach_mmio(std::uint64_t base, std::uint64_t size, MmioDevice& device) {
  for (const auto& [start, range] : mmio_)
    if (base < start + range.size && start < base + size)
      throw std::logic_error(fmt::format("{} at {:#x} overlaps {}", device.name(), base, range.device->name()));
  mmio_[base] = {size, &device};
}

void Machine::attach_timer(TimerDevice& device) { timers_.push_back(&device); }

Machine::PortRange* Machine::port_owner(std::uint16_t port) {
  auto it = ports_.upper_bound(port);
  if (it == ports_.begin()) return nullptr;
  --it;
  return port < it->first + it->second.count ? &it->second : nullptr;
}

Machine::MmioRange* Machine::mmio_owner(std::uint64_t gpa, std::uint64_t& offset) {
  auto it = mmio_.upper_bound(gpa);
  if (it == mmio_.begin()) return nullptr;
  --it;
  if (gpa - it->first >= it->second.size) return nullptr;
  offset = gpa - it->first;
  return &it->second;
}

void Machine::count_mmio(std::string_view device) {
  auto it = mmio_accesses_.find(device);
  if (it == mmio_accesses_.end()) it = mmio_accesses_.emplace(std::string(device), 0).first;
  ++it->second;
}

std::uint32_t Machine::io_in(unsigned, std::uint16_t port, unsigned size) {
  auto guard = lock();
  ++port_accesses_[port];
  poll_timers_locked();
  if (PortRange* owner = port_owner(port))
    return static_cast<std::uint32_t>(owner->device->port_read(port, size) & all_ones(size));
  return static_cast<std::uint32_t>(all_ones(size));
}

void Machine::io_out(unsigned, std::uint16_t port, unsigned size, std::uint32_t value) {
  auto guard = lock();
  ++port_accesses_[port];
  poll_timers_locked();
  if (PortRange* owner = port_owner(port)) owner->device->port_write(port, size, value);
  wake_.notify_all();  // a write may have unmasked an interrupt for a halted vCPU
}

std::uint64_t Machine::mmio_read(unsigned vcpu, std::uint64_t gpa, unsigned size) {
  auto guard = lock();
  poll_timers_locked();
  std::uint64_t offset = 0;
  if (MmioRange* owner = mmio_owner(gpa, offset)) {
    count_mmio(owner->device->name());
    return owner->device->mmio_read(vcpu, offset, size) & all_ones(size);
  }
  count_mmio("unclaimed");
  return all_ones(size);
}

void Machine::mmio_write(unsigned vcpu, std::uint64_t gpa, unsigned size, std::uint64_t value) {
  auto guard = lock();
  poll_timers_locked();
  std::uint64_t offset = 0;
  if (MmioRange* owner = mmio_owner(gpa, offset)) {
    count_mmio(owner->device->name());
    owner->device->mmio_write(vcpu, offset, size, value);
  } else {
    count_mmio("unclaimed");
  }
  wake_.notify_all();
}

std::uint64_t Machine::poll_timers_locked() {
  const std::uint64_t now = now_ns();
  std::uint64_t next = UINT64_MAX;
  for (TimerDevice* timer : timers_) next = std::min(next, timer->poll_timers(now));
  return next;
}

std::uint64_t Machine::poll_timers() {
  auto guard = lock();
  return poll_timers_locked();
}

bool Machine::interrupt_pending(unsigned vcpu) {
  auto guard = lock();
  poll_timers_locked();
  return controller_ && controller_->interrupt_pending(vcpu);
}

std::uint8_t Machine::acknowledge_interrupt(unsigned vcpu) {
  auto guard = lock();
  poll_timers_locked();
  return controller_ ? controller_->acknowledge_interrupt(vcpu) : 0xff;
}

std::uint64_t Machine::next_timer_deadline_ns() {
  auto guard = lock();
  return poll_timers_locked();
}

api::CpuEvents Machine::cpu_events(unsigned vcpu) {
  auto guard = lock();
  return controller_ ? controller_->cpu_events(vcpu) : api::CpuEvents{};
}

bool Machine::acknowledge_nmi(unsigned vcpu) {
  auto guard = lock();
  return controller_ && controller_->acknowledge_nmi(vcpu);
}

std::uint64_t Machine::apic_base(unsigned vcpu) {
  auto guard = lock();
  return controller_ ? controller_->apic_base(vcpu) : 0xfee00000 | (vcpu == 0 ? 0x900 : 0x800);
}

void Machine::set_apic_base(unsigned vcpu, std::uint64_t value) {
  auto guard = lock();
  if (controller_) controller_->set_apic_base(vcpu, value);
  wake_.notify_all();  // a hardware-disabled APIC hands the CPU to the 8259
}

StartupEvents Machine::take_startup(unsigned vcpu) {
  auto guard = lock();
  return controller_ ? controller_->take_startup(vcpu) : StartupEvents{};
}

// The time source's time at which guest time reaches `guest_ns` (UINT64_MAX: never).
std::uint64_t Machine::clock_deadline(std::uint64_t guest_ns) const {
  if (guest_ns == UINT64_MAX) return UINT64_MAX;
  const std::int64_t offset = time_offset_.load();
  return offset > 0 && guest_ns < static_cast<std::uint64_t>(offset) ? 0 : guest_ns - offset;
}

void Machine::wait_for_startup(unsigned vcpu) {
  auto guard = lock();
  waiting_startup_.insert(vcpu);
  for (;;) {
    if (stop_requested() || woken_.erase(vcpu)) break;
    if (controller_) {
      const api::CpuEvents e = controller_->cpu_events(vcpu);
      if (e.init || e.startup) break;
    }
    stop_if_halted_for_good();
    if (stop_requested()) break;
    clock_->wait_until(guard, wake_, UINT64_MAX);
  }
  waiting_startup_.erase(vcpu);
}

void Machine::wait_for_cpu_event(unsigned vcpu) {
  auto guard = lock();
  halted_interrupts_off_.insert(vcpu);
  for (;;) {
    // Device timers cannot wake this vCPU, but they keep running for the others.
    const std::uint64_t next = poll_timers_locked();
    if (stop_requested() || woken_.erase(vcpu) || (controller_ && controller_->cpu_events(vcpu).any())) break;
    stop_if_halted_for_good();
    if (stop_requested()) break;
    clock_->wait_until(guard, wake_, clock_deadline(next));
  }
  halted_interrupts_off_.erase(vcpu);
}

// A waiting vCPU that has something to take (a kick, an NMI, INIT or STARTUP)
// is not stuck.
bool Machine::can_wake(unsigned vcpu) {
  return woken_.count(vcpu) || (controller_ && controller_->cpu_events(vcpu).any());
}

// Every vCPU is halted with interrupts off or waits for a STARTUP, and none
// has an event to take: only another vCPU or a device could send one, and
// none will (the I/O APIC's NMI/INIT pins aside, which nothing here drives).
void Machine::stop_if_halted_for_good() {
  if (halted_interrupts_off_.empty() || halted_interrupts_off_.size() + waiting_startup_.size() < vcpu_count_) return;
  for (unsigned v : halted_interrupts_off_)
    if (can_wake(v)) return;
  for (unsigned v : waiting_startup_)
    if (can_wake(v)) return;
  request_stop(vcpu_count_ == 1 ? "halted: the vCPU halted with interrupts disabled, so nothing can wake it"
                                : "halted: every vCPU is halted with interrupts disabled or waits for a STARTUP, "
                                  "so nothing can wake the VM");
}

void Machine::wait_for_interrupt(unsigned vcpu) {
  auto guard = lock();
  for (;;) {
    const std::uint64_t next = poll_timers_locked();
    if (stop_requested() || woken_.erase(vcpu) ||
        (controller_ && (controller_->interrupt_pending(vcpu) || controller_->cpu_events(vcpu).any())))
      return;
    clock_->wait_until(guard, wake_, clock_deadline(next));
  }
}

void Machine::wake(unsigned vcpu) {
  auto guard = lock();
  woken_.insert(vcpu);
  wake_.notify_all();
}

void Machine::interrupt_raised(unsigned vcpu) {
  wake_.notify_all();
  if (notifier_) notifier_(vcpu);
}

std::uint64_t Machine::now_ns() const {
  if (paused_.load(std::memory_order_acquire)) return frozen_time_.load(std::memory_order_acquire);
  return static_cast<std::uint64_t>(static_cast<std::int64_t>(clock_->now_ns()) + time_offset_.load());
}

void Machine::set_guest_time(std::uint64_t now_ns) {
  auto guard = lock();
  frozen_time_.store(now_ns, std::memory_order_release);
  time_offset_.store(static_cast<std::int64_t>(now_ns) - static_cast<std::int64_t>(clock_->now_ns()));
}

void Machine::set_paused(bool paused) {
  auto guard = lock();
  if (paused == paused_.load()) return;
  if (paused) {
    frozen_time_.store(now_ns(), std::memory_order_release);
    paused_.store(true, std::memory_order_release);
  } else {
    const std::uint64_t frozen = frozen_time_.load();
    time_offset_.store(static_cast<std::int64_t>(frozen) - static_cast<std::int64_t>(clock_->now_ns()));
    paused_.store(false, std::memory_order_release);
  }
  wake_.notify_all();
}

bool Machine::request_stop(std::string reason, std::optional<int> exit_status) {
  auto guard = lock();
  if (stop_.load()) return false;  // the first reason wins
  stop_reason_ = std::move(reason);
  exit_status_ = exit_status;
  stop_.store(true, std::memory_order_release);
  wake_.notify_all();
  return true;
}

std::string Machine::stop_reason() const {
  auto guard = lock();
  return stop_reason_;
}

std::optional<int> Machine::exit_status() const {
  auto guard = lock();
  return exit_status_;
}

}  // namespace modevisor::host
