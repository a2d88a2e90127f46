#include "vmm/vmm.hpp"
#include "vmm/confinement.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include <modevisor/api/hypervisor.hpp>

#include "kernel-driver/kvm_hypervisor.hpp"

#include "common/errors.hpp"
#include "migration/receiver.hpp"
#include "selection/mode_log.hpp"
#include "migration/sender.hpp"
#include "migration/vm_endpoints.hpp"
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
// The address-space limit of a process waiting for a VM from a peer (its size is not known yet).
constexpr std::uint64_t kLargestArrivingVm = 64ULL << 30;

// A failure to start, with the reply's error code.
struct StartError {
  const char* code;
  std::string message;
};

class MonitorProcess {
 public:
  explicit MonitorProcess(int control_fd) : channel_(std::make_unique<control::LineChannel>(control::Fd(control_fd))) {}
  int run();
  int serve_loop();

 private:
  bool load_snapshot(const json& args);
  bool migrate_in(const json& args, std::vector<int>& fds);
  int await_resolve_connection(const host::migration::ReceiverResult& result);
  void migrate_out(const json& id, const json& args, std::vector<int>& fds);
  void begin_serving();
  void open_reattach_socket();
  bool confine_now(const json& id, std::uint64_t memory_bytes, unsigned vcpus);
  std::string confinement_;  // what confine_now applied, for the VM's log
  void note_run_interval(host::VmState state);
  bool power_on(const json& args, std::vector<int>& fds, const json& id);
  std::shared_ptr<const host::LoadedPlugin> load_plugin(const json& args, std::vector<int>& fds);
  host::VmEvents events();
  // The seed's BT32 switch.  The daemon decides it with the start (the
  // selector is a pure function of what it knows); it is prepared here
  // before confinement (the plugin image and /dev/kvm cannot be opened
  // afterwards) and taken when the plugin hands the guest back.
  void prepare_mode_switch(const json& decision, std::vector<int>& fds);
  host::ModeChangeOutcome switch_mode(const std::string& guest_event);
  void decide_arrival_switch(const std::string& guest_event);
  std::shared_ptr<const host::LoadedPlugin> current_plugin() const;
  void handle(const json& message, std::vector<int>& fds);
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
  json mode_switch_;  // the daemon's decision: lines, reason, from, to, plugin
  std::shared_ptr<const host::LoadedPlugin> switch_plugin_;
  std::unique_ptr<api::Hypervisor> switch_hypervisor_;
  std::string switch_unprepared_;  // why the prepared switch cannot be taken
  std::string arrival_kvm_error_;  // an arrival's KVM device could not be opened before confinement
  // This host's plugins as candidates, taken before confinement (probing a
  // plugin may start a helper process, which the filter forbids).
  std::vector<host::PluginCandidate> arrival_candidates_;
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
  std::string vm_yaml_;  // the declaration as declared (what a migration carries)

  // Live migration.  The ledger lives as long as this process (and so the
  // VM that arrived through it): a committed migration is never forgotten
  // while its VM lives.
  std::unique_ptr<host::migration::ArrivalLedger> ledger_;
  std::unique_ptr<host::Host> host_;  // this host's runtime, for a VM arriving here
  std::thread migration_thread_;
  std::unique_ptr<host::migration::VmMigrationSource> migration_source_;
  std::unique_ptr<host::migration::MigrationSender> sender_;
  // A migration out whose outcome is unknown (or whose Go was not confirmed):
  // what `vm resolve` needs to ask the destination again.  Under migration_mutex_.
  struct MigrationInDoubt {
    host::migration::MigrationId id{};
    std::shared_ptr<host::migration::ClusterSecret> secret;
    host::migration::SenderOptions options;
  };
  std::optional<MigrationInDoubt> in_doubt_out_;
  void resolve_out(const json& id);
  std::atomic<bool> migrating_{false};
  mutable std::mutex migration_mutex_;
  json migration_status_;  // the migration in flight, for `vm status`
  std::filesystem::path run_log_;  // when this host ran the VM (one line per start and end)
  std::atomic<bool> run_open_{false};
  // An arriving VM prints from Go on, before the daemon has its handle: its
  // output waits until the migrate-in reply has gone out.
  std::atomic<bool> hold_console_{false};

  // Fleet fence (host/fleet/README.md): while the daemon keeps confirming its
  // etcd lease, the VM may run until `fence_until_`; past it (the daemon is
  // stopped or cut off from etcd) this process pauses the VM by itself.
  std::optional<std::chrono::steady_clock::time_point> fence_until_;
  bool fenced_ = false;
  void check_fence();
  // A VM in a fleet is fenced from its first instruction: the start carries the deadline.
  void fence_from(const json& args) {
    if (args.contains("fence_until_ns"))
      fence_until_ = std::chrono::steady_clock::time_point(std::chrono::nanoseconds(args.value("fence_until_ns", std::int64_t{0})));
  }
  bool daemon_can_take_output();
  // The destination's commit step in a fleet: ask the daemon to move the VM's
  // ownership record here; "" when it did, else why not.
  std::string claim_ownership(const host::migration::MigrationConfig& config, const std::string& migration_id);
};

