// The blocks the dispatcher and monitor calls looked up last, in front of a
// region's block map: a system call looks up the same four blocks (its
// special instruction, the handler, IRET's, the loop it returns to) every
// time, and the map's lookup (a hash and a division) cost more than the rest
// of a monitor call's lookup.  An answer is exact while no block map changed
// (ShadowMmu::block_map_generation) and for the region it was found in.
#pragma once

#include <array>
#include <cstdint>

#include "translator.hpp"

namespace modevisor::bt {

struct Region;

class RecentLookups {
 public:
  // The block at linear address `la` (CS base + `eip`) in `region`, if a
  // recent lookup found it and `generation` is still the block maps'.
  Block* find(std::uint64_t generation, const Region* region, std::uint32_t la, std::uint32_t eip) const {
    const Entry* set = &entries_[set_of(la)];
    for (int way = 0; way < 2; ++way) {
      const Entry& e = set[way];
      if (e.generation == generation && e.region == region && e.la == la && e.block->valid && e.block->eip == eip)
        return e.block;
    }
    return nullptr;
  }

  // Remembers an answer; the set's other entry is the one before it.
  void remember(std::uint64_t generation, const Region* region, std::uint32_t la, Block* block) {
    Entry* set = &entries_[set_of(la)];
    set[1] = set[0];
    set[0] = Entry{generation, region, la, block};
  }

  // 32 sets of two, a set (the index of its first entry) by a
  // multiplicative hash of the linear address: blocks' low address bits are
  // often alike (with `la % 16`, two of a system call's blocks shared a slot
  // and evicted each other).
  static unsigned set_of(std::uint32_t la) { return ((la * 0x9e3779b1u) >> 27) & ~1u; }

 private:
  struct Entry {
    std::uint64_t generation = ~0ull;
    const Region* region = nullptr;
    std::uint32_t la = 0;
    Block* block = nullptr;
  };
  std::array<Entry, 64> entries_{};
};

}  // namespace modevisor::bt
