// A snapshot (file or stream) that cannot be read: the message names the file
// (or stream) and what is wrong with it.
#pragma once

#include <stdexcept>
#include <string>

namespace modevisor::host {

class SnapshotError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace modevisor::host
