#include "migration/channel.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "migration/byte_codec.hpp"

namespace modevisor::host::migration {
namespace {

using Kind = MigrationError::Kind;

std::string errno_text(int err) { return std::strerror(err); }

std::uint64_t frame_checksum(const std::uint8_t* header12, std::span<const std::uint8_t> payload) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  XXH3_64bits_update(&state, header12, 12);
  if (!payload.empty()) XXH3_64bits_update(&state, payload.data(), payload.size());
  return XXH3_64bits_digest(&state);
}

void store_le(std::uint8_t* p, std::uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
std::uint64_t load_le(const std::uint8_t* p, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= std::uint64_t{p[i]} << (8 * i);
  return v;
}

int remaining_ms(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(std::min<long long>(left, 1 << 30));
}

}  // namespace

Channel::Channel(int fd, std::string peer, std::chrono::milliseconds io_timeout)
    : fd_(fd), peer_(std::move(peer)), io_timeout_(io_timeout) {
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // fails harmlessly on unix sockets
  int flags = ::fcntl(fd_, F_GETFL);
  if (flags >= 0) ::fcntl(fd_, F_SETFL, flags | O_NONBLOCK);
}

Channel::~Channel() { close(); }

void Channel::close() noexcept {
  if (fd_ >= 0) {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    fd_ = -1;
  }
}

void Channel::wait(short events, Clock::time_point deadline, const std::string& what) {
  for (;;) {
    pollfd p{fd_, events, 0};
    int n = ::poll(&p, 1, remaining_ms(deadline));
    if (n > 0) return;
    if (n == 0)
      throw MigrationError(Kind::Timeout, "no progress from " + peer_ + " within " +
                                              std::to_string(io_timeout_.count()) + " ms while " + what);
    if (errno != EINTR) throw MigrationError(Kind::Transport, "poll on connection to " + peer_ + ": " + errno_text(errno));
  }
}

void Channel::write_all(const std::uint8_t* data, std::size_t size, MessageType type) {
  const auto deadline = Clock::now() + io_timeout_;
  while (size > 0) {
    if (fd_ < 0) throw MigrationError(Kind::Transport, "connection to " + peer_ + " is closed");
    ssize_t n = ::send(fd_, data, size, MSG_NOSIGNAL);
    if (n > 0) {
      data += n;
      size -= static_cast<std::size_t>(n);
      bytes_sent_ += static_cast<std::uint64_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      wait(POLLOUT, deadline, std::string("sending ") + to_string(type));
      continue;
    }
    throw MigrationError(Kind::Transport,
                         std::string("sending ") + to_string(type) + " to " + peer_ + ": " + errno_text(errno));
  }
}

void Channel::send(MessageType type, std::span<const std::uint8_t> payload) {
  if (payload.size() > max_payload(type))
    throw MigrationError(Kind::Local, std::string(to_string(type)) + " payload of " + std::to_string(payload.size()) +
                                          " bytes exceeds the protocol's limit of " +
                                          std::to_string(max_payload(type)));
  std::uint8_t header[kFrameHeaderBytes];
  store_le(header, kFrameMagic, 4);
  store_le(header + 4, static_cast<std::uint16_t>(type), 2);
  store_le(header + 6, 0, 2);
  store_le(header + 8, payload.size(), 4);
  store_le(header + 12, frame_checksum(header, payload), 8);
  write_all(header, sizeof header, type);
  if (!payload.empty()) write_all(payload.data(), payload.size(), type);
}

void Channel::send(MessageType type, const std::string& payload) {
  send(type, std::span(reinterpret_cast<const std::uint8_t*>(payload.data()), payload.size()));
}

void Channel::read_all(std::uint8_t* data, std::size_t size, Clock::time_point deadline, const std::string& what) {
  std::size_t got = 0;
  while (got < size) {
    if (fd_ < 0) throw MigrationError(Kind::Transport, "connection to " + peer_ + " is closed");
    ssize_t n = ::recv(fd_, data + got, size - got, 0);
    if (n > 0) {
      got += static_cast<std::size_t>(n);
      bytes_received_ += static_cast<std::uint64_t>(n);
      continue;
    }
    if (n == 0) {
      if (got == 0 && what == "frame header")
        throw MigrationError(Kind::Transport, peer_ + " closed the connection");
      throw MigrationError(Kind::Transport, "stream from " + peer_ + " truncated: " + what + " ended after " +
                                                std::to_string(got) + " of " + std::to_string(size) + " bytes");
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      wait(POLLIN, deadline, "receiving " + what);
      continue;
    }
    throw MigrationError(Kind::Transport, "receiving " + what + " from " + peer_ + ": " + errno_text(errno));
  }
}

Frame Channel::receive() { return receive(io_timeout_); }

Frame Channel::receive(std::chrono::milliseconds timeout) {
  std::uint8_t header[kFrameHeaderBytes];
  read_all(header, sizeof header, Clock::now() + timeout, "frame header");
  const auto magic = static_cast<std::uint32_t>(load_le(header, 4));
  if (magic != kFrameMagic)
    throw MigrationError(Kind::Protocol, "stream from " + peer_ + " is not a modevisor migration stream (magic " +
                                             std::to_string(magic) + ")");
  const auto raw_type = static_cast<std::uint16_t>(load_le(header + 4, 2));
  if (!is_known(raw_type))
    throw MigrationError(Kind::Protocol, "unknown message type " + std::to_string(raw_type) + " from " + peer_);
  if (load_le(header + 6, 2) != 0)
    throw MigrationError(Kind::Protocol, "reserved header bits set in a frame from " + peer_);
  const auto type = static_cast<MessageType>(raw_type);
  const auto length = static_cast<std::size_t>(load_le(header + 8, 4));
  if (length > max_payload(type))
    throw MigrationError(Kind::Protocol, std::string(to_string(type)) + " from " + peer_ + " declares " +
                                             std::to_string(length) + " bytes, more than its limit of " +
                                             std::to_string(max_payload(type)));
  payload_.resize(length);
  if (length) read_all(payload_.data(), length, Clock::now() + io_timeout_, std::string(to_string(type)) + " payload");
  const auto expected = load_le(header + 12, 8);
  if (frame_checksum(header, payload_) != expected)
    throw MigrationError(Kind::Protocol, std::string("checksum mismatch in a ") + to_string(type) + " frame of " +
                                             std::to_string(length) + " bytes from " + peer_);
  return Frame{type, std::span<const std::uint8_t>(payload_.data(), length)};
}

void Channel::try_abandon(const std::string& reason) noexcept {
  try {
    auto saved = io_timeout_;
    io_timeout_ = std::min(io_timeout_, std::chrono::milliseconds(2000));
    std::string text = reason.substr(0, kMaxReasonBytes / 2);
    send(MessageType::Abandon, text);
    io_timeout_ = saved;
  } catch (...) {
  }
}

std::pair<std::string, std::uint16_t> split_address(const std::string& address) {
  auto colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size())
    throw MigrationError(Kind::Local, "'" + address + "' is not an address:port");
  std::string host = address.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  unsigned long port = 0;
  try {
    std::size_t used = 0;
    port = std::stoul(address.substr(colon + 1), &used);
    if (used != address.size() - colon - 1 || port > 65535) throw std::out_of_range("port");
  } catch (const std::exception&) {
    throw MigrationError(Kind::Local, "'" + address + "': the port is not a number from 0 to 65535");
  }
  return {host, static_cast<std::uint16_t>(port)};
}

