#include "daemon/daemon.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <fmt/format.h>

#include <fstream>
#include <sstream>

#include "common/errors.hpp"
#include "config/vm_config.hpp"
#include "control/unix_socket.hpp"
#include "runtime/describe.hpp"
#include "migration/auth.hpp"
#include "migration/channel.hpp"
#include "migration/protocol.hpp"
#include "migration/vm_endpoints.hpp"
#include "selection/mode_log.hpp"
#include "fleet/placement.hpp"

extern char** environ;

namespace modevisor::daemon {

namespace fs = std::filesystem;
namespace code = control::error_code;
using boost::asio::local::stream_protocol;

namespace {

constexpr auto kStatusInterval = std::chrono::seconds(2);
constexpr auto kStopGrace = std::chrono::seconds(15);  // then the monitor process is killed
constexpr std::size_t kLogTail = 1 << 20;

std::string read_tail(const fs::path& file, std::size_t limit) {
  std::ifstream in(file, std::ios::binary | std::ios::ate);
  if (!in) return {};
  const auto size = static_cast<std::size_t>(in.tellg());
  const std::size_t start = size > limit ? size - limit : 0;
  in.seekg(static_cast<std::streamoff>(start));
  std::string text(size - start, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  return text;
}

std::optional<json> read_json(const fs::path& file) {
  std::ifstream in(file);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  json value = json::parse(text.str(), nullptr, false);
  if (value.is_discarded() || !value.is_object()) return std::nullopt;
  return value;
}

// A name safe as a file name in the state directory.
bool safe_vm_name(const std::string& name) {
  return !name.empty() && name.size() < 100 && name.front() != '.' &&
         name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == std::string::npos;
}

}  // namespace

// One control connection.
class Daemon::Client : public std::enable_shared_from_this<Client> {
 public:
  explicit Client(std::shared_ptr<LineSocket> link) : link_(std::move(link)) {}
  LineSocket& link() { return *link_; }
  void reply(const json& message) { link_->send(message); }
  // A console attachment to unlisten when the client goes.
  void attach(std::weak_ptr<VmHandle> vm, std::uint64_t listener) { attachments_.push_back({std::move(vm), listener}); }
  void detach_all() {
    for (auto& [vm, id] : attachments_)
      if (auto locked = vm.lock()) locked->unlisten(id);
    attachments_.clear();
  }

