#include "platform/machine.hpp"

#include <fmt/format.h>

#include <cstdint>
#include <stdexcept>

namespace modevisor::host {

namespace {
std::uint64_t all_ones(unsigned size) { return size >= 8 ? ~0ull : (1ull << (size * 8)) - 1; }
}  // namespace

Machine::Machine() : power_on_(std::chrono::steady_clock::now()) {}

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

std::uint32_t Machine::io_in(unsigned, std::uint16_t port, unsigned size) {
  ++port_accesses_[port];
  if (PortRange* owner = port_owner(port)) return owner->device->port_read(port, size);
  return static_cast<std::uint32_t>(all_ones(size));
}

void Machine::io_out(unsigned, std::uint16_t port, unsigned size, std::uint32_t value) {
  ++port_accesses_[port];
  if (PortRange* owner = port_owner(port)) owner->device->port_write(port, size, value);
}

std::uint64_t Machine::mmio_read(unsigned, std::uint64_t gpa, unsigned size) {
  std::uint64_t offset = 0;
  if (MmioRange* owner = mmio_owner(gpa, offset)) return owner->device->mmio_read(offset, size);
  return all_ones(size);
}

void Machine::mmio_write(unsigned, std::uint64_t gpa, unsigned size, std::uint64_t value) {
  std::uint64_t offset = 0;
  if (MmioRange* owner = mmio_owner(gpa, offset)) owner->device->mmio_write(offset, size, value);
}

// No interrupt controller is attached yet (the PIC/APIC models come with the
// platform devices), so no external interrupt is ever pending.
bool Machine::interrupt_pending(unsigned) { return false; }
std::uint8_t Machine::acknowledge_interrupt(unsigned) { return 0xff; }  // spurious vector

// No timer device is attached yet.
std::uint64_t Machine::next_timer_deadline_ns() { return UINT64_MAX; }

void Machine::wait_for_interrupt(unsigned) {
  std::unique_lock lock(wait_mutex_);
  wake_.wait(lock, [&] { return stop_requested(); });
}

std::uint64_t Machine::now_ns() const {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - power_on_).count());
}

void Machine::request_stop(std::string reason, std::optional<int> exit_status) {
  {
    std::lock_guard lock(wait_mutex_);
    if (stop_.load()) return;  // the first reason wins
    stop_reason_ = std::move(reason);
    exit_status_ = exit_status;
    stop_.store(true, std::memory_order_release);
  }
  wake_.notify_all();
}

}  // namespace modevisor::host
