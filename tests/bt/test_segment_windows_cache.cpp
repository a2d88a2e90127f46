// The segment-windows cache on its own: which offsets each register allows,
// when a set is limited (the limits flavour), and that a set is computed
// once and remembered among the last four.
#include <gtest/gtest.h>

#include <vector>

#include "segment_windows_cache.hpp"

namespace modevisor::bt {
namespace {

api::Segment flat(std::uint8_t type, std::uint8_t dpl) {
  return api::Segment{.selector = 0, .base = 0, .limit = 0xffffffffu, .type = type, .s = true, .dpl = dpl,
                      .present = true, .avl = false, .l = false, .db = true, .g = true, .unusable = false};
}
api::Segment null_segment() {
  api::Segment s;
  s.unusable = true;
  return s;
}

struct Registers {
  api::Segment es = flat(3, 3), cs = flat(0xb, 3), ss = flat(3, 3), ds = flat(3, 3), fs = null_segment(),
               gs = null_segment();
  const api::Segment* regs[6] = {&es, &cs, &ss, &ds, &fs, &gs};
};

TEST(BtSegmentWindowsCache, FlatSegmentsWithNullFsAndGsAreNotLimited) {
  Registers r;
  SegmentWindowsCache cache;
  const auto& set = cache.lookup(r.regs, true);
  EXPECT_FALSE(set.limited);
  EXPECT_TRUE(set.windows[0][3].allows(0xfffffffcu, 4));  // DS: any offset
  EXPECT_FALSE(set.windows[0][4].allows(0, 1));           // a null FS allows nothing (refused by the bias)
  EXPECT_FALSE(set.windows[1][1].allows(0, 1));           // code is never writable
}

TEST(BtSegmentWindowsCache, ALimitOrAnExpandDownStackMakesTheSetLimited) {
  Registers r;
  r.ds.limit = 0xfff;
  SegmentWindowsCache cache;
  const auto& limited = cache.lookup(r.regs, true);
  EXPECT_TRUE(limited.limited);
  EXPECT_TRUE(limited.windows[0][3].allows(0xffc, 4));
  EXPECT_FALSE(limited.windows[0][3].allows(0xffd, 4));
  Registers down;
  down.ss.type = 7;  // expand-down, writable
  down.ss.limit = 0xffff;
  const auto& stack = cache.lookup(down.regs, true);
  EXPECT_TRUE(stack.limited);
  EXPECT_FALSE(stack.windows[1][2].allows(0xffff, 1));
  EXPECT_TRUE(stack.windows[1][2].allows(0x10000, 4));
}

TEST(BtSegmentWindowsCache, ASetIsComputedOnceAndRememberedAmongTheLastFour) {
  Registers user, kernel;
  kernel.cs.dpl = 0;
  kernel.cs.limit = 0x7fffffff;  // a different key: CS's limit shapes the branch window
  bool fresh = false;
  SegmentWindowsCache cache;
  const auto* u = &cache.lookup(user.regs, true, &fresh);
  EXPECT_TRUE(fresh);
  const auto* k = &cache.lookup(kernel.regs, true, &fresh);
  EXPECT_TRUE(fresh);
  EXPECT_NE(u, k);
  // A system call's flips: both remembered, nothing computed again.  Equal
  // registers built elsewhere (another selector, base, DPL) are the same key.
  Registers user_again;
  user_again.cs.selector = 0x1b;
  EXPECT_EQ(&cache.lookup(user_again.regs, true, &fresh), u);
  EXPECT_FALSE(fresh);
  EXPECT_EQ(&cache.lookup(kernel.regs, true, &fresh), k);
  EXPECT_FALSE(fresh);
  EXPECT_EQ(cache.lookup(kernel.regs, true).code.end, 0x80000000u);
  // The mode is part of the key: real mode checks the limit only.
  const auto& real = cache.lookup(user.regs, false, &fresh);
  EXPECT_TRUE(fresh);
  EXPECT_TRUE(real.windows[0][4].allows(0, 1));  // FS's hidden limit, no null-selector rule
  // Three more sets: the first takes the free entry, the next two evict the
  // least recently used (the user's set, then the kernel's); real mode's stays.
  for (std::uint32_t limit : {0xfffu, 0x1fffu, 0x2fffu}) {
    Registers other;
    other.ds.limit = limit;
    cache.lookup(other.regs, true, &fresh);
    EXPECT_TRUE(fresh);
  }
  cache.lookup(user.regs, false, &fresh);
  EXPECT_FALSE(fresh);
  cache.lookup(kernel.regs, true, &fresh);
  EXPECT_TRUE(fresh);
}

// A segment load skips the lookup when the loaded segment has the same
// shape as the one it replaces: same_shape must agree with the key, field by
// field, or a load would leave the Context with another shape's windows.
TEST(BtSegmentWindowsCache, SameShapeAgreesWithTheKeyFieldByField) {
  const api::Segment base = flat(3, 0);
  auto differs_in_key = [&](const api::Segment& other) {
    Registers a, b;
    a.ds = base;
    b.ds = other;
    SegmentWindowsCache cache;
    const auto* first = &cache.lookup(a.regs, true);
    return &cache.lookup(b.regs, true) != first;
  };
  std::vector<api::Segment> changed(5, base);
  changed[0].limit = 0xfffff;
  changed[1].type = 1;  // read-only
  changed[2].s = false;
  changed[3].db = false;
  changed[4].unusable = true;
  for (const auto& c : changed) {
    EXPECT_TRUE(differs_in_key(c));
    EXPECT_FALSE(SegmentWindowsCache::same_shape(base, c));
  }
  std::vector<api::Segment> same(5, base);
  same[0].selector = 0x2b;
  same[1].base = 0x1000;
  same[2].dpl = 3;
  same[3].present = false;
  same[4].g = false;
  for (const auto& c : same) {
    EXPECT_FALSE(differs_in_key(c));
    EXPECT_TRUE(SegmentWindowsCache::same_shape(base, c));
  }
  // The accessed bit a load sets: an unaccessed descriptor has the shape of
  // the accessed segment it becomes.
  api::Segment unaccessed = base;
  unaccessed.type = 2;
  EXPECT_FALSE(SegmentWindowsCache::same_shape(base, unaccessed));
  EXPECT_TRUE(SegmentWindowsCache::same_shape(base, unaccessed, 1));
}

}  // namespace
}  // namespace modevisor::bt
