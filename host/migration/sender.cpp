#include "migration/sender.hpp"

#include <algorithm>
#include <bit>
#include <thread>

#include <fmt/format.h>

#include "migration/channel.hpp"
#include "migration/page_batch.hpp"
#include "migration/vcpu_throttle.hpp"

namespace modevisor::host::migration {

const char* to_string(SenderStep s) {
  switch (s) {
    case SenderStep::Connect: return "connect";
    case SenderStep::Hello: return "hello";
    case SenderStep::Config: return "config";
    case SenderStep::MemoryRounds: return "memory-rounds";
    case SenderStep::StopAndCopy: return "stop-and-copy";
    case SenderStep::AwaitReady: return "await-ready";
    case SenderStep::Commit: return "commit";
    case SenderStep::Go: return "go";
    case SenderStep::Resolving: return "resolving";
    case SenderStep::Done: return "done";
    case SenderStep::Refused: return "refused";
    case SenderStep::Cancelled: return "cancelled";
    case SenderStep::InDoubt: return "in-doubt";
  }
  return "?";
}

namespace {

using Kind = MigrationError::Kind;
using Ms = std::chrono::duration<double, std::milli>;

std::string text_of(std::span<const std::uint8_t> payload) {
  std::string s(payload.begin(), payload.end());
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 && c != '\n') c = '?';
  return s;
}

[[noreturn]] void unexpected(const Frame& f, const char* step) {
  if (f.type == MessageType::Abandon)
    throw MigrationError(Kind::Refused, std::string("the destination abandoned the migration during ") + step + ": " +
                                            text_of(f.payload));
  throw MigrationError(Kind::Protocol, std::string("unexpected ") + to_string(f.type) + " from the destination during " +
                                           step);
}

// Hello from the source's side; returns the negotiated version.
std::uint16_t prove_to_destination(Channel& ch, const ClusterSecret& secret, const MigrationId& id,
                                   std::uint16_t max_version) {
  HelloMessage hello{kOldestProtocolVersion, max_version, id, make_nonce()};
  ch.send(MessageType::Hello, encode(hello));
  Frame f = ch.receive();
  if (f.type == MessageType::Abandon)
    throw MigrationError(Kind::Auth, "the destination " + ch.peer() + " refused the connection: " + text_of(f.payload));
  if (f.type != MessageType::Challenge) unexpected(f, "hello");
  ChallengeMessage c = decode_challenge(f.payload);
  if (c.version < hello.min_version || c.version > hello.max_version)
    throw MigrationError(Kind::Protocol, fmt::format("the destination chose protocol version {}, not one of {}..{}",
                                                     c.version, hello.min_version, hello.max_version));
  HandshakeTranscript t{hello.min_version, hello.max_version, c.version, id, hello.nonce, c.nonce};
  if (!verify_proof(secret, ProofRole::Destination, t, c.proof)) {
    ch.try_abandon("the destination did not prove the cluster secret");
    throw MigrationError(Kind::Auth, "the destination " + ch.peer() +
                                         " did not prove the cluster secret; nothing was sent to it");
  }
  auto proof = compute_proof(secret, ProofRole::Source, t);
  ch.send(MessageType::Proof, std::span<const std::uint8_t>(proof));
  f = ch.receive();
  if (f.type == MessageType::Abandon)
    throw MigrationError(Kind::Auth, "the destination " + ch.peer() + " refused this host: " + text_of(f.payload));
  if (f.type != MessageType::Welcome) unexpected(f, "hello");
  return c.version;
}

std::vector<std::uint64_t> all_pages(std::uint64_t page_count) {
  std::vector<std::uint64_t> bitmap((page_count + 63) / 64, ~0ull);
  if (page_count % 64) bitmap.back() = (1ull << (page_count % 64)) - 1;
  return bitmap;
}

std::uint64_t count_pages(const std::vector<std::uint64_t>& bitmap, std::uint64_t page_count) {
  std::uint64_t n = 0;
  for (std::size_t w = 0; w < bitmap.size(); ++w) {
    std::uint64_t bits = bitmap[w];
    if ((w + 1) * 64 > page_count) bits &= page_count % 64 ? (1ull << (page_count % 64)) - 1 : ~0ull;
    n += static_cast<std::uint64_t>(std::popcount(bits));
  }
  return n;
}

struct ResolveResult {
  bool reached = false;
  Resolution resolution = Resolution::Unknown;
  bool running = false;  // Go was delivered and Running came back
  std::string error;
};

// One attempt: connect, prove, ask; on Committed deliver Go (after `before_go`).
ResolveResult ask_destination(const ClusterSecret& secret, const MigrationId& id, const SenderOptions& o,
                              const std::function<void()>& before_go) {
  ResolveResult out;
  try {
    Channel ch(tcp_connect(o.destination, o.connect_timeout), o.destination, o.io_timeout);
    prove_to_destination(ch, secret, id, o.max_version);
    ch.send(MessageType::Resolve, std::span<const std::uint8_t>(id));
    Frame f = ch.receive();
    if (f.type != MessageType::Resolution) unexpected(f, "resolution");
    out.resolution = decode_resolution(f.payload);
    out.reached = true;
    if (out.resolution == Resolution::Committed) {
      before_go();
      ch.send(MessageType::Go, std::span<const std::uint8_t>());
      f = ch.receive();
      if (f.type != MessageType::Running) unexpected(f, "go");
      out.running = true;
    }
  } catch (const std::exception& e) {
    out.error = e.what();
  }
  return out;
}

}  // namespace

