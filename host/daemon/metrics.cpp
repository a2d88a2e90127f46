#include "daemon/metrics.hpp"

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/metric_family.h>

#include <stdexcept>

namespace modevisor::daemon {

using nlohmann::json;

class Metrics::Snapshot final : public prometheus::Collectable {
 public:
  void set(json vms, std::map<std::string, std::uint64_t> host) {
    std::lock_guard lock(mutex_);
    vms_ = std::move(vms);
    host_ = std::move(host);
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    std::lock_guard lock(mutex_);
    using prometheus::MetricType;
    auto family = [](std::string name, std::string help, MetricType type) {
      prometheus::MetricFamily f;
      f.name = std::move(name);
      f.help = std::move(help);
      f.type = type;
      return f;
    };
    auto sample = [](std::vector<prometheus::ClientMetric::Label> labels, double value, MetricType type) {
      prometheus::ClientMetric m;
      m.label = std::move(labels);
      if (type == MetricType::Counter) m.counter.value = value;
      else m.gauge.value = value;
      return m;
    };
    auto state = family("modevisor_vm_info", "one sample per VM: its state, mode and plugin", MetricType::Gauge);
    auto uptime = family("modevisor_vm_uptime_seconds", "how long the VM has run", MetricType::Gauge);
    auto console = family("modevisor_vm_console_bytes_total", "bytes the guest wrote to its serial console",
                          MetricType::Counter);
    auto counters = family("modevisor_vm_monitor_events_total",
                           "the monitor's and the platform's counters (exits by reason, hidden faults, traces, "
                           "translation cache)",
                           MetricType::Counter);
    auto by_state = family("modevisor_host_vms", "VMs by state", MetricType::Gauge);
    std::map<std::string, int> states{{"running", 0}, {"paused", 0}, {"stopped", 0}, {"failed", 0}, {"starting", 0}};
    for (const auto& vm : vms_) {
      const std::string name = vm.value("name", "");
      state.metric.push_back(sample({{"vm", name},
                                     {"state", vm.value("state", "")},
                                     {"mode", vm.value("mode", "")},
                                     {"plugin", vm.value("plugin", "")}},
                                    1, MetricType::Gauge));
      uptime.metric.push_back(sample({{"vm", name}}, vm.value("uptime_s", 0.0), MetricType::Gauge));
      console.metric.push_back(
          sample({{"vm", name}}, static_cast<double>(vm.value("console_bytes", 0ull)), MetricType::Counter));
      const json vm_counters = vm.value("counters", json::object());
      for (const auto& [counter, value] : vm_counters.items())
        if (value.is_number())
          counters.metric.push_back(sample({{"vm", name}, {"counter", counter}}, value.get<double>(), MetricType::Counter));
      ++states[vm.value("state", "")];
    }
    for (const auto& [name, count] : states) by_state.metric.push_back(sample({{"state", name}}, count, MetricType::Gauge));
    std::vector<prometheus::MetricFamily> out{state, uptime, console, counters, by_state};
    for (const auto& [name, value] : host_) {
      auto f = family("modevisor_host_" + name, "the daemon's " + name, MetricType::Counter);
      f.metric.push_back(sample({}, static_cast<double>(value), MetricType::Counter));
      out.push_back(std::move(f));
    }
    return out;
  }

 private:
  mutable std::mutex mutex_;
  json vms_ = json::array();
  std::map<std::string, std::uint64_t> host_;
};

Metrics::Metrics(const std::string& listen) : snapshot_(std::make_shared<Snapshot>()) {
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(listen, /*num_threads=*/1);
  } catch (const std::exception& e) {
    throw std::runtime_error("metrics.listen " + listen + ": cannot listen: " + e.what());
  }
  exposer_->RegisterCollectable(snapshot_);
}

Metrics::~Metrics() = default;

void Metrics::publish(json vms, std::map<std::string, std::uint64_t> host_counters) {
  snapshot_->set(std::move(vms), std::move(host_counters));
}

}  // namespace modevisor::daemon
