// A small etcd v3 client over etcd's JSON gateway (POST /v3/..., keys and
// values base64), with Boost.Beast: the few calls the fleet needs (leases,
// range, put, create-if-absent, compare-and-swap on a key's mod_revision).
// Synchronous, one short connection per call, every call bounded by a
// timeout; endpoints are tried in order until one answers.  Not thread-safe:
// one client per thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace modevisor::fleet {

// etcd unreachable, or an error it returned ("etcdserver: no leader"); the
// message names the endpoints and the call.
class EtcdError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct KeyValue {
  std::string key, value;
  std::int64_t create_revision = 0, mod_revision = 0, version = 0, lease = 0;
};

// The outcome of a transaction: whether its comparison held, and (when it did
// not) the key as it is now, absent if it is gone.
struct TxnResult {
  bool succeeded = false;
  std::optional<KeyValue> current;
};

class EtcdClient {
 public:
  // endpoints: "host:port" or "http://host:port".
  explicit EtcdClient(std::vector<std::string> endpoints,
                      std::chrono::milliseconds timeout = std::chrono::milliseconds(2000));

  // Lease id with the given TTL (seconds).
  std::int64_t grant_lease(std::int64_t ttl_seconds);
  // The TTL left after renewal; 0 when the lease no longer exists.
  std::int64_t keep_alive(std::int64_t lease);
  void revoke_lease(std::int64_t lease);

  std::optional<KeyValue> get(const std::string& key);
  // Every key under prefix; `revision` (if given) gets the store's revision of the answer.
  std::vector<KeyValue> get_prefix(const std::string& prefix, std::int64_t* revision = nullptr);
  // One member's view (POST /v3/maintenance/status on that endpoint only).
  struct MemberStatus {
    enum class Kind { Leader, NoLeader, Refused, Unreachable } kind = Kind::Unreachable;
    std::string endpoint, detail;
  };
  std::vector<MemberStatus> member_status();
  void put(const std::string& key, const std::string& value, std::int64_t lease = 0);
  // Puts only if the key does not exist (compare create_revision == 0).
  // `also`: keys written (without a lease) in the same transaction.
  using Puts = std::vector<std::pair<std::string, std::string>>;
  TxnResult put_if_absent(const std::string& key, const std::string& value, std::int64_t lease, const Puts& also = {});
  // Puts only if the key's mod_revision is still `mod_revision`.
  TxnResult put_if_unchanged(const std::string& key, std::int64_t mod_revision, const std::string& value,
                             std::int64_t lease, const Puts& also = {});
  // Deletes only if the key's mod_revision is still `mod_revision`.
  TxnResult delete_if_unchanged(const std::string& key, std::int64_t mod_revision);

  const std::vector<std::string>& endpoints() const { return endpoints_; }

 private:
  struct Endpoint {
    std::string host, port;
  };
  std::string call(const std::string& path, const std::string& body);  // the JSON reply
  std::string call_one(std::size_t index, const std::string& path, const std::string& body);
  TxnResult txn(const std::string& body, const std::string& key);

  std::vector<std::string> endpoints_;
  std::vector<Endpoint> parsed_;
  std::chrono::milliseconds timeout_;
  std::size_t preferred_ = 0;  // the endpoint that answered last
};

// "a:1,b:2" -> {"a:1", "b:2"}.
std::vector<std::string> split_endpoints(const std::string& text);

}  // namespace modevisor::fleet
