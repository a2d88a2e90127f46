#include "vm/vm.hpp"

#include <fmt/format.h>

#include <chrono>
#include <condition_variable>
#include <fstream>
#include <iterator>
#include <mutex>
#include <sstream>
#include <thread>

#include "common/bounded_file.hpp"
#include "common/errors.hpp"
#include "kernel-driver/kvm_hypervisor.hpp"
#include "platform/cpu_model.hpp"
#include "platform/cpu_reset.hpp"
#include "platform/linux_loader.hpp"
#include "platform/machine.hpp"
#include "platform/mptable.hpp"
#include "platform/multiboot_loader.hpp"
#include "platform/pc.hpp"
#include "selection/guest_os.hpp"
#include "vm/console_log.hpp"

namespace modevisor::host {

const char* to_string(VmState state) {
  switch (state) {
    case VmState::Created: return "created";
    case VmState::Running: return "running";
    case VmState::Paused: return "paused";
    case VmState::Stopped: return "stopped";
    case VmState::Failed: return "failed";
  }
  return "unknown";
}

namespace {


std::string register_dump(const api::VcpuState& s) {
  using namespace api::gpr;
  return fmt::format(
      "eip={:08x} eflags={:08x} eax={:08x} ebx={:08x} ecx={:08x} edx={:08x} esi={:08x} edi={:08x} ebp={:08x} "
      "esp={:08x} cs={:04x} ss={:04x} cr0={:08x} cr2={:08x} cr3={:08x} cr4={:08x}",
      s.rip, s.rflags, s.gpr[rax], s.gpr[rbx], s.gpr[rcx], s.gpr[rdx], s.gpr[rsi], s.gpr[rdi], s.gpr[rbp], s.gpr[rsp],
      s.cs.selector, s.ss.selector, s.cr0, s.cr2, s.cr3, s.cr4);
}

// Plugin messages go to the VM log tagged with the plugin's log token.
class PluginLogger final : public api::Logger {
 public:
  PluginLogger(std::shared_ptr<spdlog::logger> log, std::string token) : log_(std::move(log)), token_(std::move(token)) {}
  void log(api::LogLevel level, std::string_view message) override {
    static constexpr spdlog::level::level_enum kLevels[] = {spdlog::level::trace, spdlog::level::debug,
                                                            spdlog::level::info, spdlog::level::warn, spdlog::level::err};
    log_->log(kLevels[static_cast<int>(level)], "{}| {}", token_, message);
  }

 private:
  std::shared_ptr<spdlog::logger> log_;
  std::string token_;
};

// COM1 output: escaped lines to the VM log, every byte to the VM's listener.
class Console final : public ConsoleSink {
 public:
  Console(std::shared_ptr<spdlog::logger> log, std::function<void(std::uint8_t)> listener)
      : log_(std::move(log)), listener_(std::move(listener)) {}
  void write(std::uint8_t byte) override {
    if (listener_) listener_(byte);
    log_.write(byte);
  }
  void flush() { log_.flush(); }

 private:
  ConsoleLog log_;
  std::function<void(std::uint8_t)> listener_;
};

}  // namespace

class Vm::Impl {
 public:
  Impl(const VmConfig& vm, std::shared_ptr<const LoadedPlugin> plugin, std::shared_ptr<spdlog::logger> log,
       VmEvents events, std::unique_ptr<GuestRam> ram);
  ~Impl();

  void power_on();
  void restore(const MachineState& state);
  void create_monitor(std::unique_ptr<api::Hypervisor> opened = nullptr);
  void kick(unsigned index);

  void start();
  void pause();
  void resume();
  MachineState save_state();
  void stop(std::string reason);
  SessionResult wait();

  VmState state() const {
    std::lock_guard lock(mutex_);
    return state_;
  }
  api::Counters counters() const;
  std::shared_ptr<const LoadedPlugin> plugin() const {
    std::lock_guard lock(monitor_mutex_);
    return plugin_;
  }
  unsigned mode_switches() const {
    std::lock_guard lock(monitor_mutex_);
    return mode_switches_;
  }

