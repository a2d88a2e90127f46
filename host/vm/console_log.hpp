// The guest's console text in the VM log: guest output is data, never log
// syntax.  Each line is tagged `guest-console| ` and escaped (a backslash and
// every byte outside printable ASCII as \xNN, a lone CR as \r), so a guest
// cannot end a log line or start a forged one; the host's own marker
// "MONITOR MODE" never appears in guest text (its space is written \x20), so
// `grep 'MONITOR MODE'` of a VM log finds only the host's lines.  Logging is
// capped: after `limit` bytes of guest output one line says logging stops,
// and the rest is not logged (the console capture and the terminal still
// get every byte).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <spdlog/logger.h>

namespace modevisor::host {

class ConsoleLog {
 public:
  static constexpr std::string_view kTag = "guest-console| ";
  static constexpr std::uint64_t kDefaultLimit = 1 << 20;

  ConsoleLog(std::shared_ptr<spdlog::logger> log, std::uint64_t limit = kDefaultLimit);
  ~ConsoleLog() { flush(); }
  ConsoleLog(const ConsoleLog&) = delete;
  ConsoleLog& operator=(const ConsoleLog&) = delete;

  // One byte of guest output; whole lines go to the log.
  void write(std::uint8_t byte);
  // The partial line so far, if any (at pause and power-off).
  void flush();

  // Guest text as it appears in the log (without the tag).
  static std::string escape(std::string_view guest_text);

 private:
  static constexpr std::size_t kMaxLine = 4096;
  std::shared_ptr<spdlog::logger> log_;
  std::uint64_t limit_;
  std::uint64_t logged_ = 0;
  bool capped_ = false;
  bool pending_cr_ = false;
  std::string line_;
};

}  // namespace modevisor::host
