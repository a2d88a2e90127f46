// The control protocol: JSON messages, one per line ("JSON lines"), on a unix
// stream socket.  Used between the CLI and modevisord (control socket) and
// between modevisord and each VM's monitor process (a socketpair, or the
// monitor process's own socket when a restarted daemon reattaches).
//
//   request  {"id": N, "op": "vm.start", "args": {...}}
//   reply    {"id": N, "ok": true, "result": {...}}
//            {"id": N, "ok": false, "error": {"code": "no-such-vm", "message": "..."}}
//   event    {"event": "console", "vm": NAME, "data": BASE64}      (no id)
//
// Bytes that are data (console output and input) travel base64-encoded:
// guest output is never trusted to be text.  File descriptors ride along a
// message with SCM_RIGHTS (unix_socket.hpp), the monitor process's plugin
// image today, the authenticated migration connection later.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace modevisor::control {

using nlohmann::json;

inline constexpr int kProtocolVersion = 1;
// A line longer than this is a protocol error, not a memory exhaustion.
inline constexpr std::size_t kMaxLineBytes = 8u << 20;

// Error codes of a reply, each mapped to one CLI exit status (exit_status.hpp).
namespace error_code {
inline constexpr const char* kBadInput = "bad-input";            // 2
inline constexpr const char* kMonitorFailed = "monitor-failed";  // 4
inline constexpr const char* kNoMode = "no-mode";                // 8
inline constexpr const char* kProtocol = "protocol";             // 10
inline constexpr const char* kNoSuchVm = "no-such-vm";           // 12
inline constexpr const char* kExists = "exists";                 // 12
inline constexpr const char* kWrongState = "wrong-state";        // 12
inline constexpr const char* kUnsupported = "unsupported";       // 12
}  // namespace error_code

int exit_status_for(std::string_view code);

json request(std::uint64_t id, std::string_view op, json args = json::object());
json reply_ok(const json& id, json result = json::object());
json reply_error(const json& id, std::string_view code, std::string_view message);
json event(std::string_view name, json fields = json::object());

// One line of text, with invalid UTF-8 (it should never occur outside base64
// fields, but a log file is guest-influenced) replaced rather than thrown on.
std::string encode_line(const json& message);

std::string base64_encode(std::span<const std::uint8_t> bytes);
std::string base64_encode(std::string_view bytes);
std::optional<std::string> base64_decode(std::string_view text);

// A request's fields, checked before anything reads them: an object with
// "op" a non-empty string, "id" a number, a string or absent (null), and
// "args" an object or absent.  A peer is not trusted to send the types the
// protocol names (nlohmann's value() throws on a wrong one).
struct Request {
  json id;
  std::string op;
  json args = json::object();
};
std::optional<Request> parse_request(const json& message, std::string* why = nullptr);

// Splits a byte stream into lines.  A line beyond kMaxLineBytes is an error
// (overflowed() becomes true and the buffer is dropped).
class LineBuffer {
 public:
  void append(std::string_view bytes);
  std::optional<std::string> next_line();
  bool overflowed() const { return overflowed_; }

 private:
  std::string data_;
  std::size_t scanned_ = 0;
  bool overflowed_ = false;
};

}  // namespace modevisor::control
