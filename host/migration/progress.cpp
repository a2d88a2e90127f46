#include "migration/progress.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace modevisor::host::migration {

const char* to_string(Outcome o) {
  switch (o) {
    case Outcome::Completed: return "completed";
    case Outcome::Refused: return "refused";
    case Outcome::Cancelled: return "cancelled";
    case Outcome::InDoubt: return "in-doubt";
    case Outcome::CommittedUnconfirmed: return "committed-unconfirmed";
  }
  return "?";
}

nlohmann::json to_json(const RoundProgress& p) {
  return {{"round", p.round},
          {"pages_in_round", p.pages_in_round},
          {"bytes_sent", p.bytes_sent},
          {"remaining_dirty_pages", p.remaining_dirty_pages},
          {"dirty_rate_bytes_per_s", p.dirty_rate_bytes_per_s},
          {"bandwidth_bytes_per_s", p.bandwidth_bytes_per_s},
          {"estimated_downtime_ms", p.estimated_downtime_ms},
          {"throttle_percent", p.throttle_percent}};
}

nlohmann::json to_json(const MigrationReport& r) {
  nlohmann::json j = {{"migration_id", r.migration_id},
                      {"destination", r.destination},
                      {"outcome", to_string(r.outcome)},
                      {"protocol_version", r.protocol_version},
                      {"mode", r.mode},
                      {"plugin", r.plugin},
                      {"total_ms", r.total_ms},
                      {"downtime_ms", r.downtime_ms ? nlohmann::json(*r.downtime_ms) : nlohmann::json(nullptr)},
                      {"estimated_downtime_ms", r.estimated_downtime_ms},
                      {"rounds", r.rounds},
                      {"bytes_sent", r.bytes_sent},
                      {"pages_sent", r.pages_sent},
                      {"zero_pages_elided", r.zero_pages_elided},
                      {"final_pages", r.final_pages},
                      {"pages_missed_by_tracking", r.pages_missed_by_tracking},
                      {"ram_bytes", r.ram_bytes},
                      {"state_bytes", r.state_bytes},
                      {"throttle_percent", r.throttle_percent},
                      {"forced", r.forced}};
  nlohmann::json phases = nlohmann::json::object();
  for (const auto& [name, ms] : r.downtime_phases_ms) phases[name] = ms;
  j["downtime_phases_ms"] = phases;
  if (r.outcome != Outcome::Completed) {
    j["failed_step"] = r.failed_step;
    j["reason"] = r.reason;
  }
  if (!r.refusal_reasons.empty()) j["refusal_reasons"] = r.refusal_reasons;
  return j;
}

namespace {
std::string bytes_text(double b) {
  if (b >= 1e9) return fmt::format("{:.2f} GB", b / 1e9);
  if (b >= 1e6) return fmt::format("{:.1f} MB", b / 1e6);
  if (b >= 1e3) return fmt::format("{:.1f} kB", b / 1e3);
  return fmt::format("{:.0f} B", b);
}
}  // namespace

std::string progress_line(const RoundProgress& p) {
  std::string line = fmt::format("round {}: {} sent, dirty {}/s, bandwidth {}/s, est. downtime {:.0f} ms", p.round,
                                 bytes_text(static_cast<double>(p.bytes_sent)), bytes_text(p.dirty_rate_bytes_per_s),
                                 bytes_text(p.bandwidth_bytes_per_s), p.estimated_downtime_ms);
  if (p.throttle_percent) line += fmt::format(", vCPUs throttled {}%", p.throttle_percent);
  return line;
}

std::string summary(const MigrationReport& r) {
  std::string out = fmt::format("migration {} to {}: {}", r.migration_id, r.destination, to_string(r.outcome));
  if (r.outcome != Outcome::Completed) out += fmt::format(" at {}: {}", r.failed_step, r.reason);
  for (const auto& reason : r.refusal_reasons) out += "\n  refused: " + reason;
  out += fmt::format("\n  total time {:.0f} ms, downtime {}, rounds {}, {} sent ({} pages, {} zero pages elided)",
                     r.total_ms, r.downtime_ms ? fmt::format("{:.1f} ms", *r.downtime_ms) : std::string("none"),
                     r.rounds, bytes_text(static_cast<double>(r.bytes_sent)), r.pages_sent, r.zero_pages_elided);
  if (!r.downtime_phases_ms.empty()) {
    out += "\n  downtime:";
    for (const auto& [name, ms] : r.downtime_phases_ms) out += fmt::format(" {} {:.1f} ms,", name, ms);
    out.pop_back();
  }
  if (!r.mode.empty()) out += fmt::format("\n  destination mode {} ({})", r.mode, r.plugin);
  if (r.throttle_percent) out += fmt::format(", vCPUs throttled up to {}%", r.throttle_percent);
  return out;
}

}  // namespace modevisor::host::migration
