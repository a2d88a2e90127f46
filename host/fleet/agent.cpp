#include "fleet/agent.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace modevisor::fleet {

using nlohmann::json;

FleetAgent::FleetAgent(const host::FleetConfig& config, std::string host_name, AgentEvents events,
                       std::shared_ptr<spdlog::logger> log)
    : config_(config),
      host_name_(std::move(host_name)),
      keys_{config.prefix},
      ttl_(config.lease_ttl),
      events_(std::move(events)),
      log_(std::move(log)) {}

FleetAgent::~FleetAgent() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (lease_thread_.joinable()) lease_thread_.join();
  if (request_thread_.joinable()) request_thread_.join();
}

void FleetAgent::start() {
  lease_thread_ = std::thread([this] { lease_loop(); });
  request_thread_ = std::thread([this] { request_loop(); });
}

void FleetAgent::set_host_record(json record) {
  {
    std::lock_guard lock(mutex_);
    if (record == host_record_) return;
    host_record_ = std::move(record);
    record_dirty_ = true;
  }
}

void FleetAgent::submit(std::function<json(EtcdClient&, Ownership&)> op, std::function<void(json)> done) {
  {
    std::lock_guard lock(mutex_);
    requests_.emplace_back(std::move(op), std::move(done));
  }
  wake_.notify_all();
}

void FleetAgent::request_loop() {
  EtcdClient etcd(config_.etcd, config_.request_timeout);
  Ownership ownership(etcd, keys_);
  for (;;) {
    std::function<json(EtcdClient&, Ownership&)> op;
    std::function<void(json)> done;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !requests_.empty(); });
      if (stopping_) return;
      std::tie(op, done) = std::move(requests_.front());
      requests_.pop_front();
    }
    json result;
    try {
      result = op(etcd, ownership);
    } catch (const std::exception& e) {
      result = json{{"error", e.what()}};
    }
    events_.post([done = std::move(done), result = std::move(result)] { done(result); });
  }
}

bool FleetAgent::register_host(EtcdClient& etcd) {
  try {
    const std::int64_t lease = etcd.grant_lease(ttl_.count());
    json record;
    {
      std::lock_guard lock(mutex_);
      record = host_record_;
      record_dirty_ = false;
    }
    record["lease"] = fmt::format("{:x}", lease);
    record["lease_ttl_s"] = ttl_.count();
    etcd.put(keys_.host(host_name_), record.dump(), lease);
    etcd.put(keys_.known(host_name_), record.dump());
    lease_ = lease;
    log_->info("fleet: registered as {} in etcd ({}) under lease {:x} (TTL {} s)", host_name_,
               fmt::join(config_.etcd, ","), lease, ttl_.count());
    return true;
  } catch (const EtcdError& e) {
    log_->warn("fleet: cannot register in etcd: {}", e.what());
    return false;
  }
}

