#include "control/protocol.hpp"

#include <array>

#include "runtime/exit_status.hpp"

namespace modevisor::control {

int exit_status_for(std::string_view code) {
  if (code == error_code::kBadInput) return host::kExitBadInput;
  if (code == error_code::kMonitorFailed) return host::kExitMonitorFailed;
  if (code == error_code::kNoMode) return host::kExitNoMode;
  if (code == error_code::kProtocol) return host::kExitDaemonUnreachable;
  return host::kExitRefused;
}

json request(std::uint64_t id, std::string_view op, json args) {
  return json{{"id", id}, {"op", op}, {"args", std::move(args)}};
}

std::optional<Request> parse_request(const json& message, std::string* why) {
  auto refuse = [&](const char* reason) -> std::optional<Request> {
    if (why) *why = reason;
    return std::nullopt;
  };
  if (!message.is_object()) return refuse("a request is a JSON object");
  Request out;
  if (auto it = message.find("id"); it != message.end()) {
    if (!it->is_null() && !it->is_number() && !it->is_string()) return refuse("a request's id is a number or a string");
    out.id = *it;
  }
  auto op = message.find("op");
  if (op == message.end() || !op->is_string() || op->get_ref<const std::string&>().empty())
    return refuse("a request names its operation in \"op\" (a string)");
  out.op = op->get<std::string>();
  if (auto it = message.find("args"); it != message.end() && !it->is_null()) {
    if (!it->is_object()) return refuse("a request's args are a JSON object");
    out.args = *it;
  }
  return out;
}

json reply_ok(const json& id, json result) { return json{{"id", id}, {"ok", true}, {"result", std::move(result)}}; }

json reply_error(const json& id, std::string_view code, std::string_view message) {
  return json{{"id", id}, {"ok", false}, {"error", {{"code", code}, {"message", message}}}};
}

json event(std::string_view name, json fields) {
  fields["event"] = name;
  return fields;
}

std::string encode_line(const json& message) {
  return message.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

namespace {
constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}

std::string base64_encode(std::span<const std::uint8_t> bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const std::uint32_t v = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    for (int shift : {18, 12, 6, 0}) out.push_back(kAlphabet[(v >> shift) & 63]);
  }
  if (const std::size_t rest = bytes.size() - i; rest) {
    const std::uint32_t v = (bytes[i] << 16) | (rest == 2 ? bytes[i + 1] << 8 : 0);
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(rest == 2 ? kAlphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::string base64_encode(std::string_view bytes) {
  return base64_encode(std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
}

std::optional<std::string> base64_decode(std::string_view text) {
  static const auto table = [] {
    std::array<int, 256> t{};
    t.fill(-1);
    for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(kAlphabet[i])] = i;
    return t;
  }();
  if (text.size() % 4) return std::nullopt;
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = text[i + k];
      if (c == '=' && i + 4 == text.size() && k >= 2) {
        v[k] = 0;
        ++pad;
        continue;
      }
      if (pad) return std::nullopt;  // data after padding
      v[k] = table[static_cast<unsigned char>(c)];
      if (v[k] < 0) return std::nullopt;
    }
    const std::uint32_t n = (v[0] << 18) | (v[1] << 12) | (v[2] << 6) | v[3];
    out.push_back(static_cast<char>(n >> 16));
    if (pad < 2) out.push_back(static_cast<char>((n >> 8) & 0xff));
    if (pad < 1) out.push_back(static_cast<char>(n & 0xff));
  }
  return out;
}

void LineBuffer::append(std::string_view bytes) {
  if (overflowed_) return;
  data_.append(bytes);
}

std::optional<std::string> LineBuffer::next_line() {
  if (overflowed_) return std::nullopt;
  const auto newline = data_.find('\n', scanned_);
  if (newline == std::string::npos) {
    scanned_ = data_.size();
    if (data_.size() > kMaxLineBytes) {
      overflowed_ = true;
      data_.clear();
    }
    return std::nullopt;
  }
  std::string line = data_.substr(0, newline);
  data_.erase(0, newline + 1);
  scanned_ = 0;
  return line;
}

}  // namespace modevisor::control