// One run: the channel, the counters and the steps in order.
class MigrationSender::Session {
 public:
  Session(MigrationSender& owner, int fd)
      : o_(owner),
        source_(owner.source_),
        opts_(owner.options_),
        ch_(fd, opts_.destination, opts_.io_timeout),
        throttle_(source_),
        page_count_(source_.ram().size() / kPageBytes) {
    r_.migration_id = owner.id_hex_;
    r_.destination = opts_.destination;
    r_.ram_bytes = source_.ram().size();
  }

  MigrationReport run() {
    const auto start = Clock::now();
    try {
      enter(SenderStep::Hello);
      r_.protocol_version = prove_to_destination(ch_, o_.secret_, o_.id_, opts_.max_version);
      log_info("migration {} to {}: peers proven, protocol version {}", r_.migration_id, opts_.destination,
               r_.protocol_version);
      enter(SenderStep::Config);
      if (!offer_config()) return finish(start);
      enter(SenderStep::MemoryRounds);
      precopy();
      enter(SenderStep::StopAndCopy);
      stop_and_copy();
      enter(SenderStep::AwaitReady);
      await_ready();
    } catch (const std::exception& e) {
      fail_before_commit(e);
      return finish(start);
    }
    commit_and_go();
    return finish(start);
  }

 private:
  template <typename... Args>
  void log_info(fmt::format_string<Args...> f, Args&&... args) {
    if (opts_.log) opts_.log->info(f, std::forward<Args>(args)...);
  }
  template <typename... Args>
  void log_warn(fmt::format_string<Args...> f, Args&&... args) {
    if (opts_.log) opts_.log->warn(f, std::forward<Args>(args)...);
  }

  void enter(SenderStep s) { o_.step_ = s; }

  void check_cancel() {
    if (o_.cancel_requested_) throw MigrationError(Kind::Local, o_.cancel_reason_);
  }

  // Config: false when the destination refused (nothing changed, the VM never paused).
  bool offer_config() {
    ch_.send(MessageType::Config, encode_config(o_.config_));
    Frame f = ch_.receive();
    if (f.type == MessageType::Refuse) {
      r_.outcome = Outcome::Refused;
      r_.failed_step = "config";
      r_.refusal_reasons = decode_reasons(f.payload, "Refuse");
      r_.reason = "the destination refused the VM";
      enter(SenderStep::Refused);
      log_warn("migration {}: {} refused {}", r_.migration_id, opts_.destination, o_.config_.vm_name);
      return false;
    }
    if (f.type != MessageType::Accept) unexpected(f, "config");
    Placement p = decode_placement(f.payload);
    r_.mode = p.mode;
    r_.plugin = p.plugin;
    log_info("migration {}: {} accepts {} under {} ({})", r_.migration_id, opts_.destination, o_.config_.vm_name,
             p.mode, p.plugin);
    return true;
  }

