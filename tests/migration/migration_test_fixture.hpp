// Two "hosts" in one test over loopback TCP: a source guest and a receiving
// host, and the checks every migration test makes when it is over.
#pragma once

#include <gtest/gtest.h>

#include <sstream>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "test_guest.hpp"
#include "test_network.hpp"

namespace modevisor::test {

using namespace std::chrono_literals;

inline const ClusterSecret& cluster_secret() {
  static ClusterSecret s = ClusterSecret::from_string("modevisor test cluster secret 0123456789");
  return s;
}

// A logger whose lines a test can read.
struct CapturedLog {
  std::ostringstream text;
  std::shared_ptr<spdlog::logger> logger;
  explicit CapturedLog(const std::string& name) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(text);
    logger = std::make_shared<spdlog::logger>(name, sink);
    logger->set_level(spdlog::level::info);
    logger->flush_on(spdlog::level::info);
  }
  std::string str() {
    logger->flush();
    return text.str();
  }
};

inline SenderOptions quick_options(const std::string& destination) {
  SenderOptions o;
  o.destination = destination;
  o.io_timeout = 3s;
  o.connect_timeout = 2s;
  o.resolve_attempts = 3;
  o.resolve_interval = 100ms;
  return o;
}

inline ReceiverOptions quick_receiver(std::shared_ptr<spdlog::logger> log = nullptr) {
  ReceiverOptions o;
  o.io_timeout = 3s;
  o.log = std::move(log);
  return o;
}

// "tick a" .. "tick b" lines concatenated from both hosts must count up by one: no gap, no repeat.
inline ::testing::AssertionResult output_continues(const std::vector<std::string>& outputs) {
  std::uint64_t expected = 0;
  std::size_t part = 0;
  for (const auto& out : outputs) {
    std::istringstream in(out);
    std::string word;
    std::uint64_t n;
    while (in >> word >> n) {
      if (word != "tick" || n != expected)
        return ::testing::AssertionFailure() << "part " << part << ": expected tick " << expected << ", got " << word
                                             << " " << n;
      ++expected;
    }
    ++part;
  }
  return ::testing::AssertionSuccess() << expected << " ticks";
}

// Exactly one copy runs, and the run-interval log never shows both hosts at once.
inline void expect_exactly_one_runs(TestGuest& source, TestDestination& dest, const RunLog& runs) {
  const bool here = source.running();
  const bool there = dest.last() && dest.last()->running();
  EXPECT_NE(here, there) << "source running: " << here << ", destination running: " << there;
  EXPECT_FALSE(runs.two_hosts_ran_at_once());
  EXPECT_FALSE(source.resumed_after_discard());
}

// After a completed migration: the destination received the source's RAM page for page.
inline void expect_identical_ram(TestGuest& source, const std::vector<std::uint8_t>& received) {
  ASSERT_TRUE(source.discarded());
  const auto* a = source.guest_ram().host_base();
  ASSERT_EQ(received.size(), source.guest_ram().size());
  std::uint64_t differing = 0, first = UINT64_MAX;
  for (std::uint64_t p = 0; p < received.size() / 4096; ++p)
    if (std::memcmp(a + p * 4096, received.data() + p * 4096, 4096) != 0) {
      ++differing;
      first = std::min(first, p);
    }
  EXPECT_EQ(differing, 0u) << "first differing page " << first;
}

}  // namespace modevisor::test
