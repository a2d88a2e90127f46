#include "migration/receiver.hpp"

#include <fmt/format.h>

#include "migration/channel.hpp"
#include "migration/page_batch.hpp"

namespace modevisor::host::migration {

const char* to_string(ReceiverStep s) {
  switch (s) {
    case ReceiverStep::AwaitHello: return "await-hello";
    case ReceiverStep::AwaitProof: return "await-proof";
    case ReceiverStep::AwaitRequest: return "await-request";
    case ReceiverStep::MemoryRounds: return "memory-rounds";
    case ReceiverStep::AwaitDigest: return "await-digest";
    case ReceiverStep::Ready: return "ready";
    case ReceiverStep::Committed: return "committed";
    case ReceiverStep::Running: return "running";
    case ReceiverStep::Resolved: return "resolved";
    case ReceiverStep::Refused: return "refused";
    case ReceiverStep::Abandoned: return "abandoned";
    case ReceiverStep::InDoubt: return "in-doubt";
  }
  return "?";
}

const char* to_string(ArrivalLedger::State s) {
  switch (s) {
    case ArrivalLedger::State::Receiving: return "receiving";
    case ArrivalLedger::State::Ready: return "ready";
    case ArrivalLedger::State::Committed: return "committed";
    case ArrivalLedger::State::Running: return "running";
    case ArrivalLedger::State::Aborted: return "aborted";
  }
  return "?";
}

// ---------------------------------------------------------------- ledger

bool ArrivalLedger::begin(const MigrationId& id) {
  std::lock_guard lock(mutex_);
  return entries_.try_emplace(id).second;
}

void ArrivalLedger::set_ready(const MigrationId& id) {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(id);
  if (it != entries_.end() && it->second.state == State::Receiving) it->second.state = State::Ready;
}

bool ArrivalLedger::commit(const MigrationId& id, std::unique_ptr<ArrivedVm>& vm) {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second.state != State::Ready) return false;
  it->second.state = State::Committed;
  it->second.vm = std::move(vm);
  return true;
}

std::unique_ptr<ArrivedVm> ArrivalLedger::take_for_go(const MigrationId& id) {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second.state != State::Committed) return nullptr;
  it->second.state = State::Running;
  return std::move(it->second.vm);
}

void ArrivalLedger::set_aborted(const MigrationId& id) {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(id);
  if (it != entries_.end() && (it->second.state == State::Receiving || it->second.state == State::Ready))
    it->second.state = State::Aborted;
}

Resolution ArrivalLedger::resolve(const MigrationId& id) {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return Resolution::Unknown;
  switch (it->second.state) {
    case State::Receiving:
    case State::Ready:
      it->second.state = State::Aborted;  // a Commit arriving later is declined
      return Resolution::Aborted;
    case State::Aborted: return Resolution::Aborted;
    case State::Committed:
    case State::Running: return Resolution::Committed;
  }
  return Resolution::Unknown;
}

std::optional<ArrivalLedger::State> ArrivalLedger::state(const MigrationId& id) const {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return std::nullopt;
  return it->second.state;
}

std::vector<std::string> ArrivalLedger::in_doubt() const {
  std::lock_guard lock(mutex_);
  std::vector<std::string> out;
  for (const auto& [id, e] : entries_)
    if (e.state == State::Committed) out.push_back(to_hex(id));
  return out;
}

// ---------------------------------------------------------------- receiver

namespace {
using Kind = MigrationError::Kind;

std::string text_of(std::span<const std::uint8_t> payload) {
  std::string s(payload.begin(), payload.end());
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 && c != '\n') c = '?';
  return s;
}

// The source gave up: not an error of ours, the end of this migration.
struct SourceAbandoned {
  std::string reason;
};

}  // namespace

class MigrationReceiver::Session {
 public:
  Session(MigrationReceiver& owner, int fd, const std::string& peer)
      : o_(owner), opts_(owner.options_), ch_(fd, peer, opts_.io_timeout) {
    r_.peer = peer;
  }

