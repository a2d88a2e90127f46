// BT64: guest 64-bit code -> host x86-64 code.  Most instructions are copied
// with their memory operand confined through the slot table; control flow
// leaves through chainable exits and the indirect-branch table; what the
// monitor must emulate ends the block (DESIGN.md, "BT64").
#pragma once

#include <Zydis/Zydis.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "bt64/context_block.hpp"
#include "fpu_instructions.hpp"

namespace modevisor::bt::bt64 {

struct Block64 {
  std::uint64_t rip = 0;      // guest RIP of the first instruction
  bool compat = false;        // compatibility-mode code (32-bit, CS.L = 0 under EFER.LMA)
  bool supervisor = false;    // translated for CPL 0 (CLI runs in translated code)
  std::uint64_t end_rip = 0;  // first byte after the last translated instruction
  std::uint8_t* entry = nullptr;
  std::uint32_t host_size = 0;
  std::uint32_t n_insns = 0;
  // Host offset of each guest instruction's code -> its guest RIP (faults in
  // translated code are reported at the guest instruction).
  std::vector<std::pair<std::uint32_t, std::uint64_t>> side;
  // An instruction with AH..BH and a memory operand runs with the host
  // address in a borrowed legacy register (host offsets [begin, end)); the
  // guest's value of register `reg` is in Context64::spill meanwhile.
  struct Swap {
    std::uint32_t begin, end;
    int reg;
  };
  std::vector<Swap> swaps;
  // Guest-physical pages its code came from (the second when it crosses a
  // page; kNoPage otherwise), set by the vCPU: a block is used only while
  // its RIP still maps there, and dropped when one of them is written.
  static constexpr std::uint64_t kNoPage = ~0ull;
  std::uint64_t code_pages[2] = {kNoPage, kNoPage};
};

// Guest code bytes at `rip` (what the caller could fetch: up to the end of
// the page, or further when the next page is mapped).
struct CodeBytes {
  std::uint64_t rip = 0;
  const std::uint8_t* bytes = nullptr;
  std::size_t size = 0;
  // Compatibility mode: 32-bit code with flat CS, DS, ES and SS (the caller
  // checks; FS and GS bases come from the context at run time).
  bool compat = false;
  // The guest-physical page of code.rip (staged translations are kept per
  // RIP and redone when it maps elsewhere).
  std::uint64_t page = ~0ull;
  // CPL 0: CLI is translated (clears Context64::vif); elsewhere the monitor's.
  bool supervisor = false;
};

enum class Translate64Status {
  Ok,
  Special,     // the first instruction is the monitor's (a block would be empty)
  FetchFault,  // the first instruction runs past the bytes given
  Undefined,   // the first bytes do not decode (#UD)
};

struct Translator64Stats {
  std::uint64_t blocks = 0, guest_insns = 0, chains = 0, flushes = 0, dropped_blocks = 0;
};

class Translator64 {
 public:
  static constexpr std::size_t kDefaultCacheSize = 32u << 20;
  static constexpr std::uint32_t kMaxInsns = 64;

  explicit Translator64(std::size_t cache_bytes = kDefaultCacheSize);
  ~Translator64();
  Translator64(const Translator64&) = delete;
  Translator64& operator=(const Translator64&) = delete;

  Translate64Status translate(const CodeBytes& code, Block64** out, std::uint32_t max_insns = kMaxInsns);
  Block64* find(std::uint64_t rip, bool compat = false, bool supervisor = false) const;
  // The instruction at code.rip alone, its memory operand on the host
  // buffer `stage` (the same for every call): for an access translated code
  // cannot make itself (a traced page, a device, a code page).  Special: the
  // instruction is not one translated code runs (the emulator's).  Kept until
  // flush(), apart from the blocks.
  Translate64Status translate_staged(const CodeBytes& code, const void* stage, Block64** out);
  // Run translated code from `host` until it exits; returns the exit reason.
  std::uint64_t enter(ContextBlock& block, const void* host);
  // Point the chainable exit whose rel32 is at `site` at `b`.
  void chain(std::uint64_t site, const Block64* b);
  // Every chained exit back to its exit stub (a chain is valid only under
  // the mappings it was made with: after a CR3 write or INVLPG each block
  // is found, and its code pages checked, by the dispatcher again).
  void unchain_all();
  // Drop the blocks (and staged translations) whose code is on
  // guest-physical page `page` (it was written), and every chain.
  std::size_t drop_code_page(std::uint64_t page);
  void flush();
  // Which FPU/SIMD instructions blocks translated from now run themselves
  // (the guest's CR0/CR4 decide; the caller flushes when it changes).
  void set_fpu_gate(FpuGate g) { fpu_gate_ = g; }
  FpuGate fpu_gate() const { return fpu_gate_; }
  bool needs_flush() const { return cache_end_ - cur_ < 64 * 1024; }

  bool in_cache(std::uintptr_t pc) const {
    return pc >= reinterpret_cast<std::uintptr_t>(cache_) && pc < reinterpret_cast<std::uintptr_t>(cache_end_);
  }
  Block64* block_at(std::uintptr_t pc) const;
  // Where a fault handler that stored the guest's registers (and RFLAGS) in
  // the context resumes, to leave translated code with Context64::exit_reason.
  std::uintptr_t exit_from_signal() const { return reinterpret_cast<std::uintptr_t>(exit_from_signal_); }
  std::uint64_t guest_rip_at(const Block64* b, std::uintptr_t pc) const;
  // Which of the engine's routines holds host code address `pc` ("fpu_load
  // +0x4"), for messages about faults outside blocks.
  std::string routine_at(std::uintptr_t pc) const;

  Translator64Stats stats;

 private:
  void emit_routines();

  std::uint8_t* cache_ = nullptr;
  std::uint8_t* cache_end_ = nullptr;
  std::uint8_t* cur_ = nullptr;
  std::uint8_t* blocks_start_ = nullptr;
  std::uint8_t* entry_ = nullptr;  // std::uint64_t entry(Context64*, const void* host)
  std::uint8_t* exit_ = nullptr;   // translated code jumps here to leave (reason and next_rip set)
  std::uint8_t* exit_from_signal_ = nullptr;  // the same with the guest's registers stored already
  std::uint8_t* fpu_load_ = nullptr;  // loads the guest's FPU/SSE state (Context64::fpu_load)
  FpuGate fpu_gate_;
  // Distinct for every (RIP, flavour, CPL 0 or not): compatibility-mode RIPs
  // have bit 63 free, and flipping bit 62 of any of them is non-canonical.
  static std::uint64_t key_of(std::uint64_t rip, bool compat, bool supervisor) {
    return (compat ? rip | (1ull << 63) : rip) ^ (supervisor ? 0 : 1ull << 62);
  }
  ZydisDecoder decoder_;
  ZydisDecoder decoder_compat_;
  std::unordered_map<std::uint64_t, Block64*> blocks_;
  std::unordered_map<std::uint64_t, Block64*> staged_;
  std::map<std::uintptr_t, Block64*> by_host_;
  std::vector<std::uint64_t> chained_sites_;  // rel32s patched to a block since the last unchain_all
  std::vector<std::unique_ptr<Block64>> all_;
};

}  // namespace modevisor::bt::bt64
