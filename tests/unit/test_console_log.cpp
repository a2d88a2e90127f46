// Guest console text in the VM log: tagged, escaped so a guest can neither
// forge a host line nor end one, the host's MONITOR MODE marker never found
// in guest text, and capped.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>

#include <sstream>

#include "vm/console_log.hpp"

namespace modevisor::host {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class ConsoleLogTest : public ::testing::Test {
 protected:
  std::shared_ptr<spdlog::logger> log() {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
    sink->set_pattern("%Y-%m-%dT%H:%M:%S.%e %l| %v");
    return std::make_shared<spdlog::logger>("vm", sink);
  }
  void guest_writes(ConsoleLog& console, std::string_view text) {
    for (char c : text) console.write(static_cast<std::uint8_t>(c));
  }
  std::vector<std::string> lines() {
    std::vector<std::string> out;
    std::istringstream in(out_.str());
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
  }
  std::ostringstream out_;
};

TEST_F(ConsoleLogTest, AGuestCannotForgeAMonitorModeLineOrATimestampedLine) {
  {
    ConsoleLog console(log());
    guest_writes(console, "MONITOR MODE: selected : HWMMU\n");
    guest_writes(console, "ok\r2026-01-01T00:00:00.000 info| MONITOR MODE: forged\x1b[2J\x01\\\n");
  }
  const auto l = lines();
  ASSERT_EQ(l.size(), 2u) << out_.str();
  for (const auto& line : l) {
    EXPECT_THAT(line, Not(HasSubstr("MONITOR MODE"))) << "grep 'MONITOR MODE' finds only the host's lines";
    EXPECT_THAT(line, HasSubstr("info| guest-console| "));
  }
  EXPECT_THAT(l[0], HasSubstr("guest-console| MONITOR\\x20MODE: selected : HWMMU"));
  EXPECT_THAT(l[1], HasSubstr("guest-console| ok\\r2026-01-01T00:00:00.000 info| MONITOR\\x20MODE: forged\\x1b[2J\\x01\\\\"));
}

TEST_F(ConsoleLogTest, CrLfEndsALineAndAPartialLineIsFlushed) {
  {
    ConsoleLog console(log());
    guest_writes(console, "one\r\ntwo");
  }
  const auto l = lines();
  ASSERT_EQ(l.size(), 2u);
  EXPECT_THAT(l[0], testing::EndsWith("guest-console| one"));
  EXPECT_THAT(l[1], testing::EndsWith("guest-console| two"));
}

TEST_F(ConsoleLogTest, LoggingStopsAfterTheLimitWithALineSayingSo) {
  {
    ConsoleLog console(log(), 100);
    for (int i = 0; i < 1000; ++i) guest_writes(console, "0123456789\n");
  }
  const auto l = lines();
  ASSERT_EQ(l.size(), 11u);  // 9 whole lines (99 bytes), the 100th byte as a partial line, the cap, nothing more
  EXPECT_THAT(l[9], testing::EndsWith("guest-console| 0"));
  EXPECT_THAT(l.back(), HasSubstr("more than 100 bytes to its console; the rest is not logged"));
}

}  // namespace
}  // namespace modevisor::host
