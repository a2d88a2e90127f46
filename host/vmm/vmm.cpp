#include "vmm/vmm.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <fstream>
#include <memory>
#include <mutex>
#include <thread>

#include <modevisor/api/hypervisor.hpp>

#include "common/errors.hpp"
#include "config/vm_config.hpp"
#include "control/protocol.hpp"
#include "control/unix_socket.hpp"
#include "snapshot/snapshot.hpp"
#include "vm/vm.hpp"
#include "plugins/registry.hpp"
#include "runtime/exit_status.hpp"
#include "runtime/host.hpp"
#include "selection/guest_os.hpp"

namespace modevisor::vmm {

namespace {

using control::json;
namespace code = control::error_code;

// COM1 output kept for a console that attaches later: the last MiB.
class ConsoleHistory {
 public:
  static constexpr std::size_t kKeep = 1 << 20;
  void append(std::uint8_t byte) {
    std::lock_guard lock(mutex_);
    bytes_.push_back(static_cast<char>(byte));
    ++total_;
    if (bytes_.size() > 2 * kKeep) bytes_.erase(0, bytes_.size() - kKeep);
  }
  std::string tail() const {
    std::lock_guard lock(mutex_);
    return bytes_.size() > kKeep ? bytes_.substr(bytes_.size() - kKeep) : bytes_;
  }
  std::uint64_t total() const {
    std::lock_guard lock(mutex_);
    return total_;
  }

 private:
  mutable std::mutex mutex_;
  std::string bytes_;
  std::uint64_t total_ = 0;
};

const char* result_kind(host::SessionResult::Kind kind) {
  switch (kind) {
    case host::SessionResult::Kind::GuestExit: return "guest-exit";
    case host::SessionResult::Kind::Shutdown: return "shutdown";
    case host::SessionResult::Kind::Stopped: return "stopped";
    default: return "error";
  }
}

constexpr int kConsoleTickMs = 20;

// A failure to start, with the reply's error code.
struct StartError {
  const char* code;
  std::string message;
};

class MonitorProcess {
 public:
  explicit MonitorProcess(int control_fd) : channel_(std::make_unique<control::LineChannel>(control::Fd(control_fd))) {}
  int run();

 private:
  bool load_snapshot(const json& args);
  bool power_on(const json& args, std::vector<int>& fds, const json& id);
  std::shared_ptr<const host::LoadedPlugin> load_plugin(const json& args, std::vector<int>& fds);
  host::VmEvents events();
  void handle(const json& message);
  bool send(const json& message);
  void drop_channel();
  void accept_daemon();
  void finish();
  json description() const;
  void flush_console();
  void flush_console_locked();
  std::mutex console_mutex_;
  std::string console_pending_;  // output not yet sent to the daemon
  json counters_json() const;

  std::mutex send_mutex_;                            // one writer at a time; guards channel_ replacement
  std::unique_ptr<control::LineChannel> channel_;    // the daemon, when one is attached
  control::Fd listener_;                             // for a restarted daemon
  control::Fd signals_;
  int wake_[2] = {-1, -1};                           // the VM thread says it ended

