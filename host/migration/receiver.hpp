// The destination side of a live migration: an explicit state machine
//   AwaitHello -> AwaitProof -> AwaitRequest -> MemoryRounds -> AwaitDigest
//   -> Ready -> Committed -> Running
// with Refused / Abandoned / InDoubt as its other ends, and the ledger that
// makes the destination the one place where a migration's commit is decided.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <spdlog/logger.h>

#include "migration/auth.hpp"
#include "migration/messages.hpp"
#include "migration/protocol.hpp"
#include "platform/guest_ram.hpp"

namespace modevisor::host::migration {

// The VM built on the destination, paused until Go.
class ArrivedVm {
 public:
  virtual ~ArrivedVm() = default;
  virtual void resume() = 0;
  // Abandoned before commit: the destination's copy goes away.
  virtual void discard(const std::string& reason) = 0;
};

struct PlacementDecision {
  std::optional<Placement> accepted;  // empty: refused
  std::vector<std::string> reasons;   // why refused
};

// What the receiver needs of the host it runs on.
class DestinationHost {
 public:
  virtual ~DestinationHost() = default;
  // The host's own selector against its capabilities, plugins and policy
  // (writes the MONITOR MODE lines to the VM's log here).
  virtual PlacementDecision place(const MigrationConfig& config) = 0;
  // Vm::restore of the received state and RAM under the chosen plugin, paused.
  // Throws (any std::exception) with the reason when it cannot.
  virtual std::unique_ptr<ArrivedVm> restore(const MigrationConfig& config, const Placement& placement,
                                             std::span<const std::uint8_t> state, std::unique_ptr<GuestRam> ram) = 0;
};

// The destination's record of every migration it has taken part in, keyed by
// migration id: one per receiving process, shared by all its connections.
// Commit and abort are decided here under one lock, so a late Commit and a
// Resolve can never both win.  A committed VM waiting for Go is kept here.
class ArrivalLedger {
 public:
  enum class State { Receiving, Ready, Committed, Running, Aborted };

  // False if the id is already known (a replayed or duplicate migration).
  bool begin(const MigrationId& id);
  void set_ready(const MigrationId& id);
  // Ready -> Committed, keeping the VM; false (VM handed back) when the
  // migration was aborted meanwhile.
  bool commit(const MigrationId& id, std::unique_ptr<ArrivedVm>& vm);
  // Committed -> Running: the VM to resume, or null when another connection took it.
  std::unique_ptr<ArrivedVm> take_for_go(const MigrationId& id);
  void set_aborted(const MigrationId& id);
  // A source that lost the answer asks: Receiving/Ready become Aborted.
  Resolution resolve(const MigrationId& id);
  std::optional<State> state(const MigrationId& id) const;
  // Committed VMs still waiting for Go (for `vm status` and tests).
  std::vector<std::string> in_doubt() const;

 private:
  struct Entry {
    State state = State::Receiving;
    std::unique_ptr<ArrivedVm> vm;
  };
  mutable std::mutex mutex_;
  std::map<MigrationId, Entry> entries_;
};
const char* to_string(ArrivalLedger::State s);

struct ReceiverOptions {
  std::uint64_t max_memory_bytes = 64ull << 30;
  std::chrono::milliseconds io_timeout{std::chrono::seconds(30)};
  std::uint16_t min_version = kOldestProtocolVersion;
  std::uint16_t max_version = kProtocolVersion;
  std::shared_ptr<spdlog::logger> log;  // may be null
  // Called as each step is entered (status, tests that kill at a step).
  std::function<void(const char* step)> on_step;
  // The commit step's ownership hook (a fleet: the VM's record moves to this
  // host in etcd).  Called when Commit arrives, before the ledger commits;
  // a non-empty answer is why not, and the migration is abandoned (the
  // source resumes: it still owns the VM).
  std::function<std::string(const MigrationConfig& config, const std::string& migration_id)> before_commit;
};

enum class ReceiverStep {
  AwaitHello, AwaitProof, AwaitRequest, MemoryRounds, AwaitDigest, Ready, Committed, Running,
  Resolved, Refused, Abandoned, InDoubt,
};
const char* to_string(ReceiverStep s);

struct ReceiverResult {
  ReceiverStep end = ReceiverStep::Abandoned;
  std::string migration_id;
  std::string peer;
  std::string reason;                    // when not Running
  std::optional<MigrationConfig> config;
  std::optional<Placement> placement;
  std::unique_ptr<ArrivedVm> vm;         // when Running: the caller owns the running VM
  std::uint64_t pages_received = 0;
  std::uint64_t bytes_received = 0;
  unsigned rounds = 0;
  unsigned protocol_version = 0;
};

class MigrationReceiver {
 public:
  MigrationReceiver(DestinationHost& host, ArrivalLedger& ledger, const ClusterSecret& secret,
                    ReceiverOptions options);
  // One connection, start to end (a migration, or a resolution of one).
  // Never throws for protocol or peer failures: they are the result.
  ReceiverResult serve(int connected_fd, const std::string& peer);
  ReceiverStep step() const { return step_.load(); }

 private:
  class Session;
  DestinationHost& host_;
  ArrivalLedger& ledger_;
  const ClusterSecret& secret_;
  ReceiverOptions options_;
  std::atomic<ReceiverStep> step_{ReceiverStep::AwaitHello};
};

}  // namespace modevisor::host::migration
