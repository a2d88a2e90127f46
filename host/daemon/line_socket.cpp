#include "daemon/line_socket.hpp"

#include "control/unix_socket.hpp"

namespace modevisor::daemon {

void LineSocket::start(MessageHandler on_message, CloseHandler on_close) {
  on_message_ = std::move(on_message);
  on_close_ = std::move(on_close);
  read();
}

void LineSocket::read() {
  socket_.async_read_some(boost::asio::buffer(buffer_), [self = shared_from_this()](auto ec, std::size_t n) {
    if (self->closed_) return;
    if (ec) {
      self->close(ec == boost::asio::error::eof ? "end of stream" : ec.message());
      return;
    }
    self->lines_.append(std::string_view(self->buffer_.data(), n));
    while (auto line = self->lines_.next_line()) {
      if (line->empty()) continue;
      json message = json::parse(*line, nullptr, /*allow_exceptions=*/false);
      if (message.is_discarded() || !message.is_object()) {
        self->close("a message that is not a JSON object");
        return;
      }
      // A handler may rebind the socket: keep the running one alive until it returns.
      const MessageHandler handler = self->on_message_;
      handler(message);
      if (self->closed_) return;
    }
    if (self->lines_.overflowed()) {
      self->close("a message longer than the protocol allows");
      return;
    }
    self->read();
  });
}

void LineSocket::send(const json& message) {
  if (closed_) return;
  queue_.push_back(control::encode_line(message));
  queued_bytes_ += queue_.back().size();
  if (queued_bytes_ > kMaxQueuedBytes) {
    close("the peer does not read what it is sent");
    return;
  }
  if (!writing_) write();
}

bool LineSocket::send_with_fds(const json& message, const std::vector<int>& fds) {
  if (closed_ || writing_ || !queue_.empty()) return false;
  // The socket is non-blocking under Asio; a short message on a fresh link fits its buffer.
  return control::send_with_fds(socket_.native_handle(), control::encode_line(message), fds);
}

void LineSocket::write() {
  writing_ = true;
  boost::asio::async_write(socket_, boost::asio::buffer(queue_.front()),
                           [self = shared_from_this()](auto ec, std::size_t) {
                             self->writing_ = false;
                             if (self->closed_) return;
                             if (ec) {
                               self->close(ec.message());
                               return;
                             }
                             self->queued_bytes_ -= self->queue_.front().size();
                             self->queue_.pop_front();
                             if (!self->queue_.empty()) self->write();
                           });
}

void LineSocket::close(const std::string& why) {
  if (closed_) return;
  closed_ = true;
  boost::system::error_code ignored;
  socket_.shutdown(Socket::shutdown_both, ignored);
  socket_.close(ignored);
  if (auto handler = std::move(on_close_)) handler(why);
  on_message_ = nullptr;
}

}  // namespace modevisor::daemon
