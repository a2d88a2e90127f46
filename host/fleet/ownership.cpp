#include "fleet/ownership.hpp"

#include <chrono>

#include <fmt/format.h>

namespace modevisor::fleet {

using nlohmann::json;

namespace {
std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}
}  // namespace

json OwnerRecord::to_json() const {
  json out{{"vm", vm}, {"owner", owner}, {"epoch", epoch}, {"since", since}};
  if (!migration_id.empty()) out["migration_id"] = migration_id;
  if (!from.empty()) out["from"] = from;
  if (mod_revision) out["mod_revision"] = mod_revision;
  if (lease) out["lease"] = fmt::format("{:x}", lease);
  return out;
}

OwnerRecord OwnerRecord::parse(const KeyValue& kv) {
  const json j = json::parse(kv.value, nullptr, false);
  if (!j.is_object() || !j.contains("owner") || !j["owner"].is_string() || !j.contains("epoch") ||
      !j["epoch"].is_number_integer())
    throw EtcdError(fmt::format("etcd key {}: not an ownership record: {}", kv.key, kv.value.substr(0, 200)));
  OwnerRecord r;
  r.vm = j.value("vm", "");
  r.owner = j["owner"].get<std::string>();
  r.epoch = j["epoch"].get<std::int64_t>();
  r.migration_id = j.value("migration_id", "");
  r.from = j.value("from", "");
  r.since = j.value("since", std::int64_t{0});
  r.mod_revision = kv.mod_revision;
  r.lease = kv.lease;
  return r;
}

json OwnershipChange::to_json() const {
  json out{{"ok", ok}, {"reason", reason}};
  if (record) out["record"] = record->to_json();
  return out;
}

OwnershipChange OwnershipChange::from_json(const json& j) {
  OwnershipChange out;
  out.ok = j.value("ok", false);
  out.reason = j.value("reason", "");
  if (j.contains("record") && j["record"].is_object()) {
    const json& r = j["record"];
    OwnerRecord record;
    record.vm = r.value("vm", "");
    record.owner = r.value("owner", "");
    record.epoch = r.value("epoch", std::int64_t{0});
    record.migration_id = r.value("migration_id", "");
    record.from = r.value("from", "");
    record.since = r.value("since", std::int64_t{0});
    record.mod_revision = r.value("mod_revision", std::int64_t{0});
    out.record = record;
  }
  return out;
}

std::optional<OwnerRecord> Ownership::owner(const std::string& vm) {
  const auto kv = etcd_.get(keys_.vm(vm));
  if (!kv) return std::nullopt;
  return OwnerRecord::parse(*kv);
}

std::int64_t Ownership::next_epoch(const std::string& vm) {
  const auto kv = etcd_.get(keys_.epoch(vm));
  if (!kv) return 1;
  try {
    return std::stoll(kv->value) + 1;
  } catch (const std::exception&) {
    return 1;
  }
}

OwnershipChange Ownership::claim(const std::string& vm, const std::string& host, std::int64_t lease) {
  OwnershipChange out;
  OwnerRecord record;
  record.vm = vm;
  record.owner = host;
  record.epoch = next_epoch(vm);
  record.since = unix_now();
  const std::string epoch_text = std::to_string(record.epoch);
  TxnResult txn = etcd_.put_if_absent(keys_.vm(vm), record.value(), lease, {{keys_.epoch(vm), epoch_text}});
  if (!txn.succeeded && txn.current) {
    const OwnerRecord current = OwnerRecord::parse(*txn.current);
    if (current.owner != host) {
      out.reason = fmt::format("VM {} is owned by host {} (epoch {}); it may start elsewhere only after that record "
                               "expires with its owner's lease",
                               vm, current.owner, current.epoch);
      out.record = current;
      return out;
    }
    // Ours already (a record left by this host, e.g. before a daemon restart): take it under the current lease.
    record.epoch = std::max(record.epoch, current.epoch + 1);
    txn = etcd_.put_if_unchanged(keys_.vm(vm), current.mod_revision, record.value(), lease,
                                 {{keys_.epoch(vm), std::to_string(record.epoch)}});
  }
  if (!txn.succeeded) {
    out.reason = fmt::format("VM {}: its ownership record changed while this host claimed it; try again", vm);
    if (txn.current) out.record = OwnerRecord::parse(*txn.current);
    return out;
  }
  out.ok = true;
  const auto written = etcd_.get(keys_.vm(vm));
  if (written) out.record = OwnerRecord::parse(*written);
  if (!out.record || out.record->owner != host) {
    out.ok = false;
    out.reason = fmt::format("VM {}: the record vanished right after it was written (was the lease revoked?)", vm);
  }
  return out;
}

OwnershipChange Ownership::move(const std::string& vm, const std::string& source, const std::string& destination,
                                std::int64_t destination_lease, const std::string& migration_id) {
  OwnershipChange out;
  const auto kv = etcd_.get(keys_.vm(vm));
  if (!kv) {
    out.reason = fmt::format("VM {} has no ownership record in the fleet (its owner's lease expired, or it was never "
                             "registered): the commit would give it to no one",
                             vm);
    return out;
  }
  const OwnerRecord current = OwnerRecord::parse(*kv);
  out.record = current;
  if (current.owner != source) {
    out.reason = fmt::format("VM {} is owned by host {} (epoch {}), not by the source {}", vm, current.owner,
                             current.epoch, source);
    return out;
  }
  OwnerRecord next;
  next.vm = vm;
  next.owner = destination;
  next.epoch = current.epoch + 1;
  next.migration_id = migration_id;
  next.from = source;
  next.since = unix_now();
  const TxnResult txn = etcd_.put_if_unchanged(keys_.vm(vm), current.mod_revision, next.value(), destination_lease,
                                               {{keys_.epoch(vm), std::to_string(next.epoch)}});
  if (!txn.succeeded) {
    out.reason = fmt::format("VM {}: its ownership record changed between read and write (revision {}): another "
                             "writer won",
                             vm, current.mod_revision);
    if (txn.current) out.record = OwnerRecord::parse(*txn.current);
    return out;
  }
  out.ok = true;
  next.lease = destination_lease;
  if (const auto written = etcd_.get(keys_.vm(vm))) next.mod_revision = written->mod_revision;
  out.record = next;
  return out;
}

bool Ownership::release(const std::string& vm, const std::string& host) {
  const auto kv = etcd_.get(keys_.vm(vm));
  if (!kv) return false;
  if (OwnerRecord::parse(*kv).owner != host) return false;
  return etcd_.delete_if_unchanged(keys_.vm(vm), kv->mod_revision).succeeded;
}

}  // namespace modevisor::fleet