  struct RoundSent {
    std::uint64_t entries = 0;
    std::uint64_t data_pages = 0;
  };

  // Round 0 covers the pages that may hold data; the rest (the memfd's holes) are zero, as on the destination.
  std::vector<std::uint64_t> first_round_pages() {
    std::vector<std::uint64_t> bitmap((page_count_ + 63) / 64, 0);
    std::uint64_t covered = 0;
    for (const auto& [begin, end] : data_extents(source_.ram().fd(), r_.ram_bytes))
      for (std::uint64_t page = begin / kPageBytes; page < end / kPageBytes; ++page) {
        bitmap[page / 64] |= 1ull << (page % 64);
        ++covered;
      }
    r_.zero_pages_elided += page_count_ - covered;
    return bitmap;
  }

  RoundSent send_pages(const std::vector<std::uint64_t>& bitmap, std::uint32_t round, bool elide_zero,
                       PageBatchEncoder& enc) {
    RoundSent sent;
    const auto* base = static_cast<const std::uint8_t*>(source_.ram().host_base());
    enc.begin(round);
    for (std::size_t w = 0; w < bitmap.size(); ++w) {
      std::uint64_t bits = bitmap[w];
      while (bits) {
        const std::uint64_t page = w * 64 + static_cast<unsigned>(std::countr_zero(bits));
        bits &= bits - 1;
        if (page >= page_count_) break;
        const std::uint8_t* p = base + page * kPageBytes;
        if (is_zero_page(p)) {
          if (elide_zero) {
            ++r_.zero_pages_elided;
            continue;
          }
          enc.add_zero(page);
          sent_hashes_[page] = 0;
        } else {
          sent_hashes_[page] = page_hash(enc.add_page(page, p));
          ++sent.data_pages;
        }
        ++sent.entries;
        if (enc.full()) {
          ch_.send(MessageType::Pages, enc.finish());
          enc.begin(round);
          check_cancel();
        }
      }
    }
    if (!enc.empty()) ch_.send(MessageType::Pages, enc.finish());
    r_.pages_sent += sent.entries;
    return sent;
  }

  // How long the final digest takes here (the destination hashes at the same time).
  double calibrate_digest_ms() {
    const auto* base = static_cast<const std::uint8_t*>(source_.ram().host_base());
    const auto t0 = Clock::now();
    volatile auto d = digest_ram(std::span(base, r_.ram_bytes), source_.ram().fd()).low;
    (void)d;
    return Ms(Clock::now() - t0).count();
  }

