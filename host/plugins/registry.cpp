#include "plugins/registry.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <exception>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <system_error>
#include <utility>
#include <variant>

#include <boost/dll/shared_library.hpp>
#include <fmt/format.h>

#include <modevisor/api/abi.hpp>
#include <modevisor/api/plugin.hpp>

namespace modevisor::host {

namespace fs = std::filesystem;

namespace {

// RTLD_NOW: a plugin with an unresolved symbol is refused at load time with
// the dynamic linker's message, instead of crashing the host the first time
// the missing function is called.
// RTLD_LOCAL: every plugin exports the same three entry points (and may carry
// its own copies of third-party code); keeping each library's symbols out of
// the global scope stops one plugin's definitions from binding into another's.
// Not RTLD_DEEPBIND: it makes a plugin prefer its own copies of symbols C++
// expects to be one per process (inline and template statics, a replaced
// operator new), and it does not work under the sanitizers.
constexpr auto kLoadMode = boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local;

// [a-z0-9][a-z0-9._-]*: safe in file names, log lines and command lines.
bool is_valid_plugin_name(std::string_view name) {
  auto lower_or_digit = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (name.empty() || !lower_or_digit(name.front())) return false;
  return std::all_of(name.begin(), name.end(),
                     [&](char c) { return lower_or_digit(c) || c == '.' || c == '_' || c == '-'; });
}

// Everything wrong with a descriptor, joined; empty when it is valid.
std::string descriptor_problems(const api::PluginDescriptor& d) {
  std::vector<std::string> found;
  if (d.name.empty())
    found.emplace_back("its descriptor has an empty name");
  else if (!is_valid_plugin_name(d.name))
    found.push_back(fmt::format(
        "its descriptor name '{}' is not a plugin name (lower-case letters, digits, '.', '_' and '-', "
        "starting with a letter or digit)",
        d.name));
  if (d.version.empty()) found.emplace_back("its descriptor has an empty version");
  if (d.abi_version != api::kAbiVersion)
    found.push_back(fmt::format("its descriptor says ABI version {}, this host speaks {}", d.abi_version,
                                api::kAbiVersion));
  if (const char* mode = api::mode_token(d.execution, d.mmu); mode == nullptr)
    found.emplace_back(
        "its descriptor combines software execution with a hardware MMU, which is no monitor mode "
        "(nested paging exists only with VT-x/AMD-V)");
  else if (d.log_token != mode)
    found.push_back(fmt::format("its descriptor's log token '{}' does not match its mode {} (from its techniques)",
                                d.log_token, mode));
  if (!d.guests.bits32 && !d.guests.bits64)
    found.emplace_back("its descriptor supports neither 32-bit nor 64-bit guests");

  std::string joined;
  for (const auto& f : found) joined += (joined.empty() ? "" : "; ") + f;
  return joined;
}

std::string current_exception_text() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an exception that is not a std::exception";
  }
}

// Reads the stamp without following errors into exceptions: a file that
// vanishes between listing and stat is simply not there.
std::optional<PluginFileStamp> stamp_of(const fs::path& file) {
  std::error_code ec;
  PluginFileStamp stamp;
  stamp.canonical = fs::canonical(file, ec);
  if (ec) return std::nullopt;
  stamp.modified = fs::last_write_time(stamp.canonical, ec);
  if (ec) return std::nullopt;
  stamp.size = fs::file_size(stamp.canonical, ec);
  if (ec) return std::nullopt;
  return stamp;
}

struct Candidate {
  fs::path file;
  PluginFileStamp stamp;
};

