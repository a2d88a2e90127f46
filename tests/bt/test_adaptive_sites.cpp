// AdaptiveSites: when an instruction that faults into the monitor becomes a
// monitor call, when it goes back to native translation, and that a site
// which keeps flipping stays native.
#include <gtest/gtest.h>

#include "adaptive_sites.hpp"

using modevisor::bt::AdaptiveSites;
using Fault = AdaptiveSites::Fault;

namespace {
constexpr std::uint64_t kPa = 0x12345;

// Runs `n` clean monitor executions; true if the last one unmarked the site.
bool clean_runs(AdaptiveSites& s, std::uint32_t n) {
  bool unmarked = false;
  for (std::uint32_t i = 0; i < n; ++i) unmarked = s.clean(kPa);
  return unmarked;
}
}  // namespace

TEST(BtAdaptiveSites, MmioMarksAtOnceOtherFaultsTheSecondTime) {
  AdaptiveSites s;
  EXPECT_TRUE(s.fault(kPa, Fault::Mmio));
  EXPECT_TRUE(s.marked(kPa));
  EXPECT_FALSE(s.fault(kPa, Fault::Mmio));  // already marked: nothing to retranslate

  AdaptiveSites t;
  EXPECT_FALSE(t.fault(kPa, Fault::TracedWrite));
  EXPECT_FALSE(t.marked(kPa));
  EXPECT_TRUE(t.fault(kPa, Fault::TracedWrite));
  EXPECT_TRUE(t.marked(kPa));
  EXPECT_EQ(t.marks, 1u);
}

TEST(BtAdaptiveSites, CleanRunsInARowUnmarkAndADirtyOneStartsOver) {
  AdaptiveSites s;
  s.fault(kPa, Fault::PageFault);
  s.fault(kPa, Fault::PageFault);
  ASSERT_TRUE(s.marked(kPa));
  EXPECT_FALSE(clean_runs(s, AdaptiveSites::kCleanToUnmark - 1));
  s.dirty(kPa);  // it needed the monitor once more
  EXPECT_FALSE(clean_runs(s, AdaptiveSites::kCleanToUnmark - 1));
  EXPECT_TRUE(s.clean(kPa));
  EXPECT_FALSE(s.marked(kPa));
  EXPECT_EQ(s.unmarks, 1u);
}

TEST(BtAdaptiveSites, ASiteThatKeepsFlippingStaysNative) {
  AdaptiveSites s;
  for (std::uint32_t round = 0; round < AdaptiveSites::kMaxRounds; ++round) {
    EXPECT_FALSE(s.fault(kPa, Fault::TracedWrite));
    EXPECT_TRUE(s.fault(kPa, Fault::TracedWrite)) << "round " << round;
    EXPECT_TRUE(clean_runs(s, AdaptiveSites::kCleanToUnmark));
  }
  // Flipped kMaxRounds times: further faults leave it native.
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(s.fault(kPa, Fault::TracedWrite));
  EXPECT_FALSE(s.marked(kPa));
  EXPECT_EQ(s.marks, AdaptiveSites::kMaxRounds);
  // MMIO still always needs the monitor.
  EXPECT_TRUE(s.fault(kPa, Fault::Mmio));
}
