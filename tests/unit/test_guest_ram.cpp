// Guest RAM's log of the host's own writes (loaders, devices): what live
// migration merges with the plugin's dirty log.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "platform/guest_ram.hpp"

namespace modevisor::host {
namespace {

bool bit(const std::vector<std::uint64_t>& b, std::uint64_t page) { return (b[page / 64] >> (page % 64)) & 1; }

TEST(GuestRamDirty, MarkedRangesAreTakenOnceAndCleared) {
  GuestRam ram(1u << 20);  // 256 pages
  ram.mark_dirty(0x1ff8, 16);   // straddles pages 1 and 2
  ram.mark_dirty(0xff000, 1);   // the last page
  ram.mark_dirty(0x100000, 8);  // outside RAM: ignored
  auto taken = ram.take_host_dirty();
  ASSERT_EQ(taken.size(), 4u);
  EXPECT_FALSE(bit(taken, 0));
  EXPECT_TRUE(bit(taken, 1));
  EXPECT_TRUE(bit(taken, 2));
  EXPECT_FALSE(bit(taken, 3));
  EXPECT_TRUE(bit(taken, 255));
  auto again = ram.take_host_dirty();
  for (auto w : again) EXPECT_EQ(w, 0u);
}

// A device thread marks every page exactly once while the migration thread
// takes the log over and over: the union of what it took must be every page,
// none lost between a take's read and its clear.
TEST(GuestRamDirty, MarksRacingWithTakesAreNeverLost) {
  constexpr std::uint64_t kPages = 4096;
  GuestRam ram(kPages * 4096);
  std::atomic<bool> done{false};
  std::thread device([&] {
    for (int pass = 0; pass < 2; ++pass)  // each word sees marks from both passes
      for (std::uint64_t p = pass; p < kPages; p += 2) ram.mark_dirty(p * 4096, 1);
    done = true;
  });
  std::vector<std::uint64_t> seen(kPages / 64, 0);
  std::uint64_t takes = 0;
  for (;;) {
    const bool last = done.load();
    auto taken = ram.take_host_dirty();
    ++takes;
    for (std::size_t i = 0; i < seen.size(); ++i) seen[i] |= taken[i];
    if (last) break;
  }
  device.join();
  std::uint64_t missing = 0;
  for (std::uint64_t p = 0; p < kPages; ++p) missing += !bit(seen, p);
  EXPECT_EQ(missing, 0u) << "after " << takes << " takes";
}

}  // namespace
}  // namespace modevisor::host
