#include "cli/commands.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/sinks/basic_file_sink.h>

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <thread>
#include <nlohmann/json.hpp>

#include "capabilities/cpu_profile.hpp"
#include "config/vm_config.hpp"
#include <modevisor/api/hypervisor.hpp>

#include "common/errors.hpp"
#include "vm/vm.hpp"
#include "selection/mode_log.hpp"

namespace modevisor::cli {

namespace {

using nlohmann::json;

const char* yes_no(bool value) { return value ? "yes" : "no"; }

std::string vendor_text(const api::HostCapabilities& h) {
  return fmt::format("{} family {:#x} model {:#x} stepping {}", h.vendor_id.empty() ? "unknown" : h.vendor_id, h.family,
                     h.model, h.stepping);
}

std::string driver_text(const api::HostCapabilities& h) {
  const auto& d = h.driver;
  if (!d.usable) return fmt::format("not usable ({})", d.detail.empty() ? "no driver" : d.detail);
  std::string mmu;
  if (d.mmu_selection == api::MmuSelection::PerVm)
    mmu = "MMU chosen per VM";
  else
    mmu = fmt::format("MMU chosen for the whole host: nested paging {}", d.nested_paging_enabled ? "on" : "off");
  return fmt::format("{} usable, {}", d.name, mmu);
}

json capabilities_json(const api::HostCapabilities& h) {
  const auto& d = h.driver;
  return json{{"source", h.source},
              {"vendor", h.vendor_id},
              {"model_name", h.model_name},
              {"family", h.family},
              {"model", h.model},
              {"stepping", h.stepping},
              {"long_mode", h.long_mode},
              {"hardware_virtualization", h.hardware_virtualization},
              {"nested_paging", h.nested_paging},
              {"apic_virtualization", h.apic_virtualization},
              {"long_mode_segment_limits", h.long_mode_segment_limits},
              {"quirks", h.quirks},
              {"masked", h.masked},
              {"driver",
               {{"present", d.present},
                {"usable", d.usable},
                {"name", d.name},
                {"detail", d.detail},
                {"mmu_selection", d.mmu_selection == api::MmuSelection::PerVm ? "per-vm" : "host-wide"},
                {"nested_paging_enabled", d.nested_paging_enabled},
                {"api_version", d.api_version}}},
              {"usable",
               {{"hardware_execution", api::can_use_hardware_execution(h)},
                {"nested_paging", api::can_use_nested_paging(h)},
                {"driver_shadow_paging", api::can_use_driver_shadow_paging(h)}}}};
}

void print_capabilities(const api::HostCapabilities& h) {
  fmt::print("host:                      {}\n", h.source);
  fmt::print("cpu:                       {}\n", vendor_text(h));
  if (!h.model_name.empty()) fmt::print("model name:                {}\n", h.model_name);
  fmt::print("long mode (x86-64):        {}\n", yes_no(h.long_mode));
  const bool intel = h.vendor == api::CpuVendor::Intel, amd = h.vendor == api::CpuVendor::Amd;
  fmt::print("hardware virtualization:   {}\n",
             h.hardware_virtualization ? fmt::format("yes ({})", intel ? "VT-x" : amd ? "AMD-V" : "VT-x/AMD-V") : "no");
  fmt::print("nested paging:             {}\n",
             h.nested_paging ? fmt::format("yes ({})", intel ? "EPT" : amd ? "RVI/NPT" : "EPT/NPT") : "no");
  fmt::print("APIC/TPR virtualization:   {}\n", yes_no(h.apic_virtualization));
  fmt::print("long-mode segment limits:  {}{}\n", yes_no(h.long_mode_segment_limits),
             h.long_mode_segment_limits ? " (BT64 possible)" : " (BT limited to 32-bit guests: BT32)");
  if (!h.quirks.empty()) fmt::print("quirks:                    {}\n", fmt::join(h.quirks, ", "));
  if (!h.masked.empty()) fmt::print("masked by configuration:   {}\n", fmt::join(h.masked, ", "));
  fmt::print("driver:                    {}\n", driver_text(h));
  fmt::print("modes the hardware offers: hardware execution {}, nested paging {}, shadow paging in the driver {}\n",
             yes_no(api::can_use_hardware_execution(h)), yes_no(api::can_use_nested_paging(h)),
             yes_no(api::can_use_driver_shadow_paging(h)));
}

const char* technique(api::Technique t) { return t == api::Technique::Hardware ? "hardware" : "software"; }

std::string guests_text(const api::GuestSupport& g) {
  std::vector<std::string> out;
  if (g.bits32) out.emplace_back("32-bit");
  if (g.bits64) out.emplace_back(g.bits64_needs_segment_limits ? "64-bit (needs long-mode segment limits)" : "64-bit");
  std::string text = fmt::format("{}", fmt::join(out, ", "));
  if (g.max_vcpus) text += g.max_vcpus == 1 ? "; 1 vCPU" : fmt::format("; up to {} vCPUs", g.max_vcpus);
  return text;
}

// The VM's own log: <log_dir>/<vm-name>.log, one per VM, appended to.
std::shared_ptr<spdlog::logger> open_vm_log(const Context& context, const host::VmConfig& vm) {
  const auto path = context.host_config().log_dir / (vm.name + ".log");
  auto unwritable = [&](const std::string& why) {
    return host::InputError(context.host_config().file, 0, 0,
                            "cannot write the VM log " + path.string() + " (" + why +
                                "); point log_dir (or --log-dir) at a writable directory");
  };
  std::error_code ec;
  std::filesystem::create_directories(context.host_config().log_dir, ec);
  if (ec) throw unwritable(ec.message());
  std::shared_ptr<spdlog::sinks::basic_file_sink_mt> sink;
  try {
    sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path.string());
  } catch (const spdlog::spdlog_ex& e) {
    throw unwritable(e.what());
  }
  sink->set_pattern("%Y-%m-%dT%H:%M:%S.%e| %v");
  auto log = std::make_shared<spdlog::logger>(vm.name, sink);
  log->set_level(parse_log_level(context.host_config().log_level));
  log->flush_on(spdlog::level::trace);
  return log;
}

}  // namespace