 private:
  std::shared_ptr<LineSocket> link_;
  std::vector<std::pair<std::weak_ptr<VmHandle>, std::uint64_t>> attachments_;
};

Daemon::Daemon(host::Host& host, DaemonOptions options)
    : host_(host),
      options_(std::move(options)),
      vm_dir_(host.config().daemon.state_dir / "vms"),
      acceptor_(io_),
      signals_(io_, SIGTERM, SIGINT, SIGCHLD),
      status_timer_(io_),
      shutdown_timer_(io_) {
  host_.require_this_host();
  fs::create_directories(vm_dir_);
  fs::permissions(host.config().daemon.state_dir, fs::perms::owner_all, fs::perm_options::replace);
  fs::permissions(vm_dir_, fs::perms::owner_all, fs::perm_options::replace);
  signals_.add(SIGHUP);
  control::Fd listener = control::listen_unix(host.config().daemon.control_socket);
  acceptor_.assign(stream_protocol(), listener.release());
  if (const auto& listen = host.config().daemon.metrics_listen) metrics_ = std::make_unique<Metrics>(listen->text());
  run_log_ = host.config().daemon.state_dir / "run-intervals.log";
  if (const auto& listen = host.config().daemon.migration_listen) {
    const auto& d = host.config().daemon;
    if (d.migration_secret_file.empty())
      throw std::runtime_error(host.config().file.string() + ": migration.listen needs migration.secret_file (the cluster's secret)");
    host::migration::ClusterSecret::from_file(d.migration_secret_file);  // refused now, not at the first peer
    using boost::asio::ip::tcp;
    boost::system::error_code ec;
    tcp::resolver resolver(io_);
    const auto endpoints = resolver.resolve(listen->host, std::to_string(listen->port), ec);
    if (ec || endpoints.empty())
      throw std::runtime_error(fmt::format("{}: migration.listen {}: {}", host.config().file.string(), listen->text(),
                                           ec ? ec.message() : "no address"));
    migration_acceptor_ = std::make_unique<tcp::acceptor>(io_);
    const tcp::endpoint endpoint = *endpoints.begin();
    migration_acceptor_->open(endpoint.protocol());
    migration_acceptor_->set_option(tcp::acceptor::reuse_address(true));
    migration_acceptor_->bind(endpoint, ec);
    if (ec)
      throw std::runtime_error(fmt::format("{}: migration.listen {}: {}", host.config().file.string(), listen->text(),
                                           ec.message()));
    migration_acceptor_->listen();
  }
  for (const char* name : {"vms_started", "monitor_process_failures", "control_requests", "control_refused_peers",
                           "plugin_rescans"})
    counters_[name] = 0;
}

Daemon::~Daemon() = default;

int Daemon::run() {
  recover();
  fleet_start();
  accept();
  if (migration_acceptor_) {
    accept_migration();
    host_.log()->info("migration: listening on {}", host_.config().daemon.migration_listen->text());
  }
  signals_.async_wait([this](auto ec, int signal) {
    if (!ec) on_signal(signal);
  });
  poll_status();
  publish_metrics();
  host_.log()->info("modevisord {} listening on {} ({} plugins, {} VMs recovered)", MODEVISOR_VERSION,
                    host_.config().daemon.control_socket.string(), host_.registry().plugins().size(), vms_.size());
  if (options_.notify_systemd)
    sd_notifyf(0, "READY=1\nSTATUS=listening on %s\nMAINPID=%d", host_.config().daemon.control_socket.c_str(),
               static_cast<int>(::getpid()));
  io_.run();
  return exit_status_;
}

void Daemon::accept() {
  acceptor_.async_accept([this](auto ec, stream_protocol::socket socket) {
    if (ec) {
      if (ec != boost::asio::error::operation_aborted && !shutting_down_) accept();
      return;
    }
    // Only the daemon's own user may drive it (root may too).
    const auto peer = control::peer_credentials(socket.native_handle());
    if (!peer || (peer->uid != ::geteuid() && peer->uid != 0)) {
      ++counters_["control_refused_peers"];
      host_.log()->warn("control: refused a connection from uid {} (pid {}): only uid {} may use this socket",
                        peer ? static_cast<long>(peer->uid) : -1L, peer ? static_cast<long>(peer->pid) : -1L,
                        static_cast<long>(::geteuid()));
      auto link = std::make_shared<LineSocket>(std::move(socket));
      link->send(control::reply_error(nullptr, code::kProtocol, "permission denied: this control socket belongs to another user"));
      // Give the refusal a moment to leave, then close.
      auto timer = std::make_shared<boost::asio::steady_timer>(io_, std::chrono::milliseconds(100));
      timer->async_wait([link, timer](auto) { link->close("refused"); });
    } else {
      auto link = std::make_shared<LineSocket>(std::move(socket));
      auto client = std::make_shared<Client>(link);
      std::weak_ptr<Client> weak = client;
      link->start(
          [this, weak](const json& message) {
            if (auto c = weak.lock()) dispatch(message, c);
          },
          [client](const std::string&) mutable {
            client->detach_all();
            client.reset();  // the connection's end releases the client
          });
    }
    if (!shutting_down_) accept();
  });
}

std::shared_ptr<VmHandle> Daemon::find(const std::string& name) const {
  auto it = vms_.find(name);
  return it == vms_.end() ? nullptr : it->second;
}

json Daemon::host_json() const {
  json out = host::capabilities_json(host_.capabilities());
  const auto& d = host_.config().daemon;
  out["daemon"] = {{"version", MODEVISOR_VERSION},
                   {"pid", ::getpid()},
                   {"host_name", host_.config().name},
                   {"host_config", host_.config().file.string()},
                   {"control_socket", d.control_socket.string()},
                   {"state_dir", d.state_dir.string()},
                   {"log_dir", host_.config().log_dir.string()},
                   {"policy", host_.policy().name},
                   {"metrics_listen", d.metrics_listen ? d.metrics_listen->text() : ""},
                   {"migration_listen", d.migration_listen ? d.migration_listen->text() : ""},
                   {"peers", json::object()},
                   {"counters", counters_}};
  for (const auto& [name, address] : d.peers) out["daemon"]["peers"][name] = address.text();
  if (d.fleet) {
    out["daemon"]["fleet"] = {{"etcd", d.fleet->etcd},
                              {"prefix", d.fleet->prefix},
                              {"lease_ttl_s", d.fleet->lease_ttl.count()},
                              {"lease", fleet_ && fleet_->lease() ? fmt::format("{:x}", fleet_->lease()) : ""},
                              {"lease_valid", fleet_lease_valid_},
                              {"no_quorum", fleet_frozen_}};
  }
  return out;
}

void Daemon::dispatch(const json& message, const std::shared_ptr<Client>& client) {
  ++counters_["control_requests"];
  std::string why;
  const auto request = control::parse_request(message, &why);
  if (!request) {
    // Fields of the wrong type are a protocol error for this request, not the daemon's end.
    const auto it = message.find("id");
    const json id = it != message.end() && (it->is_number() || it->is_string()) ? *it : json();
    client->reply(control::reply_error(id, code::kProtocol, why));
    return;
  }
  const json& id = request->id;
  const std::string& op = request->op;
  const json& args = request->args;
  auto refuse = [&](const char* error, const std::string& text) { client->reply(control::reply_error(id, error, text)); };
  auto need_name = [&]() -> std::shared_ptr<VmHandle> {
    const std::string name = args.value("name", "");
    auto vm = find(name);
    if (!vm) refuse(code::kNoSuchVm, fmt::format("no VM named '{}' on this host", name));
    return vm;
  };
  if (shutting_down_ && op != "vm.list" && op != "vm.status" && op != "hello") {
    refuse(code::kWrongState, "modevisord is stopping");
    return;
  }
  try {
    if (op == "hello") {
      client->reply(control::reply_ok(id, {{"protocol", control::kProtocolVersion}, {"version", MODEVISOR_VERSION}}));
    } else if (op == "host") {
      client->reply(control::reply_ok(id, host_json()));
    } else if (op == "plugins") {
      client->reply(control::reply_ok(id, host::plugins_json(host_)));
    } else if (op == "plugins.rescan") {
      ++counters_["plugin_rescans"];
      host_.rescan_plugins();  // VMs hold their plugins in their own processes
      client->reply(control::reply_ok(id, host::plugins_json(host_)));
    } else if (op == "vm.start") {
      vm_start(id, args, client);
    } else if (op == "vm.list") {
      json list = json::array();
      for (const auto& [name, vm] : vms_) list.push_back(vm->summary());
      for (const auto& [name, arrival] : in_doubt_)
        if (!find(name)) list.push_back(arrival);
      client->reply(control::reply_ok(id, {{"vms", list}}));
    } else if (op == "vm.status" && in_doubt_.count(args.value("name", "")) && !find(args.value("name", ""))) {
      client->reply(control::reply_ok(id, in_doubt_.at(args.value("name", ""))));
    } else if (op == "vm.stop" && in_doubt_.count(args.value("name", "")) && !find(args.value("name", ""))) {
      // Its monitor process discards the paused copy and ends; the source,
      // asking later, hears "unknown" and keeps its own.
      json arrival = in_doubt_.at(args.value("name", ""));
      const pid_t pid = arrival.value("pid", 0);
      if (pid > 0) ::kill(pid, SIGTERM);
      host_.log()->warn("VM {}: the in-doubt arrival (migration {}) is discarded by the operator (vm stop)",
                        arrival.value("name", ""), arrival.value("migration_id", ""));
      in_doubt_.erase(args.value("name", ""));
      arrival["state"] = "stopped";
      arrival["reason"] = "an in-doubt arrival discarded by the operator (vm stop)";
      client->reply(control::reply_ok(id, arrival));
    } else if (op == "vm.status") {
      auto vm = need_name();
      if (!vm) return;
      if (!vm->active() || vm->state() == "starting") {
        client->reply(control::reply_ok(id, vm->summary()));
        return;
      }
      vm->call("status", {}, [vm, client, id](const json& reply) {
        if (reply.value("ok", false)) vm->update_status(reply["result"]);
        client->reply(control::reply_ok(id, vm->summary()));
      });
    } else if (op == "vm.log") {
      auto vm = need_name();
      if (!vm) return;
      client->reply(control::reply_ok(
          id, {{"name", vm->name()}, {"log", read_tail(host_.config().log_dir / (vm->name() + ".log"), kLogTail)}}));
    } else if (op == "vm.console") {
      auto vm = need_name();
      if (!vm) return;
      const bool follow = args.value("follow", true) && vm->active();
      client->reply(control::reply_ok(id, {{"name", vm->name()},
                                           {"state", vm->state()},
                                           {"attached", follow},
                                           {"console", control::base64_encode(vm->console())}}));
      if (follow) {
        std::weak_ptr<Client> weak = client;
        const auto listener = vm->listen([weak](const json& event) {
          if (auto c = weak.lock()) c->reply(event);
        });
        client->attach(vm, listener);
      }
    } else if (op == "console.input") {
      auto vm = find(args.value("name", ""));
      if (vm && vm->active()) vm->send_console_input(args.value("data", ""));
    } else if (op == "vm.stop") {
      auto vm = need_name();
      if (!vm) return;
      if (!vm->active()) {
        refuse(code::kWrongState, fmt::format("VM {} is already {}", vm->name(), vm->state()));
        return;
      }
      vm->on_end([vm, client, id] { client->reply(control::reply_ok(id, vm->summary())); });
      vm->call("stop", {{"reason", "stopped by the operator (vm stop)"}}, [](const json&) {});
      // A VM whose vCPU ignores the stop (a wedged plugin) is killed after a grace period.
      auto timer = std::make_shared<boost::asio::steady_timer>(io_, kStopGrace);
      std::weak_ptr<VmHandle> weak = vm;
      timer->async_wait([this, weak, timer](auto ec) {
        auto vm = weak.lock();
        if (ec || !vm || !vm->active()) return;
        host_.log()->warn("VM {}: did not stop within {} s; killing its monitor process {}", vm->name(),
                          kStopGrace.count(), vm->pid());
        ::kill(vm->pid(), SIGKILL);
      });
    } else if (op == "vm.resume" && fleet_) {
      // A VM paused by the fleet runs again only under a record this host holds now.
      const std::string name = args.value("name", "");
      if (!fleet_frozen_.empty()) return refuse(code::kWrongState, "fleet: " + fleet_frozen_);
      const std::string host = host_.config().name;
      const std::int64_t lease = fleet_->lease();
      std::weak_ptr<Client> weak = client;
      fleet_->submit([name, host, lease](fleet::EtcdClient&, fleet::Ownership& o) { return o.claim(name, host, lease).to_json(); },
                     [this, id, args, name, weak](const json& result) {
                       auto c = weak.lock();
                       if (!c) return;
                       const auto change = fleet::OwnershipChange::from_json(result);
                       if (result.contains("error") || !change.ok) {
                         c->reply(control::reply_error(id, code::kWrongState,
                                                       "fleet: VM " + name + " may not resume here: " +
                                                           (result.contains("error") ? result["error"].get<std::string>() : change.reason)));
                         return;
                       }
                       if (change.record) owned_revision_[name] = change.record->mod_revision;
                       forward(id, "resume", args, c);
                     });
    } else if (op == "vm.pause" || op == "vm.resume" || op == "vm.save") {
      forward(id, op.substr(3), args, client);
    } else if (op == "vm.restore") {
      vm_restore(id, args, client);
    } else if (op == "vm.migrate") {
      vm_migrate(id, args, client);
    } else if (op == "vm.resolve") {
      auto vm = need_name();
      if (!vm) return;
      if (!vm->active()) return refuse(code::kWrongState, fmt::format("VM {} is {}", vm->name(), vm->state()));
      if (!vm->call("migrate-resolve-out", json::object(), migration_answer(vm, id, client, 0)))
        return refuse(code::kMonitorFailed, "VM " + vm->name() + ": its monitor process link is busy; try again");
    } else {
      refuse(code::kProtocol, "unknown operation '" + op + "'");
    }
  } catch (const host::InputError& e) {
    refuse(code::kBadInput, e.what());
  } catch (const std::exception& e) {
    refuse(code::kMonitorFailed, e.what());
  }
}

void Daemon::forward(const json& id, const std::string& op, const json& args, const std::shared_ptr<Client>& client) {
  const std::string name = args.value("name", "");
  auto vm = find(name);
  if (!vm) {
    client->reply(control::reply_error(id, code::kNoSuchVm, fmt::format("no VM named '{}' on this host", name)));
    return;
  }
  if (!vm->active()) {
    client->reply(control::reply_error(id, code::kWrongState, fmt::format("VM {} is {}", name, vm->state())));
    return;
  }
  vm->call(op, args, [vm, client, id, op](const json& reply) {
    if (!reply.value("ok", false)) {
      client->reply(control::reply_error(id, reply["error"].value("code", code::kMonitorFailed),
                                         reply["error"].value("message", op + " failed")));
      return;
    }
    if (reply.contains("result") && reply["result"].is_object()) vm->update_status(reply["result"]);
    json result = vm->summary();
    if (reply.contains("result") && reply["result"].is_object())
      for (const auto& [key, value] : reply["result"].items())
        if (!result.contains(key)) result[key] = value;
    client->reply(control::reply_ok(id, result));
  });
}

Daemon::Spawned Daemon::spawn_monitor_process() {
  // The monitor process: its end of a socketpair becomes its fd 3; its own
  // session, so a terminal's Ctrl-C aimed at the daemon does not reach it.
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0)
    throw std::system_error(errno, std::generic_category(), "socketpair");
  control::Fd ours(pair[0]), theirs(pair[1]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, theirs.get(), 3);
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  for (int s : {SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGPIPE}) sigaddset(&defaults, s);
  posix_spawnattr_setsigmask(&attributes, &none);
  posix_spawnattr_setsigdefault(&attributes, &defaults);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  const std::string binary = options_.vmm_binary.string();
  char* argv[] = {const_cast<char*>(binary.c_str()), const_cast<char*>("--control-fd"), const_cast<char*>("3"), nullptr};
  pid_t pid = 0;
  const int spawned = ::posix_spawn(&pid, binary.c_str(), &actions, &attributes, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  if (spawned != 0)
    throw std::system_error(spawned, std::generic_category(), "cannot start the monitor process " + binary);
  ++counters_["monitor_processes_started"];
  return {pid, ours.release()};
}

VmHandle::Identity Daemon::identity_for(const host::VmConfig& vm, const host::LoadedPlugin& plugin,
                                        const host::Selection& selection) const {
  return {vm.name,
          vm.file.string(),
          plugin.descriptor.name,
          plugin.descriptor.version,
          selection.display(*selection.selected),
          (vm_dir_ / (vm.name + ".sock")).string(),
          (vm_dir_ / (vm.name + ".result.json")).string(),
          (vm_dir_ / (vm.name + ".json")).string()};
}

json Daemon::power_on_args(const host::VmConfig& vm, const host::LoadedPlugin& plugin,
                           const host::Selection& selection, const VmHandle::Identity& identity) const {
  json args{{"vm_file", vm.file.string()},
              {"config_dir", host_.config_dir().string()},
              {"host_config", host_.config().file.string()},
              {"plugin", plugin.descriptor.name},
              {"plugin_file", plugin.file.string()},
              {"log_dir", host_.config().log_dir.string()},
              {"log_level", host_.config().log_level},
              {"host_line", fmt::format("host: {}; policy {}", host_.capabilities().source, host_.policy().name)},
              {"mode_lines", host::monitor_mode_lines(selection)},
              {"socket", identity.socket},
              {"result_file", identity.result_file},
              {"run_log", run_log_.string()}};
  fleet_fence_args(args);
  return args;
}

std::shared_ptr<VmHandle> Daemon::make_handle(const VmHandle::Identity& identity, pid_t pid) {
  std::error_code ignored;
  fs::remove(identity.result_file, ignored);
  auto handle = std::make_shared<VmHandle>(identity, pid, /*child=*/true, [this](VmHandle& vm) { vm_changed(vm); });
  vms_[identity.name] = handle;
  ++counters_["vms_started"];
  if (auto it = unclaimed_exits_.find(pid); it != unclaimed_exits_.end()) {
    handle->child_exited(it->second);
    unclaimed_exits_.erase(it);
  }
  return handle;
}

namespace {

// Refusals shared by start and restore; true when the VM may be powered on.
json no_mode_error(const json& id, const host::VmConfig& vm, const host::Selection& selection) {
  return json{{"id", id},
              {"ok", false},
              {"error",
               {{"code", code::kNoMode},
                {"message", fmt::format("VM {}: no monitor mode can run it here: {}", vm.name, selection.none_reason)},
                {"selection", host::to_json(selection)}}}};
}

// The seed's BT32 switch for a VM that starts under BT: decided here with the
// start (the selector is a pure function of this host, its plugins, its
// policy and the VM) and prepared by the monitor process before it confines
// itself.  Adds "mode_switch" to the power-on arguments and the hardware
// plugin's image to `fds`; `keep` holds that plugin until the request is sent.
void add_mode_switch(const host::Host& host, const host::VmConfig& vm, const host::Selection& selection, json& args,
                     std::vector<int>& fds, std::shared_ptr<const host::LoadedPlugin>& keep) {
  if (!selection.selected || *selection.selected != "BT") return;
  host::ModeSwitchDecision decided =
      host::decide_mode_switch(host, host.candidates(), vm, "BT", "when the guest activates long mode");
  json decision{{"from", decided.change.from}, {"reason", decided.reason}, {"lines", host::mode_switch_lines(decided.change)}};
  if (decided.plugin) {
    keep = std::move(decided.plugin);
    decision["to"] = *decided.change.to;
    decision["plugin"] = keep->descriptor.name;
    decision["plugin_file"] = keep->file.string();
    fds.push_back(keep->image->fd());
  }
  args["mode_switch"] = std::move(decision);
}

}  // namespace

void Daemon::vm_start(const json& id, const json& args, const std::shared_ptr<Client>& client) {
  auto refuse = [&](const char* error, const std::string& text) { client->reply(control::reply_error(id, error, text)); };
  const host::VmConfig vm = host::load_vm_config(args.value("file", ""), host_.guest_os());
  if (!safe_vm_name(vm.name)) {
    refuse(code::kBadInput, fmt::format("{}: VM name '{}' cannot name its files (letters, digits, '.', '_', '-')",
                                        vm.file.string(), vm.name));
    return;
  }
  if (auto existing = find(vm.name); existing && existing->active()) {
    refuse(code::kExists, fmt::format("a VM named {} is already {} (monitor process {})", vm.name, existing->state(),
                                      existing->pid()));
    return;
  }
  // The kernel is loaded (and so checked) by the monitor process only: a
  // crafted kernel file must never run its loader inside the daemon.
  const host::Selection selection = host_.select(vm);
  if (!selection.selected || !selection.selected_plugin) {
    client->reply(no_mode_error(id, vm, selection));
    return;
  }
  if (!fleet_) return vm_start_owned(id, vm, selection, client);
  // In a fleet the VM is started only by the host that wrote its ownership record.
  if (!fleet_frozen_.empty()) return refuse(code::kWrongState, "fleet: " + fleet_frozen_);
  if (!fleet_lease_valid_ || fleet_->lease() == 0)
    return refuse(code::kWrongState, "fleet: this host holds no live etcd lease now; no VM starts here until it does");
  const std::string host = host_.config().name;
  const std::int64_t lease = fleet_->lease();
  std::weak_ptr<Client> weak = client;
  fleet_->submit([name = vm.name, host, lease](fleet::EtcdClient&, fleet::Ownership& o) { return o.claim(name, host, lease).to_json(); },
                 [this, id, vm, selection, weak](const json& result) {
                   auto c = weak.lock();
                   const auto change = fleet::OwnershipChange::from_json(result);
                   if (result.contains("error") || !change.ok) {
                     const std::string why = result.contains("error") ? result["error"].get<std::string>() : change.reason;
                     host_.log()->warn("VM {}: not started: fleet: {}", vm.name, why);
                     if (c) c->reply(control::reply_error(id, code::kExists, "fleet: " + why));
                     return;
                   }
                   owned_revision_[vm.name] = change.record ? change.record->mod_revision : 0;
                   host_.log()->info("VM {}: ownership record written (epoch {})", vm.name,
                                     change.record ? change.record->epoch : 0);
                   if (!c) return fleet_release(vm.name);
                   if (auto existing = find(vm.name); existing && existing->active())
                     return c->reply(control::reply_error(id, code::kExists, "a VM named " + vm.name + " is already " + existing->state()));
                   try {
                     vm_start_owned(id, vm, selection, c);
                   } catch (const std::exception& e) {
                     fleet_release(vm.name);
                     c->reply(control::reply_error(id, code::kMonitorFailed, e.what()));
                   }
                 });
}

void Daemon::vm_start_owned(const json& id, const host::VmConfig& vm, const host::Selection& selection,
                            const std::shared_ptr<Client>& client) {
  auto refuse = [&](const char* error, const std::string& text) { client->reply(control::reply_error(id, error, text)); };
  const auto plugin = host_.registry().share(selection.selected_plugin->descriptor.name);
  if (!plugin) {
    refuse(code::kMonitorFailed, "plugin " + selection.selected_plugin->descriptor.name + " vanished");
    return;
  }
  const Spawned process = spawn_monitor_process();
  control::Fd ours(process.fd);
  const auto identity = identity_for(vm, *plugin, selection);
  // The start request carries the plugin's sealed image: the monitor process
  // runs exactly the code this daemon vetted, whatever happens to the file.
  json start_args = power_on_args(vm, *plugin, selection, identity);
  std::vector<int> fds{plugin->image->fd()};
  std::shared_ptr<const host::LoadedPlugin> switch_plugin;
  add_mode_switch(host_, vm, selection, start_args, fds, switch_plugin);
  control::send_with_fds(ours.get(), control::encode_line(control::request(1, "start", start_args)), fds);
  auto handle = make_handle(identity, process.pid);
  host_.log()->info("VM {}: starting under {} ({}) in monitor process {}", vm.name, identity.mode, identity.plugin,
                    process.pid);
  handle->expect_start([this, handle, client, id](const json& reply) {
    if (!reply.value("ok", false)) {
      const json error = reply.value("error", json::object());
      handle->mark_lost("failed", error.value("message", "the monitor process failed to start the VM"));
      client->reply(control::reply_error(id, error.value("code", code::kMonitorFailed),
                                         error.value("message", "the monitor process failed to start the VM")));
      return;
    }
    handle->update_status(reply["result"]);
    handle->take_started_state(reply["result"].value("state", "running"));
    write_record(*handle);
    client->reply(control::reply_ok(id, handle->summary()));
  });
  handle->attach(std::make_shared<LineSocket>(stream_protocol::socket(io_, stream_protocol(), ours.release())));
}

// Restore in two steps: the monitor process reads the snapshot (its RAM is
// read once, there) and reports the VM's declaration; the daemon selects a
// mode for it on this host (not necessarily the one that saved it) and sends
// the plugin; the VM comes back paused.
void Daemon::vm_restore(const json& id, const json& args, const std::shared_ptr<Client>& client) {
  const std::string file = args.value("file", "");
  const Spawned process = spawn_monitor_process();
  control::send_with_fds(process.fd, control::encode_line(control::request(1, "load-snapshot", {{"file", file}})));
  auto link = std::make_shared<LineSocket>(stream_protocol::socket(io_, stream_protocol(), process.fd));
  const pid_t pid = process.pid;
  std::weak_ptr<LineSocket> weak_link = link;
  link->start(
      [this, weak_link, client, id, pid, file](const json& reply) {
        auto link = weak_link.lock();
        if (!link || reply.value("id", json()) != 1) return;
        auto refuse = [&](const char* error, const std::string& text) {
          client->reply(control::reply_error(id, error, text));
          link->close("restore refused");  // the monitor process ends
        };
        if (!reply.value("ok", false)) {
          const json error = reply.value("error", json::object());
          refuse(code::kBadInput, error.value("message", "cannot read snapshot " + file));
          return;
        }
        try {
          const auto& loaded = reply["result"];
          const host::VmConfig vm = host::parse_vm_config(loaded.value("vm_yaml", ""), loaded.value("vm_file", ""),
                                                          host_.guest_os());
          if (!safe_vm_name(vm.name)) return refuse(code::kBadInput, "VM name '" + vm.name + "' cannot name its files");
          if (auto existing = find(vm.name); existing && existing->active())
            return refuse(code::kExists, fmt::format("a VM named {} is already {} (monitor process {})", vm.name,
                                                     existing->state(), existing->pid()));
          const host::Selection selection = host_.select(vm);
          if (!selection.selected || !selection.selected_plugin) {
            client->reply(no_mode_error(id, vm, selection));
            link->close("no mode");
            return;
          }
          const auto plugin = host_.registry().share(selection.selected_plugin->descriptor.name);
          if (!plugin) return refuse(code::kMonitorFailed, "plugin " + selection.selected_plugin->descriptor.name + " vanished");
          const auto identity = identity_for(vm, *plugin, selection);
          json restore_args = power_on_args(vm, *plugin, selection, identity);
          restore_args["snapshot_file"] = file;
          auto handle = make_handle(identity, pid);
          handle->adopt(link);
          handle->expect_start([this, handle, client, id](const json& reply) {
            if (!reply.value("ok", false)) {
              const json error = reply.value("error", json::object());
              handle->mark_lost("failed", error.value("message", "the monitor process failed to restore the VM"));
              client->reply(control::reply_error(id, error.value("code", code::kMonitorFailed),
                                                 error.value("message", "restore failed")));
              return;
            }
            handle->update_status(reply["result"]);
            handle->take_started_state(reply["result"].value("state", "paused"));
            write_record(*handle);
            client->reply(control::reply_ok(id, handle->summary()));
          });
          host_.log()->info("VM {}: restoring from {} under {} ({}) in monitor process {}", vm.name, file,
                            identity.mode, identity.plugin, pid);
          std::vector<int> fds{plugin->image->fd()};
          std::shared_ptr<const host::LoadedPlugin> switch_plugin;
          add_mode_switch(host_, vm, selection, restore_args, fds, switch_plugin);
          if (!link->send_with_fds(control::request(1, "restore", restore_args), fds))
            link->close("cannot send the restore request");
        } catch (const host::InputError& e) {
          refuse(code::kBadInput, e.what());
        }
      },
      [client, id, file](const std::string& why) {
        // Only answers when the link ends before a VM handle took it over.
        client->reply(control::reply_error(id, code::kMonitorFailed,
                                           "restore of " + file + ": the monitor process went away (" + why + ")"));
      });
}

// `migrate NAME --to PEER`: this daemon connects to the peer (a name from
// peers: or address:port) and hands the connection to the VM's monitor
// process, which proves the cluster secret and runs the sender.  Progress
// goes to the client as "migration" events; the reply is the final record.
void Daemon::vm_migrate(const json& id, const json& args, const std::shared_ptr<Client>& client) {
  auto refuse = [&](const char* error, const std::string& text) { client->reply(control::reply_error(id, error, text)); };
  const std::string name = args.value("name", ""), to = args.value("to", "");
  auto vm = find(name);
  if (!vm) return refuse(code::kNoSuchVm, fmt::format("no VM named '{}' on this host", name));
  if (vm->state() != "running")
    return refuse(code::kWrongState, fmt::format("VM {} is {}: only a running VM migrates", name, vm->state()));
  const auto& d = host_.config().daemon;
  if (d.migration_secret_file.empty())
    return refuse(code::kBadInput, host_.config().file.string() +
                                       ": no migration.secret_file: this host cannot prove itself to a peer");
  if (!fleet_) {
    if (to == "auto") return refuse(code::kBadInput, "--to auto needs a fleet (fleet: in the host YAML)");
    return vm_migrate_to(id, args, to, "", "", client);
  }
  // In a fleet: the owner moves with the VM, so etcd must be able to move it, and
  // the destination is a fleet host (by name, or chosen: --to auto).
  if (!fleet_frozen_.empty()) return refuse(code::kWrongState, "fleet: migration refused: " + fleet_frozen_);
  if (!fleet_lease_valid_) return refuse(code::kWrongState, "fleet: migration refused: this host holds no live etcd lease");
  const std::string self = host_.config().name;
  const std::string yaml_file = vm->identity().vm_file;
  std::weak_ptr<Client> weak = client;
  fleet_->submit(
      [name, self](fleet::EtcdClient& etcd, fleet::Ownership& o) {
        json out{{"hosts", json::array()}};
        if (const auto owner = o.owner(name)) out["owner"] = owner->to_json();
        for (const auto& kv : etcd.get_prefix(o.keys().hosts())) {
          json h = json::parse(kv.value, nullptr, false);
          if (h.is_object()) out["hosts"].push_back(h);
        }
        return out;
      },
      [this, id, args, name, to, self, yaml_file, weak](const json& result) {
        auto c = weak.lock();
        if (!c) return;
        auto fail = [&](const char* error, const std::string& text) { c->reply(control::reply_error(id, error, text)); };
        if (result.contains("error")) return fail(code::kWrongState, "fleet: migration refused: etcd: " + result["error"].get<std::string>());
        if (!result.contains("owner") || result["owner"].value("owner", "") != self)
          return fail(code::kWrongState, fmt::format("fleet: migration refused: VM {} is not owned by this host in etcd ({})", name,
                                                     result.contains("owner") ? "owner " + result["owner"].value("owner", "?") : "no record"));
        try {
          const auto vm = find(name);
          if (!vm) return fail(code::kNoSuchVm, "VM " + name + " went away");
          const host::VmConfig config = host::load_vm_config(yaml_file, host_.guest_os());
          const auto choice = fleet::choose_destination(config, result["hosts"], self, to, host_.config_dir());
          if (!choice.host) return fail(code::kNoMode, "fleet: " + choice.explanation);
          vm_migrate_to(id, args, choice.host->value("name", ""), choice.host->value("migration_address", ""),
                        choice.explanation, c);
        } catch (const std::exception& e) {
          fail(code::kBadInput, e.what());
        }
      });
}

void Daemon::vm_migrate_to(const json& id, const json& args, const std::string& to, const std::string& fleet_address,
                           const std::string& explanation, const std::shared_ptr<Client>& client) {
  auto refuse = [&](const char* error, const std::string& text) { client->reply(control::reply_error(id, error, text)); };
  const std::string name = args.value("name", "");
  auto vm = find(name);
  if (!vm) return refuse(code::kNoSuchVm, fmt::format("no VM named '{}' on this host", name));
  if (vm->state() != "running")
    return refuse(code::kWrongState, fmt::format("VM {} is {}: only a running VM migrates", name, vm->state()));
  const auto& d = host_.config().daemon;
  std::string address;
  int fd = -1;
  try {
    address = fleet_address.empty() ? host::migration::resolve_peer(d, to) : fleet_address;
    // Blocks the daemon for at most the connect timeout (loopback and LAN peers answer at once).
    fd = host::migration::tcp_connect(address, std::chrono::seconds(5));
  } catch (const host::migration::MigrationError& e) {
    return refuse(address.empty() ? code::kBadInput : code::kMonitorFailed, e.what());
  }
  // The monitor process gets this migration's key, never the cluster secret.
  namespace mig = host::migration;
  const mig::MigrationId migration_id = mig::make_migration_id();
  std::string key_hex;
  try {
    key_hex = mig::to_hex(mig::derive_migration_key(mig::ClusterSecret::from_file(d.migration_secret_file), migration_id).bytes());
  } catch (const std::exception& e) {
    ::close(fd);
    return refuse(code::kBadInput, e.what());
  }
  json out_args{{"destination", address},
                {"peer", to},
                {"downtime_ms", args.value("downtime_ms", 300)},
                {"force_converge", args.value("force_converge", false)},
                {"migration_id", mig::to_hex(migration_id)},
                {"migration_key", key_hex},
                {"host_name", host_.config().name}};
  if (!explanation.empty()) {
    host_.log()->info("VM {}: placement: {}", name, explanation);
    client->reply(control::event("placement", {{"name", name}, {"to", to}, {"explanation", explanation}}));
  }
  std::weak_ptr<Client> weak = client;
  const auto listener = vm->listen([weak](const json& event) {
    if (event.value("event", "") != "migration") return;
    if (auto c = weak.lock()) c->reply(event);
  });
  client->attach(vm, listener);
  host_.log()->info("VM {}: migrating to {} ({})", name, to, address);
  send_migrate_out(vm, std::move(out_args), fd, id, client, listener, 200);
}

void Daemon::send_migrate_out(std::shared_ptr<VmHandle> vm, json args, int fd, const json& id,
                              const std::shared_ptr<Client>& client, std::uint64_t listener, int attempts) {
  auto on_reply = migration_answer(vm, id, client, listener);
  if (vm->call("migrate-out", args, on_reply, {fd})) {
    ::close(fd);
    return;
  }
  if (attempts <= 0) {  // the link stayed busy: give up, nothing moved
    ::close(fd);
    vm->unlisten(listener);
    client->reply(control::reply_error(id, code::kMonitorFailed, "VM " + vm->name() + ": its monitor process link stayed busy"));
    return;
  }
  auto timer = std::make_shared<boost::asio::steady_timer>(io_, std::chrono::milliseconds(5));
  timer->async_wait([this, timer, vm, args, fd, id, client, listener, attempts](auto) {
    send_migrate_out(vm, args, fd, id, client, listener, attempts - 1);
  });
}

// The client's answer to a migration (or its resolution) from the source's
// monitor process: the record, or the error.
std::function<void(const json&)> Daemon::migration_answer(std::shared_ptr<VmHandle> vm, const json& id,
                                                          const std::shared_ptr<Client>& client,
                                                          std::uint64_t listener) {
  std::weak_ptr<Client> weak = client;
  return [this, vm, weak, id, listener](const json& reply) {
    if (listener) vm->unlisten(listener);
    const json result = reply.value("result", json::object());
    if (reply.value("ok", false))
      host_.log()->info("VM {}: migration to {}: {}", vm->name(), result.value("to", "?"), result.value("outcome", "?"));
    auto c = weak.lock();
    if (!c) return;
    // The source discarded its copy: the answer waits for the VM's end here
    // (its "ended" event follows the reply), so the client that sees
    // "completed" also sees the source's VM stopped, with its reason.
    const std::string outcome = result.value("outcome", "");
    if (reply.value("ok", false) && (outcome == "completed" || outcome == "committed-unconfirmed") && vm->active()) {
      vm->on_end([weak, id, result] {
        if (auto client = weak.lock()) client->reply(control::reply_ok(id, result));
      });
      return;
    }
    if (reply.value("ok", false)) c->reply(control::reply_ok(id, result));
    else c->reply(control::reply_error(id, reply["error"].value("code", code::kMonitorFailed),
                                       reply["error"].value("message", "migration failed")));
  };
}

// A peer's connection: handed untouched to a new monitor process, which
// runs the receiver (the peer proves the cluster secret there before anything
// about the VM moves) and, when the VM arrives, runs it like any other.
void Daemon::accept_migration() {
  migration_acceptor_->async_accept([this](auto ec, boost::asio::ip::tcp::socket socket) {
    if (ec) {
      if (ec != boost::asio::error::operation_aborted && !shutting_down_) accept_migration();
      return;
    }
    auto connection = std::make_shared<boost::asio::ip::tcp::socket>(std::move(socket));
    auto deadline = std::make_shared<boost::asio::steady_timer>(io_, std::chrono::seconds(10));
    deadline->async_wait([connection](auto ec) {
      boost::system::error_code ignored;
      if (!ec) connection->close(ignored);  // no Hello in time
    });
    peek_migration_hello(connection, deadline);
    if (!shutting_down_) accept_migration();
  });
}

// A peer's connection, before it goes to a monitor process: its Hello frame
// is peeked (not consumed) for the migration id, so the daemon can derive
// the migration's key and pass only that on.  A peer that sends nothing in
// time, or no Hello, is dropped here.
void Daemon::peek_migration_hello(std::shared_ptr<boost::asio::ip::tcp::socket> socket,
                                  std::shared_ptr<boost::asio::steady_timer> deadline) {
  socket->async_wait(boost::asio::ip::tcp::socket::wait_read, [this, socket, deadline](auto ec) {
    namespace mig = host::migration;
    if (ec) return;  // closed at the deadline, or the daemon stops
    std::array<std::uint8_t, mig::kFrameHeaderBytes + 2 + 2 + mig::kMigrationIdBytes + mig::kNonceBytes> start{};
    const ssize_t n = ::recv(socket->native_handle(), start.data(), start.size(), MSG_PEEK | MSG_DONTWAIT);
    boost::system::error_code ignored;
    const auto remote = socket->remote_endpoint(ignored);
    const std::string peer = ignored ? "?" : fmt::format("{}:{}", remote.address().to_string(), remote.port());
    if (n <= 0) {
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return peek_migration_hello(socket, deadline);
      deadline->cancel();
      host_.log()->warn("migration: {} closed the connection before its Hello", peer);
      return;
    }
    const mig::HelloPeek hello = mig::peek_hello(std::span(start.data(), static_cast<std::size_t>(n)));
    if (hello.status == mig::HelloPeek::Status::NeedMore) {
      // Part of the frame is here: look again shortly (the deadline bounds it).
      auto later = std::make_shared<boost::asio::steady_timer>(io_, std::chrono::milliseconds(5));
      later->async_wait([this, socket, deadline, later](auto) { peek_migration_hello(socket, deadline); });
      return;
    }
    deadline->cancel();
    if (hello.status == mig::HelloPeek::Status::NotHello) {
      host_.log()->warn("migration: refused a connection from {}: {}", peer, hello.why);
      socket->close(ignored);
      return;
    }
    try {
      if (!route_to_arrival(*socket, host::migration::to_hex(hello.id), peer)) migrate_in(std::move(*socket), hello.id);
    } catch (const std::exception& e) {
      host_.log()->error("migration: cannot take a connection: {}", e.what());
    }
  });
}

bool Daemon::route_to_arrival(boost::asio::ip::tcp::socket& socket, const std::string& migration_id,
                              const std::string& peer) {
  auto it = arrivals_.find(migration_id);
  if (it == arrivals_.end()) return false;
  auto link = it->second.link.lock();
  if (!link || !link->is_open()) {
    arrivals_.erase(it);
    return false;
  }
  if (!link->send_with_fds(control::request(2, "migrate-resolve", {{"peer", peer}}), {socket.native_handle()})) {
    host_.log()->warn("migration {}: cannot pass {}'s connection to its monitor process", migration_id, peer);
    return true;  // dropped: the source tries again, and this process's ledger must answer, not a new one
  }
  boost::system::error_code ignored;
  socket.close(ignored);  // the monitor process has its own copy
  // Warning level: only an unknown outcome (a cut after commit) brings the source back.
  host_.log()->warn("migration {}: {} connects again; the connection goes to the monitor process receiving it",
                    migration_id, peer);
  return true;
}

void Daemon::migrate_in(boost::asio::ip::tcp::socket socket, const host::migration::MigrationId& migration_id) {
  boost::system::error_code ec;
  const auto remote = socket.remote_endpoint(ec);
  const std::string peer = ec ? "?" : fmt::format("{}:{}", remote.address().to_string(), remote.port());
  json taken = json::array();
  for (const auto& [name, vm] : vms_)
    if (vm->active()) taken.push_back(name);
  const auto& d = host_.config().daemon;
  json args{{"peer", peer},
                  {"config_dir", host_.config_dir().string()},
                  {"host_config", host_.config().file.string()},
                  {"log_dir", host_.config().log_dir.string()},
                  {"log_level", host_.config().log_level},
                  {"migration_key", host::migration::to_hex(host::migration::derive_migration_key(
                                        host::migration::ClusterSecret::from_file(d.migration_secret_file), migration_id)
                                        .bytes())},
                  {"host_name", host_.config().name},
                  {"vm_dir", vm_dir_.string()},
                  {"run_log", run_log_.string()},
                  {"taken_names", taken},
                  {"fleet_claim", fleet_ != nullptr}};
  fleet_fence_args(args);
  const Spawned process = spawn_monitor_process();
  control::send_with_fds(process.fd, control::encode_line(control::request(1, "migrate-in", args)),
                         {socket.native_handle()});
  socket.close(ec);  // the monitor process has its own copy
  auto link = std::make_shared<LineSocket>(stream_protocol::socket(io_, stream_protocol(), process.fd));
  const pid_t pid = process.pid;
  const std::string id_hex = host::migration::to_hex(migration_id);
  host_.log()->info("migration: a connection from {} goes to monitor process {}", peer, pid);
  std::weak_ptr<LineSocket> weak_link = link;
  arrivals_[id_hex] = Arrival{weak_link, pid};
  link->start(
      [this, weak_link, pid, peer, id_hex](const json& reply) {
        auto link = weak_link.lock();
        if (link && reply.value("event", "") == "fleet-claim") return fleet_claim_arrival(link, reply);
        if (link && reply.value("event", "") == "migration-in-doubt") {
          const std::string vm = reply.value("vm", "");
          host_.log()->warn("migration {}: committed here, but the connection from {} ended before Go ({}); VM {} "
                            "stays paused in monitor process {} until the source resolves it",
                            id_hex, peer, reply.value("reason", ""), vm, pid);
          in_doubt_[vm] = json{{"name", vm},
                               {"state", "in-doubt"},
                               {"mode", reply.value("mode", "")},
                               {"plugin", reply.value("plugin", "")},
                               {"pid", pid},
                               {"migration_id", id_hex},
                               {"reason", fmt::format("arrived from {}, committed, paused until the source "
                                                      "resolves migration {}",
                                                      peer, id_hex)}};
          return;
        }
        if (!link || reply.value("id", json()) != 1) return;
        arrivals_.erase(id_hex);
        std::erase_if(in_doubt_, [&](const auto& entry) { return entry.second.value("migration_id", "") == id_hex; });
        if (!reply.value("ok", false)) {
          const json error = reply.value("error", json::object());
          host_.log()->warn("migration: from {}: {}", peer, error.value("message", "failed"));
          link->close("migration in ended");
          return;
        }
        const json& result = reply["result"];
        const std::string name = result.value("name", "");
        VmHandle::Identity identity{name,
                                    result.value("vm_file", ""),
                                    result.value("plugin", ""),
                                    result.value("plugin_version", ""),
                                    result.value("mode", ""),
                                    (vm_dir_ / (name + ".sock")).string(),
                                    (vm_dir_ / (name + ".result.json")).string(),
                                    (vm_dir_ / (name + ".json")).string()};
        auto handle = make_handle(identity, pid);
        handle->adopt(link);
        handle->update_status(result);
        handle->set_state(result.value("state", "running"));
        write_record(*handle);
        host_.log()->info("VM {}: arrived from {} and runs under {} ({}) in monitor process {}", name, peer,
                          identity.mode, identity.plugin, pid);
        // Arrived while this daemon stops: it stops with the others (the
        // SIGTERM shutdown() sent is pending in the monitor process too).
        if (shutting_down_) handle->call("stop", {{"reason", "the daemon is stopping"}}, [](const json&) {});
      },
      [this, peer, pid, id_hex](const std::string& why) {
        arrivals_.erase(id_hex);
        std::erase_if(in_doubt_, [&](const auto& entry) { return entry.second.value("migration_id", "") == id_hex; });
        host_.log()->warn("migration: from {}: monitor process {} went away ({})", peer, pid, why);
        maybe_finish();
      });
}

void Daemon::write_record(const VmHandle& vm) {
  const auto& id = vm.identity();
  const json record{{"name", id.name},     {"pid", vm.pid()},           {"vm_file", id.vm_file},
                    {"plugin", id.plugin}, {"plugin_version", id.plugin_version}, {"mode", id.mode},
                    {"socket", id.socket}, {"result_file", id.result_file}};
  const fs::path temporary = id.record_file + ".tmp";
  {
    std::ofstream out(temporary);
    out << record.dump(2) << "\n";
  }
  fs::rename(temporary, id.record_file);
}

void Daemon::remove_record(const VmHandle& vm) {
  std::error_code ignored;
  fs::remove(vm.identity().record_file, ignored);
  fs::remove(vm.identity().result_file, ignored);
}

// VMs a previous daemon left: reattach to those whose monitor process still
// answers on its socket; say clearly which ones ended or were lost meanwhile.
void Daemon::recover() {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(vm_dir_, ec)) {
    const fs::path file = entry.path();
    if (file.extension() != ".json" || file.stem().extension() == ".result") continue;
    const auto record = read_json(file);
    if (!record || !safe_vm_name(record->value("name", ""))) {
      host_.log()->warn("state: {} is not a VM record; ignored", file.string());
      continue;
    }
    VmHandle::Identity identity{record->value("name", ""),        record->value("vm_file", ""),
                                record->value("plugin", ""),      record->value("plugin_version", ""),
                                record->value("mode", ""),        record->value("socket", ""),
                                record->value("result_file", ""), file.string()};
    const pid_t pid = record->value("pid", 0);
    auto handle = std::make_shared<VmHandle>(identity, pid, /*child=*/false, [this](VmHandle& vm) { vm_changed(vm); });
    vms_[identity.name] = handle;
    try {
      control::Fd fd = control::connect_unix(identity.socket);
      handle->attach(std::make_shared<LineSocket>(stream_protocol::socket(io_, stream_protocol(), fd.release())));
      handle->call("hello", {}, [this, handle](const json& reply) {
        if (!reply.value("ok", false)) return;
        handle->update_status(reply["result"]);
        handle->set_state(reply["result"].value("state", "running") == "paused" ? "paused" : "running");
        host_.log()->warn("VM {}: found running in monitor process {} (left by an earlier daemon); reattached",
                          handle->name(), handle->pid());
      });
      continue;
    } catch (const std::system_error&) {
    }
    if (auto result = read_json(identity.result_file)) {
      const std::string kind = result->value("result", "");
      const std::string reason = fmt::format("ended while the daemon was away: {}: {}", kind, result->value("reason", ""));
      handle->mark_lost(kind == "error" ? "failed" : "stopped", reason, *result);
      host_.log()->warn("VM {}: {}", handle->name(), reason);
    } else {
      const std::string reason =
          fmt::format("lost: its monitor process {} is gone and left no result (it ended while no daemon was running)", pid);
      handle->mark_lost("failed", reason);
      ++counters_["monitor_process_failures"];
      host_.log()->error("VM {}: {}", handle->name(), reason);
    }
    remove_record(*handle);
  }
}

void Daemon::on_signal(int signal) {
  if (signal == SIGCHLD) {
    reap_children();
  } else if (signal == SIGHUP) {
    host_.log()->info("SIGHUP: rescanning the plugin directories");
    ++counters_["plugin_rescans"];
    host_.rescan_plugins();
  } else {
    shutdown(fmt::format("modevisord got {}", signal == SIGTERM ? "SIGTERM" : "SIGINT"));
  }
  signals_.async_wait([this](auto ec, int next) {
    if (!ec) on_signal(next);
  });
}

void Daemon::reap_children() {
  for (;;) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    bool claimed = false;
    for (auto& [name, vm] : vms_)
      if (vm->is_child() && vm->pid() == pid) claimed = true;
    if (!claimed) unclaimed_exits_[pid] = status;
    for (auto& [name, vm] : vms_) {
      if (!vm->is_child() || vm->pid() != pid) continue;
      const bool was_active = vm->active();
      vm->child_exited(status);
      if (was_active && !vm->active() && vm->state() == "failed") ++counters_["monitor_process_failures"];
      host_.log()->log(WIFEXITED(status) && WEXITSTATUS(status) == 0 ? spdlog::level::info : spdlog::level::err,
                       "VM {}: its monitor process {} {}", name, pid, describe_wait_status(status, vm->seccomp_violation()));
    }
  }
}