  VmConfig vm_;
  std::string vm_yaml_;
  std::shared_ptr<const LoadedPlugin> plugin_;
  std::shared_ptr<spdlog::logger> log_;
  VmEvents events_;
  std::unique_ptr<PluginLogger> plugin_log_;
  std::unique_ptr<Console> console_;
  std::unique_ptr<GuestRam> ram_;
  Machine machine_;
  std::unique_ptr<Pc> pc_;
  api::CpuidTable cpuid_;
  std::unique_ptr<api::Hypervisor> hypervisor_;
  std::unique_ptr<api::VirtualMachine> monitor_vm_;
  // Kicks come from other threads (devices, stop, pause); a mode switch
  // replaces monitor_vm_ and plugin_ under this lock (only pointer moves
  // under it: the interrupt notifier takes it with the platform lock held).
  mutable std::mutex monitor_mutex_;
  // Held while the plugin collects dirty pages (a migration's thread) and
  // while a mode switch replaces the plugin's VM, so a collection never
  // reaches a VM being destroyed.  Never taken by kicks: a collection may
  // wait for the vCPU thread, which kicks from device code.
  std::mutex dirty_mutex_;

 private:
  struct Failure {
    api::ExitKind kind;
    std::string reason;
  };

  api::VcpuState load_kernel(const std::vector<std::uint8_t>& image);
  void start_application_processors();
  void launch_threads();
  void set_state(VmState state);  // with mutex_ held
  [[noreturn]] void refuse(const char* operation) const;  // with mutex_ held
  void timer_loop();
  void vcpu_loop(unsigned index);
  void park(unsigned index);
  void vcpu_left();
  void apply_startup(unsigned index, const StartupEvents& events);
  void vcpu_failed(unsigned index, api::ExitKind kind, std::string diagnostic);
  bool switch_mode(unsigned index, const std::string& guest_event);
  void kick_all();
  SessionResult make_result();

