// `modevisor --socket PATH ...`: a thin client of modevisord.  Each command
// is one request on the control socket (control/protocol.hpp); `vm console`
// stays attached, with the terminal in raw mode, until Ctrl-] (or the VM ends).
#pragma once

#include <string>
#include <vector>

namespace modevisor::cli {

struct ClientRequest {
  std::string socket;
  bool json = false;
  std::vector<std::string> words;  // e.g. {"vm", "start", "/abs/vm.yaml"}
  bool follow = true;              // vm console: false with --no-follow
  // migrate NAME --to PEER
  std::string to;
  unsigned downtime_ms = 300;
  bool force_converge = false;
};

int run_client(const ClientRequest& request);

}  // namespace modevisor::cli
