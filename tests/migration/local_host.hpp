// An in-process host for migration tests and the migration benchmark: this
// machine's capabilities, the build's plugins, the shipped guest-OS table and
// default policy, as the CLI assembles them, plus a VM's console and log kept
// in memory.  Two of them in one process are a source and a destination.
#pragma once

#include <filesystem>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "capabilities/probe.hpp"
#include "migration/vm_endpoints.hpp"
#include "plugins/registry.hpp"
#include "selection/policy.hpp"

namespace modevisor::host::migration {

struct LocalHost {
  std::string name;
  api::HostCapabilities caps = probe_host();
  PluginRegistry registry{{std::filesystem::path(MODEVISOR_BINARY_DIR) / "plugins"}};
  GuestOsTable guest_os = GuestOsTable::load(std::filesystem::path(MODEVISOR_SOURCE_DIR) / "configs" / "guest-os.yaml");
  Policy policy = load_policy(find_policy(std::filesystem::path(MODEVISOR_SOURCE_DIR) / "configs", "default"));
  // The VMs' log (MONITOR MODE lines, migration steps), readable with log_text().
  std::shared_ptr<spdlog::logger> log;
  // Every console byte of this host's VMs, and (shared between hosts that
  // point at the same one) of both hosts in the order the bytes came.
  struct Console {
    std::mutex mutex;
    std::string text;
    void add(std::uint8_t byte) {
      std::lock_guard lock(mutex);
      text.push_back(static_cast<char>(byte));
    }
    std::string read() {
      std::lock_guard lock(mutex);
      return text;
    }
  };
  std::shared_ptr<Console> console = std::make_shared<Console>();
  std::shared_ptr<Console> joined = std::make_shared<Console>();

  explicit LocalHost(std::string host_name) : name(std::move(host_name)) {
    log = std::make_shared<spdlog::logger>(name, std::make_shared<spdlog::sinks::ostream_sink_mt>(log_stream_));
    log->set_level(spdlog::level::info);
    log->flush_on(spdlog::level::info);
    registry.rescan();
  }
  LocalHost(const LocalHost&) = delete;
  LocalHost& operator=(const LocalHost&) = delete;

  std::string log_text() {
    log->flush();
    return log_stream_.str();
  }
  std::string console_text() { return console->read(); }
  std::vector<PluginCandidate> candidates() {
    std::vector<PluginCandidate> out;
    for (const auto& p : registry.plugins()) out.push_back({p->file, p->descriptor, host_problems(*p, caps)});
    return out;
  }
  VmEvents events() {
    VmEvents e;
    e.console_output = [mine = console, both = joined](std::uint8_t byte) {
      mine->add(byte);
      both->add(byte);
    };
    return e;
  }
  LocalHostView view() {
    LocalHostView v;
    v.name = name;
    v.capabilities = caps;
    v.candidates = candidates();
    v.policy = policy;
    v.guest_os = &guest_os;
    v.registry = &registry;
    v.vm_log = [this](const VmConfig&) { return log; };
    v.vm_events = [this](const VmConfig&) { return events(); };
    return v;
  }
  // Powers on `file` under the mode this host's selector picks.
  std::unique_ptr<Vm> power_on(const std::filesystem::path& file) {
    VmConfig vm = load_vm_config(file, guest_os);
    Selection s = select_monitor_mode(caps, candidates(), policy, vm);
    if (!s.selected_plugin) throw std::runtime_error("no mode for " + file.string() + ": " + s.none_reason);
    auto created = Vm::create(vm, registry.share(s.selected_plugin->descriptor.name), log, events());
    created->start();
    return created;
  }

 private:
  std::ostringstream log_stream_;
};

}  // namespace modevisor::host::migration
