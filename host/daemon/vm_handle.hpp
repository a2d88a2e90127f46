// The daemon's side of one VM: its monitor process (a child the daemon
// started, or one a restarted daemon reattached to), the link to it, what
// the daemon knows of the VM (state, mode, console so far, counters), and who
// waits on it (console attachments, a pending stop).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "daemon/line_socket.hpp"

namespace modevisor::daemon {

class VmHandle : public std::enable_shared_from_this<VmHandle> {
 public:
  using Reply = std::function<void(const json& reply)>;   // {"ok":..., "result"/"error"}
  using Listener = std::function<void(const json& event)>;
  using Changed = std::function<void(VmHandle&)>;

  struct Identity {
    std::string name, vm_file, plugin, plugin_version, mode;
    std::string socket, result_file, record_file;
  };

  VmHandle(Identity identity, pid_t pid, bool child, Changed changed);

  // Takes the link to the monitor process and starts reading it.
  void attach(std::shared_ptr<LineSocket> link);
  // Takes a link that is already being read (a restore's first phase).
  void adopt(std::shared_ptr<LineSocket> link);
  // A request to the monitor process; `reply` gets its answer or, if the
  // process goes away first, an error reply.
  // With `fds`: false (and `reply` dropped) when the link is busy writing; try again shortly.
  bool call(const std::string& op, json args, Reply reply, const std::vector<int>& fds = {});
  void send_console_input(const std::string& base64);
  // Where the reply to the start request (id 1, sent with the plugin image) goes.
  void expect_start(Reply reply) { pending_[1] = std::move(reply); }

  // The child exited (waitpid status).
  void child_exited(int wait_status);
  // Marks the VM ended without its process (a restarted daemon found it gone).
  void mark_lost(const std::string& state, const std::string& reason, json result = {});

  std::uint64_t listen(Listener listener);  // console and state events; the id unlistens
  void unlisten(std::uint64_t id);
  void on_end(std::function<void()> callback);  // once it is stopped or failed (now, if it is)

  const Identity& identity() const { return identity_; }
  const std::string& name() const { return identity_.name; }
  const std::string& state() const { return state_; }
  bool active() const { return state_ != "stopped" && state_ != "failed"; }
  bool is_child() const { return child_; }
  pid_t pid() const { return pid_; }
  const std::string& console() const { return console_; }
  std::uint64_t console_bytes() const { return console_bytes_; }
  const json& counters() const { return counters_; }
  const json& seccomp_violation() const { return seccomp_; }
  json summary() const;
  // Merges a status reply of the monitor process (uptime, counters).
  void update_status(const json& status);
  void set_state(const std::string& state, const std::string& reason = "");
  // The state a start or restore answered with, unless the VM has ended meanwhile.
  void take_started_state(const std::string& state);

 private:
  void on_message(const json& message);
  void on_link_closed(const std::string& why);
  void fail_pending(const std::string& why);
  void end(const std::string& state, const std::string& reason);

  Identity identity_;
  pid_t pid_;
  bool child_;
  Changed changed_;
  std::shared_ptr<LineSocket> link_;
  std::uint64_t next_id_ = 2;  // 1 is the start request
  std::map<std::uint64_t, Reply> pending_;
  std::map<std::uint64_t, Listener> listeners_;
  std::uint64_t next_listener_ = 1;
  std::vector<std::function<void()>> end_callbacks_;

  std::string state_ = "starting";
  std::string reason_;
  unsigned mode_switches_ = 0;  // BT32 -> hardware switches (the seed's), from the monitor process
  json mode_switch_;            // the last one: from, to, plugin, reason
  json result_;  // the ended event: result, reason, exit_status, counters
  std::optional<int> wait_status_;
  bool link_closed_ = false;
  std::string link_close_reason_;
  std::string console_;  // the last kConsoleKeep bytes
  std::uint64_t console_bytes_ = 0;
  json counters_ = json::object();
  std::int64_t started_at_ = 0;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  std::optional<double> final_uptime_;
  double reported_uptime_ = 0;
  json seccomp_;    // the forbidden call its process reported, if it did
  json migration_;  // the migration in flight, from the monitor process's status

 public:
  static constexpr std::size_t kConsoleKeep = 1 << 20;
};

// "killed by signal 9 (Killed)", "exited with status 3".
std::string describe_wait_status(int wait_status);
// The same, naming the forbidden system call when `seccomp` (its process's report) says which.
std::string describe_wait_status(int wait_status, const json& seccomp);

}  // namespace modevisor::daemon
