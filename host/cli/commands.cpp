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
#include "control/protocol.hpp"
#include "runtime/describe.hpp"
#include "vm/vm.hpp"
#include "selection/mode_log.hpp"

namespace modevisor::cli {

using namespace host;  // the exit statuses

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

std::string guests_text(const json& plugin) {
  std::vector<std::string> words;
  for (const auto& g : plugin["guests"]) {
    std::string word = g.get<std::string>();
    if (word == "64-bit" && plugin["bits64_needs_segment_limits"].get<bool>()) word += " (needs long-mode segment limits)";
    words.push_back(word);
  }
  std::string text = fmt::format("{}", fmt::join(words, ", "));
  const unsigned max = plugin["max_vcpus"].get<unsigned>();
  if (max) text += max == 1 ? "; 1 vCPU" : fmt::format("; up to {} vCPUs", max);
  return text;
}

// Guest console bytes as JSON: the text (bytes that are not UTF-8 become
// U+FFFD when printed) and the exact bytes, base64.
void put_console(json& out, const std::string& bytes) {
  out["console"] = bytes;
  out["console_base64"] = control::base64_encode(bytes);
}

std::string dump(const json& j) { return j.dump(2, ' ', false, json::error_handler_t::replace); }

}  // namespace

int command_host(host::Host& context, bool json_output) {
  if (json_output) {
    std::cout << dump(host::capabilities_json(context.capabilities())) << "\n";
    return kExitOk;
  }
  print_capabilities(context.capabilities());
  return kExitOk;
}

int command_plugins(host::Host& context, bool json_output) {
  const json out = host::plugins_json(context);
  if (json_output) {
    std::cout << dump(out) << "\n";
    return kExitOk;
  }
  print_plugins(out);
  return kExitOk;
}

void print_plugins(const json& out) {
  std::vector<std::string> dirs;
  for (const auto& dir : out["directories"]) dirs.push_back(dir.get<std::string>());
  fmt::print("plugin directories: {}\n", fmt::join(dirs, ", "));
  fmt::print("host: {}\n\n", out["host"].get<std::string>());
  for (const auto& p : out["plugins"]) {
    fmt::print("{} {}  [{}]  ABI {}\n", p["name"].get<std::string>(), p["version"].get<std::string>(),
               p["mode"].get<std::string>(), p["abi_version"].get<int>());
    fmt::print("  file:       {}\n", p["file"].get<std::string>());
    fmt::print("  technique:  {} execution, {} MMU{}\n", p["execution"].get<std::string>(), p["mmu"].get<std::string>(),
               p["deterministic"].get<bool>() ? ", deterministic" : "");
    fmt::print("  guests:     {}\n", guests_text(p));
    fmt::print("  about:      {}\n", p["summary"].get<std::string>());
    if (p["runs_here"].get<bool>()) {
      fmt::print("  this host:  can run it\n\n");
    } else {
      fmt::print("  this host:  cannot run it\n");
      for (const auto& why : p["why_not"]) fmt::print("              - {}\n", why.get<std::string>());
      fmt::print("\n");
    }
  }
  if (!out["problems"].empty()) {
    fmt::print("skipped (broken plugins):\n");
    for (const auto& problem : out["problems"])
      fmt::print("  {}: {}\n", problem["file"].get<std::string>(), problem["reason"].get<std::string>());
  }
}

