#include "monitor/vm_session.hpp"

#include <fmt/format.h>

#include <chrono>
#include <fstream>
#include <iterator>

#include "common/errors.hpp"
#include "kernel-driver/kvm_hypervisor.hpp"
#include "platform/cpu_reset.hpp"
#include "platform/cpu_model.hpp"
#include "platform/linux_loader.hpp"
#include "platform/mptable.hpp"
#include "platform/multiboot_loader.hpp"

namespace modevisor::host {

// Plugin messages go to the VM log tagged with the plugin's log token.
class VmSession::Logger final : public api::Logger {
 public:
  Logger(std::shared_ptr<spdlog::logger> log, std::string token) : log_(std::move(log)), token_(std::move(token)) {}
  void log(api::LogLevel level, std::string_view message) override {
    static constexpr spdlog::level::level_enum kLevels[] = {spdlog::level::trace, spdlog::level::debug,
                                                            spdlog::level::info, spdlog::level::warn, spdlog::level::err};
    log_->log(kLevels[static_cast<int>(level)], "{}| {}", token_, message);
  }

 private:
  std::shared_ptr<spdlog::logger> log_;
  std::string token_;
};

// COM1 output: whole lines to the VM log, every byte to the terminal.
class VmSession::Console final : public ConsoleSink {
 public:
  Console(std::shared_ptr<spdlog::logger> log, ConsoleEcho echo) : log_(std::move(log)), echo_(std::move(echo)) {}
  ~Console() override { flush(); }
  void write(std::uint8_t byte) override {
    if (echo_) echo_(byte);
    if (byte == '\n') {
      flush();
    } else if (byte != '\r') {
      line_.push_back(static_cast<char>(byte));
      if (line_.size() >= 4096) flush();
    }
  }
  void flush() {
    if (!line_.empty()) log_->info("console| {}", line_);
    line_.clear();
  }

