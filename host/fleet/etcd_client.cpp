#include "fleet/etcd_client.hpp"

#include <utility>  // Boost 1.74's Asio uses std::exchange without it
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <functional>

#include "control/protocol.hpp"

namespace modevisor::fleet {

namespace beast = boost::beast;
namespace http = beast::http;
using boost::asio::ip::tcp;
using nlohmann::json;

namespace {

std::string b64(const std::string& text) { return control::base64_encode(std::string_view(text)); }

std::string unb64(const json& value) {
  if (!value.is_string()) return {};
  auto decoded = control::base64_decode(value.get<std::string>());
  return decoded ? *decoded : std::string();
}

// The gateway renders int64 as strings and omits zero fields.
std::int64_t int_field(const json& object, const char* name) {
  if (!object.is_object() || !object.contains(name)) return 0;
  const json& v = object[name];
  if (v.is_number_integer()) return v.get<std::int64_t>();
  if (v.is_string()) {
    try {
      return std::stoll(v.get<std::string>());
    } catch (const std::exception&) {
      throw EtcdError(fmt::format("etcd: field {} is not a number: {}", name, v.dump()));
    }
  }
  return 0;
}

KeyValue key_value(const json& kv) {
  KeyValue out;
  out.key = unb64(kv.value("key", json()));
  out.value = unb64(kv.value("value", json()));
  out.create_revision = int_field(kv, "create_revision");
  out.mod_revision = int_field(kv, "mod_revision");
  out.version = int_field(kv, "version");
  out.lease = int_field(kv, "lease");
  return out;
}

// The end of the range of every key that starts with prefix.
std::string prefix_end(std::string prefix) {
  while (!prefix.empty()) {
    if (static_cast<unsigned char>(prefix.back()) < 0xff) {
      prefix.back() = static_cast<char>(prefix.back() + 1);
      return prefix;
    }
    prefix.pop_back();
  }
  return std::string(1, '\0');
}

}  // namespace

std::vector<std::string> split_endpoints(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    const auto comma = text.find(',', start);
    std::string part = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!part.empty()) out.push_back(part);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

EtcdClient::EtcdClient(std::vector<std::string> endpoints, std::chrono::milliseconds timeout)
    : endpoints_(std::move(endpoints)), timeout_(timeout) {
  if (endpoints_.empty()) throw EtcdError("etcd: no endpoints");
  for (const auto& e : endpoints_) {
    std::string text = e;
    if (text.rfind("http://", 0) == 0) text = text.substr(7);
    if (text.rfind("https://", 0) == 0) throw EtcdError("etcd endpoint " + e + ": https is not supported (plain http on a trusted network)");
    if (!text.empty() && text.back() == '/') text.pop_back();
    const auto colon = text.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
      throw EtcdError("etcd endpoint '" + e + "': expected host:port");
    parsed_.push_back({text.substr(0, colon), text.substr(colon + 1)});
  }
}

// One request to one endpoint, bounded by the timeout as a whole (Beast's
// timeouts apply to asynchronous operations only, so this runs them on a
// private io_context).  Throws EtcdError for etcd's own answers and
// boost::system::system_error when the endpoint cannot be reached in time.
std::string EtcdClient::call_one(std::size_t index, const std::string& path, const std::string& body) {
  const Endpoint& endpoint = parsed_[index];
  boost::asio::io_context io;
  tcp::resolver resolver(io);
  beast::tcp_stream stream(io);
  http::request<http::string_body> request{http::verb::post, path, 11};
  request.set(http::field::host, endpoint.host);
  request.set(http::field::content_type, "application/json");
  request.body() = body;
  request.prepare_payload();
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(64u << 20);
  // A keepalive answer is a stream that stays open: its first line is the answer.
  const bool first_line_only = path == "/v3/lease/keepalive";
  boost::system::error_code failure;
  bool done = false;

  std::function<void(boost::system::error_code, std::size_t)> on_read = [&](boost::system::error_code ec, std::size_t) {
    if (ec == http::error::need_buffer) ec = {};
    if (ec) {
      failure = ec;
      return;
    }
    if (parser.is_done() || (first_line_only && parser.is_header_done() &&
                             parser.get().body().find('\n') != std::string::npos)) {
      done = true;
      stream.cancel();
      return;
    }
    http::async_read_some(stream, buffer, parser, on_read);
  };
  const auto endpoints = resolver.resolve(endpoint.host, endpoint.port);
  stream.expires_after(timeout_);
  stream.async_connect(endpoints, [&](boost::system::error_code ec, const tcp::endpoint&) {
    if (ec) {
      failure = ec;
      return;
    }
    http::async_write(stream, request, [&](boost::system::error_code ec, std::size_t) {
      if (ec) {
        failure = ec;
        return;
      }
      http::async_read_some(stream, buffer, parser, on_read);
    });
  });
  io.run();
  if (!done) {
    if (!failure) failure = boost::asio::error::timed_out;
    if (failure == beast::error::timeout) failure = boost::asio::error::timed_out;
    throw boost::system::system_error(failure);
  }
  if (first_line_only) {
    const std::string text = parser.get().body();
    return text.substr(0, text.find('\n'));
  }
  auto& response = parser.get();
  if (response.result() != http::status::ok) {
    json error = json::parse(response.body(), nullptr, false);
    const std::string message = error.is_object() ? error.value("message", response.body()) : response.body();
    throw EtcdError(fmt::format("etcd {}:{} {}: {}", endpoint.host, endpoint.port, path, message));
  }
  return response.body();
}

std::string EtcdClient::call(const std::string& path, const std::string& body) {
  std::string failures;
  for (std::size_t attempt = 0; attempt < parsed_.size(); ++attempt) {
    const std::size_t index = (preferred_ + attempt) % parsed_.size();
    try {
      std::string reply = call_one(index, path, body);
      preferred_ = index;
      return reply;
    } catch (const EtcdError&) {
      throw;  // etcd's own answer (no leader, lease not found): the same on every member
    } catch (const std::exception& e) {
      failures += fmt::format("{}{}: {}", failures.empty() ? "" : "; ", endpoints_[index], e.what());
    }
  }
  throw EtcdError(fmt::format("etcd {}: no endpoint answered ({})", path, failures));
}

std::vector<EtcdClient::MemberStatus> EtcdClient::member_status() {
  std::vector<MemberStatus> out;
  for (std::size_t i = 0; i < parsed_.size(); ++i) {
    MemberStatus m;
    m.endpoint = endpoints_[i];
    try {
      const json reply = json::parse(call_one(i, "/v3/maintenance/status", "{}"), nullptr, false);
      const std::string leader = reply.is_object() ? reply.value("leader", "0") : "0";
      if (!leader.empty() && leader != "0") {
        m.kind = MemberStatus::Kind::Leader;
        m.detail = "leader " + leader;
      } else {
        m.kind = MemberStatus::Kind::NoLeader;
        m.detail = "no leader";
      }
    } catch (const boost::system::system_error& e) {
      // Refused: the member's machine answered and nothing listens: it is down, not cut off.
      m.kind = e.code() == boost::asio::error::connection_refused ? MemberStatus::Kind::Refused
                                                                  : MemberStatus::Kind::Unreachable;
      m.detail = m.kind == MemberStatus::Kind::Refused ? "down (connection refused)" : e.what();
    } catch (const std::exception& e) {
      m.detail = e.what();
    }
    out.push_back(std::move(m));
  }
  return out;
}

namespace {
json parse_reply(const std::string& text, const std::string& what) {
  json reply = json::parse(text, nullptr, false);
  if (reply.is_discarded() || !reply.is_object()) throw EtcdError("etcd " + what + ": the reply is not JSON: " + text.substr(0, 200));
  if (reply.contains("error")) {
    const json& e = reply["error"];
    throw EtcdError("etcd " + what + ": " + (e.is_object() ? e.value("message", e.dump()) : e.dump()));
  }
  return reply;
}
}  // namespace

std::int64_t EtcdClient::grant_lease(std::int64_t ttl_seconds) {
  const json reply = parse_reply(call("/v3/lease/grant", json{{"TTL", std::to_string(ttl_seconds)}}.dump()), "lease grant");
  const std::int64_t id = int_field(reply, "ID");
  if (id == 0) throw EtcdError("etcd lease grant: no lease id in the reply");
  return id;
}

std::int64_t EtcdClient::keep_alive(std::int64_t lease) {
  const json reply = parse_reply(call("/v3/lease/keepalive", json{{"ID", std::to_string(lease)}}.dump()), "lease keepalive");
  return int_field(reply.value("result", json::object()), "TTL");
}

void EtcdClient::revoke_lease(std::int64_t lease) {
  parse_reply(call("/v3/lease/revoke", json{{"ID", std::to_string(lease)}}.dump()), "lease revoke");
}

std::optional<KeyValue> EtcdClient::get(const std::string& key) {
  const json reply = parse_reply(call("/v3/kv/range", json{{"key", b64(key)}}.dump()), "range " + key);
  const json kvs = reply.value("kvs", json::array());
  if (kvs.empty()) return std::nullopt;
  return key_value(kvs[0]);
}

std::vector<KeyValue> EtcdClient::get_prefix(const std::string& prefix, std::int64_t* revision) {
  const json reply = parse_reply(
      call("/v3/kv/range", json{{"key", b64(prefix)}, {"range_end", b64(prefix_end(prefix))}}.dump()), "range " + prefix);
  if (revision) *revision = int_field(reply.value("header", json::object()), "revision");
  std::vector<KeyValue> out;
  for (const auto& kv : reply.value("kvs", json::array())) out.push_back(key_value(kv));
  return out;
}

void EtcdClient::put(const std::string& key, const std::string& value, std::int64_t lease) {
  json body{{"key", b64(key)}, {"value", b64(value)}};
  if (lease) body["lease"] = std::to_string(lease);
  parse_reply(call("/v3/kv/put", body.dump()), "put " + key);
}

TxnResult EtcdClient::txn(const std::string& body, const std::string& key) {
  const json reply = parse_reply(call("/v3/kv/txn", body), "txn on " + key);
  TxnResult out;
  out.succeeded = reply.value("succeeded", false);
  if (!out.succeeded)
    for (const auto& r : reply.value("responses", json::array()))
      if (r.contains("response_range"))
        for (const auto& kv : r["response_range"].value("kvs", json::array())) out.current = key_value(kv);
  return out;
}

namespace {
json success_ops(const std::string& key, const std::string& value, std::int64_t lease, const EtcdClient::Puts& also) {
  json put{{"key", b64(key)}, {"value", b64(value)}};
  if (lease) put["lease"] = std::to_string(lease);
  json ops = json::array({{{"request_put", put}}});
  for (const auto& [k, v] : also) ops.push_back({{"request_put", {{"key", b64(k)}, {"value", b64(v)}}}});
  return ops;
}
}  // namespace

TxnResult EtcdClient::put_if_absent(const std::string& key, const std::string& value, std::int64_t lease,
                                    const Puts& also) {
  const json body{{"compare", json::array({{{"key", b64(key)}, {"target", "CREATE"}, {"create_revision", "0"}}})},
                  {"success", success_ops(key, value, lease, also)},
                  {"failure", json::array({{{"request_range", {{"key", b64(key)}}}}})}};
  return txn(body.dump(), key);
}

TxnResult EtcdClient::put_if_unchanged(const std::string& key, std::int64_t mod_revision, const std::string& value,
                                       std::int64_t lease, const Puts& also) {
  const json body{
      {"compare", json::array({{{"key", b64(key)}, {"target", "MOD"}, {"mod_revision", std::to_string(mod_revision)}}})},
      {"success", success_ops(key, value, lease, also)},
      {"failure", json::array({{{"request_range", {{"key", b64(key)}}}}})}};
  return txn(body.dump(), key);
}

TxnResult EtcdClient::delete_if_unchanged(const std::string& key, std::int64_t mod_revision) {
  const json body{
      {"compare", json::array({{{"key", b64(key)}, {"target", "MOD"}, {"mod_revision", std::to_string(mod_revision)}}})},
      {"success", json::array({{{"request_delete_range", {{"key", b64(key)}}}}})},
      {"failure", json::array({{{"request_range", {{"key", b64(key)}}}}})}};
  return txn(body.dump(), key);
}

}  // namespace modevisor::fleet