// The key of one migration, derived by the daemon from the cluster secret
// (which never reaches this process) and the migration's id.
host::migration::ClusterSecret migration_key(const json& args) {
  std::vector<std::uint8_t> key(32);
  if (!host::migration::from_hex(args.value("migration_key", ""), key))
    throw std::invalid_argument("the daemon sent no migration key");
  return host::migration::ClusterSecret(std::move(key));
}

// The declaration as written (what a migration carries), read now: once
// confined, this process opens no file for reading.
std::string read_declaration(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return text;
}

// One line per transition, appended with one write: the run-interval log
// that proves two hosts never ran a VM at the same time.  CLOCK_MONOTONIC is
// system-wide, so two daemons on one machine compare directly.
void append_run_line(const std::filesystem::path& file, const std::string& what, const std::string& name) {
  if (file.empty()) return;
  const auto now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                       std::chrono::steady_clock::now().time_since_epoch()).count();
  const std::string line = fmt::format("{} {} {} {}\n", what, name, ::getpid(), now);
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return;
  [[maybe_unused]] auto n = ::write(fd, line.data(), line.size());
  ::close(fd);
}

void MonitorProcess::note_run_interval(host::VmState state) {
  const bool running = state == host::VmState::Running;
  if (run_open_.exchange(running) == running) return;
  append_run_line(run_log_, running ? "run" : "end", vm_.name);
}

void MonitorProcess::flush_console() {
  std::lock_guard lock(console_mutex_);
  flush_console_locked();
}

void MonitorProcess::flush_console_locked() {
  if (console_pending_.empty() || hold_console_) return;
  // A daemon that does not read (stopped, wedged) must not stall the vCPU
  // that prints, nor this process's loop (the fleet fence runs there): its
  // output waits here, the last kConsoleBacklog bytes of it (the console
  // history keeps the tail for a daemon that reattaches).
  if (!daemon_can_take_output()) {
    constexpr std::size_t kConsoleBacklog = 1 << 20;
    if (console_pending_.size() > kConsoleBacklog)
      console_pending_.erase(0, console_pending_.size() - kConsoleBacklog);
    return;
  }
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
  set_report_fd(-1);
  channel_.reset();
  if (log_) log_->warn("vmm| the daemon went away; the VM goes on and waits for it on {}", socket_path_.string());
}

bool MonitorProcess::daemon_can_take_output() {
  std::lock_guard lock(send_mutex_);
  if (!channel_) return true;  // send() drops it
  pollfd polled{channel_->fd(), POLLOUT, 0};
  return ::poll(&polled, 1, 0) == 1 && (polled.revents & POLLOUT);
}

void MonitorProcess::check_fence() {
  if (!fence_until_ || fenced_ || !session_ || std::chrono::steady_clock::now() < *fence_until_) return;
  if (session_->state() != host::VmState::Running || migrating_) return;
  fenced_ = true;
  const std::string why = "fleet: the daemon did not confirm this host's etcd lease in time (it may be stopped or cut off "
                          "from etcd): paused so that the VM cannot run on two hosts";
  try {
    session_->pause();
  } catch (const std::exception& e) {
    stopping_ = true;
    session_->stop(why + " (pause failed: " + e.what() + ")");
  }
  if (log_) log_->error("vmm| {}", why);
  send(control::event("fleet-fenced", {{"reason", why}}));
}

