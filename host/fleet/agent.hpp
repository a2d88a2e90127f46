// The daemon's member of the fleet: it registers this host under a lease,
// keeps the lease alive, republishes what the host offers, reads who owns
// which VM, and runs the daemon's etcd calls off the daemon's loop.  Two
// threads with a client each: one keeps the lease (never delayed by a slow
// call), one runs the requests.  Everything it learns goes back to the
// daemon through `post` (the daemon's loop), so the daemon's state has one
// owner.
//
// Lease rules (TTL T, renewal every T/4):
//  - renewed (etcd answered with TTL > 0, the request sent at s): the lease
//    lives at etcd until at least s + T; the daemon's VMs may run until
//    s + 7T/8 (`renewed`); three renewals may fail before that;
//  - etcd says the lease is gone: `lease_lost`, and a new lease is granted;
//  - etcd cannot be asked: if every member either answers "no leader" or
//    refuses the connection (it is down, not cut off), no quorum exists
//    anywhere, no lease can expire and no owner can change: `no_quorum`
//    (VMs keep running; starts and migrations are refused by etcd itself).
//    Otherwise (a member cannot be reached: this host may be the one cut
//    off) the VMs are on their own deadline, and at s + 7T/8 `lease_lost`.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/logger.h>

#include "config/host_config.hpp"
#include "fleet/etcd_client.hpp"
#include "fleet/ownership.hpp"

namespace modevisor::fleet {

using Clock = std::chrono::steady_clock;

struct AgentEvents {
  std::function<void(std::function<void()>)> post;  // run on the daemon's loop
  // The lease was renewed: the daemon's VMs may run until `until`.
  std::function<void(Clock::time_point until, std::int64_t lease)> renewed;
  // The lease is gone or can no longer be trusted to be alive: pause every VM.
  std::function<void(const std::string& why)> lease_lost;
  // etcd has no quorum anywhere (proven): VMs keep running until `until`.
  std::function<void(Clock::time_point until, const std::string& why)> no_quorum;
  // Every ownership record, read at `revision`.
  std::function<void(std::vector<OwnerRecord> records, std::int64_t revision)> ownership;
};

class FleetAgent {
 public:
  FleetAgent(const host::FleetConfig& config, std::string host_name, AgentEvents events,
             std::shared_ptr<spdlog::logger> log);
  ~FleetAgent();  // stops both threads and revokes the lease (this host's records vanish at once)

  void start();
  // What this host offers (published under hosts/ and known/); thread-safe.
  void set_host_record(nlohmann::json record);
  std::int64_t lease() const { return lease_.load(); }
  const Keys& keys() const { return keys_; }
  const std::string& host_name() const { return host_name_; }
  std::chrono::seconds ttl() const { return ttl_; }

  // Runs `op` with the request thread's client; `done` gets its JSON (or
  // {"error": message}) on the daemon's loop.
  void submit(std::function<nlohmann::json(EtcdClient&, Ownership&)> op, std::function<void(nlohmann::json)> done);

 private:
  void lease_loop();
  void request_loop();
  bool register_host(EtcdClient& etcd);  // grants a lease and publishes; false when etcd cannot be asked

  host::FleetConfig config_;
  std::string host_name_;
  Keys keys_;
  std::chrono::seconds ttl_;
  AgentEvents events_;
  std::shared_ptr<spdlog::logger> log_;

  std::atomic<std::int64_t> lease_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  nlohmann::json host_record_;
  bool record_dirty_ = false;
  std::deque<std::pair<std::function<nlohmann::json(EtcdClient&, Ownership&)>, std::function<void(nlohmann::json)>>>
      requests_;
  std::thread lease_thread_, request_thread_;
};

}  // namespace modevisor::fleet
