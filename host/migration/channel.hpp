// A framed, checksummed message stream over a connected socket.
//
// Frame: magic u32 | type u16 | reserved u16 (0) | payload length u32 |
// XXH3-64 of the first 12 header bytes and the payload u64 | payload.
// The receiving side checks magic, type and the type's length limit before it
// allocates, and the checksum before it hands the payload on.  Every read and
// write has a deadline.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "migration/protocol.hpp"

namespace modevisor::host::migration {

struct Frame {
  MessageType type{};
  std::span<const std::uint8_t> payload;  // valid until the next receive()
};

class Channel {
 public:
  // Takes ownership of a connected stream socket.
  Channel(int fd, std::string peer, std::chrono::milliseconds io_timeout);
  ~Channel();
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  void send(MessageType type, std::span<const std::uint8_t> payload);
  void send(MessageType type, const std::string& payload);
  Frame receive();
  // Like receive(), but waits at most `timeout` for the frame to start.
  Frame receive(std::chrono::milliseconds timeout);

  // Sends Abandon with `reason`, ignoring any failure (the peer may be gone).
  void try_abandon(const std::string& reason) noexcept;
  // Both directions closed; the peer sees end of stream.
  void close() noexcept;

  const std::string& peer() const { return peer_; }
  std::uint64_t bytes_sent() const { return bytes_sent_; }
  std::uint64_t bytes_received() const { return bytes_received_; }
  void set_io_timeout(std::chrono::milliseconds t) { io_timeout_ = t; }

 private:
  void write_all(const std::uint8_t* data, std::size_t size, MessageType type);
  // Reads exactly `size` bytes; `what` names the piece for a truncation error.
  void read_all(std::uint8_t* data, std::size_t size, Clock::time_point deadline, const std::string& what);
  void wait(short events, Clock::time_point deadline, const std::string& what);

  int fd_;
  std::string peer_;
  std::chrono::milliseconds io_timeout_;
  std::vector<std::uint8_t> payload_;
  std::uint64_t bytes_sent_ = 0;
  std::uint64_t bytes_received_ = 0;
};

// TCP on an address:port; the listener is for the receiving daemon and tests.
class TcpListener {
 public:
  // "127.0.0.1:0" picks a free port (see port()).
  explicit TcpListener(const std::string& address);
  ~TcpListener();
  TcpListener(const TcpListener&) = delete;
  TcpListener& operator=(const TcpListener&) = delete;
  std::uint16_t port() const { return port_; }
  std::string address() const;
  // A connected socket and the peer's address:port; throws Timeout when none arrives in time.
  int accept(std::string& peer, std::chrono::milliseconds timeout);
  void close() noexcept;

 private:
  int fd_ = -1;
  std::string host_;
  std::uint16_t port_ = 0;
};

// Throws MigrationError(Transport) naming the address when it cannot connect.
int tcp_connect(const std::string& address, std::chrono::milliseconds timeout);
// "host:port" -> (host, port); throws MigrationError(Local) naming the text.
std::pair<std::string, std::uint16_t> split_address(const std::string& address);

}  // namespace modevisor::host::migration
