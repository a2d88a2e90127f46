// The protocol's two ends bound to real VMs (host/vm/vm.hpp): the running
// Vm as a MigrationSource, and this host's selector, plugins and
// Vm::restore as a DestinationHost.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <spdlog/logger.h>

#include <modevisor/api/host_capabilities.hpp>

#include "migration/receiver.hpp"
#include "migration/sender.hpp"
#include "config/host_config.hpp"
#include "plugins/registry.hpp"
#include "runtime/host.hpp"
#include "selection/guest_os.hpp"
#include "selection/policy.hpp"
#include "selection/selector.hpp"
#include "vm/vm.hpp"

namespace modevisor::host::migration {

class VmMigrationSource final : public MigrationSource {
 public:
  explicit VmMigrationSource(Vm& vm) : vm_(vm) {}
  void pause() override { vm_.pause(); }
  void resume() override { vm_.resume(); }
  std::vector<std::uint8_t> save_state() override;  // encode_machine_state(vm.save_state())
  api::GuestMemory& ram() override { return vm_.ram(); }
  void start_dirty_tracking() override { vm_.start_dirty_tracking(); }
  bool collect_dirty_pages(std::vector<std::uint64_t>& bitmap) override { return vm_.collect_dirty_pages(bitmap); }
  void discard(const std::string& reason) override { vm_.stop(reason); }

 private:
  Vm& vm_;
};

// Config for a running VM, without pausing it: `vm_yaml` is its declaration
// as declared (the daemon keeps it; empty: read again from config().file).
MigrationConfig describe_for_migration(const Vm& vm, std::string vm_yaml, std::string source_host);

// The destination's VM, paused until Go.
class ArrivedInstance final : public ArrivedVm {
 public:
  explicit ArrivedInstance(std::unique_ptr<Vm> vm) : vm_(std::move(vm)) {}
  void resume() override { vm_->resume(); }
  void discard(const std::string& reason) override { vm_->stop(reason); }
  Vm& vm() { return *vm_; }
  std::unique_ptr<Vm> release() { return std::move(vm_); }

 private:
  std::unique_ptr<Vm> vm_;
};
// The Vm inside a receiver's result (null when there is none).
std::unique_ptr<Vm> take_vm(std::unique_ptr<ArrivedVm> arrived);

// What the destination needs of the host it runs on (the daemon's Host runtime, or a CLI Context).
struct LocalHostView {
  std::string name;  // for logs: "host-b"
  api::HostCapabilities capabilities;
  std::vector<PluginCandidate> candidates;
  Policy policy;
  const GuestOsTable* guest_os = nullptr;
  const PluginRegistry* registry = nullptr;
  std::function<std::shared_ptr<spdlog::logger>(const VmConfig&)> vm_log;  // the VM's log on this host
  std::function<VmEvents(const VmConfig&)> vm_events;                      // console, state changes
};

class VmDestination final : public DestinationHost {
 public:
  explicit VmDestination(LocalHostView host) : host_(std::move(host)) {}
  // The declaration must parse here, its CPU model must be one this host
  // presents identically (leaf for leaf), and the selector must find a mode.
  // Writes the MONITOR MODE lines to the VM's log.
  PlacementDecision place(const MigrationConfig& config) override;
  std::unique_ptr<ArrivedVm> restore(const MigrationConfig& config, const Placement& placement,
                                     std::span<const std::uint8_t> state, std::unique_ptr<GuestRam> ram) override;

 private:
  struct Chosen {
    VmConfig vm;
    std::shared_ptr<const LoadedPlugin> plugin;
    std::shared_ptr<spdlog::logger> log;
  };
  LocalHostView host_;
  std::mutex mutex_;
  std::map<std::string, Chosen> chosen_;  // by VM name, from place() to restore()
};

// This host as the destination sees it, from the runtime the CLI and the daemon share.
LocalHostView local_host_view(const Host& host, std::string name);

// `migrate NAME --to PEER`: PEER is a name from the host's `peers:` or an
// address:port.  Throws MigrationError(Local) naming the peer when it is neither.
std::string resolve_peer(const DaemonConfig& daemon, const std::string& peer);

// Leaf for leaf: the first difference as "leaf 0x1 ecx: 0x... here, 0x... in the VM", or empty.
std::string first_cpuid_difference(const api::CpuidTable& here, const api::CpuidTable& vm);

}  // namespace modevisor::host::migration
