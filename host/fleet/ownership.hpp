// The fleet's records in etcd and the rules that change them.
//   <prefix>/hosts/<host>      this host, alive: attached to its lease
//   <prefix>/known/<host>      the last thing a host said about itself (no lease: `hosts` shows the dead too)
//   <prefix>/vms/<vm>          the VM's owner and epoch, attached to the owner's lease
//   <prefix>/epochs/<vm>       the last epoch given (no lease), so epochs only grow
// Every change of a VM's owner is one etcd transaction that compares what it
// read (absent, or the exact mod_revision), so of two writers one loses.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "fleet/etcd_client.hpp"

namespace modevisor::fleet {

struct Keys {
  std::string prefix;  // no trailing slash
  std::string host(const std::string& name) const { return prefix + "/hosts/" + name; }
  std::string known(const std::string& name) const { return prefix + "/known/" + name; }
  std::string vm(const std::string& name) const { return prefix + "/vms/" + name; }
  std::string epoch(const std::string& name) const { return prefix + "/epochs/" + name; }
  std::string hosts() const { return prefix + "/hosts/"; }
  std::string known_hosts() const { return prefix + "/known/"; }
  std::string vms() const { return prefix + "/vms/"; }
};

struct OwnerRecord {
  std::string vm, owner;
  std::int64_t epoch = 0;
  std::string migration_id;  // the migration that gave it to this owner
  std::string from;          // its previous owner
  std::int64_t since = 0;    // unix seconds
  // From etcd, not the value:
  std::int64_t mod_revision = 0, lease = 0;

  nlohmann::json to_json() const;
  std::string value() const { return to_json().dump(); }
  // Throws EtcdError when the value is not a record.
  static OwnerRecord parse(const KeyValue& kv);
};

// The result of an attempt to take or move a VM.
struct OwnershipChange {
  bool ok = false;
  std::string reason;                 // why not
  std::optional<OwnerRecord> record;  // ok: the record as written; else the current one, if any
  nlohmann::json to_json() const;
  static OwnershipChange from_json(const nlohmann::json& j);
};

class Ownership {
 public:
  Ownership(EtcdClient& etcd, Keys keys) : etcd_(etcd), keys_(std::move(keys)) {}

  // Start: written only if no record exists (or this host already owns it).
  OwnershipChange claim(const std::string& vm, const std::string& host, std::int64_t lease);
  // Migration commit on the destination: the record must name `source` as
  // owner; it moves to `destination` (under its lease) with a compare-and-swap
  // on the revision just read.
  OwnershipChange move(const std::string& vm, const std::string& source, const std::string& destination,
                       std::int64_t destination_lease, const std::string& migration_id);
  // Stop: deleted only if it is still exactly the record this host wrote.
  bool release(const std::string& vm, const std::string& host);
  std::optional<OwnerRecord> owner(const std::string& vm);
  const Keys& keys() const { return keys_; }

 private:
  std::int64_t next_epoch(const std::string& vm);
  EtcdClient& etcd_;
  Keys keys_;
};

}  // namespace modevisor::fleet