  ReceiverResult run() {
    try {
      hello();
      enter(ReceiverStep::AwaitRequest);
      Frame f = ch_.receive();
      if (f.type == MessageType::Resolve) {
        resolution(f);
      } else {
        expect(f, MessageType::Config);
        migration(f);
      }
    } catch (const SourceAbandoned& a) {
      end_before_commit(ReceiverStep::Abandoned, "the source abandoned the migration: " + a.reason, false);
    } catch (const std::exception& e) {
      if (committed_) {
        // Committed and no Go: the source may or may not know. Keep the VM paused for resolution.
        enter(ReceiverStep::InDoubt);
        r_.reason = std::string("committed, but Go did not arrive: ") + e.what();
        log_error("migration {} from {}: {}; the VM stays paused here until the source resolves it",
                  r_.migration_id, r_.peer, r_.reason);
      } else {
        end_before_commit(o_.step_ == ReceiverStep::AwaitHello || o_.step_ == ReceiverStep::AwaitProof
                              ? ReceiverStep::Refused
                              : ReceiverStep::Abandoned,
                          e.what(), true);
      }
    }
    r_.end = o_.step_.load();
    r_.bytes_received = ch_.bytes_received();
    return std::move(r_);
  }

 private:
  template <typename... Args>
  void log_info(fmt::format_string<Args...> f, Args&&... args) {
    if (opts_.log) opts_.log->info(f, std::forward<Args>(args)...);
  }
  template <typename... Args>
  void log_error(fmt::format_string<Args...> f, Args&&... args) {
    if (opts_.log) opts_.log->error(f, std::forward<Args>(args)...);
  }

  void enter(ReceiverStep s) {
    o_.step_ = s;
    if (opts_.on_step) opts_.on_step(to_string(s));
  }

  // The explicit transition check: in each step only the named messages are allowed.
  void expect(const Frame& f, MessageType wanted) {
    if (f.type == wanted) return;
    if (f.type == MessageType::Abandon) throw SourceAbandoned{text_of(f.payload)};
    throw MigrationError(Kind::Protocol, fmt::format("unexpected {} in step {} (expected {})", to_string(f.type),
                                                     to_string(o_.step_.load()), to_string(wanted)));
  }

  void hello() {
    enter(ReceiverStep::AwaitHello);
    Frame f = ch_.receive();
    expect(f, MessageType::Hello);
    HelloMessage hello = decode_hello(f.payload);
    id_ = hello.id;
    r_.migration_id = to_hex(id_);
    const std::uint16_t version = std::min(hello.max_version, opts_.max_version);
    if (version < std::max(hello.min_version, opts_.min_version))
      throw MigrationError(Kind::Protocol, fmt::format("no common protocol version: the source speaks {}..{}, this "
                                                       "host {}..{}",
                                                       hello.min_version, hello.max_version, opts_.min_version,
                                                       opts_.max_version));
    version_ = version;
    r_.protocol_version = version;
    ChallengeMessage c{version, make_nonce(), {}};
    HandshakeTranscript t{hello.min_version, hello.max_version, version, hello.id, hello.nonce, c.nonce};
    c.proof = compute_proof(o_.secret_, ProofRole::Destination, t);
    ch_.send(MessageType::Challenge, encode(c));
    enter(ReceiverStep::AwaitProof);
    f = ch_.receive();
    if (f.type == MessageType::Abandon) {
      if (opts_.log)
        opts_.log->warn("migration: refused a connection from {}: it does not hold this cluster's secret ({})",
                        ch_.peer(), text_of(f.payload));
      throw MigrationError(Kind::Auth, "the source " + ch_.peer() + " gave up at hello: " + text_of(f.payload));
    }
    expect(f, MessageType::Proof);
    if (!verify_proof(o_.secret_, ProofRole::Source, t, f.payload)) {
      if (opts_.log)
        opts_.log->warn("migration: refused a connection from {}: it did not prove the cluster secret", ch_.peer());
      throw MigrationError(Kind::Auth, "the source did not prove the cluster secret");
    }
    ch_.send(MessageType::Welcome, std::span<const std::uint8_t>());
  }

