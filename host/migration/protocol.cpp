#include "migration/protocol.hpp"

#include <zstd.h>

namespace modevisor::host::migration {

const char* to_string(MessageType type) {
  switch (type) {
    case MessageType::Hello: return "Hello";
    case MessageType::Challenge: return "Challenge";
    case MessageType::Proof: return "Proof";
    case MessageType::Welcome: return "Welcome";
    case MessageType::Config: return "Config";
    case MessageType::Accept: return "Accept";
    case MessageType::Refuse: return "Refuse";
    case MessageType::Pages: return "Pages";
    case MessageType::RoundEnd: return "RoundEnd";
    case MessageType::RoundAck: return "RoundAck";
    case MessageType::State: return "State";
    case MessageType::Digest: return "Digest";
    case MessageType::Ready: return "Ready";
    case MessageType::Commit: return "Commit";
    case MessageType::CommitAck: return "CommitAck";
    case MessageType::Go: return "Go";
    case MessageType::Running: return "Running";
    case MessageType::Resolve: return "Resolve";
    case MessageType::Resolution: return "Resolution";
    case MessageType::Abandon: return "Abandon";
  }
  return "unknown";
}

bool is_known(std::uint16_t type) {
  return std::string_view(to_string(static_cast<MessageType>(type))) != "unknown";
}

std::size_t max_payload(MessageType type) {
  switch (type) {
    case MessageType::Hello: return 2 + 2 + kMigrationIdBytes + kNonceBytes;
    case MessageType::Challenge: return 2 + kNonceBytes + kProofBytes;
    case MessageType::Proof: return kProofBytes;
    case MessageType::Config: return kMaxConfigBytes;
    case MessageType::Accept:
    case MessageType::Refuse:
    case MessageType::Abandon: return kMaxReasonBytes;
    case MessageType::Pages:
      // header + one entry per page + the worst case of zstd on 1 MiB
      return 16 + 8 * kMaxPagesPerBatch + ZSTD_COMPRESSBOUND(kMaxPagesPerBatch * kPageBytes);
    case MessageType::State: return kMaxStateBytes;
    case MessageType::RoundEnd:
    case MessageType::RoundAck: return 16;
    case MessageType::Digest: return 24;
    case MessageType::Resolve: return kMigrationIdBytes;
    case MessageType::Resolution: return 1;
    case MessageType::Welcome:
    case MessageType::Ready:
    case MessageType::Commit:
    case MessageType::CommitAck:
    case MessageType::Go:
    case MessageType::Running: return 0;
  }
  return 0;
}

const char* to_string(MigrationError::Kind kind) {
  switch (kind) {
    case MigrationError::Kind::Transport: return "transport";
    case MigrationError::Kind::Timeout: return "timeout";
    case MigrationError::Kind::Protocol: return "protocol";
    case MigrationError::Kind::Auth: return "authentication";
    case MigrationError::Kind::Refused: return "refused";
    case MigrationError::Kind::Integrity: return "integrity";
    case MigrationError::Kind::Local: return "local";
  }
  return "?";
}

}  // namespace modevisor::host::migration
