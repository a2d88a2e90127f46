#include "hv_vm.hpp"

#include <algorithm>
#include <map>
#include <vector>

namespace modevisor::hv {

namespace {

class HvVirtualMachine final : public api::VirtualMachine {
 public:
  HvVirtualMachine(const HvMode& mode, const api::VmSpec& spec, api::VmServices services)
      : mode_(mode), memory_(services.memory) {
    vm_ = services.hypervisor->create_vm(services.memory, spec.vcpus, spec.cpuid);
    for (const auto& hidden : vm_->hidden_cpuid_features())
      services.log.log(api::LogLevel::Warn, mode.plugin + ": the CPU model's " + hidden + " is not available here; hidden");
    for (unsigned i = 0; i < spec.vcpus; ++i) vcpus_.push_back(vm_->create_vcpu(i, services.platform));
  }

  api::RunExit run(unsigned index) override { return vcpu(index).run(); }
  void kick(unsigned index) override { vcpu(index).kick(); }

  api::VcpuState save_vcpu(unsigned index) override {
    try {
      return vcpu(index).get_state();
    } catch (const api::HypervisorError& e) {
      throw api::MonitorError(mode_.plugin + ": cannot save vCPU " + std::to_string(index) + ": " + e.what());
    }
  }

  void load_vcpu(unsigned index, const api::VcpuState& state) override {
    try {
      vcpu(index).set_state(state);
    } catch (const api::HypervisorError& e) {
      throw api::MonitorError(mode_.plugin + ": cannot load vCPU " + std::to_string(index) + ": " + e.what());
    }
  }

  // Counters of all vCPUs, summed by name.
  api::Counters counters() const override {
    api::Counters out;
    std::map<std::string, std::size_t> at;
    for (const auto& v : vcpus_)
      for (const auto& [name, value] : v->counters()) {
        auto [it, fresh] = at.emplace(name, out.size());
        if (fresh) out.emplace_back(name, value);
        else out[it->second].second += value;
      }
    return out;
  }

  // The first call switches dirty logging on and reports every page (nothing
  // was tracked before); later calls report the pages written since.
  bool collect_dirty_pages(std::vector<std::uint64_t>& bitmap) override {
    const std::size_t pages = memory_.size() / 4096;
    const std::size_t words = (pages + 63) / 64;
    try {
      if (!dirty_logging_) {
        vm_->enable_dirty_log(true);
        dirty_logging_ = true;
        bitmap.assign(words, ~std::uint64_t{0});
        if (pages % 64) bitmap.back() = (std::uint64_t{1} << (pages % 64)) - 1;
        return true;
      }
      bitmap.assign(words, 0);
      return vm_->collect_dirty_log(bitmap);
    } catch (const api::HypervisorError& e) {
      throw api::MonitorError(mode_.plugin + ": dirty page tracking failed: " + e.what());
    }
  }

 private:
  api::Vcpu& vcpu(unsigned index) {
    if (index >= vcpus_.size())
      throw api::MonitorError(mode_.plugin + ": no vCPU " + std::to_string(index) + " (the VM has " +
                              std::to_string(vcpus_.size()) + ")");
    return *vcpus_[index];
  }

  HvMode mode_;
  api::GuestMemory& memory_;
  std::unique_ptr<api::Vm> vm_;
  std::vector<std::unique_ptr<api::Vcpu>> vcpus_;
  bool dirty_logging_ = false;
};

}  // namespace

std::string mmu_mismatch(const HvMode& mode, const api::HypervisorInfo& info) {
  if (info.mmu_selection == api::MmuSelection::PerVm || info.nested_paging == mode.nested_paging) return {};
  const std::string param = info.mmu_parameter.empty() ? "the driver's nested-paging parameter" : info.mmu_parameter;
  if (mode.nested_paging)
    return mode.plugin + " needs nested paging, but " + info.driver + " runs every VM with shadow paging (" + param +
           "=0, set host-wide); reload the module with " + param + "=1 or use hv-swmmu";
  return mode.plugin + " needs the driver's shadow paging, but " + info.driver + " runs every VM with nested paging (" +
         param + "=1, set host-wide); reload the module with " + param + "=0 or use hv-hwmmu";
}

std::unique_ptr<api::VirtualMachine> create_hv_vm(const HvMode& mode, const api::VmSpec& spec,
                                                  api::VmServices services) {
  const std::string vm = "VM '" + spec.name + "'";
  if (!services.hypervisor)
    throw api::MonitorError(mode.plugin + " " + mode.version + " cannot run " + vm +
                            ": the host lent it no hypervisor (no usable /dev/kvm); no guest code is executed");
  if (spec.vcpus == 0) throw api::MonitorError(mode.plugin + ": " + vm + " has no vCPUs");
  const std::string mismatch = mmu_mismatch(mode, services.hypervisor->info());
  if (!mismatch.empty()) throw api::MonitorError(mode.plugin + " cannot run " + vm + ": " + mismatch);
  try {
    return std::make_unique<HvVirtualMachine>(mode, spec, services);
  } catch (const api::HypervisorError& e) {
    throw api::MonitorError(mode.plugin + " cannot run " + vm + ": " + e.what());
  }
}

}  // namespace modevisor::hv
