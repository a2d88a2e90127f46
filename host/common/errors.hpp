// Errors about bad input: each names what was wrong and where.
#pragma once

#include <filesystem>
#include <stdexcept>
#include <string>

namespace modevisor::host {

// Bad input in a file: YAML, profile, policy.  what() is
// "FILE:LINE:COLUMN: MESSAGE" (line and column 1-based; omitted when unknown).
class InputError : public std::runtime_error {
 public:
  InputError(std::filesystem::path file, int line, int column, std::string message);
  const std::filesystem::path& file() const { return file_; }
  int line() const { return line_; }
  int column() const { return column_; }
  const std::string& message() const { return message_; }

 private:
  std::filesystem::path file_;
  int line_, column_;
  std::string message_;
};

}  // namespace modevisor::host