  mutable std::mutex mutex_;
  std::condition_variable changed_;  // state_, parked_, live_vcpus_
  VmState state_ = VmState::Created;
  bool pause_requested_ = false;
  bool threads_started_ = false;
  unsigned parked_ = 0;      // vCPUs at the pause gate
  unsigned live_vcpus_ = 0;  // vCPU threads not yet finished
  std::vector<api::VcpuState> parked_states_;  // by vCPU: saved at the pause gate, loaded when it opens
  std::vector<char> waiting_for_sipi_;         // by vCPU; only its own thread touches it once running
  std::optional<Failure> failure_;             // the vCPU failure that stopped the VM
  std::optional<SessionResult> result_;
  std::vector<std::thread> vcpu_threads_;
  std::thread timer_thread_;
  bool timer_running_ = false;
  std::mutex timer_mutex_;
  std::condition_variable timer_wake_;
  bool switching_ = false;  // a mode switch holds the other vCPUs at the pause gate
  bool notifier_installed_ = false;
  // Under monitor_mutex_: what a switch replaced.  The old plugin stays
  // loaded (references handed out stay valid) and its counters still count.
  unsigned mode_switches_ = 0;
  std::vector<std::shared_ptr<const LoadedPlugin>> retired_plugins_;
  api::Counters retired_counters_;
};

Vm::Impl::Impl(const VmConfig& vm, std::shared_ptr<const LoadedPlugin> plugin, std::shared_ptr<spdlog::logger> log,
               VmEvents events, std::unique_ptr<GuestRam> ram)
    : vm_(vm),
      plugin_(std::move(plugin)),
      log_(std::move(log)),
      events_(std::move(events)),
      plugin_log_(std::make_unique<PluginLogger>(log_, plugin_->descriptor.log_token)),
      console_(std::make_unique<Console>(log_, events_.console_output)),
      ram_(ram ? std::move(ram) : std::make_unique<GuestRam>(vm.memory_bytes)) {
  PcConfig config;
  config.ram_bytes = vm.memory_bytes;
  config.cpus = vm.vcpus;
  pc_ = std::make_unique<Pc>(machine_, config);
  pc_->set_console(console_.get());
  cpuid_ = cpu_model(vm.cpu_model);
  parked_states_.resize(vm.vcpus);
  waiting_for_sipi_.assign(vm.vcpus, 0);
}

Vm::Impl::~Impl() {
  stop("the VM is destroyed");
  wait();
  machine_.set_interrupt_notifier(nullptr);
  monitor_vm_.reset();  // before the RAM and devices it uses
}

void Vm::Impl::create_monitor(std::unique_ptr<api::Hypervisor> opened) {
  api::VmSpec spec;
  spec.name = vm_.name;
  spec.vcpus = vm_.vcpus;
  spec.memory_bytes = vm_.memory_bytes;
  spec.guest_bits = vm_.guest.os.bits;
  spec.guest_os = vm_.guest.os.name;
  spec.cpuid = cpuid_;
  if (vm_.cpu_model != "host") log_->info("cpu: model {} ({} CPUID leaves)", vm_.cpu_model, spec.cpuid.size());
  std::unique_ptr<api::Hypervisor> hypervisor;
  if (plugin_->descriptor.execution == api::Technique::Hardware)
    hypervisor = opened ? std::move(opened) : kvm::KvmHypervisor::open();
  auto monitor = plugin_->monitor->create_vm(spec, api::VmServices{*ram_, machine_, *plugin_log_, hypervisor.get()});
  {
    std::lock_guard lock(monitor_mutex_);
    monitor_vm_ = std::move(monitor);
    hypervisor_ = std::move(hypervisor);
  }
  // A device interrupt raised from another thread must pull the vCPU out of guest code.
  if (!notifier_installed_) machine_.set_interrupt_notifier([this](unsigned vcpu) { kick(vcpu); });
  notifier_installed_ = true;
}

void Vm::Impl::kick(unsigned index) {
  std::lock_guard lock(monitor_mutex_);
  if (monitor_vm_) monitor_vm_->kick(index);
}

// Power-on: what a PC's firmware leaves behind for the kernel.
void Vm::Impl::power_on() {
  const auto image = read_guest_image(vm_.guest.kernel, vm_.memory_bytes, "kernel image");
  const api::VcpuState boot_state = load_kernel(image);
  // The BIOS tables a PC firmware leaves behind (kernels without ACPI find
  // their CPUs and interrupt routing there).
  write_mp_table(*ram_, MpTableConfig{vm_.vcpus});
  create_monitor();
  monitor_vm_->load_vcpu(0, boot_state);
  start_application_processors();
}

// A Linux bzImage boots through the Linux boot protocol (with the VM's
// initrd); anything else must be a multiboot kernel.
api::VcpuState Vm::Impl::load_kernel(const std::vector<std::uint8_t>& image) {
  GuestRam& ram = *ram_;
  if (is_linux_bzimage(image)) {
    std::vector<std::uint8_t> initrd;
    if (!vm_.guest.initrd.empty()) initrd = read_guest_image(vm_.guest.initrd, vm_.memory_bytes, "initrd");
    const LinuxBoot boot = load_linux(ram, vm_.guest.kernel, image, vm_.guest.cmdline, vm_.guest.initrd, initrd);
    log_->info("loader: Linux {} ({}-bit, boot protocol {}.{:02}) at {:#x}-{:#x}, entry {:#x}, zero page {:#x}, "
               "cmdline \"{}\"",
               ConsoleLog::escape(boot.kernel_version.empty() ? vm_.guest.kernel.string() : boot.kernel_version),
               boot.kernel_64bit ? 64 : 32, boot.protocol >> 8, boot.protocol & 0xff, boot.kernel_start,
               boot.kernel_end, boot.vcpu.rip, boot.zero_page, ConsoleLog::escape(boot.cmdline));
    if (boot.initrd_end)
      log_->info("loader: initrd {} at {:#x}-{:#x}", vm_.guest.initrd.string(), boot.initrd_start, boot.initrd_end);
    return boot.vcpu;
  }
  if (!vm_.guest.initrd.empty())
    throw InputError(vm_.guest.initrd, 0, 0,
                     "an initrd is only passed to Linux kernels, and " + vm_.guest.kernel.string() +
                         " is not a Linux bzImage (for a multiboot kernel use a module)");
  // The kernel sees "<file name> <cmdline>", as QEMU's -kernel/-append give it.
  MultibootBoot boot = load_multiboot(ram, vm_.guest.kernel.filename(), image, vm_.guest.cmdline, {});
  for (const auto& note : boot.notes) log_->info("loader: {}", ConsoleLog::escape(note));
  log_->info("loader: {} loaded at {:#x}-{:#x}, entry {:#x}, multiboot info at {:#x}, cmdline \"{}\"",
             vm_.guest.kernel.string(), boot.kernel_start, boot.kernel_end, boot.entry, boot.info_address,
             ConsoleLog::escape(boot.cmdline));
  return boot.vcpu;
}

// The application processors power on as after INIT: waiting for SIPI.
void Vm::Impl::start_application_processors() {
  if (vm_.vcpus > 1)
    log_->info("vCPUs: {}; vCPU 0 (the BSP) runs the kernel, vCPU{} 1{} wait{} for the guest's INIT/STARTUP", vm_.vcpus,
               vm_.vcpus > 2 ? "s" : "", vm_.vcpus > 2 ? fmt::format("-{}", vm_.vcpus - 1) : "",
               vm_.vcpus > 2 ? "" : "s");
  for (unsigned i = 1; i < vm_.vcpus; ++i) {
    monitor_vm_->load_vcpu(i, state_after_init(monitor_vm_->save_vcpu(i), /*bsp=*/false));
    waiting_for_sipi_[i] = 1;
  }
}

// From a saved state: the devices (and guest time) first, then every vCPU;
// the VM stays paused, with guest time frozen at the saved time.
void Vm::Impl::restore(const MachineState& state) {
  if (state.vcpus.size() != vm_.vcpus)
    throw VmStateError(fmt::format("the saved state has {} vCPUs, the VM {} declares {}", state.vcpus.size(),
                                   vm_.name, vm_.vcpus));
  if (ram_->size() != vm_.memory_bytes)
    throw VmStateError(fmt::format("the saved RAM has {} bytes, the VM {} declares {}", ram_->size(), vm_.name,
                                   vm_.memory_bytes));
  if (state.cpu_model != vm_.cpu_model)
    throw VmStateError(fmt::format("the saved state is of CPU model {}, the VM {} declares {}", state.cpu_model,
                                   vm_.name, vm_.cpu_model));
  if (state.cpu_model != "host" && state.cpuid.size() != cpuid_.size())
    throw VmStateError(fmt::format("the saved CPU model {} has {} CPUID leaves, this host's {}", state.cpu_model,
                                   state.cpuid.size(), cpuid_.size()));
  cpuid_ = state.cpuid;  // the guest has read these leaves; it keeps them
  machine_.set_paused(true);
  try {
    pc_->restore_state(state.devices);
  } catch (const std::invalid_argument& e) {
    throw VmStateError(e.what());
  }
  create_monitor();
  for (unsigned i = 0; i < vm_.vcpus; ++i) {
    monitor_vm_->load_vcpu(i, state.vcpus[i]);
    parked_states_[i] = monitor_vm_->save_vcpu(i);  // as the plugin holds it (what a save gives)
    waiting_for_sipi_[i] = state.vcpus[i].run_state == api::RunState::WaitForSipi;
  }
  std::lock_guard lock(mutex_);
  state_ = VmState::Paused;
  log_->info("restore: VM {} restored at guest time {} ns under {} ({} {}); paused", vm_.name, machine_.now_ns(),
             plugin_->mode, plugin_->descriptor.name, plugin_->descriptor.version);
}

void Vm::Impl::set_state(VmState state) {
  state_ = state;
  changed_.notify_all();
  if (events_.state_changed) events_.state_changed(state);
}

void Vm::Impl::refuse(const char* operation) const {
  throw VmStateError(fmt::format("cannot {} VM {}: it is {}", operation, vm_.name, to_string(state_)));
}

void Vm::Impl::launch_threads() {
  threads_started_ = true;
  live_vcpus_ = vm_.vcpus;
  {
    std::lock_guard lock(timer_mutex_);
    timer_running_ = true;
  }
  timer_thread_ = std::thread([this] { timer_loop(); });
  for (unsigned i = 0; i < vm_.vcpus; ++i) vcpu_threads_.emplace_back([this, i] { vcpu_loop(i); });
}

void Vm::Impl::start() {
  std::lock_guard lock(mutex_);
  if (state_ != VmState::Created) refuse("start");
  log_->info("power on: VM {} runs under {} ({} {})", vm_.name, plugin_->mode, plugin_->descriptor.name,
             plugin_->descriptor.version);
  set_state(VmState::Running);
  launch_threads();
}

void Vm::Impl::pause() {
  std::unique_lock lock(mutex_);
  if (state_ != VmState::Running) refuse("pause");
  pause_requested_ = true;
  machine_.set_paused(true);  // stop_requested() turns true; guest time freezes
  kick_all();
  {
    std::lock_guard timer(timer_mutex_);
    timer_wake_.notify_all();
  }
  changed_.wait(lock, [&] { return (live_vcpus_ > 0 && parked_ == live_vcpus_) || result_.has_value(); });
  if (state_ != VmState::Running) return;  // it ended meanwhile (guest exit, failure)
  console_->flush();
  set_state(VmState::Paused);
  log_->info("pause: every vCPU left its run loop; guest time frozen at {} ns", machine_.now_ns());
}

void Vm::Impl::resume() {
  std::lock_guard lock(mutex_);
  if (state_ != VmState::Paused) refuse("resume");
  log_->info("resume: guest time goes on from {} ns", machine_.now_ns());
  set_state(VmState::Running);
  machine_.set_paused(false);
  if (!threads_started_) {
    launch_threads();  // a restored VM: its states are loaded already
    return;
  }
  pause_requested_ = false;
  changed_.notify_all();
  std::lock_guard timer(timer_mutex_);
  timer_wake_.notify_all();
}

MachineState Vm::Impl::save_state() {
  std::lock_guard lock(mutex_);
  if (state_ != VmState::Paused) refuse("save the state of");
  MachineState s;
  s.vm_yaml = vm_yaml_;
  s.vm_file = vm_.file.string();
  s.cpu_model = vm_.cpu_model;
  s.cpuid = cpuid_;
  s.vcpus = parked_states_;
  s.devices = pc_->save_state();
  return s;
}

void Vm::Impl::stop(std::string reason) {
  std::unique_lock lock(mutex_);
  if (state_ == VmState::Stopped || state_ == VmState::Failed) return;
  if (!threads_started_) {  // created or restored, never run
    machine_.request_stop(reason);
    result_ = make_result();
    log_->info("power off: {}", reason);
    set_state(VmState::Stopped);
    return;
  }
  machine_.request_stop(std::move(reason));
  changed_.notify_all();  // opens the pause gate
  kick_all();
  std::lock_guard timer(timer_mutex_);
  timer_wake_.notify_all();
}

SessionResult Vm::Impl::wait() {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return result_.has_value(); });
  auto threads = std::move(vcpu_threads_);
  lock.unlock();
  for (auto& thread : threads)
    if (thread.joinable()) thread.join();
  if (timer_thread_.joinable() && timer_thread_.get_id() != std::this_thread::get_id()) timer_thread_.join();
  lock.lock();
  return *result_;
}

