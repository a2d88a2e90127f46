// Real loopback TCP for the migration tests: a receiving "host" that serves
// every connection with a MigrationReceiver, and a proxy between the two
// hosts that cuts, truncates, corrupts or stalls the stream at a chosen frame.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "migration/channel.hpp"
#include "migration/receiver.hpp"

namespace modevisor::test {

using namespace modevisor::host::migration;

class ReceivingHost {
 public:
  ReceivingHost(DestinationHost& host, const ClusterSecret& secret, ReceiverOptions options = {})
      : listener_("127.0.0.1:0"), host_(host), secret_(secret), options_(std::move(options)) {
    thread_ = std::thread([this] { accept_loop(); });
  }
  ~ReceivingHost() { stop(); }

  std::string address() const { return listener_.address(); }
  ArrivalLedger& ledger() { return ledger_; }

  void stop() {
    if (stopping_.exchange(true)) return;
    thread_.join();
    for (auto& t : connections_) t.join();
    listener_.close();
  }
  std::vector<ReceiverResult>& results() { return results_; }
  std::size_t result_count() {
    std::lock_guard lock(mutex_);
    return results_.size();
  }
  // Waits until `n` connections have ended.
  bool wait_results(std::size_t n, std::chrono::milliseconds timeout) {
    auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      if (result_count() >= n) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }

 private:
  void accept_loop() {
    while (!stopping_) {
      std::string peer;
      int fd;
      try {
        fd = listener_.accept(peer, std::chrono::milliseconds(50));
      } catch (const MigrationError&) {
        continue;
      }
      connections_.emplace_back([this, fd, peer] {
        MigrationReceiver receiver(host_, ledger_, secret_, options_);
        ReceiverResult r = receiver.serve(fd, peer);
        std::lock_guard lock(mutex_);
        results_.push_back(std::move(r));
      });
    }
  }

  TcpListener listener_;
  DestinationHost& host_;
  const ClusterSecret& secret_;
  ReceiverOptions options_;
  ArrivalLedger ledger_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
  std::vector<std::thread> connections_;
  std::mutex mutex_;
  std::vector<ReceiverResult> results_;
};

enum class Direction { ToDestination, ToSource };
enum class Fault {
  CutBefore,          // both directions closed just before the frame
  CutAfter,           // the frame goes through, then both directions close
  Truncate,           // half of the frame goes through, then both close
  FlipBit,            // one payload bit flipped (the frame checksum catches it)
  FlipBitRechecksum,  // one payload bit flipped and the checksum recomputed (only the digest can catch it)
  Stall,              // nothing more is forwarded in that direction
};

struct FaultRule {
  Direction direction = Direction::ToDestination;
  MessageType type = MessageType::Hello;
  unsigned occurrence = 1;  // the n-th frame of that type
  Fault fault = Fault::CutBefore;
  std::size_t flip_offset = 0;  // payload byte for FlipBit*, counted from the end when nonzero
};

// Forwards every connection to `target`; the rule applies to the first connection only.
class FaultProxy {
 public:
  FaultProxy(std::string target, std::optional<FaultRule> rule)
      : listener_("127.0.0.1:0"), target_(std::move(target)), rule_(rule) {
    thread_ = std::thread([this] { accept_loop(); });
  }
  ~FaultProxy() {
    stopping_ = true;
    thread_.join();
    for (auto& t : pumps_) t.join();
    for (int fd : fds_) ::close(fd);
  }
  std::string address() const { return listener_.address(); }
  bool fired() const { return fired_; }

 private:
  void accept_loop() {
    unsigned index = 0;
    while (!stopping_) {
      std::string peer;
      int client;
      try {
        client = listener_.accept(peer, std::chrono::milliseconds(50));
      } catch (const MigrationError&) {
        continue;
      }
      int server = tcp_connect(target_, std::chrono::milliseconds(2000));
      int flags = ::fcntl(server, F_GETFL);
      ::fcntl(server, F_SETFL, flags & ~O_NONBLOCK);
      fds_.push_back(client);
      fds_.push_back(server);
      std::optional<FaultRule> rule = index++ == 0 ? rule_ : std::nullopt;
      pumps_.emplace_back([this, client, server, rule] { pump(client, server, Direction::ToDestination, rule); });
      pumps_.emplace_back([this, client, server, rule] { pump(server, client, Direction::ToSource, rule); });
    }
  }

  bool read_exact(int fd, std::uint8_t* p, std::size_t n) {
    std::size_t got = 0;
    while (got < n && !stopping_) {
      pollfd pfd{fd, POLLIN, 0};
      if (::poll(&pfd, 1, 50) <= 0) continue;
      ssize_t r = ::recv(fd, p + got, n - got, 0);
      if (r <= 0) return false;
      got += static_cast<std::size_t>(r);
    }
    return got == n;
  }
  static void write_all(int fd, const std::uint8_t* p, std::size_t n) {
    while (n > 0) {
      ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
      if (w <= 0) return;
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }
  void cut(int a, int b) {
    ::shutdown(a, SHUT_RDWR);
    ::shutdown(b, SHUT_RDWR);
  }

  void pump(int from, int to, Direction dir, std::optional<FaultRule> rule) {
    std::vector<std::uint8_t> frame;
    unsigned seen = 0;
    bool stalled = false;
    for (;;) {
      frame.resize(kFrameHeaderBytes);
      if (!read_exact(from, frame.data(), kFrameHeaderBytes)) break;
      std::uint32_t length;
      std::memcpy(&length, frame.data() + 8, 4);
      std::uint16_t type;
      std::memcpy(&type, frame.data() + 4, 2);
      if (length > (64u << 20)) break;
      frame.resize(kFrameHeaderBytes + length);
      if (length && !read_exact(from, frame.data() + kFrameHeaderBytes, length)) break;
      if (stalled) continue;
      if (rule && rule->direction == dir && static_cast<MessageType>(type) == rule->type &&
          ++seen == rule->occurrence) {
        fired_ = true;
        switch (rule->fault) {
          case Fault::CutBefore: cut(from, to); return;
          case Fault::CutAfter: write_all(to, frame.data(), frame.size()); cut(from, to); return;
          case Fault::Truncate: write_all(to, frame.data(), frame.size() / 2); cut(from, to); return;
          case Fault::Stall: stalled = true; continue;
          case Fault::FlipBit:
          case Fault::FlipBitRechecksum: {
            if (length == 0) break;
            std::size_t at = rule->flip_offset ? length - rule->flip_offset : length / 2;
            frame[kFrameHeaderBytes + at] ^= 0x10;
            if (rule->fault == Fault::FlipBitRechecksum) {
              XXH3_state_t s;
              XXH3_64bits_reset(&s);
              XXH3_64bits_update(&s, frame.data(), 12);
              XXH3_64bits_update(&s, frame.data() + kFrameHeaderBytes, length);
              std::uint64_t sum = XXH3_64bits_digest(&s);
              std::memcpy(frame.data() + 12, &sum, 8);
            }
            break;
          }
        }
      }
      write_all(to, frame.data(), frame.size());
    }
    cut(from, to);
  }

  TcpListener listener_;
  std::string target_;
  std::optional<FaultRule> rule_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> fired_{false};
  std::thread thread_;
  std::vector<std::thread> pumps_;
  std::vector<int> fds_;
};

}  // namespace modevisor::test
