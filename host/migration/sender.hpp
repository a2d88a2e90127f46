// The source side of a live migration: an explicit state machine
//   Connect -> Hello -> Config -> MemoryRounds -> StopAndCopy -> AwaitReady
//   -> Commit -> Go -> Done
// with Cancelled / Refused / InDoubt as its other ends.  Before Commit is
// sent any failure resumes the source; after it the source never resumes on
// its own: only the destination's answer (CommitAck, or a Resolution of
// "aborted"/"unknown") decides.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <memory>
#include <string>
#include <vector>

#include <spdlog/logger.h>

#include <modevisor/api/guest_memory.hpp>

#include "migration/auth.hpp"
#include "migration/messages.hpp"
#include "migration/progress.hpp"
#include "migration/protocol.hpp"

namespace modevisor::host::migration {

// What the sender needs of the running VM (host/vm/vm.hpp's Vm satisfies it
// through a thin adapter).  Called from the sender's thread and, with
// force-converge, pause/resume from its throttle thread.
class MigrationSource {
 public:
  virtual ~MigrationSource() = default;
  virtual void pause() = 0;
  virtual void resume() = 0;
  // Paused only: everything of the VM but its RAM, encoded (encode_machine_state).
  virtual std::vector<std::uint8_t> save_state() = 0;
  virtual api::GuestMemory& ram() = 0;
  virtual void start_dirty_tracking() = 0;
  // The pages written since the last collect, one bit per 4 KiB page, in
  // `bitmap` (which it may overwrite or OR into); false: cannot track.
  virtual bool collect_dirty_pages(std::vector<std::uint64_t>& bitmap) = 0;
  // After commit: the VM now belongs to the destination; never resumed here again.
  virtual void discard(const std::string& reason) = 0;
};

struct SenderOptions {
  std::string destination;                                // address:port
  std::chrono::milliseconds downtime_limit{300};
  unsigned max_rounds = 30;                               // Xen's cap
  std::uint64_t max_total_bytes = 0;                      // page bytes; 0: 3x RAM
  std::chrono::milliseconds converge_timeout{std::chrono::minutes(10)};
  bool force_converge = false;                            // throttle instead of cancelling at a cap
  std::chrono::milliseconds io_timeout{std::chrono::seconds(30)};
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(5)};
  std::uint16_t max_version = kProtocolVersion;           // speak an older version (tests, mixed fleets)
  int zstd_level = 1;                                     // negative: zstd's fast levels
  // While paused, hash every page of RAM against what was sent: pages the
  // monitor's dirty tracking missed are found and sent.  Off: the digest
  // comes from the hashes of what was sent (trusting the tracking), which
  // takes a pass over all of RAM out of the downtime.
  bool verify_all_pages = true;
  unsigned resolve_attempts = 3;                          // reconnects when the outcome is unknown
  std::chrono::milliseconds resolve_interval{std::chrono::milliseconds(300)};
  // The migration's id, when the daemon chose it (and derived the key from it); empty: a fresh one.
  std::optional<MigrationId> migration_id;
  std::function<void(const RoundProgress&)> on_progress;  // the live line
  std::shared_ptr<spdlog::logger> log;                    // may be null
};

enum class SenderStep {
  Connect, Hello, Config, MemoryRounds, StopAndCopy, AwaitReady, Commit, Go, Resolving,
  Done, Refused, Cancelled, InDoubt,
};
const char* to_string(SenderStep s);

class MigrationSender {
 public:
  MigrationSender(MigrationSource& source, MigrationConfig config, const ClusterSecret& secret,
                  SenderOptions options);
  ~MigrationSender();

  // Connects to options.destination and migrates; the report says how it ended
  // (migration failures are outcomes, not exceptions).
  MigrationReport run();
  // Over an already connected socket (ownership taken), e.g. one the daemon passed in.
  MigrationReport run(int connected_fd);

  SenderStep step() const { return step_.load(); }
  const std::string& migration_id() const { return id_hex_; }
  // From any thread: abandon before commit at the next message boundary.
  void cancel(std::string reason = "cancelled by the operator");

 private:
  class Session;
  MigrationReport run_with(int fd);

  MigrationSource& source_;
  MigrationConfig config_;
  const ClusterSecret& secret_;
  SenderOptions options_;
  MigrationId id_;
  std::string id_hex_;
  std::atomic<SenderStep> step_{SenderStep::Connect};
  std::atomic<bool> cancel_requested_{false};
  std::string cancel_reason_;
};

// Resolves an unknown outcome for a source that kept `source` paused: asks the
// destination whether it committed `id`.  Committed: discards the source and
// sends Go; aborted/unknown: resumes the source.  Unreachable: leaves it paused
// and returns InDoubt.  The report's outcome says which.
MigrationReport resolve_in_doubt(MigrationSource& source, const ClusterSecret& secret, const MigrationId& id,
                                 const SenderOptions& options);

}  // namespace modevisor::host::migration
