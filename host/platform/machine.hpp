// The platform every monitor mode runs a VM against: guest RAM plus the
// port-I/O and MMIO buses that devices attach to.  Device models live in
// their own files and keep mode-neutral state, so a VM's devices are the same
// whichever plugin runs its vCPUs.  Unclaimed ports and MMIO read as all ones
// and ignore writes, as on a PC.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include <modevisor/api/platform.hpp>

namespace modevisor::host {

class PortDevice {
 public:
  virtual ~PortDevice() = default;
  virtual std::string_view name() const = 0;
  virtual std::uint32_t port_read(std::uint16_t port, unsigned size) = 0;
  virtual void port_write(std::uint16_t port, unsigned size, std::uint32_t value) = 0;
};

class MmioDevice {
 public:
  virtual ~MmioDevice() = default;
  virtual std::string_view name() const = 0;
  virtual std::uint64_t mmio_read(std::uint64_t offset, unsigned size) = 0;
  virtual void mmio_write(std::uint64_t offset, unsigned size, std::uint64_t value) = 0;
};

class Machine : public api::Platform {
 public:
  Machine();

  // Devices are attached before the VM runs and outlive the machine's use.
  void attach_ports(std::uint16_t first, std::uint16_t count, PortDevice& device);  // throws on overlap
  void attach_mmio(std::uint64_t base, std::uint64_t size, MmioDevice& device);     // throws on overlap

  // api::Platform
  std::uint32_t io_in(unsigned vcpu, std::uint16_t port, unsigned size) override;
  void io_out(unsigned vcpu, std::uint16_t port, unsigned size, std::uint32_t value) override;
  std::uint64_t mmio_read(unsigned vcpu, std::uint64_t gpa, unsigned size) override;
  void mmio_write(unsigned vcpu, std::uint64_t gpa, unsigned size, std::uint64_t value) override;
  bool interrupt_pending(unsigned vcpu) override;
  std::uint8_t acknowledge_interrupt(unsigned vcpu) override;
  void wait_for_interrupt(unsigned vcpu) override;
  bool stop_requested() const override { return stop_.load(std::memory_order_acquire); }
  std::uint64_t now_ns() const override;
  std::uint64_t next_timer_deadline_ns() override;

  // The VM ends (debug-exit port, operator, fatal error): every vCPU leaves its loop.
  void request_stop(std::string reason, std::optional<int> exit_status = std::nullopt);
  const std::string& stop_reason() const { return stop_reason_; }
  std::optional<int> exit_status() const { return exit_status_; }

  // I/O exits by port, for the VM log and `run --stats`.
  const std::map<std::uint16_t, std::uint64_t>& port_accesses() const { return port_accesses_; }

 private:
  struct PortRange {
    std::uint16_t count;
    PortDevice* device;
  };
  struct MmioRange {
    std::uint64_t size;
    MmioDevice* device;
  };
  PortRange* port_owner(std::uint16_t port);
  MmioRange* mmio_owner(std::uint64_t gpa, std::uint64_t& offset);

  std::map<std::uint16_t, PortRange> ports_;  // by first port
  std::map<std::uint64_t, MmioRange> mmio_;   // by base address
  std::map<std::uint16_t, std::uint64_t> port_accesses_;
  std::chrono::steady_clock::time_point power_on_;
  std::atomic<bool> stop_{false};
  std::string stop_reason_;
  std::optional<int> exit_status_;
  std::mutex wait_mutex_;
  std::condition_variable wake_;
};

}  // namespace modevisor::host