  void precopy() {
    encoder_ = std::make_unique<PageBatchEncoder>(r_.protocol_version >= 2 ? PageEncoding::Zstd : PageEncoding::Raw,
                                                  opts_.zstd_level);
    const double digest_ms = opts_.verify_all_pages ? calibrate_digest_ms() : 0.0;
    const double state_estimate = 64.0 * 1024 * o_.config_.vcpus;
    const std::uint64_t byte_cap = opts_.max_total_bytes ? opts_.max_total_bytes : 3 * r_.ram_bytes;
    source_.start_dirty_tracking();
    precopy_start_ = Clock::now();
    std::vector<std::uint64_t>& bitmap = pending_;
    bitmap = first_round_pages();
    double bandwidth = 0;  // guest bytes per second, measured
    double sending_seconds = 0;
    std::uint64_t page_bytes_sent = 0;
    for (std::uint32_t round = 0;; ++round) {
      check_cancel();
      const auto t0 = Clock::now();
      RoundSent sent = send_pages(bitmap, round, round == 0, *encoder_);
      ch_.send(MessageType::RoundEnd, encode(RoundMessage{round, sent.entries}));
      Frame f = ch_.receive();
      if (f.type != MessageType::RoundAck) unexpected(f, "memory rounds");
      RoundMessage ack = decode_round(f.payload, "RoundAck");
      if (ack.round != round || ack.entries != sent.entries)
        throw MigrationError(Kind::Protocol, fmt::format("the destination acknowledged round {} with {} pages, "
                                                         "but round {} sent {}",
                                                         ack.round, ack.entries, round, sent.entries));
      const double seconds = std::max(1e-6, std::chrono::duration<double>(Clock::now() - t0).count());
      page_bytes_sent += sent.data_pages * kPageBytes;
      // Over all rounds so far: a round of a few pages is mostly round trip, not bandwidth.
      sending_seconds += seconds;
      bandwidth = std::max(1.0, static_cast<double>(std::max<std::uint64_t>(page_bytes_sent, kPageBytes)) / sending_seconds);

      bitmap.assign(bitmap.size(), 0);
      if (!source_.collect_dirty_pages(bitmap))
        throw MigrationError(Kind::Local, "the source's monitor cannot track dirty pages");
      const std::uint64_t dirty = count_pages(bitmap, page_count_);
      RoundProgress p;
      p.round = round;
      p.pages_in_round = sent.entries;
      p.bytes_sent = ch_.bytes_sent();
      p.remaining_dirty_pages = dirty;
      p.dirty_rate_bytes_per_s = static_cast<double>(dirty * kPageBytes) / seconds;
      p.bandwidth_bytes_per_s = bandwidth;
      const double transfer_ms = 1000.0 * static_cast<double>(dirty * kPageBytes) / bandwidth;
      const double fixed_ms = 1000.0 * state_estimate / bandwidth + digest_ms;
      p.estimated_downtime_ms = transfer_ms + fixed_ms;
      p.throttle_percent = throttle_.percent();
      r_.rounds = round + 1;
      r_.estimated_downtime_ms = p.estimated_downtime_ms;
      if (opts_.on_progress) opts_.on_progress(p);

      const double limit = static_cast<double>(opts_.downtime_limit.count());
      if (p.estimated_downtime_ms <= limit || dirty == 0) return;
      // What no round can shrink (state, the RAM digest) is over the limit alone: stop once the part rounds can shrink is small.
      if (fixed_ms >= limit && transfer_ms <= limit / 10) {
        log_warn("migration {}: the fixed part of the downtime ({:.0f} ms: state and RAM digest) is above the limit "
                 "of {} ms; switching over with {:.0f} ms of pages left",
                 r_.migration_id, fixed_ms, opts_.downtime_limit.count(), transfer_ms);
        return;
      }

      std::string cap;
      if (r_.rounds >= opts_.max_rounds) cap = fmt::format("the round cap of {} was reached", opts_.max_rounds);
      else if (page_bytes_sent >= byte_cap) cap = fmt::format("the cap of {} page bytes was reached", byte_cap);
      else if (Clock::now() - precopy_start_ >= opts_.converge_timeout)
        cap = fmt::format("the timeout of {} ms was reached", opts_.converge_timeout.count());
      if (cap.empty()) continue;
      if (!opts_.force_converge)
        throw MigrationError(Kind::Local, fmt::format("did not converge: {}; the estimated downtime is {:.0f} ms "
                                                      "(dirty {:.1f} MB/s, bandwidth {:.1f} MB/s), above the limit "
                                                      "of {} ms",
                                                      cap, p.estimated_downtime_ms, p.dirty_rate_bytes_per_s / 1e6,
                                                      bandwidth / 1e6, opts_.downtime_limit.count()));
      if (throttle_.percent() >= 99) {
        // Throttled as far as it goes: switch over above the limit rather than never.
        r_.forced = true;
        log_warn("migration {}: forcing the switchover at an estimated {:.0f} ms ({})", r_.migration_id,
                 p.estimated_downtime_ms, cap);
        return;
      }
      const unsigned next = throttle_.percent() == 0 ? 20 : std::min(99u, throttle_.percent() + 10);
      throttle_.set_percent(next);
      r_.throttle_percent = std::max(r_.throttle_percent, next);
      log_info("migration {}: {}; throttling the vCPUs to {}%", r_.migration_id, cap, next);
    }
  }

