// BT64's translator run alone over the host's own memory, for the
// differential tests and the translator's benchmark: guest state as a plain
// struct, and a minimal dispatcher.
#pragma once

#include <Zydis/Zydis.h>

#include <array>
#include <cstdint>
#include <string>

#include "bt64/context_block.hpp"
#include "bt64/translator64.hpp"

namespace modevisor::bt::bt64 {

struct State {
  std::array<std::uint64_t, 16> gpr{};
  std::uint64_t flags = 2;  // CF PF AF ZF SF OF (and bit 1)
  bool operator==(const State&) const = default;
};

constexpr std::uint64_t kArithFlags = 0x8d5;

// The instruction at `rip`, as text (for failure messages).
inline std::string text_at(std::uint64_t rip) {
  ZydisDisassembledInstruction d;
  if (!ZYAN_SUCCESS(ZydisDisassembleIntel(ZYDIS_MACHINE_MODE_LONG_64, rip, reinterpret_cast<const void*>(rip), 15, &d)))
    return "(undecodable)";
  return std::string(d.text) + " (" + ZydisCategoryGetString(d.info.meta.category) + ")";
}

// A minimal dispatcher for the translator alone (tests and bench/): guest
// memory is the host's own (slots with bias 0: below 2 GiB, and whatever
// map_identity adds), blocks are translated on demand, chained, and entered
// until RIP reaches `end`.  The engine's own dispatcher is the vCPU's.
class TranslatedRunner {
 public:
  TranslatedRunner() {
    block_.set_slot(0, 0);
    block_.set_slot(1, 0);
  }
  // Guest addresses [p, p + bytes) are the host's own.
  void map_identity(const void* p, std::size_t bytes) {
    const auto first = reinterpret_cast<std::uint64_t>(p) >> kSlotShift;
    const auto last = (reinterpret_cast<std::uint64_t>(p) + bytes - 1) >> kSlotShift;
    for (auto slot = first; slot <= last; ++slot) block_.set_slot(slot, 0);
  }
  ContextBlock& block() { return block_; }
  Translator64& translator() { return tr_; }
  // Returns "" or what went wrong.
  std::string run(State& s, std::uint64_t start, std::uint64_t end) {
    Context64* ctx = block_.ctx();
    for (int i = 0; i < 16; ++i) ctx->gpr[i] = s.gpr[i];
    ctx->rflags = (s.flags & kArithFlags) | 2;
    std::uint64_t rip = start, patch = 0;
    for (int steps = 0; rip != end; ++steps) {
      if (max_dispatches && steps > max_dispatches) return "no end after " + std::to_string(max_dispatches) + " dispatches";
      Block64* b = tr_.find(rip);
      if (!b) {
        const CodeBytes code{rip, reinterpret_cast<const std::uint8_t*>(rip), static_cast<std::size_t>(end - rip)};
        const auto st = tr_.translate(code, &b);
        if (st != Translate64Status::Ok)
          return "translation stopped at offset " + std::to_string(rip - start) + ": " + text_at(rip);
      }
      block_.set_fast(rip, b->entry);
      if (patch) tr_.chain(patch, b);
      const std::uint64_t reason = tr_.enter(block_, b->entry);
      rip = ctx->next_rip;
      patch = reason == kExit64Dispatch ? ctx->patch_site : 0;
      if (reason == kExit64Special) return "special exit at offset " + std::to_string(rip - start) + ": " + text_at(rip);
      ++dispatches;
    }
    for (int i = 0; i < 16; ++i) s.gpr[i] = ctx->gpr[i];
    s.flags = (ctx->rflags & kArithFlags) | 2;
    return "";
  }
  std::uint64_t dispatches = 0;
  int max_dispatches = 100000;  // 0: no limit

 private:
  ContextBlock block_;
  Translator64 tr_;
};

}  // namespace modevisor::bt::bt64
