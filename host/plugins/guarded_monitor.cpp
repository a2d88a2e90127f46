#include "plugins/guarded_monitor.hpp"

#include <boost/dll/shared_library.hpp>
#include <fmt/format.h>

#include "plugins/plugin_vetting.hpp"

namespace modevisor::host {

namespace {

std::string exception_text() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an exception that is not a std::exception";
  }
}

// Runs plugin code; anything it throws becomes an api::MonitorError that
// names the plugin and what it was doing (a MonitorError passes unchanged).
template <typename Call>
auto guarded(const std::string& plugin, const char* doing, Call&& call) -> decltype(call()) {
  try {
    return call();
  } catch (const api::MonitorError&) {
    throw;
  } catch (...) {
    throw api::MonitorError(fmt::format("plugin {} failed while {}: {}", plugin, doing, exception_text()));
  }
}

class GuardedVirtualMachine final : public api::VirtualMachine {
 public:
  GuardedVirtualMachine(std::shared_ptr<boost::dll::shared_library> library,
                        std::unique_ptr<api::VirtualMachine> inner, std::string plugin)
      : library_(std::move(library)), inner_(std::move(inner)), plugin_(std::move(plugin)) {}

  api::RunExit run(unsigned index) override {
    return guarded(plugin_, "running a vCPU", [&] { return inner_->run(index); });
  }
  void kick(unsigned index) override {
    guarded(plugin_, "kicking a vCPU", [&] { inner_->kick(index); });
  }
  api::VcpuState save_vcpu(unsigned index) override {
    return guarded(plugin_, "saving a vCPU", [&] { return inner_->save_vcpu(index); });
  }
  void load_vcpu(unsigned index, const api::VcpuState& state) override {
    guarded(plugin_, "loading a vCPU", [&] { inner_->load_vcpu(index, state); });
  }
  api::Counters counters() const override {
    return guarded(plugin_, "reporting counters", [&] { return inner_->counters(); });
  }
  bool collect_dirty_pages(std::vector<std::uint64_t>& bitmap) override {
    return guarded(plugin_, "collecting dirty pages", [&] { return inner_->collect_dirty_pages(bitmap); });
  }

 private:
  std::shared_ptr<boost::dll::shared_library> library_;  // first: destroyed last
  std::unique_ptr<api::VirtualMachine> inner_;
  std::string plugin_;
};

// The probe child's report: 'P' then each reason followed by NUL, or 'E'
// then the text of what probe() threw.
constexpr char kReasons = 'P', kThrew = 'E';

}  // namespace

GuardedMonitor::GuardedMonitor(std::shared_ptr<boost::dll::shared_library> library,
                               std::unique_ptr<api::Monitor> inner, std::string plugin_name)
    : library_(std::move(library)), inner_(std::move(inner)), plugin_name_(std::move(plugin_name)) {}

GuardedMonitor::~GuardedMonitor() {
  try {
    inner_.reset();
  } catch (...) {
    // A destructor that throws: nothing to report it to, and the host goes on.
  }
}

std::vector<std::string> GuardedMonitor::probe(const api::HostCapabilities& host) {
  auto outcome = run_in_child(
      [&]() -> std::string {
        try {
          std::string report(1, kReasons);
          for (const auto& reason : inner_->probe(host)) {
            report += reason;
            report.push_back('\0');
          }
          return report;
        } catch (...) {
          return std::string(1, kThrew) + exception_text();
        }
      },
      "probing the host");
  if (auto* failure = std::get_if<ChildFailure>(&outcome)) throw PluginCrashed(failure->reason);
  const std::string& report = std::get<std::string>(outcome);
  if (report.empty() || (report.front() != kReasons && report.front() != kThrew))
    throw PluginCrashed("its probe reported nothing readable");
  if (report.front() == kThrew) throw api::MonitorError(report.substr(1));
  std::vector<std::string> reasons;
  std::size_t at = 1;
  while (at < report.size()) {
    const std::size_t end = report.find('\0', at);
    if (end == std::string::npos) break;
    reasons.push_back(report.substr(at, end - at));
    at = end + 1;
  }
  return reasons;
}

std::unique_ptr<api::VirtualMachine> GuardedMonitor::create_vm(const api::VmSpec& spec,
                                                               api::VmServices services) {
  auto vm = guarded(plugin_name_, fmt::format("creating VM '{}'", spec.name).c_str(),
                    [&] { return inner_->create_vm(spec, services); });
  if (!vm) throw api::MonitorError(fmt::format("plugin {} created no VM for '{}'", plugin_name_, spec.name));
  return std::make_unique<GuardedVirtualMachine>(library_, std::move(vm), plugin_name_);
}

}  // namespace modevisor::host
