#include "kernel-driver/kvm_exit.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace modevisor::kvm {

namespace {

std::uint32_t load_le(const std::uint8_t* p, unsigned size) {
  std::uint32_t v = 0;
  std::memcpy(&v, p, size);
  return v;
}

ExitOutcome handle_io(kvm_run& run, ExitContext& cx) {
  auto& io = run.io;
  auto* data = reinterpret_cast<std::uint8_t*>(&run) + io.data_offset;
  const unsigned size = io.size;
  const std::uint32_t count = io.count == 0 ? 1 : io.count;
  if (size != 1 && size != 2 && size != 4) {
    cx.reason = "KVM_EXIT_IO with size " + std::to_string(size);
    return ExitOutcome::Error;
  }
  // One exit may carry several string-I/O iterations (REP INS/OUTS); the
  // platform sees each as one access, as the guest would on hardware.
  if (count > 1) ++cx.counters.io_string;
  cx.counters.io_ports[io.port] += 1;
  if (io.direction == KVM_EXIT_IO_OUT) {
    ++cx.counters.io_out;
    for (std::uint32_t i = 0; i < count; ++i) cx.platform.io_out(cx.vcpu, io.port, size, load_le(data + i * size, size));
  } else {
    ++cx.counters.io_in;
    for (std::uint32_t i = 0; i < count; ++i) {
      const std::uint32_t v = cx.platform.io_in(cx.vcpu, io.port, size);
      std::memcpy(data + i * size, &v, size);
    }
  }
  return ExitOutcome::Continue;
}

ExitOutcome handle_mmio(kvm_run& run, ExitContext& cx) {
  auto& m = run.mmio;
  const unsigned len = m.len;
  if (len == 0 || len > 8) {
    cx.reason = "KVM_EXIT_MMIO with length " + std::to_string(len);
    return ExitOutcome::Error;
  }
  const std::uint64_t page = cx.apic_base & ~std::uint64_t{0xfff};
  const bool apic = m.phys_addr >= page && m.phys_addr < page + 0x1000;
  if (apic) ++cx.counters.apic_mmio;
  if (m.is_write) {
    ++cx.counters.mmio_write;
    if (apic && m.phys_addr - page == 0x80) ++cx.counters.apic_tpr_write;
    std::uint64_t v = 0;
    std::memcpy(&v, m.data, len);
    cx.platform.mmio_write(cx.vcpu, m.phys_addr, len, v);
  } else {
    ++cx.counters.mmio_read;
    const std::uint64_t v = cx.platform.mmio_read(cx.vcpu, m.phys_addr, len);
    std::memset(m.data, 0, sizeof m.data);
    std::memcpy(m.data, &v, len);
  }
  return ExitOutcome::Continue;
}

std::string hex(std::uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%#llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

const char* exit_reason_name(std::uint32_t reason) {
  switch (reason) {
    case KVM_EXIT_UNKNOWN: return "UNKNOWN";
    case KVM_EXIT_EXCEPTION: return "EXCEPTION";
    case KVM_EXIT_IO: return "IO";
    case KVM_EXIT_HYPERCALL: return "HYPERCALL";
    case KVM_EXIT_DEBUG: return "DEBUG";
    case KVM_EXIT_HLT: return "HLT";
    case KVM_EXIT_MMIO: return "MMIO";
    case KVM_EXIT_IRQ_WINDOW_OPEN: return "IRQ_WINDOW_OPEN";
    case KVM_EXIT_SHUTDOWN: return "SHUTDOWN";
    case KVM_EXIT_FAIL_ENTRY: return "FAIL_ENTRY";
    case KVM_EXIT_INTR: return "INTR";
    case KVM_EXIT_SET_TPR: return "SET_TPR";
    case KVM_EXIT_TPR_ACCESS: return "TPR_ACCESS";
    case KVM_EXIT_NMI: return "NMI";
    case KVM_EXIT_INTERNAL_ERROR: return "INTERNAL_ERROR";
    case KVM_EXIT_SYSTEM_EVENT: return "SYSTEM_EVENT";
    default: return "?";
  }
}

ExitOutcome handle_exit(kvm_run& run, ExitContext& cx) {
  ++cx.counters.runs;
  switch (run.exit_reason) {
    case KVM_EXIT_IO:
      return handle_io(run, cx);
    case KVM_EXIT_MMIO:
      return handle_mmio(run, cx);
    case KVM_EXIT_HLT:
      ++cx.counters.hlt;
      return ExitOutcome::Halt;
    case KVM_EXIT_IRQ_WINDOW_OPEN:
      // The run loop injects the platform's interrupt before the next entry.
      ++cx.counters.irq_window_open;
      return ExitOutcome::Continue;
    case KVM_EXIT_SET_TPR:
      ++cx.counters.set_tpr;
      return ExitOutcome::Continue;
    case KVM_EXIT_INTR:
      ++cx.counters.intr;
      return ExitOutcome::Continue;
    case KVM_EXIT_SHUTDOWN:
      ++cx.counters.shutdown;
      cx.reason = "KVM_EXIT_SHUTDOWN: the guest triple-faulted (or otherwise shut the CPU down)";
      return ExitOutcome::Shutdown;
    case KVM_EXIT_SYSTEM_EVENT:
      ++cx.counters.shutdown;
      cx.reason = "KVM_EXIT_SYSTEM_EVENT type " + std::to_string(run.system_event.type);
      return ExitOutcome::Shutdown;
    case KVM_EXIT_INTERNAL_ERROR: {
      ++cx.counters.internal_error;
      const auto& ie = run.internal;
      const char* what = ie.suberror == KVM_INTERNAL_ERROR_EMULATION          ? " (instruction emulation failed)"
                         : ie.suberror == KVM_INTERNAL_ERROR_SIMUL_EX         ? " (exception while delivering an exception)"
                         : ie.suberror == KVM_INTERNAL_ERROR_DELIVERY_EV      ? " (event delivery failed)"
                         : ie.suberror == KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON ? " (unexpected hardware exit)"
                                                                              : "";
      cx.reason = "KVM_EXIT_INTERNAL_ERROR suberror " + std::to_string(ie.suberror) + what;
      const unsigned n = ie.ndata < 16 ? ie.ndata : 16;
      if (n) {
        cx.reason += "; data";
        for (unsigned i = 0; i < n; ++i) cx.reason += " " + hex(ie.data[i]);
      }
      return ExitOutcome::Error;
    }
    case KVM_EXIT_FAIL_ENTRY:
      ++cx.counters.fail_entry;
      cx.reason = "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason " +
                  hex(run.fail_entry.hardware_entry_failure_reason) + " on host cpu " +
                  std::to_string(run.fail_entry.cpu) + " (invalid guest state)";
      return ExitOutcome::Error;
    case KVM_EXIT_UNKNOWN:
      ++cx.counters.other;
      cx.reason = "KVM_EXIT_UNKNOWN: hardware exit reason " + hex(run.hw.hardware_exit_reason);
      return ExitOutcome::Error;
    default:
      ++cx.counters.other;
      cx.reason = std::string("unhandled KVM exit ") + std::to_string(run.exit_reason) + " (" +
                  exit_reason_name(run.exit_reason) + ")";
      return ExitOutcome::Error;
  }
}

api::Counters ExitCounters::to_counters() const {
  api::Counters c = {
      {"kvm.runs", runs},
      {"kvm.exits", exits()},
      {"kvm.exit.io_in", io_in},
      {"kvm.exit.io_out", io_out},
      {"kvm.exit.io_string", io_string},
      {"kvm.exit.mmio_read", mmio_read},
      {"kvm.exit.mmio_write", mmio_write},
      {"kvm.exit.apic_mmio", apic_mmio},
      {"kvm.exit.apic_tpr_write", apic_tpr_write},
      {"kvm.exit.hlt", hlt},
      {"kvm.exit.irq_window_open", irq_window_open},
      {"kvm.exit.set_tpr", set_tpr},
      {"kvm.exit.shutdown", shutdown},
      {"kvm.exit.internal_error", internal_error},
      {"kvm.exit.fail_entry", fail_entry},
      {"kvm.exit.other", other},
      {"kvm.interrupted", intr},
      {"kvm.interrupts_injected", interrupts_injected},
      {"kvm.interrupts_held", interrupts_held},
      {"kvm.nmis_injected", nmis_injected},
  };
  std::vector<std::pair<std::uint16_t, std::uint64_t>> ports(io_ports.begin(), io_ports.end());
  std::sort(ports.begin(), ports.end());
  for (const auto& [port, n] : ports) {
    char name[32];
    std::snprintf(name, sizeof name, "kvm.io_port.%#06x", port);
    c.emplace_back(name, n);
  }
  return c;
}

}  // namespace modevisor::kvm
