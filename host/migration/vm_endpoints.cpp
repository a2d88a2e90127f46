#include "migration/vm_endpoints.hpp"

#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "common/errors.hpp"
#include "migration/channel.hpp"
#include "platform/cpu_model.hpp"
#include "selection/mode_log.hpp"
#include "snapshot/vcpu_codec.hpp"

namespace modevisor::host::migration {

std::vector<std::uint8_t> VmMigrationSource::save_state() { return encode_machine_state(vm_.save_state()); }

namespace {

bool has_kvm_clock(const api::CpuidTable& table) {
  const api::CpuidLeaf* sig = api::find_cpuid_leaf(table, 0x40000000);
  return sig && sig->ebx == 0x4b4d564b;  // "KVMK"
}

std::string leaf_name(const api::CpuidLeaf& l) {
  return l.indexed ? fmt::format("leaf {:#x}.{}", l.function, l.index) : fmt::format("leaf {:#x}", l.function);
}

}  // namespace

MigrationConfig describe_for_migration(const Vm& vm, std::string vm_yaml, std::string source_host) {
  const VmConfig& c = vm.config();
  if (vm_yaml.empty()) {
    std::ifstream in(c.file);
    if (!in) throw MigrationError(MigrationError::Kind::Local, c.file.string() + ": cannot read the VM's declaration");
    std::ostringstream text;
    text << in.rdbuf();
    vm_yaml = text.str();
  }
  MigrationConfig out;
  out.vm_name = c.name;
  out.vm_file = c.file.string();
  out.vm_yaml = std::move(vm_yaml);
  out.cpu_model = c.cpu_model;
  try {
    out.cpuid = cpu_model(c.cpu_model);
  } catch (const std::invalid_argument&) {
    // "host" or unknown: the table stays empty and the destination decides.
  }
  out.vcpus = c.vcpus;
  out.memory_bytes = c.memory_bytes;
  // Without pausing, what the VM may need at most: its declared bitness and the paging it allows.
  out.needs.bitness = c.guest.os.bits;
  out.needs.long_mode = c.guest.os.bits == 64;
  out.needs.paging = c.guest.os.bits == 64 ? "4-level" : "pae";
  out.needs.paravirtual_clock = has_kvm_clock(out.cpuid);
  out.source_host = std::move(source_host);
  out.source_plugin = vm.plugin().descriptor.name + " " + vm.plugin().descriptor.version;
  out.source_mode = vm.plugin().mode;
  return out;
}

std::unique_ptr<Vm> take_vm(std::unique_ptr<ArrivedVm> arrived) {
  if (auto* instance = dynamic_cast<ArrivedInstance*>(arrived.get())) return instance->release();
  return nullptr;
}

std::string first_cpuid_difference(const api::CpuidTable& here, const api::CpuidTable& vm) {
  for (const auto& leaf : vm) {
    const api::CpuidLeaf* mine = api::find_cpuid_leaf(here, leaf.function, leaf.index);
    if (!mine) return fmt::format("{} is in the VM's model but not in this host's", leaf_name(leaf));
    const std::pair<const char*, std::pair<std::uint32_t, std::uint32_t>> regs[] = {
        {"eax", {mine->eax, leaf.eax}}, {"ebx", {mine->ebx, leaf.ebx}},
        {"ecx", {mine->ecx, leaf.ecx}}, {"edx", {mine->edx, leaf.edx}}};
    for (const auto& [reg, values] : regs)
      if (values.first != values.second)
        return fmt::format("{} {}: {:#010x} here, {:#010x} as the guest read it", leaf_name(leaf), reg, values.first,
                           values.second);
  }
  for (const auto& leaf : here)
    if (!api::find_cpuid_leaf(vm, leaf.function, leaf.index))
      return fmt::format("{} is in this host's model but not in the VM's", leaf_name(leaf));
  return {};
}

LocalHostView local_host_view(const Host& host, std::string name) {
  LocalHostView v;
  v.name = std::move(name);
  v.capabilities = host.capabilities();
  v.candidates = host.candidates();
  v.policy = host.policy();
  v.guest_os = &host.guest_os();
  v.registry = &host.registry();
  return v;
}

std::string resolve_peer(const DaemonConfig& daemon, const std::string& peer) {
  if (auto it = daemon.peers.find(peer); it != daemon.peers.end()) return it->second.text();
  try {
    split_address(peer);
    return peer;
  } catch (const MigrationError&) {
    std::string known;
    for (const auto& [name, address] : daemon.peers) known += (known.empty() ? "" : ", ") + name;
    throw MigrationError(MigrationError::Kind::Local,
                         "peer '" + peer + "' is neither a name from this host's peers (" +
                             (known.empty() ? std::string("none declared") : known) + ") nor an address:port");
  }
}

PlacementDecision VmDestination::place(const MigrationConfig& config) {
  PlacementDecision out;
  VmConfig vm;
  try {
    vm = parse_vm_config(config.vm_yaml, config.vm_file, *host_.guest_os);
  } catch (const std::exception& e) {
    out.reasons.push_back(std::string("the VM's declaration does not hold on this host: ") + e.what());
    return out;
  }
  if (vm.name != config.vm_name || vm.memory_bytes != config.memory_bytes || vm.vcpus != config.vcpus ||
      vm.cpu_model != config.cpu_model)
    out.reasons.push_back("the Config's name, memory, vCPUs or CPU model disagree with its declaration");
  if (vm.guest.os.bits != config.needs.bitness)
    out.reasons.push_back(fmt::format("the saved state needs a {}-bit guest, the declaration says {}-bit",
                                      config.needs.bitness, vm.guest.os.bits));
  // The guest has read its CPUID: this host must present the same processor, leaf for leaf.
  if (config.cpu_model == "host" || config.cpuid.empty()) {
    out.reasons.push_back("cpu_model " + config.cpu_model +
                          ": the guest read the source host's own CPUID, which this host cannot promise to "
                          "present; declare a portable model (portable-32, kvm64)");
  } else {
    try {
      std::string diff = first_cpuid_difference(cpu_model(config.cpu_model), config.cpuid);
      if (!diff.empty()) out.reasons.push_back("CPU model " + config.cpu_model + " differs: " + diff);
    } catch (const std::invalid_argument&) {
      out.reasons.push_back("CPU model " + config.cpu_model + " is unknown on this host");
    }
  }
  auto log = host_.vm_log ? host_.vm_log(vm) : nullptr;
  if (log) {
    log->info("migration in: VM {} from {} ({}, {}), to host {}", config.vm_name, config.source_host,
              config.source_mode, config.source_plugin, host_.name);
    log->info("host: {}; policy {}", host_.capabilities.source, host_.policy.name);
  }
  Selection selection = select_monitor_mode(host_.capabilities, host_.candidates, host_.policy, vm);
  if (log)
    for (const auto& line : monitor_mode_lines(selection)) log->info("{}", line);
  std::shared_ptr<const LoadedPlugin> plugin;
  if (!selection.selected || !selection.selected_plugin) {
    out.reasons.push_back("no monitor mode can run it here: " + selection.none_reason);
  } else {
    plugin = host_.registry->share(selection.selected_plugin->descriptor.name);
    if (!plugin) out.reasons.push_back("plugin " + selection.selected_plugin->descriptor.name + " vanished");
  }
  if (!out.reasons.empty()) {
    if (log)
      for (const auto& r : out.reasons) log->warn("migration in refused: {}", r);
    return out;
  }
  Placement p{selection.display(*selection.selected),
              plugin->descriptor.name + " " + plugin->descriptor.version};
  {
    std::lock_guard lock(mutex_);
    chosen_[config.vm_name] = Chosen{vm, plugin, log};
  }
  out.accepted = p;
  return out;
}

std::unique_ptr<ArrivedVm> VmDestination::restore(const MigrationConfig& config, const Placement&,
                                                  std::span<const std::uint8_t> state_bytes,
                                                  std::unique_ptr<GuestRam> ram) {
  Chosen chosen;
  {
    std::lock_guard lock(mutex_);
    auto it = chosen_.find(config.vm_name);
    if (it == chosen_.end()) throw std::runtime_error("no placement was made for " + config.vm_name);
    chosen = it->second;
    chosen_.erase(it);
  }
  MachineState state = decode_machine_state(state_bytes);
  if (state.vm_yaml != config.vm_yaml)
    throw std::runtime_error("the saved state's declaration differs from the one the Config announced");
  if (std::string diff = first_cpuid_difference(config.cpuid, state.cpuid); !diff.empty())
    throw std::runtime_error("the saved state's CPU model differs from the Config's: " + diff);
  VmEvents events = host_.vm_events ? host_.vm_events(chosen.vm) : VmEvents{};
  auto vm = Vm::restore(chosen.vm, state, std::move(ram), chosen.plugin, chosen.log, std::move(events));
  if (chosen.log) chosen.log->info("migration in: restored under {}, paused until the source lets go", chosen.plugin->descriptor.name);
  return std::make_unique<ArrivedInstance>(std::move(vm));
}

}  // namespace modevisor::host::migration
