#include "daemon/vm_handle.hpp"

#include <seccomp.h>
#include <signal.h>
#include <sys/wait.h>

#include <cstring>
#include <filesystem>

#include <fmt/format.h>

namespace modevisor::daemon {

std::string describe_wait_status(int status) {
  if (WIFSIGNALED(status)) {
    const char* name = ::strsignal(WTERMSIG(status));
    return fmt::format("killed by signal {} ({}){}", WTERMSIG(status), name ? name : "?",
                       WCOREDUMP(status) ? ", core dumped" : "");
  }
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  return "ended";
}

std::string describe_wait_status(int status, const json& seccomp) {
  if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGSYS) return describe_wait_status(status);
  // A forbidden system call (host/vmm/confinement.hpp); the call is known
  // when the process's handler reported it before the filter killed it.
  if (!seccomp.is_object() || !seccomp.contains("syscall")) return "was killed by the seccomp filter (SIGSYS)";
  const int number = seccomp.value("syscall", -1);
  const auto arch = seccomp.value("arch", std::uint32_t{0});
  std::string name = "?";
  if (char* resolved = seccomp_syscall_resolve_num_arch(arch ? arch : SCMP_ARCH_NATIVE, number)) {
    name = resolved;
    std::free(resolved);
  }
  return fmt::format("was killed by the seccomp filter (SIGSYS, syscall {} {})", number, name);
}

VmHandle::VmHandle(Identity identity, pid_t pid, bool child, Changed changed)
    : identity_(std::move(identity)), pid_(pid), child_(child), changed_(std::move(changed)) {
  started_at_ = std::chrono::duration_cast<std::chrono::seconds>(
                    std::chrono::system_clock::now().time_since_epoch()).count();
}

void VmHandle::attach(std::shared_ptr<LineSocket> link) {
  link_ = std::move(link);
  std::weak_ptr<VmHandle> weak = weak_from_this();
  link_->start(
      [weak](const json& message) {
        if (auto self = weak.lock()) self->on_message(message);
      },
      [weak](const std::string& why) {
        if (auto self = weak.lock()) self->on_link_closed(why);
      });
}

void VmHandle::adopt(std::shared_ptr<LineSocket> link) {
  link_ = std::move(link);
  std::weak_ptr<VmHandle> weak = weak_from_this();
  link_->rebind(
      [weak](const json& message) {
        if (auto self = weak.lock()) self->on_message(message);
      },
      [weak](const std::string& why) {
        if (auto self = weak.lock()) self->on_link_closed(why);
      });
}

bool VmHandle::call(const std::string& op, json args, Reply reply, const std::vector<int>& fds) {
  if (!link_ || !link_->is_open()) {
    reply(control::reply_error(0, control::error_code::kWrongState,
                               fmt::format("VM {} is {}: its monitor process is gone", name(), state_)));
    return true;
  }
  const std::uint64_t id = next_id_++;
  pending_[id] = std::move(reply);
  if (fds.empty()) {
    link_->send(control::request(id, op, std::move(args)));
    return true;
  }
  if (link_->send_with_fds(control::request(id, op, std::move(args)), fds)) return true;
  pending_.erase(id);
  return false;
}

void VmHandle::send_console_input(const std::string& base64) {
  if (link_ && link_->is_open()) link_->send(control::request(0, "console-input", {{"data", base64}}));
}

std::uint64_t VmHandle::listen(Listener listener) {
  listeners_[next_listener_] = std::move(listener);
  return next_listener_++;
}

void VmHandle::unlisten(std::uint64_t id) { listeners_.erase(id); }

void VmHandle::on_end(std::function<void()> callback) {
  if (!active()) callback();
  else end_callbacks_.push_back(std::move(callback));
}

void VmHandle::set_state(const std::string& state, const std::string& reason) {
  state_ = state;
  reason_ = reason;
  const json event = control::event("state", {{"vm", name()}, {"state", state}, {"reason", reason}});
  for (auto& [id, listener] : std::map(listeners_)) listener(event);
  if (changed_) changed_(*this);
}

// A start's or restore's answer: running or paused.  An end (stopped,
// failed) is taken from the "ended" event or the exit status, which carry
// the reason; one that came before this answer stands (a VM that failed at
// once was left failed with no reason when the answer came second).
void VmHandle::take_started_state(const std::string& state) {
  if (active() && (state == "running" || state == "paused")) set_state(state);
}