  void stop_and_copy() {
    throttle_.stop();
    check_cancel();
    paused_at_ = Clock::now();
    phase_start_ = paused_at_;
    source_.pause();
    paused_ = true;
    phase("pause");
    // What the last round left dirty, and what the guest wrote since.
    std::vector<std::uint64_t> since((page_count_ + 63) / 64, 0);
    if (!source_.collect_dirty_pages(since)) since = all_pages(page_count_);
    pending_.resize(std::max(pending_.size(), since.size()), 0);
    for (std::size_t w = 0; w < since.size(); ++w) pending_[w] |= since[w];
    RoundSent sent = send_pages(pending_, r_.rounds, false, *encoder_);
    r_.final_pages = sent.entries;
    phase("final-pages");
    // Every page as it is now against what was sent: the digest, and a page
    // the dirty tracking missed (a monitor bug) is caught here and sent.
    const auto* base = static_cast<const std::uint8_t*>(source_.ram().host_base());
    std::vector<std::uint64_t> missed((page_count_ + 63) / 64, 0);
    std::uint64_t missed_pages = 0;
    const std::vector<std::uint64_t> now =
        opts_.verify_all_pages ? hash_data_pages(std::span(base, r_.ram_bytes), source_.ram().fd()) : sent_hashes_;
    for (std::uint64_t page = 0; page < page_count_; ++page)
      if (now[page] != sent_hashes_[page]) {
        missed[page / 64] |= 1ull << (page % 64);
        ++missed_pages;
      }
    if (missed_pages) {
      log_warn("migration {}: {} pages changed without being reported dirty (the monitor's dirty tracking missed "
               "them); sending them now",
               r_.migration_id, missed_pages);
      r_.pages_missed_by_tracking = missed_pages;
      send_pages(missed, r_.rounds, false, *encoder_);
    }
    const RamDigest digest = digest_of_page_hashes(now);
    phase("verify");
    std::vector<std::uint8_t> state = source_.save_state();
    if (state.size() > kMaxStateBytes)
      throw MigrationError(Kind::Local, fmt::format("the VM's saved state has {} bytes, more than the protocol's {}",
                                                    state.size(), kMaxStateBytes));
    r_.state_bytes = state.size();
    ch_.send(MessageType::State, state);
    phase("state");
    ch_.send(MessageType::Digest, encode(DigestMessage{digest, r_.ram_bytes}));
    phase("digest");
  }

  void phase(const char* name) {
    const auto now = Clock::now();
    r_.downtime_phases_ms.emplace_back(name, Ms(now - phase_start_).count());
    phase_start_ = now;
  }

  void await_ready() {
    Frame f = ch_.receive();
    if (f.type != MessageType::Ready) unexpected(f, "stop-and-copy");
    phase("await-ready");
    check_cancel();
  }

  void fail_before_commit(const std::exception& e) {
    throttle_.stop();
    const auto* me = dynamic_cast<const MigrationError*>(&e);
    const SenderStep at = o_.step_.load();
    r_.failed_step = to_string(at);
    r_.reason = e.what();
    r_.outcome = me && me->kind() == Kind::Auth ? Outcome::Refused : Outcome::Cancelled;
    if (me && me->kind() == Kind::Transport) {
      // A send that failed may have raced the destination's Abandon: its reason is the real one.
      try {
        Frame f = ch_.receive(std::chrono::milliseconds(200));
        if (f.type == MessageType::Abandon)
          r_.reason = "the destination abandoned the migration: " + text_of(f.payload) + " (" + e.what() + ")";
      } catch (const std::exception&) {
      }
    }
    ch_.try_abandon(e.what());
    ch_.close();
    if (paused_) {
      try {
        source_.resume();
      } catch (const std::exception& again) {
        r_.reason += std::string("; resuming the source failed too: ") + again.what();
      }
      r_.downtime_ms = Ms(Clock::now() - paused_at_).count();
    }
    enter(r_.outcome == Outcome::Refused ? SenderStep::Refused : SenderStep::Cancelled);
    log_warn("migration {} to {} {} at {}: {}{}", r_.migration_id, opts_.destination, to_string(r_.outcome),
             r_.failed_step, r_.reason, paused_ ? " (the source runs again)" : "");
  }