void Vm::Impl::kick_all() {
  for (unsigned i = 0; i < vm_.vcpus; ++i) {
    kick(i);
    machine_.wake(i);
  }
}

// Device timers are evaluated lazily; this thread brings them up to date at
// each deadline so that a vCPU running guest code without calling the
// platform still gets its timer interrupts (through the notifier's kick).
// While the VM is paused it only waits.
void Vm::Impl::timer_loop() {
  using namespace std::chrono;
  std::unique_lock lock(timer_mutex_);
  while (timer_running_) {
    if (machine_.paused() && !machine_.stopping()) {
      timer_wake_.wait_for(lock, milliseconds(100));
      continue;
    }
    const std::uint64_t now = machine_.now_ns();
    const std::uint64_t deadline = machine_.next_timer_deadline_ns();
    const std::uint64_t wait_ns = deadline <= now ? 50'000 : std::min<std::uint64_t>(deadline - now, 10'000'000);
    timer_wake_.wait_for(lock, nanoseconds(std::max<std::uint64_t>(wait_ns, 50'000)));
    if (!timer_running_) break;
    lock.unlock();
    machine_.poll_timers();
    lock.lock();
  }
}

// INIT and STARTUP change the whole architectural state, so they are applied
// here, mode-neutrally, through save_vcpu/load_vcpu, on the vCPU's own thread
// while it is not running.
void Vm::Impl::apply_startup(unsigned index, const StartupEvents& events) {
  api::VcpuState s = monitor_vm_->save_vcpu(index);
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
  monitor_vm_->load_vcpu(index, s);
  waiting_for_sipi_[index] = s.run_state == api::RunState::WaitForSipi;
}

// The first vCPU failure stops the VM and is its result; one that comes after
// the VM was already stopping (guest exit, another failure) is only logged.
void Vm::Impl::vcpu_failed(unsigned index, api::ExitKind kind, std::string diagnostic) {
  // Monitors put the reason and their register dump in the diagnostic; the
  // mode-neutral state is the fallback when one says nothing.
  if (diagnostic.empty()) {
    try {
      diagnostic = register_dump(monitor_vm_->save_vcpu(index));
    } catch (const std::exception& e) {
      diagnostic = std::string("(no register dump: ") + e.what() + ")";
    }
  }
  if (vm_.vcpus > 1) diagnostic = fmt::format("vCPU {}: {}", index, diagnostic);
  const char* what = kind == api::ExitKind::Shutdown ? "shutdown" : "monitor error";
  if (machine_.request_stop(fmt::format("vCPU {}: {}", index, what))) {
    std::lock_guard lock(mutex_);
    failure_ = Failure{kind, std::move(diagnostic)};
    changed_.notify_all();
  } else {
    log_->warn("vCPU {}: {} while the VM was stopping ({}): {}", index, what, machine_.stop_reason(), diagnostic);
  }
  kick_all();
}

// The seed's BT32 switch, on the vCPU thread whose plugin handed the guest
// back: the other vCPUs wait at the pause gate with guest time frozen (the
// guest sees nothing), the caller's handler picks the plugin, and the same
// RAM and devices continue under a VM of that plugin with every vCPU's state
// loaded, as a restore under another plugin does.  False: the VM stops (the
// reason is its result).
bool Vm::Impl::switch_mode(unsigned index, const std::string& guest_event) {
  const std::string from = plugin()->descriptor.name;
  {
    std::unique_lock lock(mutex_);
    switching_ = true;
    machine_.set_paused(true);
    lock.unlock();
    kick_all();
    lock.lock();
    changed_.wait(lock, [&] { return parked_ + 1 == live_vcpus_ || machine_.stopping(); });
  }
  auto reopen_gate = [&] {
    std::lock_guard lock(mutex_);
    switching_ = false;
    if (!pause_requested_) machine_.set_paused(false);
    changed_.notify_all();
  };
  if (machine_.stopping()) {  // it ends anyway (guest exit elsewhere, operator stop)
    reopen_gate();
    return false;
  }
  ModeChangeOutcome next;
  if (events_.mode_change) {
    try {
      next = events_.mode_change(guest_event);
    } catch (const std::exception& e) {
      next.reason = std::string("selecting a mode for the switch failed: ") + e.what();
    }
  } else {
    next.reason = "this session cannot switch monitor modes";
  }
  if (!next.plugin) {
    vcpu_failed(index, api::ExitKind::Error,
                fmt::format("{} cannot go on ({}), and no other monitor mode takes the VM over: {}", from,
                            guest_event, next.reason));
    reopen_gate();
    return false;
  }
  try {
    std::lock_guard dirty(dirty_mutex_);  // the new VM's first collection reports every page
    std::vector<api::VcpuState> states;
    {
      std::lock_guard lock(mutex_);
      states = parked_states_;
    }
    states[index] = monitor_vm_->save_vcpu(index);
    api::Counters old_counters = monitor_vm_->counters();
    std::unique_ptr<api::VirtualMachine> old_vm;
    std::unique_ptr<api::Hypervisor> old_hypervisor;
    {
      std::lock_guard lock(monitor_mutex_);
      old_vm = std::move(monitor_vm_);
      old_hypervisor = std::move(hypervisor_);
      retired_plugins_.push_back(plugin_);
      for (auto& [name, value] : old_counters) retired_counters_.emplace_back(from + ": " + name, value);
      plugin_ = next.plugin;
      ++mode_switches_;
    }
    old_vm.reset();  // before the new one maps the same RAM and devices
    old_hypervisor.reset();
    plugin_log_ = std::make_unique<PluginLogger>(log_, plugin_->descriptor.log_token);
    // Built on a thread of its own, as at power-on (the main thread builds,
    // vCPU threads run): this vCPU thread carries the old monitor's signal
    // state (its kick and timer signals), which can interrupt KVM's setup.
    std::exception_ptr build_error;
    std::thread builder([&] {
      try {
        create_monitor(std::move(next.hypervisor));
        for (unsigned i = 0; i < vm_.vcpus; ++i) monitor_vm_->load_vcpu(i, states[i]);
      } catch (...) {
        build_error = std::current_exception();
      }
    });
    builder.join();
    if (build_error) std::rethrow_exception(build_error);
    for (unsigned i = 0; i < vm_.vcpus; ++i) {
      std::lock_guard lock(mutex_);
      parked_states_[i] = states[i];  // the gate loads them again into the new VM: the same state
    }
    log_->info("mode switch: VM {} continues under {} ({} {}) at guest time {} ns, rip {:#x}", vm_.name,
               plugin_->mode, plugin_->descriptor.name, plugin_->descriptor.version, machine_.now_ns(),
               states[index].rip);
  } catch (const std::exception& e) {
    vcpu_failed(index, api::ExitKind::Error, fmt::format("switching from {} to {} failed: {}", from,
                                                         next.plugin->descriptor.name, e.what()));
    reopen_gate();
    return false;
  }
  reopen_gate();
  std::lock_guard timer(timer_mutex_);
  timer_wake_.notify_all();
  return true;
}

// The pause gate: the vCPU gives up its state (so guest time, the TSC
// included, stands still while paused) and waits; when the gate opens it
// takes its state back (a save may have read it, nothing else changes it).
void Vm::Impl::park(unsigned index) {
  api::VcpuState s = monitor_vm_->save_vcpu(index);
  std::unique_lock lock(mutex_);
  parked_states_[index] = std::move(s);
  ++parked_;
  changed_.notify_all();
  changed_.wait(lock, [&] { return (!pause_requested_ && !switching_) || machine_.stopping(); });
  --parked_;
  const api::VcpuState resume_state = parked_states_[index];
  const bool stopping = machine_.stopping();
  lock.unlock();
  if (!stopping) monitor_vm_->load_vcpu(index, resume_state);
}

void Vm::Impl::vcpu_loop(unsigned index) {
  try {
    for (;;) {
      if (machine_.stopping()) {
        // A guest exit or reset stops the machine from one vCPU's I/O; the
        // others may be running guest code that makes no exits.
        kick_all();
        break;
      }
      if (machine_.paused()) {
        bool requested;
        {
          std::lock_guard lock(mutex_);
          requested = pause_requested_ || switching_;
        }
        if (requested) {
          park(index);
          continue;
        }
        std::this_thread::yield();  // resume() is clearing the flags
        continue;
      }
      const StartupEvents events = machine_.take_startup(index);
      if (events.any()) apply_startup(index, events);
      if (waiting_for_sipi_[index]) {
        machine_.wait_for_startup(index);
        continue;
      }
      api::RunExit exit = monitor_vm_->run(index);
      if (exit.kind == api::ExitKind::Stopped) continue;  // kicked, an INIT/STARTUP, a pause or the VM stops
      if (exit.kind == api::ExitKind::ModeChange) {
        if (switch_mode(index, exit.diagnostic)) continue;
        break;
      }
      vcpu_failed(index, exit.kind, std::move(exit.diagnostic));
      break;
    }
  } catch (const std::exception& e) {  // a MonitorError from save/load, or worse
    vcpu_failed(index, api::ExitKind::Error, e.what());
  }
  vcpu_left();
}

// The last vCPU out ends the VM: timers stop, the result is made.
void Vm::Impl::vcpu_left() {
  std::unique_lock lock(mutex_);
  changed_.notify_all();
  if (--live_vcpus_ != 0) return;
  lock.unlock();
  {
    std::lock_guard timer(timer_mutex_);
    timer_running_ = false;
    timer_wake_.notify_all();
  }
  console_->flush();
  SessionResult result = make_result();
  log_->info("power off: {} ({})",
             result.kind == SessionResult::Kind::GuestExit  ? "guest-exit"
             : result.kind == SessionResult::Kind::Shutdown ? "shutdown"
             : result.kind == SessionResult::Kind::Stopped  ? "stopped"
                                                            : "error",
             result.reason);
  lock.lock();
  const bool failed = result.kind == SessionResult::Kind::Shutdown || result.kind == SessionResult::Kind::Error;
  result_ = std::move(result);
  set_state(failed ? VmState::Failed : VmState::Stopped);
}

SessionResult Vm::Impl::make_result() {
  SessionResult result;
  std::optional<Failure> failure;
  {
    // make_result runs with mutex_ either held (stop before start) or not.
    failure = failure_;
  }
  if (failure) {
    result.kind = failure->kind == api::ExitKind::Shutdown ? SessionResult::Kind::Shutdown : SessionResult::Kind::Error;
    result.reason = failure->reason;
  } else {
    result.guest_status = machine_.exit_status();
    result.kind = result.guest_status ? SessionResult::Kind::GuestExit : SessionResult::Kind::Stopped;
    result.reason = machine_.stop_reason();
  }
  result.counters = counters();
  return result;
}

api::Counters Vm::Impl::counters() const {
  api::Counters out;
  {
    std::lock_guard lock(monitor_mutex_);
    if (monitor_vm_) out = monitor_vm_->counters();
    if (mode_switches_) {
      for (const auto& counter : retired_counters_) out.push_back(counter);
      out.emplace_back("vm.mode_switches", mode_switches_);
    }
  }
  for (auto& counter : pc_->counters()) out.push_back(std::move(counter));
  return out;
}

// ---------------------------------------------------------------- Vm

Vm::Vm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Vm::~Vm() = default;

std::unique_ptr<Vm> Vm::create(const VmConfig& vm, std::shared_ptr<const LoadedPlugin> plugin,
                               std::shared_ptr<spdlog::logger> log, VmEvents events) {
  auto impl = std::make_unique<Impl>(vm, std::move(plugin), std::move(log), std::move(events), nullptr);
  // A VM built in code (tests) has no declaration file.
  if (!vm.file.empty()) impl->vm_yaml_ = read_bounded_text(vm.file, kMaxYamlFileBytes, "VM declaration");
  impl->power_on();
  return std::unique_ptr<Vm>(new Vm(std::move(impl)));
}

std::unique_ptr<Vm> Vm::restore(const VmConfig& vm, const MachineState& state, std::unique_ptr<GuestRam> ram,
                                std::shared_ptr<const LoadedPlugin> plugin, std::shared_ptr<spdlog::logger> log,
                                VmEvents events) {
  if (!ram) throw VmStateError("restore of VM " + vm.name + ": no RAM");
  auto impl = std::make_unique<Impl>(vm, std::move(plugin), std::move(log), std::move(events), std::move(ram));
  impl->vm_yaml_ = state.vm_yaml;
  impl->restore(state);
  return std::unique_ptr<Vm>(new Vm(std::move(impl)));
}

std::unique_ptr<Vm> Vm::restore(const MachineState& state, std::unique_ptr<GuestRam> ram,
                                std::shared_ptr<const LoadedPlugin> plugin, std::shared_ptr<spdlog::logger> log,
                                VmEvents events) {
  const GuestOsTable guest_os =
      GuestOsTable::load(std::filesystem::path(MODEVISOR_DEFAULT_CONFIG_DIR) / "guest-os.yaml");
  const VmConfig vm = parse_vm_config(state.vm_yaml, state.vm_file, guest_os);
  return restore(vm, state, std::move(ram), std::move(plugin), std::move(log), std::move(events));
}

void Vm::start() { impl_->start(); }
void Vm::pause() { impl_->pause(); }
void Vm::resume() { impl_->resume(); }
MachineState Vm::save_state() { return impl_->save_state(); }
void Vm::stop(std::string reason) { impl_->stop(std::move(reason)); }
SessionResult Vm::wait() { return impl_->wait(); }
VmState Vm::state() const { return impl_->state(); }
const VmConfig& Vm::config() const { return impl_->vm_; }
const LoadedPlugin& Vm::plugin() const { return *impl_->plugin(); }  // old plugins stay loaded: the reference holds
unsigned Vm::mode_switches() const { return impl_->mode_switches(); }
GuestRam& Vm::ram() { return *impl_->ram_; }
void Vm::console_input(std::string_view bytes) { impl_->pc_->push_console_input(bytes); }
std::string Vm::console_output() const { return impl_->pc_->console_output(); }
api::Counters Vm::counters() const { return impl_->counters(); }
std::uint64_t Vm::guest_time_ns() const { return impl_->machine_.now_ns(); }

void Vm::start_dirty_tracking() {
  std::vector<std::uint64_t> discard;
  impl_->ram_->take_host_dirty();
  std::lock_guard dirty(impl_->dirty_mutex_);
  if (impl_->monitor_vm_) impl_->monitor_vm_->collect_dirty_pages(discard);
}

bool Vm::collect_dirty_pages(std::vector<std::uint64_t>& bitmap) {
  const std::size_t words = (impl_->ram_->size() / 4096 + 63) / 64;
  bitmap.assign(words, 0);  // filled, not accumulated (see vm.hpp)
  bool tracked;
  {
    std::lock_guard dirty(impl_->dirty_mutex_);
    tracked = impl_->monitor_vm_ && impl_->monitor_vm_->collect_dirty_pages(bitmap);
  }
  if (!tracked) bitmap.assign(words, 0);  // the plugin's bitmap is unspecified then
  // The host's writes after the plugin's: either order is safe since a
  // mark_dirty that misses this take lands in the next one.
  const auto host = impl_->ram_->take_host_dirty();
  for (std::size_t i = 0; i < host.size() && i < bitmap.size(); ++i) bitmap[i] |= host[i];
  bitmap.resize(words, 0);  // exactly RAM's pages, whatever the plugin returned
  return tracked;
}

}  // namespace modevisor::host
