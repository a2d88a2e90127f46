// modevisord: one daemon per host.  It owns the host runtime (probe,
// plugins, policy), listens on the control socket (mode 0600, peers of
// another uid refused with SO_PEERCRED), starts one monitor process per VM
// (modevisor-vmm) and supervises it, keeps a record of each VM in its state
// directory so a restarted daemon finds the VMs it left running, and serves
// metrics.  SIGTERM (or SIGINT) stops every VM cleanly, then the daemon.
#pragma once

#include <utility>  // Boost 1.74's Asio uses std::exchange without it
#include <boost/asio.hpp>

#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "daemon/line_socket.hpp"
#include "daemon/metrics.hpp"
#include "daemon/vm_handle.hpp"
#include "fleet/agent.hpp"
#include "migration/auth.hpp"
#include "runtime/host.hpp"

namespace modevisor::daemon {

struct DaemonOptions {
  std::filesystem::path vmm_binary;  // modevisor-vmm
  bool notify_systemd = true;
};

class Daemon {
 public:
  Daemon(host::Host& host, DaemonOptions options);  // throws std::system_error, std::runtime_error
  ~Daemon();
  int run();  // until SIGTERM/SIGINT; returns the exit status

 private:
  class Client;
  void accept();
  void dispatch(const json& message, const std::shared_ptr<Client>& client);
  void vm_start(const json& id, const json& args, const std::shared_ptr<Client>& client);
  void vm_restore(const json& id, const json& args, const std::shared_ptr<Client>& client);
  // Live migration (host/migration/README.md): VMs leave through their monitor
  // process (migrate-out over a connection this daemon opened) and arrive in a
  // new one (migrate-in over a connection this daemon accepted).
  void vm_migrate(const json& id, const json& args, const std::shared_ptr<Client>& client);
  void send_migrate_out(std::shared_ptr<VmHandle> vm, json args, int fd, const json& id,
                        const std::shared_ptr<Client>& client, std::uint64_t listener, int attempts);
  std::function<void(const json&)> migration_answer(std::shared_ptr<VmHandle> vm, const json& id,
                                                    const std::shared_ptr<Client>& client, std::uint64_t listener);
  void accept_migration();
  void peek_migration_hello(std::shared_ptr<boost::asio::ip::tcp::socket> socket,
                            std::shared_ptr<boost::asio::steady_timer> deadline);
  void migrate_in(boost::asio::ip::tcp::socket socket, const host::migration::MigrationId& migration_id);
  // A later connection for a migration a monitor process already receives
  // (the source resolving an unknown outcome) goes to that process.
  bool route_to_arrival(boost::asio::ip::tcp::socket& socket, const std::string& migration_id,
                        const std::string& peer);
  struct Spawned {
    pid_t pid = 0;
    int fd = -1;  // the daemon's end of the socketpair (owned by the caller)
  };
  Spawned spawn_monitor_process();  // throws std::system_error
  // The start/restore arguments of a VM's monitor process.
  json power_on_args(const host::VmConfig& vm, const host::LoadedPlugin& plugin, const host::Selection& selection,
                     const VmHandle::Identity& identity) const;
  VmHandle::Identity identity_for(const host::VmConfig& vm, const host::LoadedPlugin& plugin,
                                  const host::Selection& selection) const;
  std::shared_ptr<VmHandle> make_handle(const VmHandle::Identity& identity, pid_t pid);
  void forward(const json& id, const std::string& op, const json& args, const std::shared_ptr<Client>& client);
  void recover();
  void on_signal(int signal);
  void reap_children();
  void shutdown(const std::string& why);
  void maybe_finish();
  void poll_status();
  void publish_metrics();
  void vm_changed(VmHandle& vm);
  void write_record(const VmHandle& vm);
  void remove_record(const VmHandle& vm);
  std::shared_ptr<VmHandle> find(const std::string& name) const;
  json host_json() const;

  // The fleet (host/fleet/README.md), when the host YAML has fleet:.
  void fleet_start();
  json fleet_host_record() const;
  void fleet_publish();
  void fleet_renewed(fleet::Clock::time_point until);
  void fleet_lease_lost(const std::string& why);
  void fleet_ownership(const std::vector<fleet::OwnerRecord>& records, std::int64_t revision);
  void fleet_pause(const std::shared_ptr<VmHandle>& vm, const std::string& why);
  void fleet_release(const std::string& name);
  // The destination's commit step asks (from the arriving VM's monitor process).
  void fleet_claim_arrival(const std::shared_ptr<LineSocket>& link, const json& args);
  void vm_start_owned(const json& id, const host::VmConfig& vm, const host::Selection& selection,
                      const std::shared_ptr<Client>& client);
  void vm_migrate_to(const json& id, const json& args, const std::string& to, const std::string& address,
                     const std::string& explanation, const std::shared_ptr<Client>& client);

  host::Host& host_;
  DaemonOptions options_;
  std::filesystem::path vm_dir_;  // <state_dir>/vms
  boost::asio::io_context io_;
  boost::asio::local::stream_protocol::acceptor acceptor_;
  boost::asio::signal_set signals_;
  boost::asio::steady_timer status_timer_;
  boost::asio::steady_timer shutdown_timer_;
  std::map<std::string, std::shared_ptr<VmHandle>> vms_;
  // Migration id (hex) -> the monitor process receiving it, until it ends.
  struct Arrival {
    std::weak_ptr<LineSocket> link;
    pid_t pid = 0;
  };
  std::map<std::string, Arrival> arrivals_;
  // VM name -> an arrival committed here whose Go did not come (listed by
  // `vm list` as in-doubt, paused; `vm stop` discards it), until it resolves.
  std::map<std::string, json> in_doubt_;
  std::map<std::string, std::uint64_t> counters_;  // per-host figures
  std::map<pid_t, int> unclaimed_exits_;  // monitor processes that ended before a VM handle claimed them
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<boost::asio::ip::tcp::acceptor> migration_acceptor_;
  std::filesystem::path run_log_;  // <state_dir>/run-intervals.log: when this host ran each VM
  bool shutting_down_ = false;
  int exit_status_ = 0;
  std::unique_ptr<fleet::FleetAgent> fleet_;  // after io_: its threads post there, it goes first
  std::map<std::string, std::int64_t> owned_revision_;  // VM -> mod_revision of the record this host wrote
  std::string fleet_frozen_;  // why, while etcd has no quorum (no owner may change)
  bool fleet_lease_valid_ = false;
  fleet::Clock::time_point fleet_valid_until_{};  // the VMs here may run until then
  void fleet_fence_args(json& args) const;
};

}  // namespace modevisor::daemon