  host::VmConfig vm_;
  std::shared_ptr<const host::LoadedPlugin> plugin_;
  std::shared_ptr<spdlog::logger> log_;
  std::unique_ptr<host::Vm> session_;
  std::optional<host::LoadedSnapshot> snapshot_;  // between load-snapshot and restore
  std::thread vm_thread_;
  host::SessionResult result_;
  ConsoleHistory console_;
  std::atomic<bool> stopping_{false};
  std::string stop_reason_;
  std::chrono::steady_clock::time_point started_;
  std::int64_t started_unix_ = 0;
  std::filesystem::path socket_path_, result_file_;
  json start_args_;
};

void MonitorProcess::flush_console() {
  std::lock_guard lock(console_mutex_);
  flush_console_locked();
}

void MonitorProcess::flush_console_locked() {
  if (console_pending_.empty()) return;
  send(control::event("console", {{"data", control::base64_encode(console_pending_)}}));
  console_pending_.clear();
}

bool MonitorProcess::send(const json& message) {
  std::lock_guard lock(send_mutex_);
  if (!channel_) return false;
  return channel_->send(message);
}

void MonitorProcess::drop_channel() {
  std::lock_guard lock(send_mutex_);
  channel_.reset();
  if (log_) log_->warn("vmm| the daemon went away; the VM goes on and waits for it on {}", socket_path_.string());
}

void MonitorProcess::accept_daemon() {
  control::Fd connection(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!connection) return;
  const auto peer = control::peer_credentials(connection.get());
  if (!peer || peer->uid != ::geteuid()) return;  // only our own user's daemon
  std::lock_guard lock(send_mutex_);
  if (channel_) return;  // one daemon at a time
  channel_ = std::make_unique<control::LineChannel>(std::move(connection));
  if (log_) log_->info("vmm| a daemon reattached (pid {})", peer->pid);
}

json MonitorProcess::counters_json() const {
  json out = json::object();
  const api::Counters counters = session_ ? session_->counters() : result_.counters;
  for (const auto& [name, value] : counters) out[name] = value;
  return out;
}

json MonitorProcess::description() const {
  const auto uptime = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  return json{{"name", vm_.name},
              {"state", stopping_ && session_->state() != host::VmState::Stopped ? "stopping"
                                                                                    : host::to_string(session_->state())},
              {"pid", ::getpid()},
              {"vm_file", vm_.file.string()},
              {"plugin", plugin_ ? plugin_->descriptor.name : ""},
              {"plugin_version", plugin_ ? plugin_->descriptor.version : ""},
              {"mode", plugin_ ? plugin_->mode : ""},
              {"started_at", started_unix_},
              {"uptime_s", uptime},
              {"console_bytes", console_.total()},
              {"vcpus", vm_.vcpus},
              {"memory_bytes", vm_.memory_bytes},
              {"counters", counters_json()}};
}

host::VmEvents MonitorProcess::events() {
  host::VmEvents events;
  // Output goes to the daemon a line (or 4 KiB) at a time; a prompt with no
  // newline leaves with the main loop's next tick (kConsoleTick).
  events.console_output = [this](std::uint8_t byte) {
    console_.append(byte);
    std::lock_guard lock(console_mutex_);
    console_pending_.push_back(static_cast<char>(byte));
    if (byte == '\n' || console_pending_.size() >= 4096) flush_console_locked();
  };
  events.state_changed = [this](host::VmState state) {
    send(control::event("state", {{"state", host::to_string(state)}}));
  };
  return events;
}

// The plugin image the daemon vetted (SCM_RIGHTS), or a fresh copy of the file.
std::shared_ptr<const host::LoadedPlugin> MonitorProcess::load_plugin(const json& args, std::vector<int>& fds) {
  const std::filesystem::path plugin_file = args.at("plugin_file").get<std::string>();
  std::shared_ptr<const host::PluginImage> image;
  if (!fds.empty()) {
    image = host::PluginImage::adopt(fds.front(), plugin_file);
    fds.erase(fds.begin());
  } else {
    image = host::PluginImage::copy_of(plugin_file);
  }
  auto loaded = host::load_plugin_image(image, plugin_file, {});
  if (auto* why = std::get_if<std::string>(&loaded)) throw std::runtime_error("plugin " + plugin_file.string() + ": " + *why);
  auto plugin = std::get<std::shared_ptr<const host::LoadedPlugin>>(loaded);
  if (plugin->descriptor.name != args.at("plugin").get<std::string>())
    throw std::runtime_error(fmt::format("plugin file {} is now {}, not the {} the daemon selected", plugin_file.string(),
                                         plugin->descriptor.name, args.at("plugin").get<std::string>()));
  return plugin;
}

// Restore, phase 1: read the snapshot (RAM and all, once, here) and tell the
// daemon the VM's declaration, so it can select a mode for it.
bool MonitorProcess::load_snapshot(const json& args) {
  const json id = 1;
  try {
    snapshot_ = host::read_snapshot(args.at("file").get<std::string>());
  } catch (const std::exception& e) {
    send(control::reply_error(id, code::kBadInput, e.what()));
    return false;
  }
  send(control::reply_ok(id, {{"vm_yaml", snapshot_->state.vm_yaml},
                              {"vm_file", snapshot_->state.vm_file},
                              {"cpu_model", snapshot_->state.cpu_model}}));
  return true;
}

// Start (power-on from the declaration) or restore (phase 2: from the loaded snapshot, paused).
bool MonitorProcess::power_on(const json& args, std::vector<int>& fds, const json& id) {
  auto fail = [&](const char* error, const std::string& message) {
    if (log_) log_->error("power on failed: {}", message);
    send(control::reply_error(id, error, message));
    return false;
  };
  const bool restoring = snapshot_.has_value();
  try {
    start_args_ = args;
    socket_path_ = args.value("socket", "");
    result_file_ = args.value("result_file", "");
    const std::filesystem::path config_dir = args.at("config_dir").get<std::string>();
    const auto guest_os = host::GuestOsTable::load(config_dir / "guest-os.yaml");
    vm_ = restoring ? host::parse_vm_config(snapshot_->state.vm_yaml, snapshot_->state.vm_file, guest_os)
                    : host::load_vm_config(args.at("vm_file").get<std::string>(), guest_os);
    log_ = host::open_vm_log(args.at("log_dir").get<std::string>(), vm_.name, args.value("log_level", "info"),
                             args.value("host_config", ""));
    if (restoring)
      log_->info("restore: VM {} from {} (monitor process {})", vm_.name, args.value("snapshot_file", ""), ::getpid());
    else
      log_->info("power on: VM {} from {} (monitor process {})", vm_.name, vm_.file.string(), ::getpid());
    if (args.contains("host_line")) log_->info("{}", args["host_line"].get<std::string>());
    for (const auto& line : args.value("mode_lines", json::array())) log_->info("{}", line.get<std::string>());
    plugin_ = load_plugin(args, fds);
    if (restoring) {
      session_ = host::Vm::restore(vm_, snapshot_->state, std::move(snapshot_->ram), plugin_, log_, events());
      snapshot_.reset();
    } else {
      session_ = host::Vm::create(vm_, plugin_, log_, events());
    }
  } catch (const host::InputError& e) {
    return fail(code::kBadInput, e.what());
  } catch (const host::VmStateError& e) {
    return fail(code::kBadInput, e.what());
  } catch (const api::MonitorError& e) {
    return fail(code::kMonitorFailed, e.what());
  } catch (const api::HypervisorError& e) {
    return fail(code::kMonitorFailed, e.what());
  } catch (const std::exception& e) {
    return fail(code::kMonitorFailed, e.what());
  }

  started_ = std::chrono::steady_clock::now();
  started_unix_ = std::chrono::duration_cast<std::chrono::seconds>(
                      std::chrono::system_clock::now().time_since_epoch()).count();
  if (!socket_path_.empty()) {
    try {
      listener_ = control::listen_unix(socket_path_);
    } catch (const std::system_error& e) {
      log_->warn("vmm| no reattach socket ({}): a restarted daemon will not find this VM", e.what());
    }
  }
  if (!restoring) session_->start();  // a restored VM stays paused until resumed
  vm_thread_ = std::thread([this] {
    result_ = session_->wait();
    const char c = 'e';
    [[maybe_unused]] auto n = ::write(wake_[1], &c, 1);
  });
  send(control::reply_ok(id, description()));
  return true;
}

void MonitorProcess::handle(const json& message) {
  const json id = message.value("id", json());
  const std::string op = message.value("op", "");
  const json args = message.value("args", json::object());
  if (op == "stop") {
    stop_reason_ = args.value("reason", "stopped by the operator");
    stopping_ = true;
    session_->stop(stop_reason_);
    send(control::reply_ok(id));
  } else if (op == "console-input") {
    if (auto bytes = control::base64_decode(args.value("data", ""))) session_->console_input(*bytes);
    if (!id.is_null()) send(control::reply_ok(id));
  } else if (op == "status") {
    send(control::reply_ok(id, description()));
  } else if (op == "hello") {
    json out = description();
    out["console"] = control::base64_encode(console_.tail());
    send(control::reply_ok(id, out));
  } else if (op == "pause" || op == "resume" || op == "save") {
    try {
      if (op == "pause") session_->pause();
      if (op == "resume") session_->resume();
      if (op == "save") {
        const std::filesystem::path file = args.value("file", "");
        if (file.empty()) throw std::invalid_argument("save needs a file");
        host::write_snapshot(file, session_->save_state(), session_->ram());
        log_->info("save: VM {} saved to {}", vm_.name, file.string());
      }
      send(control::reply_ok(id, description()));
    } catch (const host::VmStateError& e) {
      send(control::reply_error(id, code::kWrongState, e.what()));
    } catch (const std::exception& e) {
      send(control::reply_error(id, code::kBadInput, e.what()));
    }
  } else {
    send(control::reply_error(id, code::kProtocol, "unknown operation '" + op + "'"));
  }
}

void MonitorProcess::finish() {
  vm_thread_.join();
  flush_console();
  const char* kind = result_kind(result_.kind);
  for (const auto& [name, value] : result_.counters) log_->info("counter {} = {}", name, value);
  json ended{{"result", kind}, {"reason", result_.reason}, {"counters", counters_json()}};
  if (result_.guest_status) ended["exit_status"] = *result_.guest_status;
  send(control::event("ended", ended));
  // For a daemon that was away when the VM ended.
  if (!result_file_.empty()) {
    std::ofstream out(result_file_);
    out << control::encode_line(ended);
  }
  if (!socket_path_.empty() && listener_) ::unlink(socket_path_.c_str());
}

int MonitorProcess::run() {
  ::signal(SIGPIPE, SIG_IGN);
  // SIGTERM/SIGINT/SIGHUP stop the VM cleanly; blocked before any thread
  // starts, so only the signalfd sees them.
  sigset_t signals;
  sigemptyset(&signals);
  for (int s : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&signals, s);
  ::sigprocmask(SIG_BLOCK, &signals, nullptr);
  signals_ = control::Fd(::signalfd(-1, &signals, SFD_CLOEXEC));
  if (::pipe2(wake_, O_CLOEXEC) != 0) return host::kExitMonitorFailed;

  std::vector<int> fds;
  auto first = channel_->receive(&fds);
  if (first && first->value("op", "") == "load-snapshot") {
    if (!load_snapshot(first->value("args", json::object()))) return host::kExitBadInput;
    first = channel_->receive(&fds);
    if (!first || first->value("op", "") != "restore") {
      for (int fd : fds) ::close(fd);
      return host::kExitOk;  // the daemon chose not to restore it (no mode, a name in use)
    }
  } else if (!first || first->value("op", "") != "start") {
    for (int fd : fds) ::close(fd);
    return host::kExitBadInput;
  }
  const bool started = power_on(first->value("args", json::object()), fds, first->value("id", json(1)));
  for (int fd : fds) ::close(fd);
  if (!started) return host::kExitMonitorFailed;

  for (;;) {
    pollfd polled[3] = {{wake_[0], POLLIN, 0}, {signals_.get(), POLLIN, 0}, {-1, POLLIN, 0}};
    const bool attached = channel_ != nullptr;
    polled[2].fd = attached ? channel_->fd() : listener_.get();
    flush_console();
    if (::poll(polled, 3, kConsoleTickMs) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (polled[0].revents & POLLIN) break;
    if (polled[1].revents & POLLIN) {
      signalfd_siginfo info{};
      if (::read(signals_.get(), &info, sizeof info) == sizeof info) {
        stopping_ = true;
        session_->stop(fmt::format("the monitor process got {}", ::strsignal(static_cast<int>(info.ssi_signo))));
      }
    }
    if (polled[2].revents & (POLLIN | POLLHUP | POLLERR)) {
      if (!attached) {
        accept_daemon();
        continue;
      }
      if (!channel_->read_some()) {
        drop_channel();
        continue;
      }
      while (auto message = channel_->buffered()) handle(*message);
      if (!channel_->error().empty()) drop_channel();
    }
  }
  finish();
  return host::kExitOk;
}

}  // namespace

int run_monitor_process(int control_fd) {
  MonitorProcess process(control_fd);
  return process.run();
}

}  // namespace modevisor::vmm
