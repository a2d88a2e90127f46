// The daemon as a member of a fleet (host/fleet/README.md): registration,
// the lease's consequences for this host's VMs, ownership records on start,
// stop and arrival.  The etcd calls run on the fleet agent's threads; their
// results come back here, on the daemon's loop, which alone touches VMs.
#include <unistd.h>

#include <fstream>

#include <fmt/format.h>

#include "daemon/daemon.hpp"
#include "runtime/describe.hpp"

namespace modevisor::daemon {

namespace code = control::error_code;

namespace {

std::uint64_t memory_available_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::uint64_t value = 0;
  std::string unit;
  while (in >> key >> value) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return value * 1024;
  }
  return 0;
}

}  // namespace

void Daemon::fleet_start() {
  const auto& fleet = host_.config().daemon.fleet;
  if (!fleet) return;
  fleet::AgentEvents events;
  events.post = [this](std::function<void()> f) { boost::asio::post(io_, std::move(f)); };
  events.renewed = [this](fleet::Clock::time_point until, std::int64_t) { fleet_renewed(until); };
  events.lease_lost = [this](const std::string& why) { fleet_lease_lost(why); };
  events.no_quorum = [this](fleet::Clock::time_point until, const std::string& why) {
    fleet_frozen_ = why;
    fleet_renewed(until);
    fleet_frozen_ = why;
  };
  events.ownership = [this](const std::vector<fleet::OwnerRecord>& records, std::int64_t revision) {
    fleet_ownership(records, revision);
  };
  fleet_ = std::make_unique<fleet::FleetAgent>(*fleet, host_.config().name, std::move(events), host_.log());
  fleet_->set_host_record(fleet_host_record());
  fleet_->start();
}

// What this host offers, as peers and `modevisor hosts` read it.
json Daemon::fleet_host_record() const {
  std::uint64_t used_memory = 0;
  unsigned used_vcpus = 0;
  json vms = json::array();
  for (const auto& [name, vm] : vms_) {
    if (!vm->active()) continue;
    const json summary = vm->summary();
    used_memory += summary.value("memory_bytes", std::uint64_t{0});
    used_vcpus += summary.value("vcpus", 1u);
    vms.push_back(name);
  }
  const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
  const std::uint64_t available = memory_available_bytes();
  json plugins = host::plugins_json(host_).value("plugins", json::array());
  json modes = json::array();
  for (const auto& p : plugins)
    if (p.value("runs_here", false) && std::find(modes.begin(), modes.end(), p.value("mode", "")) == modes.end())
      modes.push_back(p.value("mode", ""));
  const auto& d = host_.config().daemon;
  const auto& caps = host_.capabilities();
  return json{{"name", host_.config().name},
              {"migration_address", d.migration_advertise ? d.migration_advertise->text()
                                    : d.migration_listen  ? d.migration_listen->text()
                                                          : ""},
              {"version", MODEVISOR_VERSION},
              {"pid", ::getpid()},
              {"cpu", fmt::format("{} {} (family {} model {} stepping {}){}", caps.vendor_id, caps.model_name, caps.family,
                                  caps.model, caps.stepping,
                                  caps.hardware_virtualization ? ", hardware virtualization" : "")},
              {"capabilities", host::capabilities_json(caps)},
              {"policy", host_.policy().name},
              {"plugins", plugins},
              {"modes", modes},
              {"vcpus_total", cpus},
              {"free_vcpus", cpus > static_cast<long>(used_vcpus) ? cpus - used_vcpus : 0},
              {"free_memory_bytes", available},
              {"vms", vms}};
}

void Daemon::fleet_publish() {
  if (fleet_) fleet_->set_host_record(fleet_host_record());
}

// The lease lives at etcd until at least `until`: every VM here may run until
// then, and its monitor process pauses it by itself if no later word comes
// (this daemon may be stopped or cut off).
void Daemon::fleet_renewed(fleet::Clock::time_point until) {
  if (!fleet_lease_valid_) host_.log()->info("fleet: lease valid; VMs here may run");
  fleet_lease_valid_ = true;
  fleet_frozen_.clear();
  fleet_valid_until_ = until;
  if (until <= fleet::Clock::now()) return;
  // An absolute CLOCK_MONOTONIC deadline (one clock for every process here): a
  // message that arrives late does not extend it.
  const auto until_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(until.time_since_epoch()).count();
  for (auto& [name, vm] : vms_)
    if (vm->active() && vm->state() != "starting") vm->call("fleet-fence", {{"until_ns", until_ns}}, [](const json&) {});
}

void Daemon::fleet_fence_args(json& args) const {
  if (!fleet_) return;
  args["fence_until_ns"] = std::chrono::duration_cast<std::chrono::nanoseconds>(fleet_valid_until_.time_since_epoch()).count();
}

void Daemon::fleet_lease_lost(const std::string& why) {
  fleet_lease_valid_ = false;
  fleet_valid_until_ = {};
  owned_revision_.clear();
  for (auto& [name, vm] : vms_)
    if (vm->active()) fleet_pause(vm, "fleet: " + why);
}