int command_host(Context& context, bool json_output) {
  if (json_output) {
    std::cout << capabilities_json(context.host()).dump(2) << "\n";
    return kExitOk;
  }
  print_capabilities(context.host());
  return kExitOk;
}

int command_plugins(Context& context, bool json_output) {
  const auto& registry = context.registry();
  json out{{"host", context.host().source}, {"directories", json::array()}, {"plugins", json::array()},
           {"problems", json::array()}};
  for (const auto& dir : registry.directories()) out["directories"].push_back(dir.string());
  for (const auto& plugin : registry.plugins()) {
    const auto& d = plugin.descriptor;
    auto problems = host::host_problems(plugin, context.host());
    out["plugins"].push_back({{"name", d.name},
                              {"version", d.version},
                              {"mode", plugin.mode},
                              {"log_token", d.log_token},
                              {"abi_version", d.abi_version},
                              {"file", plugin.file.string()},
                              {"execution", technique(d.execution)},
                              {"mmu", technique(d.mmu)},
                              {"deterministic", d.deterministic},
                              {"guests", guests_text(d.guests)},
                              {"max_vcpus", d.guests.max_vcpus},
                              {"summary", d.summary},
                              {"runs_here", problems.empty()},
                              {"why_not", problems}});
  }
  for (const auto& problem : registry.problems())
    out["problems"].push_back({{"file", problem.file.string()}, {"reason", problem.reason}});
  if (json_output) {
    std::cout << out.dump(2) << "\n";
    return kExitOk;
  }
  std::vector<std::string> dirs;
  for (const auto& dir : registry.directories()) dirs.push_back(dir.string());
  fmt::print("plugin directories: {}\n", fmt::join(dirs, ", "));
  fmt::print("host: {}\n\n", context.host().source);
  for (const auto& p : out["plugins"]) {
    fmt::print("{} {}  [{}]  ABI {}\n", p["name"].get<std::string>(), p["version"].get<std::string>(),
               p["mode"].get<std::string>(), p["abi_version"].get<int>());
    fmt::print("  file:       {}\n", p["file"].get<std::string>());
    fmt::print("  technique:  {} execution, {} MMU{}\n", p["execution"].get<std::string>(), p["mmu"].get<std::string>(),
               p["deterministic"].get<bool>() ? ", deterministic" : "");
    fmt::print("  guests:     {}\n", p["guests"].get<std::string>());
    fmt::print("  about:      {}\n", p["summary"].get<std::string>());
    if (p["runs_here"].get<bool>()) {
      fmt::print("  this host:  can run it\n\n");
    } else {
      fmt::print("  this host:  cannot run it\n");
      for (const auto& why : p["why_not"]) fmt::print("              - {}\n", why.get<std::string>());
      fmt::print("\n");
    }
  }
  if (!registry.problems().empty()) {
    fmt::print("skipped (broken plugins):\n");
    for (const auto& problem : registry.problems()) fmt::print("  {}: {}\n", problem.file.string(), problem.reason);
  }
  return kExitOk;
}