  void migration(const Frame& config_frame) {
    if (!o_.ledger_.begin(id_))
      throw MigrationError(Kind::Protocol, "migration id " + r_.migration_id + " was already used on this host");
    begun_ = true;
    MigrationConfig config = decode_config(config_frame.payload, opts_.max_memory_bytes);
    r_.config = config;
    PlacementDecision decision = o_.host_.place(config);
    if (!decision.accepted) {
      if (decision.reasons.empty()) decision.reasons.push_back("no reason given");
      ch_.send(MessageType::Refuse, encode_reasons(decision.reasons));
      o_.ledger_.set_aborted(id_);
      enter(ReceiverStep::Refused);
      r_.reason = "refused: " + decision.reasons.front();
      log_info("migration {} from {}: refused {} ({})", r_.migration_id, r_.peer, config.vm_name,
               decision.reasons.front());
      return;
    }
    r_.placement = *decision.accepted;
    auto ram = std::make_unique<GuestRam>(config.memory_bytes);
    ch_.send(MessageType::Accept, encode_placement(*decision.accepted));
    log_info("migration {} from {}: accepted {} under {} ({})", r_.migration_id, r_.peer, config.vm_name,
             decision.accepted->mode, decision.accepted->plugin);

    enter(ReceiverStep::MemoryRounds);
    const std::span<std::uint8_t> ram_bytes(ram->host_base(), ram->size());
    PageBatchDecoder decoder(ram_bytes, version_ >= 2);
    std::uint32_t round = 0;
    std::uint64_t entries_in_round = 0;
    std::vector<std::uint8_t> state;
    for (;;) {
      Frame f = ch_.receive();
      if (f.type == MessageType::Pages) {
        AppliedBatch b = decoder.apply(f.payload);
        if (b.round != round)
          throw MigrationError(Kind::Protocol, fmt::format("a page batch of round {} arrived in round {}", b.round,
                                                           round));
        entries_in_round += b.entries;
        r_.pages_received += b.entries;
      } else if (f.type == MessageType::RoundEnd) {
        RoundMessage m = decode_round(f.payload, "RoundEnd");
        if (m.round != round || m.entries != entries_in_round)
          throw MigrationError(Kind::Protocol, fmt::format("round {} ended with {} pages declared, but {} arrived in "
                                                           "round {}",
                                                           m.round, m.entries, entries_in_round, round));
        ch_.send(MessageType::RoundAck, encode(RoundMessage{round, entries_in_round}));
        ++round;
        r_.rounds = round;
        entries_in_round = 0;
      } else if (f.type == MessageType::State) {
        state.assign(f.payload.begin(), f.payload.end());
        break;
      } else {
        expect(f, MessageType::Pages);
      }
    }

    enter(ReceiverStep::AwaitDigest);
    const auto digest_start = Clock::now();
    const RamDigest mine = decoder.digest();  // while the source hashes its copy
    const double digest_ms = std::chrono::duration<double, std::milli>(Clock::now() - digest_start).count();
    Frame f = ch_.receive();
    expect(f, MessageType::Digest);
    DigestMessage theirs = decode_digest(f.payload);
    if (theirs.ram_bytes != ram->size())
      throw MigrationError(Kind::Integrity, fmt::format("the digest covers {} bytes of RAM, this VM has {}",
                                                        theirs.ram_bytes, ram->size()));
    if (!(theirs.digest == mine))
      throw MigrationError(Kind::Integrity, fmt::format("guest RAM digest mismatch: the source has {}, this host "
                                                        "received {}",
                                                        theirs.digest.hex(), mine.hex()));
    const auto restore_start = Clock::now();
    try {
      vm_ = o_.host_.restore(config, *decision.accepted, state, std::move(ram));
    } catch (const std::exception& e) {
      throw MigrationError(Kind::Local, fmt::format("restoring {} under {} failed: {}", config.vm_name,
                                                    decision.accepted->plugin, e.what()));
    }
    if (!vm_) throw MigrationError(Kind::Local, "restoring " + config.vm_name + " gave no VM");
    log_info("migration {}: RAM digest checked in {:.1f} ms, {} restored in {:.1f} ms", r_.migration_id, digest_ms,
             config.vm_name, std::chrono::duration<double, std::milli>(Clock::now() - restore_start).count());
    o_.ledger_.set_ready(id_);
    enter(ReceiverStep::Ready);
    ch_.send(MessageType::Ready, std::span<const std::uint8_t>());

    f = ch_.receive();
    expect(f, MessageType::Commit);
    if (opts_.before_commit) {
      const std::string refused = opts_.before_commit(config, r_.migration_id);
      if (!refused.empty()) throw MigrationError(Kind::Refused, "the commit step's ownership hook refused: " + refused);
    }
    if (!o_.ledger_.commit(id_, vm_))
      throw MigrationError(Kind::Local, "the migration was resolved as aborted before its Commit arrived");
    committed_ = true;
    enter(ReceiverStep::Committed);
    log_info("migration {}: committed; {} belongs to this host", r_.migration_id, config.vm_name);
    ch_.send(MessageType::CommitAck, std::span<const std::uint8_t>());
    await_go();
  }