void Daemon::vm_changed(VmHandle& vm) {
  host_.log()->info("VM {}: {}", vm.name(), vm.state());
  if (fleet_) fleet_publish();
  if (!vm.active() && fleet_) fleet_release(vm.name());
  if (!vm.active()) {
    const auto summary = vm.summary();
    if (summary.contains("reason")) host_.log()->info("VM {}: {}", vm.name(), summary["reason"].get<std::string>());
    remove_record(vm);
    if (shutting_down_) boost::asio::post(io_, [this] { maybe_finish(); });
  }
  publish_metrics();
}

void Daemon::shutdown(const std::string& why) {
  if (shutting_down_) return;
  shutting_down_ = true;
  if (options_.notify_systemd) sd_notify(0, "STOPPING=1\nSTATUS=stopping every VM");
  host_.log()->info("{}: stopping every VM", why);
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  if (migration_acceptor_) migration_acceptor_->close(ignored);
  std::error_code removed;
  fs::remove(host_.config().daemon.control_socket, removed);
  for (auto& [name, vm] : vms_)
    if (vm->active()) vm->call("stop", {{"reason", why}}, [](const json&) {});
  // Monitor processes receiving a VM: one that has not committed abandons
  // (the source keeps its VM), one that has stops it as the daemon's own VMs
  // stop.  None is left running without its daemon.
  for (const auto& [id, arrival] : arrivals_) {
    host_.log()->info("migration {}: stopping the receiving monitor process {}", id, arrival.pid);
    ::kill(arrival.pid, SIGTERM);
  }
  shutdown_timer_.expires_after(kStopGrace);
  shutdown_timer_.async_wait([this](auto ec) {
    if (ec) return;
    for (auto& [name, vm] : vms_) {
      if (!vm->active()) continue;
      host_.log()->error("VM {}: did not stop within {} s; killing monitor process {}", name, kStopGrace.count(),
                         vm->pid());
      ::kill(vm->pid(), SIGKILL);
      if (!vm->is_child()) vm->mark_lost("failed", "killed: it did not stop when the daemon stopped");
    }
    for (const auto& [id, arrival] : arrivals_) {
      host_.log()->error("migration {}: the receiving monitor process {} did not end within {} s; killing it", id,
                         arrival.pid, kStopGrace.count());
      ::kill(arrival.pid, SIGKILL);
    }
    exit_status_ = 1;
  });
  maybe_finish();
}

