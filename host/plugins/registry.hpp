// The plugin registry: finds mode plugins in the plugin directories, loads
// them with Boost.DLL, checks their ABI version and descriptor, and reports
// every broken one (with its file and the reason) while keeping the rest.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <modevisor/api/descriptor.hpp>
#include <modevisor/api/host_capabilities.hpp>
#include <modevisor/api/monitor.hpp>

#include "plugins/plugin_image.hpp"

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

// A loaded plugin.  The registry hands them out as shared_ptr<const
// LoadedPlugin>: a VM holds its plugin for as long as it exists, so a rescan
// that replaces or removes the file never unloads code a VM still runs.
struct LoadedPlugin {
  // Declared first so it is destroyed last: everything below may hold objects
  // made by the plugin's code.  The monitor's deleter holds the library too,
  // so a monitor copied out of the registry keeps its code loaded for as long
  // as it lives, and is always destroyed before the library is unloaded.
  // The library holds the image it was loaded from (its private copy).
  std::shared_ptr<boost::dll::shared_library> library;
  std::shared_ptr<const PluginImage> image;
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

  const std::vector<std::shared_ptr<const LoadedPlugin>>& plugins() const { return plugins_; }
  const std::vector<PluginProblem>& problems() const { return problems_; }
  const std::vector<std::filesystem::path>& directories() const { return directories_; }
  const LoadedPlugin* find(std::string_view name) const;
  // The plugin to hold on to (a VM keeps it loaded); null when there is none.
  std::shared_ptr<const LoadedPlugin> share(std::string_view name) const;

 private:
  std::vector<std::filesystem::path> directories_;
  std::vector<std::shared_ptr<const LoadedPlugin>> plugins_;
  std::vector<PluginProblem> problems_;
};

// Loads a plugin from its image (a private copy of `file`) and checks it all
// the way to a created monitor: the plugin, or the reason it is refused.  A
// VM's monitor process loads the image the daemon vetted with this.
std::variant<std::shared_ptr<const LoadedPlugin>, std::string> load_plugin_image(
    std::shared_ptr<const PluginImage> image, const std::filesystem::path& file, const PluginFileStamp& stamp);

// Why `plugin` cannot run on `host`: its descriptor's needs, then its own
// probe (an exception thrown by probe() becomes a reason).  Empty: it can.
std::vector<std::string> host_problems(const LoadedPlugin& plugin, const api::HostCapabilities& host);

}  // namespace modevisor::host
