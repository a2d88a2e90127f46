// The daemon's Prometheus endpoint (prometheus-cpp): per-VM and per-host
// figures, served from a snapshot the event loop refreshes; the exposer's
// threads read only the snapshot.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

namespace prometheus { class Exposer; }

namespace modevisor::daemon {

class Metrics {
 public:
  // Listens on "host:port"; throws std::runtime_error naming it.
  explicit Metrics(const std::string& listen);
  ~Metrics();

  // The VMs' summaries (VmHandle::summary) and the host's counters.
  void publish(nlohmann::json vms, std::map<std::string, std::uint64_t> host_counters);

  class Snapshot;

 private:
  std::shared_ptr<Snapshot> snapshot_;
  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace modevisor::daemon
