// bt-swmmu: binary translation with shadow page tables (the seed's BT-swMMU).
#include <modevisor/api/plugin.hpp>

#include <memory>
#include <vector>

#include "bt64/vcpu64.hpp"
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
  // BT64 confines guest addresses with software checks (a slot table), so it
  // needs no long-mode segment limits.  (The seed's BT64 ran only where long
  // mode keeps them; that rule stays in the esx-4.0 policy.)
  d.guests.bits64 = true;
  d.guests.bits64_needs_segment_limits = false;
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

// One vCPU, run by BT32 (legacy modes) or BT64 (long mode): a state loaded
// with EFER.LMA goes to BT64.  BT32 hands a guest that activates long mode
// back to the host (ExitKind::ModeChange), whose policy decides whether BT64
// (this plugin again), a hardware mode, or nothing takes it over.
class BtVm final : public VirtualMachine {
 public:
  BtVm(const VmSpec& spec, VmServices s) : services_(s) {
    if (spec.vcpus != 1)  // the descriptor's max_vcpus: the selector never picks BT for such a VM
      throw MonitorError("bt-swmmu 0.1.0 runs one vCPU per VM; VM '" + spec.name + "' asks for " +
                         std::to_string(spec.vcpus));
    bt32_ = std::make_unique<modevisor::bt::Vcpu>(s.memory, s.platform, s.log, 0);
    for (const auto& hidden : bt32_->set_cpu_model(spec.cpuid))
      s.log.log(LogLevel::Warn, "bt-swmmu: the CPU model's " + hidden + " is not implemented by the translator; hidden");
    cpuid64_.set(spec.cpuid);
  }
  RunExit run(unsigned i) override {
    check(i);
    return bt64_active_ ? bt64_->run() : bt32_->run();
  }
  void kick(unsigned i) override {
    check(i);
    if (bt64_active_) bt64_->kick();
    else bt32_->kick();
  }
  VcpuState save_vcpu(unsigned i) override {
    check(i);
    return bt64_active_ ? bt64_->save() : bt32_->save();
  }
  void load_vcpu(unsigned i, const VcpuState& s) override {
    check(i);
    bt64_active_ = (s.efer & kEferLma) != 0;
    if (!bt64_active_) return bt32_->load(s);
    if (!bt64_) bt64_ = std::make_unique<modevisor::bt::bt64::Vcpu64>(services_.memory, services_.platform,
                                                                      services_.log, 0, cpuid64_);
    bt64_->load(s);
  }
  Counters counters() const override {
    Counters c;
    bt32_->add_counters(c);
    if (bt64_) bt64_->add_counters(c);
    return c;
  }
  bool collect_dirty_pages(std::vector<std::uint64_t>& bitmap) override {
    // BT64 keeps no dirty log yet: a long-mode guest cannot migrate under BT.
    return bt64_active_ ? false : bt32_->collect_dirty_pages(bitmap);
  }

 private:
  static constexpr std::uint64_t kEferLma = 1u << 10;
  void check(unsigned i) const {
    if (i != 0) throw MonitorError("bt-swmmu: no vCPU " + std::to_string(i));
  }
  VmServices services_;
  modevisor::bt::CpuidModel cpuid64_;
  std::unique_ptr<modevisor::bt::Vcpu> bt32_;
  std::unique_ptr<modevisor::bt::bt64::Vcpu64> bt64_;
  bool bt64_active_ = false;
};

std::unique_ptr<VirtualMachine> BtMonitor::create_vm(const VmSpec& spec, VmServices services) {
  if (spec.guest_bits != 32 && spec.guest_bits != 64)
    throw MonitorError("bt-swmmu cannot run VM '" + spec.name + "': it is a " + std::to_string(spec.guest_bits) +
                       "-bit guest");
  if (spec.guest_bits == 32 && spec.memory_bytes > (1ull << 32))
    throw MonitorError("bt-swmmu: VM '" + spec.name + "' has more than 4 GiB of RAM, which a 32-bit guest cannot use here");
  return std::make_unique<BtVm>(spec, services);
}

std::unique_ptr<Monitor> create() { return std::make_unique<BtMonitor>(); }

}  // namespace

MODEVISOR_PLUGIN(describe, create)