namespace {
struct AddrInfo {
  addrinfo* list = nullptr;
  ~AddrInfo() { if (list) ::freeaddrinfo(list); }
};
AddrInfo resolve(const std::string& host, std::uint16_t port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  AddrInfo out;
  int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &out.list);
  if (rc != 0) throw MigrationError(Kind::Transport, "cannot resolve '" + host + "': " + ::gai_strerror(rc));
  return out;
}
std::string describe(const sockaddr* sa) {
  char host[INET6_ADDRSTRLEN] = "?";
  std::uint16_t port = 0;
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    ::inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    port = ntohs(in->sin_port);
    return std::string(host) + ":" + std::to_string(port);
  }
  if (sa->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    port = ntohs(in6->sin6_port);
    return "[" + std::string(host) + "]:" + std::to_string(port);
  }
  return "local";
}
}  // namespace

int tcp_connect(const std::string& address, std::chrono::milliseconds timeout) {
  auto [host, port] = split_address(address);
  auto info = resolve(host, port, false);
  std::string last_error = "no address";
  for (auto* ai = info.list; ai; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) { last_error = errno_text(errno); continue; }
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) return fd;
    if (errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int n = ::poll(&p, 1, static_cast<int>(timeout.count()));
      int err = 0;
      socklen_t len = sizeof err;
      if (n == 1 && ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) return fd;
      last_error = n == 0 ? "timed out" : errno_text(err ? err : errno);
    } else {
      last_error = errno_text(errno);
    }
    ::close(fd);
  }
  throw MigrationError(Kind::Transport, "cannot connect to " + address + ": " + last_error);
}

TcpListener::TcpListener(const std::string& address) {
  auto [host, port] = split_address(address);
  host_ = host;
  auto info = resolve(host, port, true);
  std::string last_error = "no address";
  for (auto* ai = info.list; ai; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) { last_error = errno_text(errno); continue; }
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, 16) == 0) {
      sockaddr_storage bound{};
      socklen_t len = sizeof bound;
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
      port_ = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                          : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
      fd_ = fd;
      return;
    }
    last_error = errno_text(errno);
    ::close(fd);
  }
  throw MigrationError(Kind::Transport, "cannot listen on " + address + ": " + last_error);
}

TcpListener::~TcpListener() { close(); }

void TcpListener::close() noexcept {
  if (fd_ >= 0) {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    fd_ = -1;
  }
}

std::string TcpListener::address() const {
  return (host_.find(':') != std::string::npos ? "[" + host_ + "]" : host_) + ":" + std::to_string(port_);
}

int TcpListener::accept(std::string& peer, std::chrono::milliseconds timeout) {
  pollfd p{fd_, POLLIN, 0};
  int n;
  do {
    n = ::poll(&p, 1, static_cast<int>(timeout.count()));
  } while (n < 0 && errno == EINTR);
  if (n == 0) throw MigrationError(Kind::Timeout, "no migration connection within " + std::to_string(timeout.count()) + " ms");
  if (n < 0 || fd_ < 0) throw MigrationError(Kind::Transport, "listener closed");
  sockaddr_storage from{};
  socklen_t len = sizeof from;
  int fd = ::accept4(fd_, reinterpret_cast<sockaddr*>(&from), &len, SOCK_CLOEXEC);
  if (fd < 0) throw MigrationError(Kind::Transport, "accept: " + errno_text(errno));
  peer = describe(reinterpret_cast<sockaddr*>(&from));
  return fd;
}

}  // namespace modevisor::host::migration