  // The commit point is the destination's: it commits when Commit arrives.
  // Until CommitAck is here the source cannot know, so it stays paused.
  void commit_and_go() {
    enter(SenderStep::Commit);
    bool acknowledged = false;
    try {
      ch_.send(MessageType::Commit, std::span<const std::uint8_t>());
      Frame f = ch_.receive();
      if (f.type == MessageType::Abandon) {
        // The destination declined to commit (it had already abandoned): it will never run it.
        fail_before_commit(MigrationError(Kind::Refused, "the destination declined the commit: " + text_of(f.payload)));
        return;
      }
      if (f.type != MessageType::CommitAck) unexpected(f, "commit");
      acknowledged = true;
      phase("commit");
    } catch (const std::exception& e) {
      r_.failed_step = "commit";
      r_.reason = e.what();
    }
    if (!acknowledged) {
      log_warn("migration {}: commit unanswered ({}); the VM stays paused here until the destination says",
               r_.migration_id, r_.reason);
      ch_.close();
      resolve(false);
      return;
    }
    discard_source();
    phase("discard");
    enter(SenderStep::Go);
    try {
      ch_.send(MessageType::Go, std::span<const std::uint8_t>());
      Frame f = ch_.receive();
      if (f.type != MessageType::Running) unexpected(f, "go");
      phase("go");
      r_.downtime_ms = Ms(Clock::now() - paused_at_).count();
      r_.outcome = Outcome::Completed;
      enter(SenderStep::Done);
      log_info("migration {}: {} runs on {}", r_.migration_id, o_.config_.vm_name, opts_.destination);
      return;
    } catch (const std::exception& e) {
      r_.failed_step = "go";
      r_.reason = e.what();
    }
    ch_.close();
    resolve(true);
  }

  void discard_source() {
    if (discarded_) return;
    discarded_ = true;
    source_.discard(fmt::format("migrated to {} (migration {})", opts_.destination, r_.migration_id));
  }

  // Ask the destination (new connections) what became of the commit.
  void resolve(bool committed) {
    enter(SenderStep::Resolving);
    for (unsigned attempt = 0; attempt < std::max(1u, opts_.resolve_attempts); ++attempt) {
      if (attempt) std::this_thread::sleep_for(opts_.resolve_interval);
      ResolveResult a = ask_destination(o_.secret_, o_.id_, opts_, [this] { discard_source(); });
      if (!a.reached) {
        log_warn("migration {}: resolution attempt {} failed: {}", r_.migration_id, attempt + 1, a.error);
        continue;
      }
      log_info("migration {}: the destination says {}", r_.migration_id, to_string(a.resolution));
      if (a.resolution == Resolution::Committed) {
        if (!a.running) {
          r_.outcome = Outcome::CommittedUnconfirmed;
          r_.reason += "; resolved as committed, but Go was not confirmed: " + a.error;
          enter(SenderStep::InDoubt);
          return;
        }
        r_.downtime_ms = Ms(Clock::now() - paused_at_).count();
        r_.outcome = Outcome::Completed;
        r_.failed_step.clear();
        r_.reason.clear();
        enter(SenderStep::Done);
        return;
      }
      if (committed) {
        // The destination acknowledged the commit and now does not know it: its process lost the VM.
        r_.outcome = Outcome::CommittedUnconfirmed;
        r_.reason += "; the destination no longer knows the committed migration (it lost the VM)";
        enter(SenderStep::InDoubt);
        return;
      }
      source_.resume();
      r_.downtime_ms = Ms(Clock::now() - paused_at_).count();
      r_.outcome = Outcome::Cancelled;
      r_.reason += std::string("; resolved: the destination did not commit (") + to_string(a.resolution) +
                   "), the source runs again";
      enter(SenderStep::Cancelled);
      return;
    }
    r_.outcome = committed ? Outcome::CommittedUnconfirmed : Outcome::InDoubt;
    r_.reason += committed ? "; the destination owns the VM but did not confirm it runs"
                           : "; the outcome is unknown: the VM stays paused here (resolve_in_doubt)";
    enter(SenderStep::InDoubt);
  }