std::string MonitorProcess::claim_ownership(const host::migration::MigrationConfig& config, const std::string& migration_id) {
  if (!send(control::event("fleet-claim", {{"vm", config.vm_name}, {"source", config.source_host}, {"migration_id", migration_id}})))
    return "the daemon is not attached";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  for (;;) {
    while (auto message = channel_->buffered()) {
      if (message->value("op", "") != "fleet-claim-result") continue;
      const json result = message->value("args", json::object());
      if (result.value("ok", false)) {
        fence_from(result);  // the arriving VM runs only while this host's lease is confirmed
        return "";
      }
      const std::string reason = result.value("reason", "refused");
      return reason.empty() ? "refused" : reason;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return "the daemon did not answer the ownership claim in time";
    pollfd polled{channel_->fd(), POLLIN, 0};
    if (::poll(&polled, 1, static_cast<int>(left.count())) < 0 && errno != EINTR) return "poll failed";
    if ((polled.revents & (POLLIN | POLLHUP | POLLERR)) && !channel_->read_some(nullptr)) return "the daemon went away";
  }
}

void MonitorProcess::accept_daemon() {
  control::Fd connection(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!connection) return;
  const auto peer = control::peer_credentials(connection.get());
  if (!peer || peer->uid != ::geteuid()) return;  // only our own user's daemon
  std::lock_guard lock(send_mutex_);
  if (channel_) return;  // one daemon at a time
  channel_ = std::make_unique<control::LineChannel>(std::move(connection));
  set_report_fd(channel_->fd());
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
  json out{{"name", vm_.name},
              {"state", stopping_ && session_->state() != host::VmState::Stopped ? "stopping"
                                                                                    : host::to_string(session_->state())},
              {"pid", ::getpid()},
              {"vm_file", vm_.file.string()},
              {"plugin", current_plugin() ? current_plugin()->descriptor.name : ""},
              {"plugin_version", current_plugin() ? current_plugin()->descriptor.version : ""},
              {"mode", current_plugin() ? current_plugin()->mode : ""},
              {"mode_switches", session_ ? session_->mode_switches() : 0},
              {"started_at", started_unix_},
              {"uptime_s", uptime},
              {"console_bytes", console_.total()},
              {"vcpus", vm_.vcpus},
              {"memory_bytes", vm_.memory_bytes},
              {"counters", counters_json()}};
  std::lock_guard lock(migration_mutex_);
  if (!migration_status_.is_null()) out["migration"] = migration_status_;
  return out;
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
    note_run_interval(state);
    send(control::event("state", {{"state", host::to_string(state)}}));
  };
  if (!mode_switch_.is_null() || host_)  // decided by the daemon, or here for a VM that arrived
    events.mode_change = [this](const std::string& guest_event) { return switch_mode(guest_event); };
  return events;
}

std::shared_ptr<const host::LoadedPlugin> MonitorProcess::current_plugin() const {
  // A mode switch changes the session's plugin; plugin_ is the one it started under.
  return session_ ? std::shared_ptr<const host::LoadedPlugin>(std::shared_ptr<const void>{}, &session_->plugin())
                  : plugin_;
}

void MonitorProcess::prepare_mode_switch(const json& decision, std::vector<int>& fds) {
  mode_switch_ = decision;
  if (!decision.contains("plugin")) return;  // the VM will stop, with the decision's reason
  try {
    switch_plugin_ = load_plugin(decision, fds);
    if (switch_plugin_->descriptor.execution == api::Technique::Hardware)
      switch_hypervisor_ = kvm::KvmHypervisor::open();
  } catch (const std::exception& e) {
    switch_unprepared_ = std::string("the monitor process could not prepare the switch: ") + e.what();
    if (log_) log_->warn("mode switch: {}", switch_unprepared_);
  }
}

// A VM that arrived by migration: this process selects with its own runtime
// of this host (loaded before confinement, as /dev/kvm was opened).
void MonitorProcess::decide_arrival_switch(const std::string& guest_event) {
  const std::string current = current_plugin() ? current_plugin()->mode : "BT";
  host::ModeSwitchDecision decided = host::decide_mode_switch(*host_, arrival_candidates_, vm_, current, guest_event);
  mode_switch_ = json{{"from", decided.change.from}, {"reason", decided.reason}, {"lines", host::mode_switch_lines(decided.change)}};
  if (!decided.plugin) return;
  switch_plugin_ = std::move(decided.plugin);
  mode_switch_["to"] = *decided.change.to;
  mode_switch_["plugin"] = switch_plugin_->descriptor.name;
  if (switch_plugin_->descriptor.execution == api::Technique::Hardware && !switch_hypervisor_ &&
      switch_unprepared_.empty())
    switch_unprepared_ =
        arrival_kvm_error_.empty() ? "the monitor process has no KVM device open for the switch" : arrival_kvm_error_;
}

