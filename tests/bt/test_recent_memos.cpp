// The two memos in front of the monitor's slower lookups: the last blocks
// looked up (RecentLookups) and the last two views' regions (RecentRegions).
// What matters is when they must not answer.
#include <gtest/gtest.h>

#include <vector>

#include "recent_lookups.hpp"
#include "recent_regions.hpp"

namespace modevisor::bt {
namespace {

Block block_at(std::uint32_t eip) {
  Block b;
  b.eip = eip;
  b.valid = true;
  return b;
}

TEST(BtRecentLookups, AnswersOnlyForTheSameGenerationRegionAndAddress) {
  RecentLookups memo;
  Block b = block_at(0x1000);
  const auto* region = reinterpret_cast<const Region*>(0x10);
  const auto* other = reinterpret_cast<const Region*>(0x20);
  EXPECT_EQ(memo.find(7, region, 0x1000, 0x1000), nullptr);
  memo.remember(7, region, 0x1000, &b);
  EXPECT_EQ(memo.find(7, region, 0x1000, 0x1000), &b);
  EXPECT_EQ(memo.find(8, region, 0x1000, 0x1000), nullptr);  // a block map changed
  EXPECT_EQ(memo.find(7, other, 0x1000, 0x1000), nullptr);   // another view of memory
  EXPECT_EQ(memo.find(7, region, 0x1000, 0x0ff0), nullptr);  // the same LA under another CS base
  b.valid = false;                                            // invalidated (self-modifying code)
  EXPECT_EQ(memo.find(7, region, 0x1000, 0x1000), nullptr);
}

TEST(BtRecentLookups, FourBlocksOfASystemCallAllStayWhateverTheirAddresses) {
  // Addresses alike in their low bits (which `la % 16` put in one slot),
  // looked up round and round as a system call does.
  RecentLookups memo;
  const auto* user = reinterpret_cast<const Region*>(0x10);
  const auto* kernel = reinterpret_cast<const Region*>(0x20);
  Block blocks[4] = {block_at(0x103d70), block_at(0x103f90), block_at(0x104f90), block_at(0x103d80)};
  const Region* regions[4] = {user, kernel, kernel, user};
  for (int i = 0; i < 4; ++i) memo.remember(1, regions[i], blocks[i].eip, &blocks[i]);
  for (int round = 0; round < 3; ++round)
    for (int i = 0; i < 4; ++i) EXPECT_EQ(memo.find(1, regions[i], blocks[i].eip, blocks[i].eip), &blocks[i]);
}

TEST(BtRecentLookups, ASetKeepsItsTwoLatestAnswers) {
  // Three addresses of one set: the third evicts the oldest.
  const auto* region = reinterpret_cast<const Region*>(0x10);
  std::vector<std::uint32_t> same_set = {0x1000};
  for (std::uint32_t la = 0x1010; same_set.size() < 3; la += 0x10)
    if (RecentLookups::set_of(la) == RecentLookups::set_of(0x1000)) same_set.push_back(la);
  Block a = block_at(same_set[0]), b = block_at(same_set[1]), c = block_at(same_set[2]);
  RecentLookups memo;
  memo.remember(1, region, a.eip, &a);
  memo.remember(1, region, b.eip, &b);
  EXPECT_EQ(memo.find(1, region, a.eip, a.eip), &a);
  EXPECT_EQ(memo.find(1, region, b.eip, b.eip), &b);
  memo.remember(1, region, c.eip, &c);
  EXPECT_EQ(memo.find(1, region, a.eip, a.eip), nullptr);
  EXPECT_EQ(memo.find(1, region, b.eip, b.eip), &b);
  EXPECT_EQ(memo.find(1, region, c.eip, c.eip), &c);
}

TEST(BtRecentRegions, ACplSwitchFlipsBetweenTwoRegionsUntilAnEviction) {
  RecentRegions memo;
  auto* user_region = reinterpret_cast<Region*>(0x10);
  auto* kernel_region = reinterpret_cast<Region*>(0x20);
  const auto user = RecentRegions::view(true, false, 0x80000011, 0x5000, 0x10, 0);
  const auto kernel = RecentRegions::view(false, false, 0x80000011, 0x5000, 0x10, 0);
  EXPECT_EQ(memo.find(user, 0), nullptr);
  memo.remember(user, user_region, 0);
  memo.remember(kernel, kernel_region, 0);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(memo.find(user, 0), user_region);
    EXPECT_EQ(memo.find(kernel, 0), kernel_region);
  }
  // Any register of the view, or SMAP's suspension, is another view.
  EXPECT_EQ(memo.find(RecentRegions::view(false, true, 0x80000011, 0x5000, 0x10, 0), 0), nullptr);
  EXPECT_EQ(memo.find(RecentRegions::view(false, false, 0x80000011, 0x6000, 0x10, 0), 0), nullptr);
  EXPECT_EQ(memo.find(RecentRegions::view(false, false, 0x80010011, 0x5000, 0x10, 0), 0), nullptr);
  // An eviction may have destroyed either region.
  EXPECT_EQ(memo.find(user, 1), nullptr);
  EXPECT_EQ(memo.find(kernel, 1), nullptr);
  // A third view replaces the older of the two.
  auto* third = reinterpret_cast<Region*>(0x30);
  const auto other = RecentRegions::view(true, false, 0x80000011, 0x7000, 0x10, 0);
  memo.remember(other, third, 0);
  EXPECT_EQ(memo.find(other, 0), third);
  EXPECT_EQ(memo.find(user, 0), nullptr);
  EXPECT_EQ(memo.find(kernel, 0), kernel_region);
}

}  // namespace
}  // namespace modevisor::bt