void Daemon::maybe_finish() {
  if (!shutting_down_) return;
  for (auto& [name, vm] : vms_)
    if (vm->active()) return;
  if (!arrivals_.empty()) return;  // a receiving monitor process has not ended yet
  host_.log()->info("every VM is stopped; modevisord exits");
  io_.stop();
}

// Keeps uptime and counters fresh for `vm list` and the metrics endpoint.
void Daemon::poll_status() {
  for (auto& [name, vm] : vms_) {
    if (!vm->active() || vm->state() == "starting") continue;
    std::weak_ptr<VmHandle> weak = vm;
    vm->call("status", {}, [this, weak](const json& reply) {
      auto vm = weak.lock();
      if (vm && reply.value("ok", false)) vm->update_status(reply["result"]);
    });
  }
  publish_metrics();
  status_timer_.expires_after(kStatusInterval);
  status_timer_.async_wait([this](auto ec) {
    if (!ec) poll_status();
  });
}

void Daemon::publish_metrics() {
  if (!metrics_) return;
  json vms = json::array();
  for (const auto& [name, vm] : vms_) vms.push_back(vm->summary());
  auto counters = counters_;
  counters["plugins_loaded"] = host_.registry().plugins().size();
  metrics_->publish(std::move(vms), std::move(counters));
}

}  // namespace modevisor::daemon
