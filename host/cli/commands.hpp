// The CLI's commands.  Each returns the process exit status:
//   0  done (explain: a mode was selected)
//   2  bad input (YAML, flags, profile, policy)
//   3  no monitor mode can run the VM on this host
//   4  the monitor could not run the VM (plugin refused or failed)
// and for `run`, which returns what the guest wrote to the debug-exit port
// ((v << 1) | 1, always odd) when it ends that way:
//   0  the VM stopped without an exit code
//   6  the guest shut down (triple fault)
//   130 the operator interrupted it (Ctrl-C)
#pragma once

#include <string>

#include "cli/context.hpp"

namespace modevisor::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitBadInput = 2;
inline constexpr int kExitNoMode = 3;
inline constexpr int kExitMonitorFailed = 4;
inline constexpr int kExitGuestShutdown = 6;
inline constexpr int kExitInterrupted = 130;

int command_host(Context& context, bool json);
int command_plugins(Context& context, bool json);
int command_cpus(Context& context, bool json);
int command_explain(Context& context, const std::string& vm_file, bool json);
int command_run(Context& context, const std::string& vm_file, bool json, bool stats);

}  // namespace modevisor::cli