int command_cpus(host::Host& context, bool json_output) {
  json out = json::array();
  for (const auto& name : host::list_cpu_profiles(context.config_dir())) {
    auto caps = host::load_cpu_profile(host::find_cpu_profile(context.config_dir(), name));
    out.push_back({{"name", name}, {"capabilities", host::capabilities_json(caps)}});
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

int command_explain(host::Host& context, const std::string& vm_file, bool json_output) {
  host::VmConfig vm = host::load_vm_config(vm_file, context.guest_os());
  host::check_kernel(vm);  // refuse what run would refuse
  host::Selection selection = context.select(vm);
  // A VM that starts under BT may enter 64-bit mode: the seed's switch is
  // decided then, with the same rule shown here ahead of time.
  std::optional<host::ModeSwitch> on_long_mode;
  if (selection.selected && *selection.selected == "BT")
    on_long_mode = host::select_mode_switch(context.capabilities(), context.candidates(), context.policy(), vm,
                                            "BT", "when the guest activates long mode");
  if (json_output) {
    nlohmann::json out = host::to_json(selection);
    if (on_long_mode) out["on_long_mode"] = host::to_json(*on_long_mode);
    std::cout << dump(out) << "\n";
  } else {
    fmt::print("VM {} ({}, {}-bit) on {}, policy {}\n", vm.name, vm.guest.os.name, vm.guest.os.bits,
               context.capabilities().source, context.policy().name);
    if (!selection.preference_note.empty()) fmt::print("guest OS preference rule: {}\n", selection.preference_note);
    for (const auto& line : host::monitor_mode_lines(selection)) fmt::print("{}\n", line);
    if (on_long_mode) fmt::print("{}\n", host::mode_switch_plan_line(*on_long_mode));
  }
  return selection.selected ? kExitOk : kExitNoMode;
}

namespace {

// Serial input from the terminal and the operator's signals, on a thread of
// their own: SIGINT (Ctrl-C), SIGTERM and SIGHUP stop the VM cleanly (power-off
// line and counters in the VM log).  A self-pipe wakes the thread from poll()
// when a signal arrives or the VM ends.
class ConsoleInput {
 public:
  explicit ConsoleInput(host::Vm& session) : session_(session) {
    if (::pipe2(wake_, O_CLOEXEC) != 0) wake_[0] = wake_[1] = -1;
    instance_ = this;
    for (int i = 0; i < 3; ++i) {
      struct sigaction action {};
      action.sa_handler = [](int signal) {
        if (instance_ && instance_->wake_[1] >= 0) {
          const char c = static_cast<char>(signal);
          [[maybe_unused]] auto n = ::write(instance_->wake_[1], &c, 1);
        }
      };
      sigemptyset(&action.sa_mask);
      ::sigaction(kSignals[i], &action, &previous_[i]);
    }
    thread_ = std::thread([this] { loop(); });
  }
  ~ConsoleInput() {
    const char c = 0;
    if (wake_[1] >= 0) [[maybe_unused]] auto n = ::write(wake_[1], &c, 1);
    thread_.join();
    for (int i = 0; i < 3; ++i) ::sigaction(kSignals[i], &previous_[i], nullptr);
    instance_ = nullptr;
    for (int fd : wake_)
      if (fd >= 0) ::close(fd);
  }
  bool interrupted() const { return interrupted_; }

 private:
  static constexpr int kSignals[3] = {SIGINT, SIGTERM, SIGHUP};

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
        if (::read(wake_[0], &c, 1) == 1 && c != 0) {
          interrupted_ = true;
          session_.stop(fmt::format("interrupted by the operator ({})", sigabbrev_np(c) ? std::string("SIG") + sigabbrev_np(c) : "a signal"));
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
  struct sigaction previous_[3] {};
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

int command_run(host::Host& context, const std::string& vm_file, bool json_output, bool stats) {
  context.require_this_host();
  host::VmConfig vm = host::load_vm_config(vm_file, context.guest_os());
  auto vm_log = host::open_vm_log(context.config().log_dir, vm.name, context.config().log_level, context.config().file);
  vm_log->info("power on: VM {} from {}", vm.name, vm.file.string());
  vm_log->info("host: {}; policy {}", context.capabilities().source, context.policy().name);
  host::Selection selection = context.select(vm);
  for (const auto& line : host::monitor_mode_lines(selection)) vm_log->info("{}", line);
  json out{{"vm", vm.name}, {"selection", host::to_json(selection)}};
  auto finish = [&](int status) {
    out["exit_status"] = status;
    if (json_output) std::cout << dump(out) << "\n";
    return status;
  };
  if (!selection.selected || !selection.selected_plugin) {
    context.log()->error("VM {}: no monitor mode can run it here: {}", vm.name, selection.none_reason);
    vm_log->error("power on failed: {}", selection.none_reason);
    out["result"] = "no-mode";
    return finish(kExitNoMode);
  }
  // Held for as long as the VM exists: no rescan can unload its code.
  const std::shared_ptr<const host::LoadedPlugin> plugin = context.registry().share(selection.selected_plugin->descriptor.name);
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
    // The seed's BT32: a guest entering 64-bit mode continues under the
    // hardware mode the selection, made again for it, allows (or stops).
    events.mode_change = host::mode_change_handler(context, vm, vm_log, plugin->mode);
    session = host::Vm::create(vm, plugin, vm_log, std::move(events));
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
  put_console(out, session->console_output());
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