int command_cpus(Context& context, bool json_output) {
  json out = json::array();
  for (const auto& name : host::list_cpu_profiles(context.config_dir())) {
    auto caps = host::load_cpu_profile(host::find_cpu_profile(context.config_dir(), name));
    out.push_back({{"name", name}, {"capabilities", capabilities_json(caps)}});
  }
  if (json_output) {
    std::cout << out.dump(2) << "\n";
    return kExitOk;
  }
  fmt::print("{:<24} {:<7} {:<6} {:<7} {:<6} {:<9}  {}\n", "profile", "vendor", "VT/SVM", "EPT/NPT", "APICv", "LM-limits",
             "model");
  for (const auto& p : out) {
    const auto& c = p["capabilities"];
    fmt::print("{:<24} {:<7} {:<6} {:<7} {:<6} {:<9}  {}\n", p["name"].get<std::string>(),
               c["vendor"].get<std::string>() == "GenuineIntel" ? "Intel" : "AMD",
               yes_no(c["hardware_virtualization"]), yes_no(c["nested_paging"]), yes_no(c["apic_virtualization"]),
               yes_no(c["long_mode_segment_limits"]), c["model_name"].get<std::string>());
  }
  return kExitOk;
}

int command_explain(Context& context, const std::string& vm_file, bool json_output) {
  host::VmConfig vm = host::load_vm_config(vm_file, context.guest_os());
  host::Selection selection = host::select_monitor_mode(context.host(), context.candidates(), context.policy(), vm);
  if (json_output) {
    std::cout << host::to_json(selection).dump(2) << "\n";
  } else {
    fmt::print("VM {} ({}, {}-bit) on {}, policy {}\n", vm.name, vm.guest.os.name, vm.guest.os.bits,
               context.host().source, context.policy().name);
    if (!selection.preference_note.empty()) fmt::print("guest OS preference rule: {}\n", selection.preference_note);
    for (const auto& line : host::monitor_mode_lines(selection)) fmt::print("{}\n", line);
  }
  return selection.selected ? kExitOk : kExitNoMode;
}

namespace {

// Serial input from the terminal and Ctrl-C, on a thread of their own: a
// self-pipe wakes it from poll() when the VM ends or the operator interrupts.
class ConsoleInput {
 public:
  explicit ConsoleInput(host::Vm& session) : session_(session) {
    if (::pipe2(wake_, O_CLOEXEC) != 0) wake_[0] = wake_[1] = -1;
    instance_ = this;
    previous_ = std::signal(SIGINT, [](int) {
      if (instance_ && instance_->wake_[1] >= 0) {
        const char c = 'i';
        [[maybe_unused]] auto n = ::write(instance_->wake_[1], &c, 1);
      }
    });
    thread_ = std::thread([this] { loop(); });
  }
  ~ConsoleInput() {
    const char c = 'q';
    if (wake_[1] >= 0) [[maybe_unused]] auto n = ::write(wake_[1], &c, 1);
    thread_.join();
    std::signal(SIGINT, previous_);
    instance_ = nullptr;
    for (int fd : wake_)
      if (fd >= 0) ::close(fd);
  }
  bool interrupted() const { return interrupted_; }

