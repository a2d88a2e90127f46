#include "control/unix_socket.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

namespace modevisor::control {

Fd& Fd::operator=(Fd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.release();
  }
  return *this;
}

Fd::~Fd() {
  if (fd_ >= 0) ::close(fd_);
}

namespace {

sockaddr_un address_of(const std::filesystem::path& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.native().size() >= sizeof address.sun_path)
    throw std::system_error(ENAMETOOLONG, std::generic_category(), "socket path " + path.string());
  std::memcpy(address.sun_path, path.c_str(), path.native().size() + 1);
  return address;
}

}  // namespace

Fd listen_unix(const std::filesystem::path& path) {
  std::error_code ec;
  std::filesystem::create_directories(path.parent_path(), ec);
  const sockaddr_un address = address_of(path);
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw std::system_error(errno, std::generic_category(), "socket for " + path.string());
  // A socket left by a process that is gone is replaced; a live one is not.
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      throw std::system_error(EEXIST, std::generic_category(), path.string() + " exists and is not a socket");
    Fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0)
      throw std::system_error(EADDRINUSE, std::generic_category(), path.string() + " is in use by a running process");
    ::unlink(path.c_str());
  }
  // Created 0600 from the start (no window where others could connect).
  const mode_t old_mask = ::umask(0177);
  const int bound = ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address);
  const int bind_errno = errno;
  ::umask(old_mask);
  if (bound != 0) throw std::system_error(bind_errno, std::generic_category(), "bind " + path.string());
  ::chmod(path.c_str(), 0600);
  if (::listen(fd.get(), 64) != 0) throw std::system_error(errno, std::generic_category(), "listen " + path.string());
  return fd;
}

Fd connect_unix(const std::filesystem::path& path) {
  const sockaddr_un address = address_of(path);
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw std::system_error(errno, std::generic_category(), "socket");
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0)
    throw std::system_error(errno, std::generic_category(), "connect to " + path.string());
  return fd;
}

std::optional<PeerCredentials> peer_credentials(int fd) {
  ucred cred{};
  socklen_t length = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) != 0) return std::nullopt;
  return PeerCredentials{cred.pid, cred.uid, cred.gid};
}

bool send_with_fds(int socket, std::string_view bytes, const std::vector<int>& fds) {
  std::size_t sent = 0;
  bool fds_sent = fds.empty();
  while (sent < bytes.size()) {
    iovec io{const_cast<char*>(bytes.data() + sent), bytes.size() - sent};
    msghdr message{};
    message.msg_iov = &io;
    message.msg_iovlen = 1;
    std::vector<char> control;
    if (!fds_sent) {
      control.resize(CMSG_SPACE(sizeof(int) * fds.size()));
      message.msg_control = control.data();
      message.msg_controllen = control.size();
      cmsghdr* header = CMSG_FIRSTHDR(&message);
      header->cmsg_level = SOL_SOCKET;
      header->cmsg_type = SCM_RIGHTS;
      header->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(header), fds.data(), sizeof(int) * fds.size());
    }
    const ssize_t n = ::sendmsg(socket, &message, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    fds_sent = true;
    sent += static_cast<std::size_t>(n);
  }
  return true;
}

ssize_t receive_with_fds(int socket, std::string& out, std::vector<int>& fds) {
  char buffer[1 << 16];
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
  iovec io{buffer, sizeof buffer};
  msghdr message{};
  message.msg_iov = &io;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof control;
  ssize_t n;
  do n = ::recvmsg(socket, &message, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) return -1;
  for (cmsghdr* header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
    if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(header) + i * sizeof(int), sizeof fd);
      fds.push_back(fd);
    }
  }
  out.append(buffer, static_cast<std::size_t>(n));
  return n;
}

bool LineChannel::send(const json& message, const std::vector<int>& fds) {
  return send_with_fds(fd_.get(), encode_line(message), fds);
}

bool LineChannel::read_some(std::vector<int>* fds) {
  std::string bytes;
  std::vector<int> received;
  const ssize_t n = receive_with_fds(fd_.get(), bytes, received);
  if (fds) fds->insert(fds->end(), received.begin(), received.end());
  else for (int fd : received) ::close(fd);
  if (n < 0) {
    error_ = std::strerror(errno);
    return false;
  }
  if (n == 0) return false;
  buffer_.append(bytes);
  if (buffer_.overflowed()) {
    error_ = "a message longer than the protocol allows";
    return false;
  }
  return true;
}

std::optional<json> LineChannel::buffered() {
  while (auto line = buffer_.next_line()) {
    if (line->empty()) continue;
    json message = json::parse(*line, nullptr, /*allow_exceptions=*/false);
    if (message.is_discarded() || !message.is_object()) {
      error_ = "a message that is not a JSON object";
      return std::nullopt;
    }
    return message;
  }
  return std::nullopt;
}

std::optional<json> LineChannel::receive(std::vector<int>* fds) {
  for (;;) {
    if (auto message = buffered()) return message;
    if (!error_.empty()) return std::nullopt;
    if (!read_some(fds)) return std::nullopt;
  }
}

}  // namespace modevisor::control
