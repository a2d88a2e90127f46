// Unix-socket plumbing shared by the daemon, the monitor processes and the
// client: a listening socket with mode 0600, the peer's credentials, file
// descriptors passed with SCM_RIGHTS, blocking line I/O.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "control/protocol.hpp"

namespace modevisor::control {

// An owned file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept;
  ~Fd();
  int get() const { return fd_; }
  int release() { int fd = fd_; fd_ = -1; return fd; }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// Binds and listens on `path` (its folder created, a stale socket replaced),
// mode 0600.  Throws std::system_error naming the path.
Fd listen_unix(const std::filesystem::path& path);
// Connects; throws std::system_error naming the path.
Fd connect_unix(const std::filesystem::path& path);

struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};
std::optional<PeerCredentials> peer_credentials(int fd);  // SO_PEERCRED

// Sends all of `bytes`, with `fds` attached to the first byte.  False on error (errno set).
bool send_with_fds(int socket, std::string_view bytes, const std::vector<int>& fds = {});
// One read: bytes into `out`, received descriptors appended to `fds`.  Returns
// the byte count, 0 at end of stream, -1 on error.
ssize_t receive_with_fds(int socket, std::string& out, std::vector<int>& fds);

// A blocking JSON-lines connection (the client, the monitor process).
class LineChannel {
 public:
  explicit LineChannel(Fd fd) : fd_(std::move(fd)) {}
  int fd() const { return fd_.get(); }
  bool send(const json& message, const std::vector<int>& fds = {});
  // The next message; nullopt at end of stream or on a protocol error
  // (error() says which).  Descriptors that came with it go to `fds`.
  std::optional<json> receive(std::vector<int>* fds = nullptr);
  // Only what is already buffered (after a poll said the fd is readable, call read_some first).
  bool read_some(std::vector<int>* fds = nullptr);  // false at end of stream / error
  std::optional<json> buffered();
  const std::string& error() const { return error_; }

 private:
  Fd fd_;
  LineBuffer buffer_;
  std::string error_;
};

}  // namespace modevisor::control
