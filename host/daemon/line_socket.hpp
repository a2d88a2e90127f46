// One JSON-lines connection on the daemon's event loop (Boost.Asio): reads
// messages and hands them over, queues writes, reports its end once.
#pragma once

#include <utility>  // Boost 1.74's Asio uses std::exchange without it
#include <boost/asio.hpp>

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "control/protocol.hpp"

namespace modevisor::daemon {

using control::json;

class LineSocket : public std::enable_shared_from_this<LineSocket> {
 public:
  using Socket = boost::asio::local::stream_protocol::socket;
  using MessageHandler = std::function<void(const json&)>;
  using CloseHandler = std::function<void(const std::string& why)>;

  // A peer that lets this much output pile up (a console nobody reads) is dropped.
  static constexpr std::size_t kMaxQueuedBytes = 16u << 20;

  explicit LineSocket(Socket socket) : socket_(std::move(socket)) {}
  void start(MessageHandler on_message, CloseHandler on_close);
  // Hands the connection to new handlers (its reading goes on).
  void rebind(MessageHandler on_message, CloseHandler on_close) {
    on_message_ = std::move(on_message);
    on_close_ = std::move(on_close);
  }
  void send(const json& message);
  // Sends at once with descriptors attached (SCM_RIGHTS); only while no
  // queued write is in flight.  False if that is not the case or it fails.
  bool send_with_fds(const json& message, const std::vector<int>& fds);
  void close(const std::string& why);
  bool is_open() const { return !closed_; }
  int native_handle() { return socket_.native_handle(); }

 private:
  void read();
  void write();

  Socket socket_;
  MessageHandler on_message_;
  CloseHandler on_close_;
  control::LineBuffer lines_;
  std::array<char, 1 << 16> buffer_{};
  std::deque<std::string> queue_;
  std::size_t queued_bytes_ = 0;
  bool writing_ = false;
  bool closed_ = false;
};

}  // namespace modevisor::daemon
