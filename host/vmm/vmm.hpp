// The monitor process of one VM (`modevisor-vmm`): owns one VM and is driven
// by modevisord over a socketpair, so a crash, an abort or a wedged vCPU in a
// plugin takes down this VM only.  If the daemon goes away, the VM keeps
// running and the process waits on its own socket (mode 0600, in the
// daemon's state directory) for a restarted daemon to reattach.
//
// Requests (control/protocol.hpp framing), daemon -> monitor process:
//   start   {vm_file, config_dir, plugin, log_dir, log_level, mode_lines,
//            socket, result_file}   + the plugin's sealed image (SCM_RIGHTS)
//   stop    {reason}                 console-input {data: base64}
//   status  -> {state, uptime_s, console_bytes, counters}
//   hello   -> the VM's description and console so far (reattach)
//   pause, resume, save {file}, restore {file}: the VM lifecycle
// Events, monitor process -> daemon:
//   console {data}    state {state}    ended {result, reason, exit_status, counters}
//   migrate-out {destination, migration_id, migration_key, ...} + the connection (SCM_RIGHTS)
//   migrate-in  {migration_key, config_dir, ...} + the peer's connection, unread (first request)
// The migration key is derived by the daemon from the cluster secret, which
// this process never holds.  Once its VM is built the process is confined
// (confinement.hpp, README.md: limits, Landlock, the seccomp allow list).
#pragma once

namespace modevisor::vmm {

// Runs the monitor process on the daemon's end `control_fd`; returns the exit status.
int run_monitor_process(int control_fd);

}  // namespace modevisor::vmm
