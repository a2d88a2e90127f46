#include "cli/client.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <optional>
#include <system_error>

#include "cli/commands.hpp"
#include "control/protocol.hpp"
#include "control/unix_socket.hpp"
#include "runtime/exit_status.hpp"

namespace modevisor::cli {

namespace {

using control::json;

constexpr char kEscape = 0x1d;  // Ctrl-], as virsh

std::string dump(const json& j) { return j.dump(2, ' ', false, json::error_handler_t::replace); }

// An error the client reports itself (no reply to show).
int client_error(const ClientRequest& request, const char* code, const std::string& message) {
  const int status = control::exit_status_for(code);
  if (request.json)
    std::cout << dump(json{{"error", {{"code", code}, {"message", message}}}, {"exit_status", status}}) << "\n";
  else
    fmt::print(stderr, "modevisor: {}\n", message);
  return status;
}

class Connection {
 public:
  explicit Connection(const std::string& path) : channel_(control::connect_unix(path)) {}
  // Sends a request and waits for its reply, skipping events.
  std::optional<json> call(const std::string& op, json args) {
    const auto id = next_id_++;
    if (!channel_.send(control::request(id, op, std::move(args)))) return std::nullopt;
    while (auto message = channel_.receive()) {
      if (message->contains("id") && (*message)["id"] == id) return message;
    }
    return std::nullopt;
  }
  control::LineChannel& channel() { return channel_; }
  std::string failure() const {
    return channel_.error().empty() ? "the daemon closed the connection" : channel_.error();
  }