host::ModeChangeOutcome MonitorProcess::switch_mode(const std::string& guest_event) {
  if (mode_switch_.is_null() && host_) decide_arrival_switch(guest_event);
  host::ModeChangeOutcome out;
  log_->info("mode switch: {} ({}); the daemon's selection for the 64-bit guest:", guest_event,
             mode_switch_.value("from", "BT"));
  for (const auto& line : mode_switch_.value("lines", json::array())) log_->info("{}", line.get<std::string>());
  out.reason = mode_switch_.value("reason", "");
  if (!switch_unprepared_.empty()) out.reason = switch_unprepared_;
  else if (switch_plugin_) {
    out.plugin = switch_plugin_;
    out.hypervisor = std::move(switch_hypervisor_);
  }
  json event{{"from", mode_switch_.value("from", "")}, {"reason", out.reason}, {"guest_event", guest_event}};
  if (out.plugin) {
    event["to"] = mode_switch_.value("to", "");
    event["plugin"] = out.plugin->descriptor.name;
    event["plugin_version"] = out.plugin->descriptor.version;
  }
  send(control::event("mode-switch", event));
  return out;
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
    run_log_ = args.value("run_log", "");
    fence_from(args);
    const std::filesystem::path config_dir = args.at("config_dir").get<std::string>();
    const auto guest_os = host::GuestOsTable::load(config_dir / "guest-os.yaml");
    vm_ = restoring ? host::parse_vm_config(snapshot_->state.vm_yaml, snapshot_->state.vm_file, guest_os)
                    : host::load_vm_config(args.at("vm_file").get<std::string>(), guest_os);
    vm_yaml_ = restoring ? snapshot_->state.vm_yaml : read_declaration(vm_.file);
    log_ = host::open_vm_log(args.at("log_dir").get<std::string>(), vm_.name, args.value("log_level", "info"),
                             args.value("host_config", ""));
    if (restoring)
      log_->info("restore: VM {} from {} (monitor process {})", vm_.name, args.value("snapshot_file", ""), ::getpid());
    else
      log_->info("power on: VM {} from {} (monitor process {})", vm_.name, vm_.file.string(), ::getpid());
    if (args.contains("host_line")) log_->info("{}", args["host_line"].get<std::string>());
    for (const auto& line : args.value("mode_lines", json::array())) log_->info("{}", line.get<std::string>());
    plugin_ = load_plugin(args, fds);
    if (args.contains("mode_switch")) prepare_mode_switch(args["mode_switch"], fds);
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

  // The VM is built: its reattach socket opens, then the process gives up
  // what a running VM does not need, before any guest code runs.
  open_reattach_socket();
  if (!confine_now(id, vm_.memory_bytes, vm_.vcpus)) return false;
  if (!restoring) session_->start();  // a restored VM stays paused until resumed
  begin_serving();
  send(control::reply_ok(id, description()));
  return true;
}

// The VM exists (started, restored or arrived): the reattach socket and the thread that waits for its end.
void MonitorProcess::begin_serving() {
  started_ = std::chrono::steady_clock::now();
  started_unix_ = std::chrono::duration_cast<std::chrono::seconds>(
                      std::chrono::system_clock::now().time_since_epoch()).count();
  open_reattach_socket();
  vm_thread_ = std::thread([this] {
    result_ = session_->wait();
    const char c = 'e';
    [[maybe_unused]] auto n = ::write(wake_[1], &c, 1);
  });
}

// Before confinement: the filter allows no new unix socket.
void MonitorProcess::open_reattach_socket() {
  if (socket_path_.empty() || listener_) return;
  try {
    listener_ = control::listen_unix(socket_path_);
  } catch (const std::system_error& e) {
    if (log_) log_->warn("vmm| no reattach socket ({}): a restarted daemon will not find this VM", e.what());
  }
}

// Limits and the seccomp filter (confinement.hpp); a failure refuses the VM.
bool MonitorProcess::confine_now(const json& id, std::uint64_t memory_bytes, unsigned vcpus) {
  int report_fd = -1;
  {
    std::lock_guard lock(send_mutex_);
    if (channel_) report_fd = channel_->fd();
  }
  try {
    confinement_ = confine(limits_for_vm(memory_bytes, vcpus), report_fd);
    if (log_) log_->info("vmm| {}", confinement_);
    return true;
  } catch (const std::exception& e) {
    if (log_) log_->error("vmm| cannot confine the monitor process: {}", e.what());
    send(control::reply_error(id, code::kMonitorFailed, std::string("cannot confine the monitor process: ") + e.what()));
    return false;
  }
}