// The *.so regular files of one directory, in name order; a directory that
// cannot be listed becomes a problem.
std::vector<Candidate> list_plugin_files(const fs::path& directory, std::vector<PluginProblem>& problems) {
  std::vector<Candidate> files;
  std::error_code ec;
  if (!fs::exists(directory, ec)) {
    problems.push_back({directory, "plugin directory does not exist"});
    return files;
  }
  if (!fs::is_directory(directory, ec)) {
    problems.push_back({directory, "plugin directory is not a directory"});
    return files;
  }
  fs::directory_iterator it(directory, ec), end;
  if (ec) {
    problems.push_back({directory, "cannot list plugin directory: " + ec.message()});
    return files;
  }
  for (; it != end; it.increment(ec)) {
    if (ec) {
      problems.push_back({directory, "cannot list plugin directory: " + ec.message()});
      break;
    }
    const fs::path& file = it->path();
    if (file.extension() != ".so" || !it->is_regular_file(ec)) continue;
    if (auto stamp = stamp_of(file)) files.push_back({file, std::move(*stamp)});
  }
  std::sort(files.begin(), files.end(), [](const Candidate& a, const Candidate& b) { return a.file < b.file; });
  return files;
}

// Every call into the plugin happens while `library` is alive, and every
// exception from it is turned into text before the library can be unloaded.
std::variant<std::shared_ptr<const LoadedPlugin>, std::string> load_from_image(
    std::shared_ptr<const PluginImage> image, const fs::path& file, const PluginFileStamp& stamp) {
  // The library's deleter holds the image: its fd (and so its unique load
  // name) lives until the code is unmapped.
  auto library = std::shared_ptr<boost::dll::shared_library>(new boost::dll::shared_library,
                                                             [image](boost::dll::shared_library* l) { delete l; });
  boost::dll::fs::error_code ec;
  ::dlerror();  // clear any stale message so the one read below is this load's
  library->load(boost::dll::fs::path(image->load_path().native()), kLoadMode, ec);
  if (ec || !library->is_loaded()) {
    const char* why = ::dlerror();
    std::string text = why ? why : ec.message();
    // The linker names the image; the operator knows the file.
    const std::string alias = image->load_path().string();
    for (auto at = text.find(alias); at != std::string::npos; at = text.find(alias, at + 1))
      text.replace(at, alias.size(), file.string());
    return "not a loadable shared library: " + text;
  }

  if (!library->has(api::symbols::kAbiVersion))
    return fmt::format("not a modevisor plugin: no {} symbol", api::symbols::kAbiVersion);
  // The version entry point is plain C; it is the only one safe to call before
  // we know the plugin was built against our C++ types.
  const std::uint32_t abi = library->get<api::AbiVersionFn>(api::symbols::kAbiVersion)();
  if (abi != api::kAbiVersion) return fmt::format("ABI version {}, this host speaks {}", abi, api::kAbiVersion);

  for (const char* symbol : {api::symbols::kDescribe, api::symbols::kCreate})
    if (!library->has(symbol)) return fmt::format("not a modevisor plugin: no {} symbol", symbol);

  auto plugin = std::make_shared<LoadedPlugin>();
  plugin->file = file;
  plugin->stamp = stamp;
  plugin->image = image;
  try {
    plugin->descriptor = library->get<api::DescribeFn>(api::symbols::kDescribe)();
  } catch (...) {
    return "threw while describing itself: " + current_exception_text();
  }
  if (auto problems = descriptor_problems(plugin->descriptor); !problems.empty()) return problems;
  plugin->mode = api::mode_token(plugin->descriptor.execution, plugin->descriptor.mmu);

  std::unique_ptr<api::Monitor> monitor;
  try {
    monitor = library->get<api::CreateFn>(api::symbols::kCreate)();
  } catch (...) {
    return "threw while creating its monitor: " + current_exception_text();
  }
  if (!monitor) return "created no monitor (its factory returned null)";

  // The deleter owns a reference to the library: the monitor's destructor is
  // plugin code and must run before the last reference unloads it.
  plugin->monitor = std::shared_ptr<api::Monitor>(monitor.release(), [library](api::Monitor* m) { delete m; });
  plugin->library = std::move(library);
  return std::shared_ptr<const LoadedPlugin>(std::move(plugin));
}

