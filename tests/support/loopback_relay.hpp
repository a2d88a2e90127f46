// A loopback TCP relay in front of a host's port, for tests that must stand
// between two hosts (hold a stream, cut it at a chosen frame).  The base
// accepts, connects onward and runs each connection on its own thread; a
// derived relay decides what passes (`relay`) and whether a connection is
// let through at all (`admit`).  Derived constructors call start() last and
// derived destructors call stop() first, so no thread runs a half-built or
// half-destroyed relay.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

namespace modevisor::test_support {

class LoopbackRelay {
 public:
  explicit LoopbackRelay(int target_port) : target_(target_port) {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a = loopback(0);
    ::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    ::listen(listener_, 8);
  }
  virtual ~LoopbackRelay() { stop(); }
  LoopbackRelay(const LoopbackRelay&) = delete;
  LoopbackRelay& operator=(const LoopbackRelay&) = delete;

  int port() const { return port_; }
  int connections() const { return connections_; }

 protected:
  void start() {
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  void stop() {
    if (stopping_.exchange(true)) return;
    ::shutdown(listener_, SHUT_RDWR);
    ::close(listener_);
    if (acceptor_.joinable()) acceptor_.join();
    for (auto& t : pipes_) t.join();
  }
  bool stopping() const { return stopping_; }

  // False: the index-th connection (from 0) is closed at once.
  virtual bool admit(int /*index*/) { return true; }
  // Moves bytes between the source's connection and the target's until done
  // (the base closes both afterwards).
  virtual void relay(int from_source, int to_target, int index) = 0;

  static bool write_all(int fd, const void* data, std::size_t n) {
    const auto* p = static_cast<const std::uint8_t*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd, p, n);
      if (w <= 0) return false;
      p += w;
      n -= static_cast<std::size_t>(w);
    }
    return true;
  }

 private:
  static sockaddr_in loopback(int port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    return a;
  }
  void accept_loop() {
    for (;;) {
      const int in = ::accept(listener_, nullptr, nullptr);
      if (in < 0 || stopping_) return;
      const int index = connections_++;
      if (!admit(index)) {
        ::close(in);
        continue;
      }
      const int out = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a = loopback(target_);
      if (::connect(out, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(in);
        ::close(out);
        continue;
      }
      pipes_.emplace_back([this, in, out, index] {
        relay(in, out, index);
        ::close(in);
        ::close(out);
      });
    }
  }

  int target_;
  int listener_ = -1;
  int port_ = 0;
  std::thread acceptor_;
  std::vector<std::thread> pipes_;
  std::atomic<bool> stopping_{false};
  std::atomic<int> connections_{0};
};

}  // namespace modevisor::test_support
