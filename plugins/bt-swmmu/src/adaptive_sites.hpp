// Adaptive translation (Adams & Agesen's "adaptive BT"): guest instructions
// that keep faulting into the monitor (an MMIO access, a true #PF taken
// again and again, a #DE, a write to a traced page table) are translated as
// calls into the monitor instead, so they stop costing a host signal each.
// An instruction that then runs cleanly for a while (RAM that the shadow
// could map, no fault) goes back to native translation.
#pragma once

#include <cstdint>
#include <unordered_map>

namespace modevisor::bt {

class AdaptiveSites {
 public:
  // Faults of one kind at one instruction before it is handed to the monitor.
  static constexpr std::uint32_t kFaultsToMark = 2;
  // Clean monitor executions in a row before it is translated natively again.
  static constexpr std::uint32_t kCleanToUnmark = 64;
  // A site that went back to native this often stays native: it flips (e.g.
  // a store into a recycled page-table frame: the first write of each round
  // is traced, the rest are not), and each flip retranslates its code page.
  static constexpr std::uint32_t kMaxRounds = 2;

  enum class Fault { Mmio, PageFault, Divide, TracedWrite };

  // A fault at the instruction starting at guest-physical `pa`; true when it
  // has just become a monitor site (its translations must be dropped).
  bool fault(std::uint64_t pa, Fault kind) {
    Site& s = sites_[pa];
    s.clean = 0;
    if (s.marked) return false;
    if (kind != Fault::Mmio && s.rounds >= kMaxRounds) return false;
    if (kind == Fault::Mmio || ++s.faults >= kFaultsToMark) {
      s.marked = true;
      ++marks;
      return true;
    }
    return false;
  }
  // A monitor execution that needed no monitor; true when the site has just
  // gone back to native translation (its translations must be dropped).
  bool clean(std::uint64_t pa) {
    auto it = sites_.find(pa);
    if (it == sites_.end() || !it->second.marked) return false;
    if (++it->second.clean < kCleanToUnmark) return false;
    it->second = Site{0, 0, false, it->second.rounds + 1};  // remembered: how often it flipped
    ++unmarks;
    return true;
  }
  void dirty(std::uint64_t pa) {
    auto it = sites_.find(pa);
    if (it != sites_.end()) it->second.clean = 0;
  }
  bool marked(std::uint64_t pa) const {
    if (sites_.empty()) return false;
    auto it = sites_.find(pa);
    return it != sites_.end() && it->second.marked;
  }
  void clear() { sites_.clear(); }

  std::uint64_t marks = 0, unmarks = 0;

 private:
  struct Site {
    std::uint32_t faults = 0, clean = 0;
    bool marked = false;
    std::uint32_t rounds = 0;  // times it went back to native
  };
  std::unordered_map<std::uint64_t, Site> sites_;
};

}  // namespace modevisor::bt