// Loads one file through a private copy of it.
std::variant<std::shared_ptr<const LoadedPlugin>, std::string> load_plugin(const Candidate& candidate) {
  std::shared_ptr<const PluginImage> image;
  try {
    image = PluginImage::copy_of(candidate.stamp.canonical);
  } catch (const std::exception& e) {
    return std::string(e.what());
  }
  return load_from_image(std::move(image), candidate.file, candidate.stamp);
}

}  // namespace

PluginRegistry::PluginRegistry(std::vector<fs::path> directories) : directories_(std::move(directories)) {}

PluginRegistry::~PluginRegistry() = default;

const LoadedPlugin* PluginRegistry::find(std::string_view name) const { return share(name).get(); }

std::shared_ptr<const LoadedPlugin> PluginRegistry::share(std::string_view name) const {
  for (const auto& plugin : plugins_)
    if (plugin->descriptor.name == name) return plugin;
  return nullptr;
}

std::variant<std::shared_ptr<const LoadedPlugin>, std::string> load_plugin_image(
    std::shared_ptr<const PluginImage> image, const fs::path& file, const PluginFileStamp& stamp) {
  return load_from_image(std::move(image), file, stamp);
}

void PluginRegistry::rescan() {
  // Problems are reported in scan order: a directory's own problem, then its
  // files' in name order.  The key is (index of the next file, 0 for a
  // directory / 1 for a file).
  std::vector<std::pair<std::pair<std::size_t, int>, PluginProblem>> problems;
  std::vector<Candidate> candidates;
  for (const auto& directory : directories_) {
    std::vector<PluginProblem> listing_problems;
    auto files = list_plugin_files(directory, listing_problems);
    for (auto& problem : listing_problems) problems.push_back({{candidates.size(), 0}, std::move(problem)});
    std::move(files.begin(), files.end(), std::back_inserter(candidates));
  }

  // Unchanged files keep their loaded plugin (and its live monitor).  The
  // registry lets go of the rest; a VM that holds one keeps it loaded (each
  // version is loaded from its own image, so the new file loads afresh).
  std::vector<std::shared_ptr<const LoadedPlugin>> slots(candidates.size());
  std::map<std::string, fs::path> name_owner;  // plugin name -> file that provides it
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    auto old = std::find_if(plugins_.begin(), plugins_.end(), [&](const auto& p) {
      return p->stamp == candidates[i].stamp && p->file == candidates[i].file;
    });
    if (old == plugins_.end()) continue;
    name_owner.emplace((*old)->descriptor.name, (*old)->file);
    slots[i] = std::move(*old);
    plugins_.erase(old);
  }
  plugins_.clear();

  for (std::size_t i = 0; i < candidates.size(); ++i) {
    if (slots[i]) continue;
    auto loaded = load_plugin(candidates[i]);
    if (auto* reason = std::get_if<std::string>(&loaded)) {
      problems.push_back({{i, 1}, {candidates[i].file, std::move(*reason)}});
      continue;
    }
    auto& plugin = std::get<std::shared_ptr<const LoadedPlugin>>(loaded);
    auto [owner, inserted] = name_owner.emplace(plugin->descriptor.name, plugin->file);
    if (!inserted) {
      problems.push_back({{i, 1},
                          {candidates[i].file, fmt::format("plugin name '{}' already provided by {}",
                                                           plugin->descriptor.name, owner->second.string())}});
      continue;  // `loaded` goes out of scope here: monitor first, then its library
    }
    slots[i] = std::move(plugin);
  }

  for (auto& slot : slots)
    if (slot) plugins_.push_back(std::move(slot));

  std::stable_sort(problems.begin(), problems.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  problems_.clear();
  for (auto& [order, problem] : problems) problems_.push_back(std::move(problem));
}

// ---------------------------------------------------------------------------
// Host problems: the descriptor's needs in plain words, then the plugin's probe.

