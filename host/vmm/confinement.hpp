// Confinement of a monitor process (host/vmm/README.md has the allow list
// and why each entry is there).
//
// Once its VM is built (plugin loaded, guest RAM mapped, kernel loaded,
// reattach socket listening) and before guest code runs, the monitor process
// gives up what a running VM does not need:
//   - resource limits: no core files, a bounded descriptor table, an
//     address space sized from the VM's memory;
//   - no_new_privs; Landlock (where the kernel has it): no file opened for
//     reading by path any more (the cluster secret's file among them);
//   - a seccomp filter (libseccomp) on every thread: the
//     system calls of the allow list pass; any other one ends the process
//     with SIGSYS.  Its first step is a trap whose handler writes one line
//     (`{"event":"seccomp","syscall":N,"arch":A}`) to the daemon's link, so
//     the daemon can say which call it was; the handler then makes a call
//     the filter kills with SCMP_ACT_KILL_PROCESS (rt_sigaction on SIGSYS,
//     which also keeps the handler from being replaced).
// MODEVISOR_VMM_SECCOMP=off in the daemon's environment turns the filter
// and Landlock (not the limits) off, for debugging a plugin under strace or gdb.
#pragma once

#include <cstdint>
#include <string>

namespace modevisor::vmm {

// Closes every descriptor but 0, 1, 2 and `keep` (what posix_spawn let
// through from the daemon: nothing of its own should be here, this makes sure).
void close_inherited_descriptors(int keep);

struct ConfinementLimits {
  std::uint64_t address_space_bytes = 0;  // 0: unlimited
  std::uint64_t open_files = 1024;
};

// The limits for a VM of `memory_bytes` of guest RAM and `vcpus`, from the
// address space this process already maps.
ConfinementLimits limits_for_vm(std::uint64_t memory_bytes, unsigned vcpus);

// Whether MODEVISOR_VMM_SECCOMP asks for the filter (anything but "off"/"0").
bool seccomp_wanted();

// Applies the limits and installs the filter (unless turned off).  The
// handler reports to `report_fd` (see set_report_fd).  Throws
// std::runtime_error naming the step when the kernel refuses one.
// Returns a line for the VM log saying what was applied.
std::string confine(const ConfinementLimits& limits, int report_fd);

// Where a forbidden call is reported (the daemon's link changes when a restarted daemon reattaches).
void set_report_fd(int fd);

}  // namespace modevisor::vmm
