// The host's side of a plugin's Monitor and VirtualMachine: every call is
// passed through, and whatever a plugin throws comes back as api::MonitorError
// (the host's error type for "the plugin refused or failed"), so a plugin
// throwing std::runtime_error, std::bad_alloc or an int cannot abort the host.
// probe() runs in a throwaway child process (see plugin_vetting.hpp): a probe
// that crashes or exits takes only the child down.
#pragma once

#include <memory>
#include <string>

#include <modevisor/api/monitor.hpp>

namespace boost::dll { class shared_library; }

namespace modevisor::host {

// probe() could not be run to its end: the child running it crashed, exited
// or hung.  what() says which.
class PluginCrashed : public api::MonitorError {
 public:
  using api::MonitorError::MonitorError;
};

class GuardedMonitor final : public api::Monitor {
 public:
  // `library` is kept loaded until the monitor and every VM it made are gone.
  GuardedMonitor(std::shared_ptr<boost::dll::shared_library> library, std::unique_ptr<api::Monitor> inner,
                 std::string plugin_name);
  ~GuardedMonitor() override;

  std::vector<std::string> probe(const api::HostCapabilities& host) override;
  std::unique_ptr<api::VirtualMachine> create_vm(const api::VmSpec& spec, api::VmServices services) override;

 private:
  std::shared_ptr<boost::dll::shared_library> library_;  // first: destroyed last
  std::unique_ptr<api::Monitor> inner_;
  std::string plugin_name_;
};

}  // namespace modevisor::host