// A VM arriving from a peer: the daemon accepted the TCP connection and
// passed it here untouched; the receiver proves the cluster secret (and
// refuses a stranger) before anything about the VM moves.  The VM is
// restored under the mode this host's own selector picks, and runs here
// once the source lets go.
bool MonitorProcess::migrate_in(const json& args, std::vector<int>& fds) {
  namespace mig = host::migration;
  const json id = 1;
  if (fds.empty()) {
    send(control::reply_error(id, code::kProtocol, "migrate-in needs the connection as a descriptor"));
    return false;
  }
  const int connection = fds.front();
  fds.erase(fds.begin());
  const std::string peer = args.value("peer", "?");
  try {
    host::HostOptions options;
    options.config_dir = args.value("config_dir", "");
    options.host_config = args.value("host_config", "");
    options.log_dir = args.value("log_dir", "");
    options.log_level = args.value("log_level", "info");
    host_ = std::make_unique<host::Host>(options);
  } catch (const std::exception& e) {
    ::close(connection);
    send(control::reply_error(id, code::kBadInput, std::string("migration in: this host's runtime: ") + e.what()));
    return false;
  }
  const std::string log_dir = args.value("log_dir", "");
  const std::string log_level = args.value("log_level", "info");
  const std::string host_config = args.value("host_config", "");
  const std::filesystem::path vm_dir = args.value("vm_dir", "");
  std::set<std::string> taken;
  for (const auto& name : args.value("taken_names", json::array())) taken.insert(name.get<std::string>());
  run_log_ = args.value("run_log", "");

  mig::LocalHostView view = mig::local_host_view(*host_, args.value("host_name", "this host"));
  view.vm_log = [this, log_dir, log_level, host_config](const host::VmConfig& vm) {
    log_ = host::open_vm_log(log_dir, vm.name, log_level, host_config);
    // Confined before the VM's name (so its log) was known: say so there now.
    if (!confinement_.empty()) log_->info("vmm| {}", confinement_);
    return log_;
  };
  view.vm_events = [this](const host::VmConfig& vm) {
    vm_ = vm;
    return events();
  };

  // The daemon's names are taken: a VM of the same name running here is refused at Config.
  class NamedDestination final : public mig::DestinationHost {
   public:
    NamedDestination(mig::LocalHostView view, std::set<std::string> taken)
        : inner_(std::move(view)), taken_(std::move(taken)) {}
    mig::PlacementDecision place(const mig::MigrationConfig& config) override {
      if (taken_.count(config.vm_name)) {
        mig::PlacementDecision out;
        out.reasons.push_back("a VM named " + config.vm_name + " is already active on this host");
        return out;
      }
      return inner_.place(config);
    }
    std::unique_ptr<mig::ArrivedVm> restore(const mig::MigrationConfig& config, const mig::Placement& placement,
                                            std::span<const std::uint8_t> state,
                                            std::unique_ptr<host::GuestRam> ram) override {
      return inner_.restore(config, placement, state, std::move(ram));
    }

   private:
    mig::VmDestination inner_;
    std::set<std::string> taken_;
  } destination(std::move(view), std::move(taken));

  std::unique_ptr<mig::ClusterSecret> secret;
  try {
    secret = std::make_unique<mig::ClusterSecret>(migration_key(args));
  } catch (const std::exception& e) {
    ::close(connection);
    send(control::reply_error(id, code::kBadInput, e.what()));
    return false;
  }
  // Confined before anything of the peer's is read.  Its name is not known
  // yet: the reattach socket listens under a temporary name, renamed when
  // the VM has arrived (the filter allows no new unix socket).
  const std::filesystem::path incoming_socket =
      vm_dir.empty() ? std::filesystem::path() : vm_dir / fmt::format(".incoming-{}.sock", ::getpid());
  socket_path_ = incoming_socket;
  open_reattach_socket();
  // A VM arriving under BT32 may enter long mode here later: the KVM device
  // for that switch cannot be opened once confined.
  arrival_candidates_ = host_->candidates();
  if (api::can_use_hardware_execution(host_->capabilities())) {
    try {
      switch_hypervisor_ = kvm::KvmHypervisor::open();
    } catch (const std::exception& e) {
      arrival_kvm_error_ = std::string("the monitor process could not open KVM for a switch: ") + e.what();
    }
  }
  if (!confine_now(id, kLargestArrivingVm, host::migration::kMaxVcpus)) {
    ::close(connection);
    if (listener_) ::unlink(incoming_socket.c_str());
    return false;
  }
  ledger_ = std::make_unique<mig::ArrivalLedger>();
  hold_console_ = true;
  mig::ReceiverOptions options;
  options.log = host_->log();
  // A stop signal that arrived meanwhile (the daemon stops, and ends its
  // receiving monitor processes too) abandons the arrival at the commit
  // step: the source still owns the VM and resumes it.
  const bool fleet_claim = args.value("fleet_claim", false);
  options.before_commit = [this, fleet_claim](const mig::MigrationConfig& config,
                                              const std::string& migration_id) -> std::string {
    sigset_t pending;
    sigemptyset(&pending);
    if (::sigpending(&pending) == 0)
      for (int s : {SIGTERM, SIGINT, SIGHUP})
        if (sigismember(&pending, s)) return std::string("the destination's monitor process got ") + ::strsignal(s);
    return fleet_claim ? claim_ownership(config, migration_id) : std::string();
  };
  mig::MigrationReceiver receiver(destination, *ledger_, *secret, options);
  mig::ReceiverResult result = receiver.serve(connection, peer);
  // Committed, and the connection ended before Go: the source may not know
  // the outcome.  The VM stays paused here, recorded in this process's
  // ledger, and the daemon routes the source's next connection for this
  // migration (its Resolve) here, where the ledger answers "committed".
  while (result.end == mig::ReceiverStep::InDoubt) {
    const int next = await_resolve_connection(result);
    if (next < 0) break;  // the daemon went away or the process was told to stop: the VM is discarded
    mig::ReceiverResult resolved = receiver.serve(next, peer);
    if (log_)
      log_->info("migration in {}: the source's resolution connection ended {}{}", result.migration_id,
                 mig::to_string(resolved.end), resolved.reason.empty() ? "" : ": " + resolved.reason);
    if (resolved.end == mig::ReceiverStep::Running) {
      result.vm = std::move(resolved.vm);
      result.end = resolved.end;
      result.reason = "resolved: the source confirmed the commit and sent Go";
    } else {
      // Another connection (a stranger, a cut resolution) leaves it in doubt
      // as long as the ledger still holds it committed.
      const auto held = ledger_->in_doubt();
      if (std::find(held.begin(), held.end(), result.migration_id) == held.end()) {
        result.end = resolved.end;
        result.reason = resolved.reason;
      }
    }
  }
  json migration{{"migration_id", result.migration_id},
                 {"peer", result.peer},
                 {"end", mig::to_string(result.end)},
                 {"reason", result.reason},
                 {"rounds", result.rounds},
                 {"pages_received", result.pages_received},
                 {"bytes_received", result.bytes_received},
                 {"protocol_version", result.protocol_version}};
  if (result.config) migration["vm"] = result.config->vm_name;
  if (result.end != mig::ReceiverStep::Running) {
    if (listener_) ::unlink(incoming_socket.c_str());
    if (log_) log_->warn("migration in from {} ended {}: {}", peer, mig::to_string(result.end), result.reason);
    json error{{"code", code::kMonitorFailed},
               {"message", fmt::format("migration from {} {}: {}", peer, mig::to_string(result.end), result.reason)},
               {"migration", migration}};
    send(json{{"id", id}, {"ok", false}, {"error", error}});
    return false;
  }
  session_ = mig::take_vm(std::move(result.vm));
  vm_ = session_->config();
  vm_yaml_ = result.config->vm_yaml;
  plugin_ = host_->registry().share(session_->plugin().descriptor.name);
  socket_path_ = vm_dir.empty() ? std::filesystem::path() : vm_dir / (vm_.name + ".sock");
  if (listener_ && ::rename(incoming_socket.c_str(), socket_path_.c_str()) != 0) {
    log_->warn("vmm| no reattach socket (rename to {}: {}): a restarted daemon will not find this VM",
               socket_path_.string(), std::strerror(errno));
    ::unlink(incoming_socket.c_str());
    listener_ = control::Fd();
  }
  result_file_ = vm_dir.empty() ? std::filesystem::path() : vm_dir / (vm_.name + ".result.json");
  log_->info("migration in: VM {} runs here under {} ({}) in monitor process {}", vm_.name,
             result.placement ? result.placement->mode : "?", session_->plugin().descriptor.name, ::getpid());
  note_run_interval(session_->state());
  begin_serving();
  json out = description();
  out["mode"] = result.placement ? result.placement->mode : "";
  out["migration_in"] = migration;
  send(control::reply_ok(id, out));
  hold_console_ = false;
  flush_console();
  return true;
}