 private:
  std::shared_ptr<spdlog::logger> log_;
  ConsoleEcho echo_;
  std::string line_;
};

namespace {

std::vector<std::uint8_t> read_file(const std::filesystem::path& file, const char* what) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw InputError(file, 0, 0, std::string("cannot read the ") + what);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string register_dump(const api::VcpuState& s) {
  using namespace api::gpr;
  return fmt::format(
      "eip={:08x} eflags={:08x} eax={:08x} ebx={:08x} ecx={:08x} edx={:08x} esi={:08x} edi={:08x} ebp={:08x} "
      "esp={:08x} cs={:04x} ss={:04x} cr0={:08x} cr2={:08x} cr3={:08x} cr4={:08x}",
      s.rip, s.rflags, s.gpr[rax], s.gpr[rbx], s.gpr[rcx], s.gpr[rdx], s.gpr[rsi], s.gpr[rdi], s.gpr[rbp], s.gpr[rsp],
      s.cs.selector, s.ss.selector, s.cr0, s.cr2, s.cr3, s.cr4);
}

}  // namespace

VmSession::VmSession(const VmConfig& vm, const LoadedPlugin& plugin, std::shared_ptr<spdlog::logger> vm_log,
                     ConsoleEcho echo)
    : vm_(vm),
      plugin_(plugin),
      log_(std::move(vm_log)),
      plugin_log_(std::make_unique<Logger>(log_, plugin.descriptor.log_token)),
      console_(std::make_unique<Console>(log_, std::move(echo))),
      ram_(vm.memory_bytes) {
  PcConfig config;
  config.ram_bytes = vm.memory_bytes;
  config.cpus = vm.vcpus;
  pc_ = std::make_unique<Pc>(machine_, config);
  pc_->set_console(console_.get());

  const auto image = read_file(vm.guest.kernel, "kernel image");
  const api::VcpuState boot_state = load_kernel(vm, image);
  // The BIOS tables a PC firmware leaves behind (kernels without ACPI find
  // their CPUs and interrupt routing there).
  write_mp_table(ram_, MpTableConfig{vm.vcpus});

  api::VmSpec spec;
  spec.name = vm.name;
  spec.vcpus = vm.vcpus;
  spec.memory_bytes = vm.memory_bytes;
  spec.guest_bits = vm.guest.os.bits;
  spec.guest_os = vm.guest.os.name;
  spec.cpuid = cpu_model(vm.cpu_model);
  if (vm.cpu_model != "host") log_->info("cpu: model {} ({} CPUID leaves)", vm.cpu_model, spec.cpuid.size());
  if (plugin.descriptor.execution == api::Technique::Hardware) hypervisor_ = kvm::KvmHypervisor::open();
  machine_vm_ = plugin.monitor->create_vm(spec, api::VmServices{ram_, machine_, *plugin_log_, hypervisor_.get()});
  api::VcpuState bsp = boot_state;
  bsp.lapic = pc_->save_lapic(0);
  machine_vm_->load_vcpu(0, bsp);
  start_application_processors();
  // A device interrupt raised from another thread must pull the vCPU out of guest code.
  machine_.set_interrupt_notifier([this](unsigned vcpu) {
    if (machine_vm_) machine_vm_->kick(vcpu);
  });
}

// A Linux bzImage boots through the Linux boot protocol (with the VM's
// initrd); anything else must be a multiboot kernel.
api::VcpuState VmSession::load_kernel(const VmConfig& vm, const std::vector<std::uint8_t>& image) {
  if (is_linux_bzimage(image)) {
    std::vector<std::uint8_t> initrd;
    if (!vm.guest.initrd.empty()) initrd = read_file(vm.guest.initrd, "initrd");
    const LinuxBoot boot = load_linux(ram_, vm.guest.kernel, image, vm.guest.cmdline, vm.guest.initrd, initrd);
    log_->info("loader: Linux {} ({}-bit, boot protocol {}.{:02}) at {:#x}-{:#x}, entry {:#x}, zero page {:#x}, "
               "cmdline \"{}\"",
               boot.kernel_version.empty() ? vm.guest.kernel.string() : boot.kernel_version,
               boot.kernel_64bit ? 64 : 32, boot.protocol >> 8, boot.protocol & 0xff, boot.kernel_start,
               boot.kernel_end, boot.vcpu.rip, boot.zero_page, boot.cmdline);
    if (boot.initrd_end)
      log_->info("loader: initrd {} at {:#x}-{:#x}", vm.guest.initrd.string(), boot.initrd_start, boot.initrd_end);
    return boot.vcpu;
  }
  if (!vm.guest.initrd.empty())
    throw InputError(vm.guest.initrd, 0, 0,
                     "an initrd is only passed to Linux kernels, and " + vm.guest.kernel.string() +
                         " is not a Linux bzImage (for a multiboot kernel use a module)");
  // The kernel sees "<file name> <cmdline>", as QEMU's -kernel/-append give it.
  MultibootBoot boot = load_multiboot(ram_, vm.guest.kernel.filename(), image, vm.guest.cmdline, {});
  for (const auto& note : boot.notes) log_->info("loader: {}", note);
  log_->info("loader: {} loaded at {:#x}-{:#x}, entry {:#x}, multiboot info at {:#x}, cmdline \"{}\"",
             vm.guest.kernel.string(), boot.kernel_start, boot.kernel_end, boot.entry, boot.info_address, boot.cmdline);
  return boot.vcpu;
}

VmSession::~VmSession() {
  stop("session ends");
  if (timer_thread_.joinable()) timer_thread_.join();
  machine_.set_interrupt_notifier(nullptr);
  machine_vm_.reset();  // before the RAM and devices it uses
}

// The application processors power on as after INIT: waiting for SIPI.
void VmSession::start_application_processors() {
  waiting_for_sipi_.assign(vm_.vcpus, 0);
  if (vm_.vcpus > 1)
    log_->info("vCPUs: {}; vCPU 0 (the BSP) runs the kernel, vCPU{} 1{} wait{} for the guest's INIT/STARTUP", vm_.vcpus,
               vm_.vcpus > 2 ? "s" : "", vm_.vcpus > 2 ? fmt::format("-{}", vm_.vcpus - 1) : "",
               vm_.vcpus > 2 ? "" : "s");
  for (unsigned i = 1; i < vm_.vcpus; ++i) {
    api::VcpuState s = state_after_init(machine_vm_->save_vcpu(i), /*bsp=*/false);
    s.lapic = pc_->save_lapic(i);
    machine_vm_->load_vcpu(i, s);
    waiting_for_sipi_[i] = 1;
  }
}

void VmSession::kick_all() {
  if (!machine_vm_) return;
  for (unsigned i = 0; i < vm_.vcpus; ++i) machine_vm_->kick(i);
}

void VmSession::stop(const std::string& reason) {
  machine_.request_stop(reason);
  running_ = false;
  timer_wake_.notify_all();
  kick_all();
}

void VmSession::console_input(std::string_view bytes) { pc_->push_console_input(bytes); }

// Device timers are evaluated lazily; this thread brings them up to date at
// each deadline so that a vCPU running guest code without calling the
// platform still gets its timer interrupts (through the notifier's kick).
void VmSession::timer_loop() {
  using namespace std::chrono;
  std::unique_lock lock(timer_mutex_);
  while (running_) {
    const std::uint64_t now = machine_.now_ns();
    const std::uint64_t deadline = machine_.next_timer_deadline_ns();
    const std::uint64_t wait_ns = deadline <= now ? 50'000 : std::min<std::uint64_t>(deadline - now, 10'000'000);
    timer_wake_.wait_for(lock, nanoseconds(std::max<std::uint64_t>(wait_ns, 50'000)));
    if (!running_) break;
    lock.unlock();
    machine_.poll_timers();
    lock.lock();
  }
}

// INIT and STARTUP change the whole architectural state, so they are applied
// here, mode-neutrally, through save_vcpu/load_vcpu, on the vCPU's own thread
// while it is not running.
void VmSession::apply_startup(unsigned index, const StartupEvents& events) {
  api::VcpuState s = machine_vm_->save_vcpu(index);
  if (events.init) {
    const bool bsp = pc_->apic_base(index) & Lapic::kBaseBsp;
    s = state_after_init(s, bsp);
    log_->info("vCPU {}: INIT{}", index, bsp ? " (bootstrap processor: restarts at the reset vector)" : ": waits for SIPI");
  }
  if (events.sipi_vector) {
    s = state_after_startup(s, *events.sipi_vector);
    log_->info("vCPU {}: STARTUP vector {:#04x}: real mode at {:04x}:0000", index, *events.sipi_vector,
               s.cs.selector);
  }
  s.lapic = pc_->save_lapic(index);
  machine_vm_->load_vcpu(index, s);
  waiting_for_sipi_[index] = s.run_state == api::RunState::WaitForSipi;
}

// The first vCPU failure stops the VM and is the session's result; one that
// comes after the VM was already stopping (guest exit, another failure) is
// only logged.
void VmSession::vcpu_failed(unsigned index, api::ExitKind kind, std::string diagnostic) {
  // Monitors put the reason and their register dump in the diagnostic; the
  // mode-neutral state is the fallback when one says nothing.
  if (diagnostic.empty()) {
    try {
      diagnostic = register_dump(machine_vm_->save_vcpu(index));
    } catch (const std::exception& e) {
      diagnostic = std::string("(no register dump: ") + e.what() + ")";
    }
  }
  if (vm_.vcpus > 1) diagnostic = fmt::format("vCPU {}: {}", index, diagnostic);
  const char* what = kind == api::ExitKind::Shutdown ? "shutdown" : "monitor error";
  if (machine_.request_stop(fmt::format("vCPU {}: {}", index, what))) {
    std::lock_guard lock(failure_mutex_);
    failure_ = Failure{kind, std::move(diagnostic)};
  } else {
    log_->warn("vCPU {}: {} while the VM was stopping ({}): {}", index, what, machine_.stop_reason(), diagnostic);
  }
  kick_all();
}

void VmSession::vcpu_loop(unsigned index) {
  try {
    for (;;) {
      if (machine_.stop_requested()) {
        // A guest exit or reset stops the machine from one vCPU's I/O; the
        // others may be running guest code that makes no exits.
        kick_all();
        return;
      }
      const StartupEvents events = machine_.take_startup(index);
      if (events.any()) apply_startup(index, events);
      if (waiting_for_sipi_[index]) {
        machine_.wait_for_startup(index);
        continue;
      }
      api::RunExit exit = machine_vm_->run(index);
      if (exit.kind == api::ExitKind::Stopped) continue;  // kicked, an INIT/STARTUP, or the VM stops
      vcpu_failed(index, exit.kind, std::move(exit.diagnostic));
      return;
    }
  } catch (const std::exception& e) {  // a MonitorError from save/load, or worse
    vcpu_failed(index, api::ExitKind::Error, e.what());
  }
}

SessionResult VmSession::run() {
  running_ = true;
  timer_thread_ = std::thread([this] { timer_loop(); });
  std::vector<std::thread> application_processors;
  for (unsigned i = 1; i < vm_.vcpus; ++i) application_processors.emplace_back([this, i] { vcpu_loop(i); });
  vcpu_loop(0);
  for (auto& thread : application_processors) thread.join();
  running_ = false;
  timer_wake_.notify_all();
  timer_thread_.join();
  console_->flush();
  SessionResult result;
  if (failure_) {
    result.kind = failure_->kind == api::ExitKind::Shutdown ? SessionResult::Kind::Shutdown : SessionResult::Kind::Error;
    result.reason = failure_->reason;
  } else {
    result.guest_status = machine_.exit_status();
    result.kind = result.guest_status ? SessionResult::Kind::GuestExit : SessionResult::Kind::Stopped;
    result.reason = machine_.stop_reason();
  }
  result.counters = machine_vm_->counters();
  for (auto& counter : pc_->counters()) result.counters.push_back(std::move(counter));
  return result;
}

}  // namespace modevisor::host
