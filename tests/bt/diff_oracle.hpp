// The oracle of the differential tests: what runs the 32-bit helper
// (native32_helper.c) whose results the translator must reproduce.
//   host CPU   the helper exec'd directly: only where this kernel runs 32-bit
//              user code (IA32 emulation; some hosts have none at all)
//   qemu-user  the same helper under QEMU's user-mode emulator qemu-i386
//              (Debian's qemu-user): works on any x86-64 host
// Chosen at run time: the host CPU when a probe run of the helper works, else
// qemu-user; MODEVISOR_DIFF_ORACLE=host-cpu|qemu-user forces one.  When no
// oracle can run, the choice carries the reasons and the tests fail with them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace bttest {

// One run of a program with `input` on its stdin; stdout collected.
struct ProcessRun {
  bool started = false;   // exec succeeded
  int exec_errno = 0;     // why exec failed, when !started
  int wait_status = 0;    // waitpid status
  std::vector<std::uint8_t> output;
  bool exited_ok() const;
  std::string describe_failure() const;  // "exec: Exec format error", "killed by signal 11", ...
};
ProcessRun run_process(const std::vector<std::string>& argv, const std::vector<std::uint8_t>& input);

enum class OracleKind { HostCpu, QemuUser };

struct Oracle {
  OracleKind kind = OracleKind::HostCpu;
  std::vector<std::string> launcher;  // prepended to the helper's path (empty for the host CPU)
  std::string description;            // for the test output
  // The host CPU computes the flags the manuals leave undefined the same way
  // for the helper as for the translated code (both run on it); QEMU has its
  // own rules for them, so with it only architecturally defined state compares.
  bool matches_host_undefined_flags = true;
};

struct OracleChoice {
  bool found = false;
  Oracle oracle;
  std::string error;  // why there is none (every reason found)
};

// What the environment says (empty `forced`: choose automatically).
struct OracleRequest {
  std::string forced;        // MODEVISOR_DIFF_ORACLE
  std::string helper;        // the 32-bit helper
  std::string qemu_i386;     // MODEVISOR_QEMU_I386, else found in PATH
};
OracleRequest oracle_request_from_environment(const std::string& helper);
OracleChoice choose_oracle(const OracleRequest& request);

// The choice for this process (probed once).
const OracleChoice& diff_oracle();

// The helper's input and output protocol (see native32_helper.c).
std::vector<std::uint8_t> helper_input(const std::vector<std::uint8_t>& code, const std::vector<std::uint8_t>& scratch);
inline constexpr std::uint32_t kHelperScratchSize = 0x4000;
inline constexpr std::size_t kHelperOutputSize = 36 + kHelperScratchSize;  // 8 registers, EFLAGS, scratch

}  // namespace bttest
