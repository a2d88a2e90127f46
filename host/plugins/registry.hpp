// The plugin registry: finds mode plugins in the plugin directories, loads
// them with Boost.DLL, checks their ABI version and descriptor, and reports
// every broken one (with its file and the reason) while keeping the rest.
//
// Plugin code is untrusted: a new file is first loaded, described and asked
// for its monitor in a throwaway child process (plugin_vetting.hpp), so a
// static initializer that throws, a crash or an exit() refuses that plugin
// instead of ending the host.  The monitor a LoadedPlugin holds is the host's
// GuardedMonitor (guarded_monitor.hpp): probe() runs in a child, and any
// exception from create_vm() or a VM's methods reaches the host as
// api::MonitorError.  A *.so entry that is a dangling or looping symbolic
// link, or a device, is reported as a problem (a directory named *.so is skipped).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <modevisor/api/descriptor.hpp>
#include <modevisor/api/host_capabilities.hpp>
#include <modevisor/api/monitor.hpp>

namespace boost::dll { class shared_library; }

namespace modevisor::host {

// What identifies one version of a plugin file: a rescan keeps a loaded plugin
// only while all three are unchanged (a replaced file is loaded again).
struct PluginFileStamp {
  std::filesystem::path canonical;
  std::filesystem::file_time_type modified{};
  std::uintmax_t size = 0;
  bool operator==(const PluginFileStamp&) const = default;
};

struct LoadedPlugin {
  // Declared first so it is destroyed last: everything below may hold objects
  // made by the plugin's code.  The monitor's deleter holds the library too,
  // so a monitor copied out of the registry keeps its code loaded for as long
  // as it lives, and is always destroyed before the library is unloaded.
  std::shared_ptr<boost::dll::shared_library> library;
  std::filesystem::path file;
  PluginFileStamp stamp;
  api::PluginDescriptor descriptor;
  std::string mode;  // "BT", "HV" or "HWMMU", from the descriptor's techniques
  std::shared_ptr<api::Monitor> monitor;
};

struct PluginProblem {
  std::filesystem::path file;
  std::string reason;
};

class PluginRegistry {
 public:
  explicit PluginRegistry(std::vector<std::filesystem::path> directories);
  ~PluginRegistry();

  // Scan the directories for *.so files: load the new ones, keep the ones
  // already loaded, drop the ones whose file is gone.  Problems of this scan
  // replace those of the last.  Plugins are listed directory by directory,
  // files in name order.  When two files claim one name, a plugin loaded by an
  // earlier scan wins, then the file that comes first.
  void rescan();

  const std::vector<LoadedPlugin>& plugins() const { return plugins_; }
  const std::vector<PluginProblem>& problems() const { return problems_; }
  const std::vector<std::filesystem::path>& directories() const { return directories_; }
  const LoadedPlugin* find(std::string_view name) const;

 private:
  std::vector<std::filesystem::path> directories_;
  std::vector<LoadedPlugin> plugins_;
  std::vector<PluginProblem> problems_;
};

// Why `plugin` cannot run on `host`: its descriptor's needs, then its own
// probe (an exception thrown by probe() becomes a reason).  Empty: it can.
std::vector<std::string> host_problems(const LoadedPlugin& plugin, const api::HostCapabilities& host);

}  // namespace modevisor::host