 private:
  void loop() {
    bool stdin_open = true;
    for (;;) {
      pollfd fds[2] = {{wake_[0], POLLIN, 0}, {STDIN_FILENO, static_cast<short>(stdin_open ? POLLIN : 0), 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds[0].revents & POLLIN) {
        char c = 0;
        if (::read(wake_[0], &c, 1) == 1 && c == 'i') {
          interrupted_ = true;
          session_.stop("interrupted by the operator (SIGINT)");
          continue;
        }
        return;
      }
      if (fds[1].revents & (POLLIN | POLLHUP)) {
        char buffer[256];
        const ssize_t n = ::read(STDIN_FILENO, buffer, sizeof buffer);
        if (n <= 0) stdin_open = false;
        else session_.console_input(std::string_view(buffer, static_cast<std::size_t>(n)));
      }
    }
  }

  host::Vm& session_;
  int wake_[2] = {-1, -1};
  std::thread thread_;
  std::atomic<bool> interrupted_{false};
  void (*previous_)(int) = SIG_DFL;
  static inline ConsoleInput* instance_ = nullptr;
};

const char* result_kind(host::SessionResult::Kind kind) {
  switch (kind) {
    case host::SessionResult::Kind::GuestExit: return "guest-exit";
    case host::SessionResult::Kind::Shutdown: return "shutdown";
    case host::SessionResult::Kind::Stopped: return "stopped";
    default: return "error";
  }
}

}  // namespace

int command_run(Context& context, const std::string& vm_file, bool json_output, bool stats) {
  if (!context.host_is_probed())
    throw host::InputError(context.host_config().file, 0, 0,
                           "this host configuration describes another host (cpu_profile " +
                               context.host_config().cpu_profile.value_or("?") +
                               "); VMs run only on the host itself: use it with explain");
  host::VmConfig vm = host::load_vm_config(vm_file, context.guest_os());
  auto vm_log = open_vm_log(context, vm);
  vm_log->info("power on: VM {} from {}", vm.name, vm.file.string());
  vm_log->info("host: {}; policy {}", context.host().source, context.policy().name);
  host::Selection selection = host::select_monitor_mode(context.host(), context.candidates(), context.policy(), vm);
  for (const auto& line : host::monitor_mode_lines(selection)) vm_log->info("{}", line);
  json out{{"vm", vm.name}, {"selection", host::to_json(selection)}};
  auto finish = [&](int status) {
    out["exit_status"] = status;
    if (json_output) std::cout << out.dump(2) << "\n";
    return status;
  };
  if (!selection.selected || !selection.selected_plugin) {
    context.log()->error("VM {}: no monitor mode can run it here: {}", vm.name, selection.none_reason);
    vm_log->error("power on failed: {}", selection.none_reason);
    out["result"] = "no-mode";
    return finish(kExitNoMode);
  }
  const host::LoadedPlugin* plugin = context.registry().find(selection.selected_plugin->descriptor.name);
  if (!plugin) {
    vm_log->error("power on failed: plugin {} vanished", selection.selected_plugin->descriptor.name);
    return finish(kExitMonitorFailed);
  }

  std::unique_ptr<host::Vm> session;
  try {
    host::VmEvents events;
    if (!json_output) events.console_output = [](std::uint8_t byte) {
      // Unbuffered: a prompt has no newline, and a byte costs the guest an
      // exit anyway.
      std::fputc(byte, stdout);
      std::fflush(stdout);
    };
    session = host::Vm::create(vm, std::make_shared<const host::LoadedPlugin>(*plugin), vm_log, std::move(events));
  } catch (const api::MonitorError& e) {
    context.log()->error("VM {}: {}", vm.name, e.what());
    vm_log->error("power on failed: {}", e.what());
    out["result"] = "refused";
    out["reason"] = e.what();
    return finish(kExitMonitorFailed);
  } catch (const api::HypervisorError& e) {
    context.log()->error("VM {}: {}", vm.name, e.what());
    vm_log->error("power on failed: {}", e.what());
    out["result"] = "refused";
    out["reason"] = e.what();
    return finish(kExitMonitorFailed);
  } catch (const std::system_error& e) {
    context.log()->error("VM {}: {}", vm.name, e.what());
    vm_log->error("power on failed: {}", e.what());
    out["result"] = "error";
    out["reason"] = e.what();
    return finish(kExitMonitorFailed);
  }

  host::SessionResult result;
  bool interrupted = false;
  {
    ConsoleInput input(*session);
    session->start();
    result = session->wait();
    interrupted = input.interrupted();
  }
  std::fflush(stdout);
  json counters = json::object();
  for (const auto& [name, value] : result.counters) {
    vm_log->info("counter {} = {}", name, value);
    counters[name] = value;
  }
  out["result"] = result_kind(result.kind);
  out["reason"] = result.reason;
  out["console"] = session->console_output();
  out["counters"] = counters;
  if (stats && !json_output) {
    fmt::print(stderr, "modevisor: VM {} ended: {} ({})\n", vm.name, result_kind(result.kind), result.reason);
    for (const auto& [name, value] : result.counters) fmt::print(stderr, "  {:<40} {}\n", name, value);
  }
  switch (result.kind) {
    case host::SessionResult::Kind::GuestExit: return finish(*result.guest_status);
    case host::SessionResult::Kind::Shutdown:
      context.log()->error("VM {}: guest shut down: {}", vm.name, result.reason);
      return finish(kExitGuestShutdown);
    case host::SessionResult::Kind::Stopped: return finish(interrupted ? kExitInterrupted : kExitOk);
    default:
      context.log()->error("VM {}: monitor error: {}", vm.name, result.reason);
      return finish(kExitMonitorFailed);
  }
}

}  // namespace modevisor::cli