void Daemon::fleet_pause(const std::shared_ptr<VmHandle>& vm, const std::string& why) {
  if (vm->state() != "running") return;
  host_.log()->error("VM {}: pausing: {}", vm->name(), why);
  vm->call("pause", {}, [this, vm, why](const json& reply) {
    if (reply.value("ok", false)) {
      vm->set_state("paused", why);
    } else if (const json error = reply.value("error", json::object());
               error.value("code", "") == control::error_code::kWrongState) {
      // Not running any more (its own fence paused it while this daemon was
      // not reading, or it ended) or migrating: not a reason to stop it.  The
      // monitor process's event says which, and its fence still holds.
      host_.log()->warn("VM {}: not paused by the daemon ({}): {}", vm->name(), error.value("message", "?"), why);
    } else {
      host_.log()->error("VM {}: cannot pause it ({}); stopping it: {}", vm->name(), error.value("message", "?"), why);
      vm->call("stop", {{"reason", why}}, [](const json&) {});
    }
  });
}

// Each VM here must be owned by this host in etcd; one that is not (its record
// moved or vanished) is paused, never left running beside another copy.
void Daemon::fleet_ownership(const std::vector<fleet::OwnerRecord>& records, std::int64_t revision) {
  std::map<std::string, const fleet::OwnerRecord*> by_vm;
  for (const auto& r : records) by_vm[r.vm] = &r;
  const std::string self = host_.config().name;
  for (auto& [name, vm] : vms_) {
    if (!vm->active() || vm->state() != "running") continue;
    auto it = by_vm.find(name);
    auto owned = owned_revision_.find(name);
    // A record this host wrote after the read began is not in it.
    if (owned != owned_revision_.end() && owned->second > revision) continue;
    if (it == by_vm.end()) {
      fleet_pause(vm, fmt::format("fleet: VM {} has no ownership record in etcd any more (revision {}): it may be "
                                  "started elsewhere",
                                  name, revision));
    } else if (it->second->owner != self) {
      fleet_pause(vm, fmt::format("fleet: VM {} is owned by host {} (epoch {}) in etcd: this copy must not run", name,
                                  it->second->owner, it->second->epoch));
    } else {
      owned_revision_[name] = it->second->mod_revision;
      // A record left under an earlier lease (this daemon restarted): attach it to the current one.
      const std::int64_t lease = fleet_->lease();
      if (lease && it->second->lease != lease)
        fleet_->submit([name, self, lease](fleet::EtcdClient&, fleet::Ownership& o) { return o.claim(name, self, lease).to_json(); },
                       [this, name](const json& result) {
                         const auto change = fleet::OwnershipChange::from_json(result);
                         if (change.ok && change.record) {
                           owned_revision_[name] = change.record->mod_revision;
                           host_.log()->info("VM {}: ownership record moved to this daemon's lease", name);
                         }
                       });
    }
  }
}

void Daemon::fleet_release(const std::string& name) {
  if (!fleet_ || !owned_revision_.count(name)) return;
  owned_revision_.erase(name);
  const std::string host = host_.config().name;
  fleet_->submit([name, host](fleet::EtcdClient&, fleet::Ownership& o) { return json{{"released", o.release(name, host)}}; },
                 [this, name](const json& result) {
                   if (result.contains("error"))
                     host_.log()->warn("VM {}: its ownership record stays until the lease ends: {}", name,
                                       result["error"].get<std::string>());
                   else if (result.value("released", false))
                     host_.log()->info("VM {}: ownership record removed", name);
                 });
}

// A migration's commit step on this host: the record moves from the source to
// this host with a compare-and-swap; the monitor process commits only if it did.
void Daemon::fleet_claim_arrival(const std::shared_ptr<LineSocket>& link, const json& args) {
  auto answer = [this, link](const fleet::OwnershipChange& change) {
    json result = change.to_json();
    fleet_fence_args(result);
    link->send(json{{"op", "fleet-claim-result"}, {"args", result}});
  };
  const std::string name = args.value("vm", ""), source = args.value("source", ""),
                    migration_id = args.value("migration_id", "");
  if (!fleet_) return answer({true, "no fleet on this host", std::nullopt});
  // No shortcut on a cached "no quorum": etcd itself answers (the source asked it moments ago).
  if (!fleet_lease_valid_ || fleet_->lease() == 0)
    return answer({false, "this host holds no live etcd lease", std::nullopt});
  const std::string self = host_.config().name;
  const std::int64_t lease = fleet_->lease();
  fleet_->submit(
      [name, source, self, lease, migration_id](fleet::EtcdClient&, fleet::Ownership& o) {
        return o.move(name, source, self, lease, migration_id).to_json();
      },
      [this, link, answer, name, source](const json& result) {
        fleet::OwnershipChange change = fleet::OwnershipChange::from_json(result);
        if (result.contains("error")) change = {false, "etcd: " + result["error"].get<std::string>(), std::nullopt};
        if (change.ok) {
          owned_revision_[name] = change.record ? change.record->mod_revision : 0;
          host_.log()->info("VM {}: ownership moved here from {} (epoch {})", name, source,
                            change.record ? change.record->epoch : 0);
        } else {
          host_.log()->warn("VM {}: ownership not moved from {}: {}", name, source, change.reason);
        }
        answer(change);
      });
}

}  // namespace modevisor::daemon
