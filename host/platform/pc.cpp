#include "platform/pc.hpp"

#include <fmt/format.h>

#include <stdexcept>

namespace modevisor::host {

Pc::Pc(Machine& machine, const PcConfig& config)
    : machine_(machine),
      router_(machine, pic_, ioapic_),
      ioapic_(router_),
      pit_(machine, IrqLine(router_, 0)),
      rtc_(machine, IrqLine(router_, 8), config.rtc_start_time),
      com1_("com1", IrqLine(router_, 4), &console_),
      debug_exit_(machine),
      fw_cfg_(config.ram_bytes, config.cpus),
      pci_(machine),
      system_(machine) {
  if (config.cpus == 0 || config.cpus > 255) throw std::invalid_argument("a PC has 1 to 255 vCPUs");
  console_.limit = config.console_capture_limit;
  std::vector<Lapic*> raw;
  for (unsigned i = 0; i < config.cpus; ++i) {
    lapics_.push_back(std::make_unique<Lapic>(machine, router_, i));
    raw.push_back(lapics_.back().get());
    machine.attach_timer(*lapics_.back());
  }
  router_.set_lapics(raw);
  lapic_window_ = std::make_unique<LapicWindow>(raw);
  rtc_.set_memory_size(config.ram_bytes);

  pic_.attach(machine);
  ioapic_.attach(machine);
  machine.attach_mmio(Lapic::kDefaultBase, 0x1000, *lapic_window_);
  pit_.attach(machine);
  rtc_.attach(machine);
  com1_.attach(machine, 0x3f8);
  debug_exit_.attach(machine);
  fw_cfg_.attach(machine);
  pci_.attach(machine);
  system_.attach(machine);
  machine.set_interrupt_controller(&router_);
  machine.set_vcpu_count(config.cpus);
}

void Pc::Console::write(std::uint8_t byte) {
  if (captured.size() < limit) captured.push_back(static_cast<char>(byte));
  if (forward) forward->write(byte);
}

void Pc::push_console_input(std::string_view bytes) {
  auto guard = machine_.lock();
  com1_.push_input(bytes);
}

std::string Pc::console_output() const {
  auto guard = machine_.lock();
  return console_.captured;
}

LapicState Pc::save_lapic(unsigned vcpu) {
  auto guard = machine_.lock();
  machine_.poll_timers();
  return lapic(vcpu).to_arch_state(machine_.now_ns());
}

void Pc::load_lapic(unsigned vcpu, const LapicState& state) {
  auto guard = machine_.lock();
  lapic(vcpu).from_arch_state(state, machine_.now_ns());
  machine_.interrupt_raised(vcpu);
}

std::uint64_t Pc::apic_base(unsigned vcpu) {
  auto guard = machine_.lock();
  return lapic(vcpu).apic_base();
}

void Pc::set_apic_base(unsigned vcpu, std::uint64_t value) {
  auto guard = machine_.lock();
  lapic(vcpu).set_apic_base(value);
}

nlohmann::json Pc::save_state() {
  auto guard = machine_.lock();
  machine_.poll_timers();
  nlohmann::json lapics = nlohmann::json::array();
  for (const auto& l : lapics_) lapics.push_back(l->save());
  return {{"format", kStateFormat},
          {"guest_time_ns", machine_.now_ns()},
          {"pic", pic_.save()},
          {"ioapic", ioapic_.save()},
          {"lapic", lapics},
          {"pit", pit_.save()},
          {"rtc", rtc_.save()},
          {"com1", com1_.save()},
          {"fw_cfg", fw_cfg_.save()},
          {"pci", pci_.save()},
          {"system", system_.save()}};
}

void Pc::restore_state(const nlohmann::json& state) {
  auto guard = machine_.lock();
  try {
    if (state.at("format") != kStateFormat)
      throw std::invalid_argument(fmt::format("platform state format {} is not {}", state.at("format").dump(),
                                              kStateFormat));
    const auto& lapics = state.at("lapic");
    if (lapics.size() != lapics_.size())
      throw std::invalid_argument(
          fmt::format("platform state has {} local APICs, this VM {} vCPUs", lapics.size(), lapics_.size()));
    // Parse everything before changing anything.
    auto pic = state.at("pic").get<Pic::State>();
    auto ioapic = state.at("ioapic").get<IoApic::State>();
    std::vector<Lapic::State> lapic_states;
    for (const auto& l : lapics) lapic_states.push_back(l.get<Lapic::State>());
    auto pit = state.at("pit").get<Pit::State>();
    auto rtc = state.at("rtc").get<Rtc::State>();
    auto com1 = state.at("com1").get<Uart::State>();
    auto fw_cfg = state.at("fw_cfg").get<FwCfg::State>();
    auto pci = state.at("pci").get<PciHost::State>();
    auto system = state.at("system").get<SystemPorts::State>();
    const auto guest_time = state.at("guest_time_ns").get<std::uint64_t>();

    machine_.set_guest_time(guest_time);
    pic_.restore(pic);
    ioapic_.restore(ioapic);
    for (std::size_t i = 0; i < lapics_.size(); ++i) lapics_[i]->restore(lapic_states[i]);
    pit_.restore(pit);
    rtc_.restore(rtc);
    com1_.restore(com1);
    fw_cfg_.restore(fw_cfg);
    pci_.restore(pci);
    system_.restore(system);
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(fmt::format("bad platform state: {}", e.what()));
  }
  machine_.timers_changed();
  for (unsigned i = 0; i < lapics_.size(); ++i) machine_.interrupt_raised(i);
}

std::vector<std::pair<std::string, std::uint64_t>> Pc::counters() const {
  auto guard = machine_.lock();
  std::vector<std::pair<std::string, std::uint64_t>> out;
  for (const auto& [port, count] : machine_.port_accesses()) out.emplace_back(fmt::format("io {:#06x}", port), count);
  for (const auto& [device, count] : machine_.mmio_accesses()) out.emplace_back(fmt::format("mmio {}", device), count);
  // IPIs only where a guest sent some (a uniprocessor guest's list stays as it was).
  const auto& ipi = router_.ipi_counters();
  for (const auto& [name, count] : {std::pair{"ipi fixed", ipi.fixed}, {"ipi nmi", ipi.nmi}, {"ipi init", ipi.init},
                                    {"ipi init de-assert", ipi.init_deassert}, {"ipi startup", ipi.startup},
                                    {"ipi unsupported", ipi.unsupported}})
    if (count) out.emplace_back(name, count);
  return out;
}

}  // namespace modevisor::host