  void await_go() {
    Frame f = ch_.receive();
    expect(f, MessageType::Go);
    std::unique_ptr<ArrivedVm> vm = o_.ledger_.take_for_go(id_);
    if (vm) {
      vm->resume();
      r_.vm = std::move(vm);
      enter(ReceiverStep::Running);
      log_info("migration {}: the VM runs on this host", r_.migration_id);
    } else {
      enter(ReceiverStep::Resolved);  // another connection already started it
    }
    try {
      ch_.send(MessageType::Running, std::span<const std::uint8_t>());
    } catch (const std::exception&) {
      // The VM runs here either way; the source measures downtime only.
    }
  }

  void resolution(const Frame& f) {
    id_ = decode_migration_id(f.payload);
    r_.migration_id = to_hex(id_);
    const Resolution answer = o_.ledger_.resolve(id_);
    log_info("migration {}: the source {} asks how it ended: {}", r_.migration_id, r_.peer, to_string(answer));
    std::uint8_t byte = static_cast<std::uint8_t>(answer);
    ch_.send(MessageType::Resolution, std::span<const std::uint8_t>(&byte, 1));
    if (answer != Resolution::Committed) {
      enter(ReceiverStep::Resolved);
      return;
    }
    committed_ = true;
    enter(ReceiverStep::Committed);
    await_go();
  }

  void end_before_commit(ReceiverStep end, const std::string& reason, bool tell_source) {
    r_.reason = reason;
    if (tell_source) ch_.try_abandon(reason);
    if (vm_) {
      try {
        vm_->discard(reason);
      } catch (...) {
      }
      vm_.reset();
    }
    if (begun_) o_.ledger_.set_aborted(id_);
    enter(end);
    if (end == ReceiverStep::Refused) {
      if (opts_.log) opts_.log->warn("migration: refused {}: {}", r_.peer, reason);
    } else {
      log_error("migration {} from {} abandoned: {}", r_.migration_id, r_.peer, reason);
    }
  }

  MigrationReceiver& o_;
  const ReceiverOptions& opts_;
  Channel ch_;
  ReceiverResult r_;
  MigrationId id_{};
  std::uint16_t version_ = kProtocolVersion;
  bool begun_ = false;
  bool committed_ = false;
  std::unique_ptr<ArrivedVm> vm_;
};

MigrationReceiver::MigrationReceiver(DestinationHost& host, ArrivalLedger& ledger, const ClusterSecret& secret,
                                     ReceiverOptions options)
    : host_(host), ledger_(ledger), secret_(secret), options_(std::move(options)) {}

ReceiverResult MigrationReceiver::serve(int connected_fd, const std::string& peer) {
  Session session(*this, connected_fd, peer);
  return session.run();
}

}  // namespace modevisor::host::migration