 private:
  control::LineChannel channel_;
  std::uint64_t next_id_ = 1;
};

std::string uptime_text(double seconds) {
  const auto s = static_cast<long>(seconds);
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, s / 60 % 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

void print_vm(const json& vm) {
  for (const auto& [key, value] : vm.items()) {
    if (key == "counters" || key == "console") continue;
    fmt::print("{:<16} {}\n", key + ":", value.is_string() ? value.get<std::string>() : value.dump());
  }
  if (vm.contains("counters") && !vm["counters"].empty()) {
    fmt::print("counters:\n");
    for (const auto& [name, value] : vm["counters"].items()) fmt::print("  {:<40} {}\n", name, value.dump());
  }
}

// The terminal in raw mode while attached: every key (Ctrl-C too) goes to the guest.
class RawTerminal {
 public:
  RawTerminal() {
    if (!::isatty(STDIN_FILENO) || ::tcgetattr(STDIN_FILENO, &saved_) != 0) return;
    termios raw = saved_;
    ::cfmakeraw(&raw);
    active_ = ::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
  }
  ~RawTerminal() {
    if (active_) ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  }

 private:
  termios saved_{};
  bool active_ = false;
};

void write_all(int fd, const std::string& bytes) {
  for (std::size_t done = 0; done < bytes.size();) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) return;
    done += static_cast<std::size_t>(n);
  }
}

int console(const ClientRequest& request, Connection& connection, const std::string& name) {
  auto reply = connection.call("vm.console", {{"name", name}, {"follow", request.follow}});
  if (!reply) return client_error(request, control::error_code::kProtocol, connection.failure());
  if (!(*reply)["ok"].get<bool>()) {
    const auto& error = (*reply)["error"];
    return client_error(request, error["code"].get<std::string>().c_str(), error["message"].get<std::string>());
  }
  const auto& result = (*reply)["result"];
  const std::string history = control::base64_decode(result.value("console", "")).value_or("");
  if (!request.follow || !result.value("attached", false)) {
    if (request.json)
      std::cout << dump(json{{"vm", name}, {"state", result["state"]}, {"console", history},
                             {"console_base64", result["console"]}})
                << "\n";
    else
      write_all(STDOUT_FILENO, history);
    return host::kExitOk;
  }
  write_all(STDOUT_FILENO, history);
  if (!request.json && ::isatty(STDIN_FILENO))
    fmt::print(stderr, "modevisor: attached to VM {} (escape: Ctrl-])\r\n", name);
  RawTerminal raw;
  auto& channel = connection.channel();
  bool stdin_open = true;
  std::string end_state;
  for (;;) {
    pollfd fds[2] = {{channel.fd(), POLLIN, 0}, {STDIN_FILENO, static_cast<short>(stdin_open ? POLLIN : 0), 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      if (!channel.read_some()) break;
      bool ended = false;
      while (auto message = channel.buffered()) {
        const std::string kind = message->value("event", "");
        if (kind == "console") {
          write_all(STDOUT_FILENO, control::base64_decode(message->value("data", "")).value_or(""));
        } else if (kind == "state") {
          const std::string state = message->value("state", "");
          if (state == "stopped" || state == "failed") {
            end_state = state + (message->contains("reason") ? " (" + (*message)["reason"].get<std::string>() + ")" : "");
            ended = true;
          }
        }
      }
      if (ended) break;
    }
    if (fds[1].revents & (POLLIN | POLLHUP)) {
      char buffer[256];
      const ssize_t n = ::read(STDIN_FILENO, buffer, sizeof buffer);
      if (n <= 0) {
        stdin_open = false;  // input closed: keep showing output
        continue;
      }
      std::string bytes(buffer, static_cast<std::size_t>(n));
      const auto escape = bytes.find(kEscape);
      if (escape != std::string::npos) bytes.resize(escape);
      if (!bytes.empty())
        channel.send(control::request(0, "console.input", {{"name", name}, {"data", control::base64_encode(bytes)}}));
      if (escape != std::string::npos) break;
    }
  }
  if (!request.json && ::isatty(STDIN_FILENO))
    fmt::print(stderr, "\r\nmodevisor: {}\r\n", end_state.empty() ? "detached" : "VM " + name + " " + end_state);
  return host::kExitOk;
}

// `migrate NAME --to PEER` (vm.migrate) and `vm resolve NAME` (vm.resolve):
// the live line while it runs, then the summary (or the record with --json).
int migration(const ClientRequest& request, Connection& connection, const std::string& op, const json& args) {
  auto& channel = connection.channel();
  if (!channel.send(control::request(1, op, args)))
    return client_error(request, control::error_code::kProtocol, connection.failure());
  const bool live = !request.json && ::isatty(STDERR_FILENO);
  bool printed = false;
  std::string placement;  // --to auto (a fleet): why that host
  while (auto message = channel.receive()) {
    if (message->value("event", "") == "placement") {
      placement = message->value("explanation", "");
      if (!request.json) fmt::print(stderr, "placement: {}\n", placement);
      continue;
    }
    if (message->value("event", "") == "migration") {
      const std::string line = message->value("line", "");
      if (request.json) continue;
      if (live) fmt::print(stderr, "\r\033[K{}", line);
      else fmt::print(stderr, "{}\n", line);
      printed = true;
      continue;
    }
    if (!message->contains("id") || (*message)["id"] != 1) continue;
    if (live && printed) fmt::print(stderr, "\n");
    if (!message->value("ok", false)) {
      const json error = message->value("error", json::object());
      const std::string code = error.value("code", control::error_code::kProtocol);
      const int status = control::exit_status_for(code);
      if (request.json) std::cout << dump(json{{"error", error}, {"exit_status", status}}) << "\n";
      else fmt::print(stderr, "modevisor: {}\n", error.value("message", "the daemon refused"));
      return status;
    }
    json record = message->value("result", json::object());
    if (!placement.empty()) record["placement"] = placement;
    const std::string outcome = record.value("outcome", "");
    const int status = outcome == "completed" ? host::kExitOk
                       : outcome == "refused" ? host::kExitRefused
                                              : host::kExitMonitorFailed;
    if (request.json) {
      json out = record;
      out["exit_status"] = status;
      std::cout << dump(out) << "\n";
    } else {
      std::cout << record.value("summary", outcome) << "\n";
    }
    return status;
  }
  return client_error(request, control::error_code::kProtocol, connection.failure());
}

}  // namespace

int run_client(const ClientRequest& request) {
  std::optional<Connection> connection;
  try {
    connection.emplace(request.socket);
  } catch (const std::system_error& e) {
    return client_error(request, control::error_code::kProtocol,
                        fmt::format("cannot reach modevisord: {} (is the daemon running, and is --socket its "
                                    "control_socket?)",
                                    e.what()));
  }
  const auto& w = request.words;
  std::string op;
  json args = json::object();
  if (w[0] == "migrate")
    return migration(request, *connection, "vm.migrate",
                     {{"name", w.at(1)}, {"to", request.to}, {"downtime_ms", request.downtime_ms},
                      {"force_converge", request.force_converge}});
  if (w[0] == "vm" && w.at(1) == "resolve") return migration(request, *connection, "vm.resolve", {{"name", w.at(2)}});
  if (w[0] == "host") {
    op = "host";
  } else if (w[0] == "plugins") {
    op = w.size() > 1 && w[1] == "rescan" ? "plugins.rescan" : "plugins";
  } else if (w[0] == "vm") {
    const std::string& sub = w.at(1);
    op = "vm." + sub;
    if (sub == "start" || sub == "restore") args["file"] = w.at(2);
    else if (sub == "save") args = {{"name", w.at(2)}, {"file", w.at(3)}};
    else if (sub != "list") args["name"] = w.at(2);
    if (sub == "console") return console(request, *connection, w.at(2));
  }
  auto reply = connection->call(op, args);
  if (!reply) return client_error(request, control::error_code::kProtocol, connection->failure());
  if (!reply->value("ok", false)) {
    const json error = reply->value("error", json::object());
    const std::string code = error.value("code", control::error_code::kProtocol);
    const int status = control::exit_status_for(code);
    if (request.json) std::cout << dump(json{{"error", error}, {"exit_status", status}}) << "\n";
    else fmt::print(stderr, "modevisor: {}\n", error.value("message", "the daemon refused"));
    return status;
  }
  const json result = reply->value("result", json::object());
  if (request.json) {
    std::cout << dump(result) << "\n";
    return host::kExitOk;
  }
  if (op == "host") {
    for (const auto& [key, value] : result.items()) fmt::print("{:<26} {}\n", key + ":", value.dump());
  } else if (op == "plugins" || op == "plugins.rescan") {
    print_plugins(result);
  } else if (op == "vm.list") {
    fmt::print("{:<20} {:<9} {:<7} {:<12} {:>9}  {}\n", "NAME", "STATE", "MODE", "PLUGIN", "UPTIME", "REASON");
    for (const auto& vm : result["vms"])
      fmt::print("{:<20} {:<9} {:<7} {:<12} {:>9}  {}\n", vm["name"].get<std::string>(), vm["state"].get<std::string>(),
                 vm.value("mode", "-"), vm.value("plugin", "-"), uptime_text(vm.value("uptime_s", 0.0)),
                 vm.value("reason", ""));
  } else if (op == "vm.log") {
    std::cout << result.value("log", "");
  } else if (op == "vm.status" || op == "vm.start" || op == "vm.restore") {
    print_vm(result);
  } else {
    fmt::print("VM {}: {}\n", result.value("name", ""), result.value("state", "done"));
  }
  return host::kExitOk;
}

}  // namespace modevisor::cli
