#include "common/errors.hpp"

#include <fmt/format.h>

namespace modevisor::host {

static std::string format_location(const std::filesystem::path& file, int line, int column,
                                   const std::string& message) {
  if (line > 0 && column > 0) return fmt::format("{}:{}:{}: {}", file.string(), line, column, message);
  if (line > 0) return fmt::format("{}:{}: {}", file.string(), line, message);
  return fmt::format("{}: {}", file.string(), message);
}

InputError::InputError(std::filesystem::path file, int line, int column, std::string message)
    : std::runtime_error(format_location(file, line, column, message)),
      file_(std::move(file)),
      line_(line),
      column_(column),
      message_(std::move(message)) {}

}  // namespace modevisor::host
