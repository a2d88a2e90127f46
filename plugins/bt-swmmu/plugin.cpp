// bt-swmmu: binary translation with shadow page tables (the seed's BT-swMMU).
#include <modevisor/api/plugin.hpp>

#include <memory>
#include <vector>

#include "vcpu.hpp"

namespace {

using namespace modevisor::api;

PluginDescriptor describe() {
  PluginDescriptor d;
  d.name = "bt-swmmu";
  d.log_token = "BT";
  d.version = "0.1.0";
  d.execution = Technique::Software;
  d.mmu = Technique::Software;
  d.deterministic = true;  // no hardware nondeterminism: the translator sees every event
  d.summary = "binary translation with shadow page tables; needs no hardware virtualization";
  d.guests.bits32 = true;
  // BT64 is not built, so 64-bit guests are not claimed: the selector never
  // picks BT for one, and a BT32 guest entering long mode needs a hardware
  // mode.  (The seed's BT64 ran only where long mode keeps segment limits;
  // that rule stays in the esx-4.0 policy.)
  d.guests.bits64 = false;
  // One translator and shadow MMU per VM, not yet safe for concurrent vCPUs.
  d.guests.max_vcpus = 1;
  return d;
}

class BtMonitor final : public Monitor {
 public:
  std::vector<std::string> probe(const HostCapabilities& host) override {
    std::vector<std::string> problems;
    if (!host.long_mode) problems.emplace_back("the translator emits x86-64 host code; this CPU has no long mode");
    return problems;
  }

  std::unique_ptr<VirtualMachine> create_vm(const VmSpec& spec, VmServices services) override;
};

class BtVm final : public VirtualMachine {
 public:
  BtVm(const VmSpec& spec, VmServices s) {
    if (spec.vcpus != 1)  // the descriptor's max_vcpus: the selector never picks BT for such a VM
      throw MonitorError("bt-swmmu 0.1.0 runs one vCPU per VM; VM '" + spec.name + "' asks for " +
                         std::to_string(spec.vcpus));
    vcpus_.push_back(std::make_unique<modevisor::bt::Vcpu>(s.memory, s.platform, s.log, 0));
    for (const auto& hidden : vcpus_[0]->set_cpu_model(spec.cpuid))
      s.log.log(LogLevel::Warn, "bt-swmmu: the CPU model's " + hidden + " is not implemented by the translator; hidden");
  }
  RunExit run(unsigned i) override { return at(i).run(); }
  void kick(unsigned i) override { at(i).kick(); }
  VcpuState save_vcpu(unsigned i) override { return at(i).save(); }
  void load_vcpu(unsigned i, const VcpuState& s) override { at(i).load(s); }
  Counters counters() const override {
    Counters c;
    for (auto& v : vcpus_) v->add_counters(c);
    return c;
  }
  bool collect_dirty_pages(std::vector<std::uint64_t>& bitmap) override {
    return vcpus_.empty() ? false : vcpus_[0]->collect_dirty_pages(bitmap);
  }

 private:
  modevisor::bt::Vcpu& at(unsigned i) {
    if (i >= vcpus_.size()) throw MonitorError("bt-swmmu: no vCPU " + std::to_string(i));
    return *vcpus_[i];
  }
  std::vector<std::unique_ptr<modevisor::bt::Vcpu>> vcpus_;
};

std::unique_ptr<VirtualMachine> BtMonitor::create_vm(const VmSpec& spec, VmServices services) {
  if (spec.guest_bits != 32)
    throw MonitorError("bt-swmmu 0.1.0 cannot run VM '" + spec.name + "': it is a " +
                       std::to_string(spec.guest_bits) + "-bit guest and BT64 is not implemented");
  if (spec.memory_bytes > (1ull << 32))
    throw MonitorError("bt-swmmu: VM '" + spec.name + "' has more than 4 GiB of RAM, which a 32-bit guest cannot use here");
  return std::make_unique<BtVm>(spec, services);
}

std::unique_ptr<Monitor> create() { return std::make_unique<BtMonitor>(); }

}  // namespace

MODEVISOR_PLUGIN(describe, create)