namespace {

// The KVM module parameter that switches nested paging, named after the
// driver the host runs (or its CPU vendor when the driver does not say).
std::string nested_paging_parameter(const api::HostCapabilities& host) {
  const std::string& driver = host.driver.name;
  if (driver == "kvm_intel") return "kvm_intel ept";
  if (driver == "kvm_amd") return "kvm_amd npt";
  if (host.vendor == api::CpuVendor::Intel) return "kvm_intel ept";
  if (host.vendor == api::CpuVendor::Amd) return "kvm_amd npt";
  return "kvm_intel ept / kvm_amd npt";
}

std::string short_parameter(const api::HostCapabilities& host) {
  const std::string full = nested_paging_parameter(host);
  if (full == "kvm_intel ept") return "ept";
  if (full == "kvm_amd npt") return "npt";
  return "ept/npt";
}

std::string driver_unusable_reason(const api::DriverState& driver) {
  if (!driver.detail.empty()) return "needs VT-x/AMD-V through KVM: " + driver.detail;
  if (!driver.present) return "needs VT-x/AMD-V through KVM: no KVM driver is present (no /dev/kvm)";
  return fmt::format("needs VT-x/AMD-V through KVM: the driver{} gives no hardware-assisted execution",
                     driver.name.empty() ? "" : " " + driver.name);
}

}  // namespace

std::vector<std::string> host_problems(const LoadedPlugin& plugin, const api::HostCapabilities& host) {
  std::vector<std::string> reasons;
  const api::HostNeeds& needs = plugin.descriptor.host;
  const bool host_wide_mmu = host.driver.mmu_selection == api::MmuSelection::HostWide;

  if (needs.hardware_virtualization || needs.nested_paging || needs.driver_shadow_paging) {
    if (!host.hardware_virtualization)
      reasons.emplace_back("needs VT-x/AMD-V: the CPU has none");
    else if (!host.driver.usable)
      reasons.push_back(driver_unusable_reason(host.driver));
  }

  if (needs.nested_paging) {
    if (!host.nested_paging) {
      reasons.emplace_back("needs nested paging (EPT/NPT): the CPU has none");
    } else if (host.driver.usable && host_wide_mmu && !host.driver.nested_paging_enabled) {
      reasons.push_back(fmt::format(
          "needs nested paging: KVM runs this host with nested paging switched off ({}=0; KVM chooses the "
          "MMU for the whole host, not per VM)",
          nested_paging_parameter(host)));
    }
  }

  if (needs.driver_shadow_paging && host.driver.usable && host_wide_mmu && host.driver.nested_paging_enabled) {
    reasons.push_back(fmt::format(
        "needs shadow paging in KVM: KVM runs this host with nested paging on ({}=1); reload the module "
        "with {}=0",
        nested_paging_parameter(host), short_parameter(host)));
  }

  // The words above must agree with the API's own helpers; should a helper
  // ever learn a condition they miss, still refuse, in general words.
  if (reasons.empty()) {
    if (needs.hardware_virtualization && !api::can_use_hardware_execution(host))
      reasons.emplace_back("needs VT-x/AMD-V: hardware-assisted execution is not available on this host");
    if (needs.nested_paging && !api::can_use_nested_paging(host))
      reasons.emplace_back("needs nested paging: the driver cannot give a VM nested paging on this host");
    if (needs.driver_shadow_paging && !api::can_use_driver_shadow_paging(host))
      reasons.emplace_back("needs shadow paging in KVM: the driver cannot run a VM with shadow paging here");
  }

  if (!plugin.monitor) {
    reasons.emplace_back("the plugin has no monitor to probe the host with");
    return reasons;
  }
  try {
    for (auto& reason : plugin.monitor->probe(host)) reasons.push_back(std::move(reason));
  } catch (...) {
    reasons.push_back("probe threw: " + current_exception_text());
  }
  return reasons;
}

}  // namespace modevisor::host