  MigrationReport finish(Clock::time_point start) {
    throttle_.stop();
    r_.total_ms = Ms(Clock::now() - start).count();
    r_.bytes_sent = ch_.bytes_sent();
    return r_;
  }

  MigrationSender& o_;
  MigrationSource& source_;
  const SenderOptions& opts_;
  Channel ch_;
  VcpuThrottle throttle_;
  std::uint64_t page_count_;
  std::unique_ptr<PageBatchEncoder> encoder_;
  std::vector<std::uint64_t> pending_;  // dirty pages not sent yet
  std::vector<std::uint64_t> sent_hashes_ = std::vector<std::uint64_t>(page_count_, 0);  // page_hash() as sent
  MigrationReport r_;
  Clock::time_point precopy_start_{};
  Clock::time_point paused_at_{};
  Clock::time_point phase_start_{};
  bool paused_ = false;
  bool discarded_ = false;
};

MigrationSender::MigrationSender(MigrationSource& source, MigrationConfig config, const ClusterSecret& secret,
                                 SenderOptions options)
    : source_(source),
      config_(std::move(config)),
      secret_(secret),
      options_(std::move(options)),
      id_(options_.migration_id ? *options_.migration_id : make_migration_id()),
      id_hex_(to_hex(id_)) {}

MigrationSender::~MigrationSender() = default;

void MigrationSender::cancel(std::string reason) {
  cancel_reason_ = std::move(reason);
  cancel_requested_ = true;
}

MigrationReport MigrationSender::run() {
  step_ = SenderStep::Connect;
  int fd;
  try {
    fd = tcp_connect(options_.destination, options_.connect_timeout);
  } catch (const std::exception& e) {
    step_ = SenderStep::Cancelled;
    MigrationReport r;
    r.migration_id = id_hex_;
    r.destination = options_.destination;
    r.outcome = Outcome::Cancelled;
    r.failed_step = "connect";
    r.reason = e.what();
    r.ram_bytes = source_.ram().size();
    return r;
  }
  return run_with(fd);
}

MigrationReport MigrationSender::run(int connected_fd) { return run_with(connected_fd); }

MigrationReport MigrationSender::run_with(int fd) {
  Session session(*this, fd);
  return session.run();
}

MigrationReport resolve_in_doubt(MigrationSource& source, const ClusterSecret& secret, const MigrationId& id,
                                 const SenderOptions& options) {
  MigrationReport r;
  r.migration_id = to_hex(id);
  r.destination = options.destination;
  r.ram_bytes = source.ram().size();
  bool discarded = false;
  ResolveResult a = ask_destination(secret, id, options, [&] {
    discarded = true;
    source.discard(fmt::format("migrated to {} (migration {})", options.destination, r.migration_id));
  });
  if (!a.reached) {
    r.outcome = Outcome::InDoubt;
    r.failed_step = "resolving";
    r.reason = "the destination could not be asked: " + a.error + "; the VM stays paused";
  } else if (a.resolution == Resolution::Committed) {
    r.outcome = a.running ? Outcome::Completed : Outcome::CommittedUnconfirmed;
    if (!a.running) r.reason = "committed; Go not confirmed: " + a.error;
  } else {
    source.resume();
    r.outcome = Outcome::Cancelled;
    r.failed_step = "resolving";
    r.reason = std::string("the destination did not commit (") + to_string(a.resolution) + "); the source runs again";
  }
  (void)discarded;
  return r;
}

}  // namespace modevisor::host::migration
