// What a migration tells its operator: a live line per memory round and a
// final record, both as structs and JSON.  Downtime in the record is
// measured (source paused -> destination reports running), not estimated.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace modevisor::host::migration {

struct RoundProgress {
  unsigned round = 0;
  std::uint64_t pages_in_round = 0;         // page entries sent in this round
  std::uint64_t bytes_sent = 0;             // on the wire, whole migration so far
  std::uint64_t remaining_dirty_pages = 0;  // dirtied while the round was sent
  double dirty_rate_bytes_per_s = 0;
  double bandwidth_bytes_per_s = 0;         // guest bytes moved per second
  double estimated_downtime_ms = 0;
  unsigned throttle_percent = 0;
};

// How a migration ended, as the source sees it.
enum class Outcome {
  Completed,             // the destination runs the VM; the source discarded its copy
  Refused,               // the destination declined (Config) or the secret was not proven; the VM never paused
  Cancelled,             // failed before commit; the source runs the VM again
  InDoubt,               // commit sent, answer lost, not resolved: the source keeps the VM paused
  CommittedUnconfirmed,  // the destination owns the VM; its start (Go) not confirmed yet
};
const char* to_string(Outcome o);

struct MigrationReport {
  std::string migration_id;
  std::string destination;
  Outcome outcome = Outcome::Cancelled;
  std::string failed_step;               // where it stopped, when not Completed
  std::string reason;                    // why, when not Completed
  std::vector<std::string> refusal_reasons;
  unsigned protocol_version = 0;
  std::string mode;                      // chosen by the destination
  std::string plugin;
  double total_ms = 0;
  std::optional<double> downtime_ms;     // measured; absent when the VM never paused
  double estimated_downtime_ms = 0;      // the estimate at switchover
  unsigned rounds = 0;                   // pre-copy rounds, the stop-and-copy one not counted
  std::uint64_t bytes_sent = 0;          // on the wire
  std::uint64_t pages_sent = 0;          // page entries, zero ones included
  std::uint64_t zero_pages_elided = 0;   // never sent (zero in round 0)
  std::uint64_t final_pages = 0;         // sent while paused
  std::uint64_t pages_missed_by_tracking = 0;  // changed but never reported dirty (found by the final check)
  std::uint64_t ram_bytes = 0;
  std::uint64_t state_bytes = 0;
  unsigned throttle_percent = 0;         // the highest throttle applied (force-converge)
  bool forced = false;                   // switched over above the downtime limit
  // Where the downtime went, in order: "pause", "final-pages", "state", "digest",
  // "await-ready" (the destination hashes, restores), "commit", "go".
  std::vector<std::pair<std::string, double>> downtime_phases_ms;
};

nlohmann::json to_json(const RoundProgress& p);
nlohmann::json to_json(const MigrationReport& r);
// "round 3: 12.4 MiB sent, dirty 48.0 MB/s, bandwidth 1.21 GB/s, est. downtime 12 ms"
std::string progress_line(const RoundProgress& p);
// Several lines: outcome, total time, downtime, rounds, bytes, mode.
std::string summary(const MigrationReport& r);

}  // namespace modevisor::host::migration
