#include "vm/console_log.hpp"

#include <fmt/format.h>

namespace modevisor::host {

ConsoleLog::ConsoleLog(std::shared_ptr<spdlog::logger> log, std::uint64_t limit)
    : log_(std::move(log)), limit_(limit) {}

std::string ConsoleLog::escape(std::string_view text) {
  static constexpr std::string_view kMarker = "MONITOR MODE";
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == '\\') {
      out += "\\\\";
    } else if (c == ' ' && i >= 7 && text.substr(i - 7, kMarker.size()) == kMarker) {
      out += "\\x20";
    } else if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else if (c == '\r') {
      out += "\\r";
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  return out;
}

void ConsoleLog::write(std::uint8_t byte) {
  if (capped_) return;
  if (++logged_ > limit_) {
    flush();
    capped_ = true;
    log_->warn("guest-console: the guest wrote more than {} bytes to its console; the rest is not logged", limit_);
    return;
  }
  if (byte == '\n') {  // CR LF ends a line like LF
    pending_cr_ = false;
    log_->info("{}{}", kTag, escape(line_));
    line_.clear();
    return;
  }
  if (pending_cr_) line_.push_back('\r');
  pending_cr_ = byte == '\r';
  if (!pending_cr_) line_.push_back(static_cast<char>(byte));
  if (line_.size() >= kMaxLine) flush();
}

void ConsoleLog::flush() {
  if (pending_cr_) line_.push_back('\r');
  pending_cr_ = false;
  if (!line_.empty()) log_->info("{}{}", kTag, escape(line_));
  line_.clear();
}

}  // namespace modevisor::host