// In doubt after a commit: say so to the daemon (which routes the source's
// next connection for this migration here) and wait for that connection.
// -1 when the daemon's link ends or a stop signal comes: nobody will resolve
// it through this process, and the paused VM is discarded (the source, told
// "unknown" by whoever answers next, keeps its copy).
int MonitorProcess::await_resolve_connection(const host::migration::ReceiverResult& result) {
  if (log_)
    log_->warn("migration in {} from {} is in doubt ({}): the VM stays paused here until the source resolves it",
               result.migration_id, result.peer, result.reason);
  send(control::event("migration-in-doubt", {{"migration_id", result.migration_id},
                                             {"peer", result.peer},
                                             {"vm", result.config ? result.config->vm_name : ""},
                                             {"mode", result.placement ? result.placement->mode : ""},
                                             {"plugin", result.placement ? result.placement->plugin : ""},
                                             {"reason", result.reason}}));
  for (;;) {
    pollfd polled[2] = {{signals_.get(), POLLIN, 0}, {channel_ ? channel_->fd() : -1, POLLIN, 0}};
    if (auto message = channel_ ? channel_->buffered() : std::nullopt) {
      // (nothing buffered normally: the daemon sends only the connection)
      if (message->value("op", "") != "migrate-resolve") {
        send(control::reply_error(message->value("id", json()), code::kWrongState,
                                  "the arriving VM is in doubt: only the source's resolution is taken"));
      }
      continue;
    }
    if (::poll(polled, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (polled[0].revents & POLLIN) {
      if (log_) log_->warn("migration in {}: stopped while in doubt; the VM is discarded here", result.migration_id);
      return -1;
    }
    if (!(polled[1].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    std::vector<int> fds;
    if (!channel_->read_some(&fds)) {
      for (int fd : fds) ::close(fd);
      return -1;
    }
    int connection = -1;
    while (auto message = channel_->buffered()) {
      if (message->value("op", "") == "migrate-resolve" && !fds.empty() && connection < 0) {
        connection = fds.front();
        fds.erase(fds.begin());
      } else {
        send(control::reply_error(message->value("id", json()), code::kWrongState,
                                  "the arriving VM is in doubt: only the source's resolution is taken"));
      }
    }
    for (int fd : fds) ::close(fd);
    if (connection >= 0) return connection;
  }
}

// Source side: the daemon connected to the peer and passes the socket; the
// sender runs on its own thread (the VM and the daemon's requests go on),
// progress lines leave as events, the final record as the reply.
void MonitorProcess::migrate_out(const json& id, const json& args, std::vector<int>& fds) {
  namespace mig = host::migration;
  if (fds.empty()) {
    send(control::reply_error(id, code::kProtocol, "migrate-out needs the connection as a descriptor"));
    return;
  }
  const int connection = fds.front();
  fds.erase(fds.begin());
  if (migrating_.exchange(true)) {
    ::close(connection);
    send(control::reply_error(id, code::kWrongState, "VM " + vm_.name + " is already migrating"));
    return;
  }
  if (session_->state() != host::VmState::Running) {
    ::close(connection);
    migrating_ = false;
    send(control::reply_error(id, code::kWrongState,
                              fmt::format("VM {} is {}: only a running VM migrates", vm_.name,
                                          host::to_string(session_->state()))));
    return;
  }
  std::shared_ptr<mig::ClusterSecret> secret;
  std::optional<mig::MigrationId> migration_id;
  mig::MigrationConfig config;
  try {
    secret = std::make_shared<mig::ClusterSecret>(migration_key(args));
    mig::MigrationId chosen{};
    if (!mig::from_hex(args.value("migration_id", ""), chosen))
      throw std::invalid_argument("migrate-out: the daemon sent no migration id");
    migration_id = chosen;
    std::string yaml = vm_yaml_;
    if (yaml.empty()) {
      std::ifstream in(vm_.file, std::ios::binary);
      yaml.assign(std::istreambuf_iterator<char>(in), {});
      vm_yaml_ = yaml;
    }
    config = mig::describe_for_migration(*session_, yaml, args.value("host_name", ""));
    config.source_mode = plugin_ ? plugin_->mode : "";
    config.source_plugin = plugin_ ? plugin_->descriptor.name + " " + plugin_->descriptor.version : "";
  } catch (const std::exception& e) {
    ::close(connection);
    migrating_ = false;
    send(control::reply_error(id, code::kBadInput, e.what()));
    return;
  }
  if (migration_thread_.joinable()) migration_thread_.join();
  mig::SenderOptions options;
  options.destination = args.value("destination", "");
  options.downtime_limit = std::chrono::milliseconds(args.value("downtime_ms", 300));
  options.force_converge = args.value("force_converge", false);
  options.migration_id = migration_id;
  options.log = log_;
  const std::string destination = options.destination, peer = args.value("peer", destination);
  {
    std::lock_guard lock(migration_mutex_);
    migration_status_ = json{{"to", peer}, {"destination", destination}, {"step", "hello"}};
  }
  options.on_progress = [this](const mig::RoundProgress& progress) {
    json p = mig::to_json(progress);
    p["line"] = mig::progress_line(progress);
    {
      std::lock_guard lock(migration_mutex_);
      for (const auto& [key, value] : p.items()) migration_status_[key] = value;
      if (sender_) migration_status_["step"] = mig::to_string(sender_->step());
    }
    p["vm"] = vm_.name;
    send(control::event("migration", p));
  };
  log_->info("migration out: VM {} to {} ({})", vm_.name, peer, destination);
  migration_source_ = std::make_unique<mig::VmMigrationSource>(*session_);
  sender_ = std::make_unique<mig::MigrationSender>(*migration_source_, config, *secret, options);
  {
    std::lock_guard lock(migration_mutex_);
    migration_status_["migration_id"] = sender_->migration_id();
  }
  MigrationInDoubt in_doubt{*migration_id, secret, options};
  in_doubt.options.on_progress = nullptr;
  migration_thread_ = std::thread([this, id, connection, secret, peer, in_doubt] {
    const mig::MigrationReport report = sender_->run(connection);
    json record = mig::to_json(report);
    record["to"] = peer;
    record["summary"] = mig::summary(report);
    log_->info("migration out: {}", mig::summary(report));
    {
      std::lock_guard lock(migration_mutex_);
      migration_status_ = json();
      if (report.outcome == mig::Outcome::InDoubt || report.outcome == mig::Outcome::CommittedUnconfirmed)
        in_doubt_out_ = in_doubt;
    }
    migrating_ = false;
    send(control::reply_ok(id, record));
  });
}

// `vm resolve`: ask the destination of a migration in doubt again (a new
// connection, the same proof); its ledger decides: committed -> this copy is
// discarded and Go sent; not committed or unknown -> this copy runs again.
void MonitorProcess::resolve_out(const json& id) {
  namespace mig = host::migration;
  std::optional<MigrationInDoubt> in_doubt;
  {
    std::lock_guard lock(migration_mutex_);
    in_doubt = in_doubt_out_;
  }
  if (!in_doubt || !migration_source_) {
    send(control::reply_error(id, code::kWrongState, "VM " + vm_.name + " has no migration in doubt"));
    return;
  }
  if (migrating_.exchange(true)) {
    send(control::reply_error(id, code::kWrongState, "VM " + vm_.name + " is already migrating"));
    return;
  }
  if (migration_thread_.joinable()) migration_thread_.join();
  migration_thread_ = std::thread([this, id, in_doubt = *in_doubt] {
    log_->info("migration out: asking {} again how migration {} ended", in_doubt.options.destination,
               mig::to_hex(in_doubt.id));
    const mig::MigrationReport report =
        mig::resolve_in_doubt(*migration_source_, *in_doubt.secret, in_doubt.id, in_doubt.options);
    json record = mig::to_json(report);
    record["to"] = in_doubt.options.destination;
    record["summary"] = mig::summary(report);
    log_->info("migration out: resolved: {}", mig::summary(report));
    {
      std::lock_guard lock(migration_mutex_);
      if (report.outcome != mig::Outcome::InDoubt && report.outcome != mig::Outcome::CommittedUnconfirmed)
        in_doubt_out_.reset();
    }
    migrating_ = false;
    send(control::reply_ok(id, record));
  });
}

void MonitorProcess::handle(const json& message, std::vector<int>& fds) {
  std::string why;
  const auto request = control::parse_request(message, &why);
  if (!request) {
    send(control::reply_error(json(), code::kProtocol, why));
    return;
  }
  const json& id = request->id;
  const std::string& op = request->op;
  const json& args = request->args;
  if (op == "migrate-out") {
    migrate_out(id, args, fds);
  } else if (op == "migrate-resolve-out") {
    resolve_out(id);
  } else if (op == "fleet-fence") {
    fence_until_ = std::chrono::steady_clock::time_point(std::chrono::nanoseconds(args.value("until_ns", std::int64_t{0})));
    fenced_ = false;
    if (!id.is_null()) send(control::reply_ok(id));
  } else if (migrating_ && (op == "pause" || op == "resume" || op == "save")) {
    send(control::reply_error(id, code::kWrongState, "VM " + vm_.name + " is migrating; " + op + " waits until it ends"));
  } else if (op == "stop") {
    if (migrating_ && sender_) sender_->cancel("the VM is being stopped");
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
  if (migration_thread_.joinable()) migration_thread_.join();  // its record goes out before "ended"
  note_run_interval(host::VmState::Stopped);
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
  } else if (first && first->value("op", "") == "migrate-in") {
    const bool arrived = migrate_in(first->value("args", json::object()), fds);
    for (int fd : fds) ::close(fd);
    if (!arrived) return host::kExitOk;  // refused or abandoned: nothing ran here
    return serve_loop();
  } else if (!first || first->value("op", "") != "start") {
    for (int fd : fds) ::close(fd);
    return host::kExitBadInput;
  }
  const bool started = power_on(first->value("args", json::object()), fds, first->value("id", json(1)));
  for (int fd : fds) ::close(fd);
  if (!started) return host::kExitMonitorFailed;
  return serve_loop();
}

int MonitorProcess::serve_loop() {
  for (;;) {
    pollfd polled[3] = {{wake_[0], POLLIN, 0}, {signals_.get(), POLLIN, 0}, {-1, POLLIN, 0}};
    const bool attached = channel_ != nullptr;
    polled[2].fd = attached ? channel_->fd() : listener_.get();
    flush_console();
    check_fence();
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
      std::vector<int> received;
      if (!channel_->read_some(&received)) {
        for (int fd : received) ::close(fd);
        drop_channel();
        continue;
      }
      while (auto message = channel_->buffered()) {
        try {
          handle(*message, received);
        } catch (const std::exception& e) {  // an argument of the wrong type: that request fails, not the VM
          send(control::reply_error(json(), code::kProtocol, e.what()));
        }
      }
      for (int fd : received) ::close(fd);
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
