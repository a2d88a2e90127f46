// Exit statuses of `modevisor`, one table for the one-shot commands and the
// daemon's client.  The guest's own status (the debug-exit port's
// (v << 1) | 1) is always odd, so every outcome of the host is even: a
// status never means two things.
//
//   0    done (explain: a mode was selected; run: the VM stopped with no exit code)
//   odd  run: the guest's debug-exit status (v << 1) | 1
//   2    bad input (YAML, flags, profile, policy, kernel, snapshot file)
//   4    the monitor could not run the VM (plugin refused or failed, monitor process died)
//   6    the guest shut down (triple fault)
//   8    no monitor mode can run the VM on this host
//   10   the daemon cannot be reached, or spoke out of protocol
//   12   the daemon refused the request (no such VM, a VM of that name exists,
//        the VM's state does not allow it)
//   130  run: stopped by the operator (SIGINT, SIGTERM or SIGHUP)
#pragma once

namespace modevisor::host {

inline constexpr int kExitOk = 0;
inline constexpr int kExitBadInput = 2;
inline constexpr int kExitMonitorFailed = 4;
inline constexpr int kExitGuestShutdown = 6;
inline constexpr int kExitNoMode = 8;
inline constexpr int kExitDaemonUnreachable = 10;
inline constexpr int kExitRefused = 12;
inline constexpr int kExitInterrupted = 130;

// The table as `--help` and the README show it.
inline constexpr const char* kExitStatusTable =
    "Exit statuses (the guest's own status is always odd, the host's always even):\n"
    "  0    done (run: the VM stopped with no exit code)\n"
    "  odd  run: the guest's debug-exit status (v << 1) | 1\n"
    "  2    bad input (YAML, flags, profile, policy, kernel, snapshot)\n"
    "  4    the monitor could not run the VM (plugin refused or failed, monitor process died)\n"
    "  6    the guest shut down (triple fault)\n"
    "  8    no monitor mode can run the VM on this host\n"
    "  10   the daemon cannot be reached or spoke out of protocol\n"
    "  12   the daemon refused (no such VM, name in use, state does not allow it)\n"
    "  130  run: stopped by the operator (SIGINT, SIGTERM or SIGHUP)\n";

}  // namespace modevisor::host