void FleetAgent::lease_loop() {
  // Renewals must fail fast: a renewal that hangs eats the margin before the VMs' deadline.
  const auto renew_timeout = std::clamp<std::chrono::milliseconds>(std::chrono::milliseconds(ttl_) / 8,
                                                                    std::chrono::milliseconds(200), config_.request_timeout);
  EtcdClient etcd(config_.etcd, renew_timeout);
  const auto period = std::chrono::milliseconds(ttl_) / 4;
  // The lease lives at etcd until at least (renewal sent) + T; the VMs stop
  // T/8 before that (the pause itself takes milliseconds; the margin covers
  // a slower clock here than on the etcd leader).
  const auto grace = std::chrono::milliseconds(ttl_) * 7 / 8;
  Clock::time_point last_renewal_sent{};  // when the last renewal etcd answered was sent
  bool lost_reported = true;              // nothing to report before the first lease
  bool no_quorum_reported = false;
  for (;;) {
    const auto sent = Clock::now();
    std::string failure;
    if (lease_ == 0) {
      if (register_host(etcd)) {
        last_renewal_sent = sent;
        lost_reported = false;
        events_.post([this, until = sent + grace, lease = lease_.load()] { events_.renewed(until, lease); });
      }
    } else {
      try {
        const std::int64_t left = etcd.keep_alive(lease_);
        if (left <= 0) {
          const std::string why = fmt::format("this host's etcd lease {:x} expired (etcd no longer knows it): its VMs' "
                                              "ownership records are gone and another host may start them",
                                              lease_.load());
          log_->error("fleet: {}", why);
          lease_ = 0;
          if (!lost_reported) events_.post([this, why] { events_.lease_lost(why); });
          lost_reported = true;
          continue;  // a new lease at once
        }
        if (lost_reported) log_->warn("fleet: lease {:x} renewed again", lease_.load());
        last_renewal_sent = sent;
        lost_reported = false;
        no_quorum_reported = false;
        events_.post([this, until = sent + grace, lease = lease_.load()] { events_.renewed(until, lease); });
        bool dirty;
        json record;
        {
          std::lock_guard lock(mutex_);
          dirty = record_dirty_;
          record = host_record_;
          record_dirty_ = false;
        }
        if (dirty) {
          record["lease"] = fmt::format("{:x}", lease_.load());
          record["lease_ttl_s"] = ttl_.count();
          etcd.put(keys_.host(host_name_), record.dump(), lease_);
          etcd.put(keys_.known(host_name_), record.dump());
        }
        std::int64_t revision = 0;
        std::vector<OwnerRecord> records;
        for (const auto& kv : etcd.get_prefix(keys_.vms(), &revision)) {
          try {
            records.push_back(OwnerRecord::parse(kv));
          } catch (const EtcdError& e) {
            log_->warn("fleet: {}", e.what());
          }
        }
        events_.post([this, records = std::move(records), revision] { events_.ownership(records, revision); });
      } catch (const EtcdError& e) {
        failure = e.what();
      }
    }
    if (!failure.empty() && lease_ != 0) {
      // Is there a quorum anywhere?  Only members that answer "no leader" or are down prove there is none.
      bool proven = true;
      std::string members;
      for (const auto& m : etcd.member_status()) {
        members += fmt::format("{}{}: {}", members.empty() ? "" : "; ", m.endpoint, m.detail);
        if (m.kind == EtcdClient::MemberStatus::Kind::Leader || m.kind == EtcdClient::MemberStatus::Kind::Unreachable)
          proven = false;
      }
      if (proven) {
        const std::string why = fmt::format("etcd has no quorum ({}): no lease can expire and no VM can change owner; "
                                            "VMs keep running, starts and migrations are refused",
                                            members);
        if (!no_quorum_reported) log_->warn("fleet: {}", why);
        no_quorum_reported = true;
        // No leader anywhere after `sent`: a leader elected later extends every
        // lease to at least its election + T, so the lease is as good as renewed
        // at `sent`.  (Counting from the last real renewal instead paused the VMs
        // while quorum came back, when a restarting member still timed out.)
        last_renewal_sent = sent;
        events_.post([this, until = sent + grace, why] { events_.no_quorum(until, why); });
      } else if (!lost_reported && Clock::now() >= last_renewal_sent + grace) {
        const std::string why = fmt::format(
            "cannot renew this host's etcd lease {:x} before it may expire ({}; members: {}): paused so that no VM "
            "can run on two hosts",
            lease_.load(), failure, members);
        log_->error("fleet: {}", why);
        lost_reported = true;
        events_.post([this, why] { events_.lease_lost(why); });
      } else if (!lost_reported) {
        log_->warn("fleet: lease renewal failed: {}", failure);
      }
    }
    std::unique_lock lock(mutex_);
    if (wake_.wait_for(lock, failure.empty() ? period : period / 2, [this] { return stopping_; })) break;
  }
  if (lease_ != 0) {
    try {
      etcd.revoke_lease(lease_);
      log_->info("fleet: lease {:x} revoked (this host leaves the fleet)", lease_.load());
    } catch (const EtcdError& e) {
      log_->warn("fleet: cannot revoke lease on leaving: {}", e.what());
    }
  }
}

}  // namespace modevisor::fleet