void VmHandle::on_message(const json& message) {
  if (message.contains("id") && message.contains("ok")) {
    const auto id = message["id"].get<std::uint64_t>();
    auto it = pending_.find(id);
    if (it == pending_.end()) return;
    Reply reply = std::move(it->second);
    pending_.erase(it);
    reply(message);
    return;
  }
  const std::string kind = message.value("event", "");
  if (kind == "console") {
    const std::string data = message.value("data", "");
    if (auto bytes = control::base64_decode(data)) {
      console_ += *bytes;
      console_bytes_ += bytes->size();
      if (console_.size() > 2 * kConsoleKeep) console_.erase(0, console_.size() - kConsoleKeep);
    }
    const json event = control::event("console", {{"vm", name()}, {"data", data}});
    for (auto& [id, listener] : std::map(listeners_)) listener(event);
  } else if (kind == "migration") {
    // A migration's progress: to whoever listens (the client that asked for it).
    migration_ = message;
    migration_.erase("event");
    json event = message;
    event["vm"] = name();
    for (auto& [id, listener] : std::map(listeners_)) listener(event);
  } else if (kind == "seccomp") {
    // The filter is about to kill the process: which call it was.
    seccomp_ = message;
  } else if (kind == "fleet-fenced") {
    // The monitor process paused the VM itself: the fleet lease was not confirmed in time.
    set_state("paused", message.value("reason", "fleet fence"));
  } else if (kind == "mode-switch") {
    // The seed's BT32 -> hardware virtualization: the VM runs under another plugin now.
    if (message.contains("to")) {
      identity_.mode = message.value("to", identity_.mode);
      identity_.plugin = message.value("plugin", identity_.plugin);
      identity_.plugin_version = message.value("plugin_version", identity_.plugin_version);
      ++mode_switches_;
    }
    mode_switch_ = message;
    mode_switch_.erase("event");
    if (changed_) changed_(*this);
  } else if (kind == "state") {
    // Running and paused come from here; the end (stopped, failed) comes
    // with its result in "ended".
    const std::string state = message.value("state", state_);
    if ((state == "running" || state == "paused") && state != state_ && active()) set_state(state);
  } else if (kind == "ended") {
    result_ = message;
    result_.erase("event");
    if (message.contains("counters")) counters_ = message["counters"];
    const std::string result = message.value("result", "");
    std::string reason = result + ": " + message.value("reason", "");
    if (message.contains("exit_status")) reason += fmt::format(" (guest status {})", message["exit_status"].get<int>());
    end(result == "error" ? "failed" : "stopped", reason);
  }
}

void VmHandle::on_link_closed(const std::string& why) {
  link_closed_ = true;
  link_close_reason_ = why;
  // A child's exit status tells why its link closed (a seccomp kill, a
  // crash): requests still waiting for an answer, such as the start, get
  // that reason when SIGCHLD arrives, not a bare "went away".
  if (child_ && !wait_status_ && active()) return;
  fail_pending(wait_status_ ? "its monitor process " + describe_wait_status(*wait_status_, seccomp_)
                            : fmt::format("the monitor process went away ({})", why));
  if (!active()) return;
  end("failed", wait_status_ ? "its monitor process " + describe_wait_status(*wait_status_, seccomp_)
                             : fmt::format("lost: its monitor process {} went away without reporting an end ({})",
                                           pid_, why));
}

void VmHandle::fail_pending(const std::string& why) {
  for (auto& [id, reply] : std::exchange(pending_, {}))
    reply(control::reply_error(id, control::error_code::kMonitorFailed, fmt::format("VM {}: {}", name(), why)));
}

void VmHandle::child_exited(int wait_status) {
  wait_status_ = wait_status;
  if (!link_closed_ && link_) return;  // its last messages are still to be read; the link's end decides
  const std::string reason = "its monitor process " + describe_wait_status(wait_status, seccomp_);
  fail_pending(reason);
  if (!active()) return;
  end("failed", reason);
}

void VmHandle::mark_lost(const std::string& state, const std::string& reason, json result) {
  result_ = std::move(result);
  if (result_.contains("counters")) counters_ = result_["counters"];
  end(state, reason);
}

void VmHandle::end(const std::string& state, const std::string& reason) {
  final_uptime_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  if (reported_uptime_ > *final_uptime_) final_uptime_ = reported_uptime_;
  set_state(state, reason);
  listeners_.clear();
  for (auto& callback : std::exchange(end_callbacks_, {})) callback();
  if (link_) link_->close("the VM ended");
}

void VmHandle::update_status(const json& status) {
  if (status.contains("counters") && !status["counters"].empty()) counters_ = status["counters"];
  if (status.contains("uptime_s")) reported_uptime_ = status["uptime_s"].get<double>();
  if (status.contains("state") && active() && state_ != "starting") {
    // Running and paused only: an end (stopped, failed) is taken from the
    // "ended" event or the exit status, which carry the reason (a status
    // answered just before "ended" made the VM failed with no reason).
    const std::string reported = status["state"].get<std::string>();
    if (reported != state_ && (reported == "running" || reported == "paused")) state_ = reported;
  }
  migration_ = status.contains("migration") ? status["migration"] : json();
  if (status.contains("started_at")) started_at_ = status["started_at"].get<std::int64_t>();
  // A daemon reattached after a mode switch: the monitor process says which plugin runs the VM now.
  if (status.value("mode_switches", 0) > 0 && mode_switches_ == 0) {
    mode_switches_ = status["mode_switches"].get<unsigned>();
    identity_.mode = status.value("mode", identity_.mode);
    identity_.plugin = status.value("plugin", identity_.plugin);
    identity_.plugin_version = status.value("plugin_version", identity_.plugin_version);
  }
}

json VmHandle::summary() const {
  const double uptime = final_uptime_ ? *final_uptime_
                                      : std::max(reported_uptime_, std::chrono::duration<double>(
                                                                       std::chrono::steady_clock::now() - started_)
                                                                       .count());
  json out{{"name", name()},
           {"state", state_},
           {"mode", identity_.mode},
           {"plugin", identity_.plugin},
           {"plugin_version", identity_.plugin_version},
           {"vm_file", identity_.vm_file},
           {"pid", pid_},
           {"started_at", started_at_},
           {"uptime_s", uptime},
           {"console_bytes", console_bytes_},
           {"counters", counters_}};
  if (!reason_.empty()) out["reason"] = reason_;
  if (!mode_switch_.is_null()) {
    out["mode_switches"] = mode_switches_;
    out["mode_switch"] = mode_switch_;
  }
  if (!migration_.is_null() && active()) out["migration"] = migration_;
  if (!result_.empty()) out["result"] = result_;
  return out;
}

}  // namespace modevisor::daemon
