// Guest basic blocks -> host x86-64 code in an executable translation cache.
#pragma once

#include <Zydis/Zydis.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "adaptive_sites.hpp"
#include "debug_registers.hpp"
#include "context.hpp"

namespace modevisor::bt {

// Translation flavour: bit0 = FPU/SSE instructions must trap (#NM/#UD: CR0.TS/EM).
using TKey = std::uint32_t;
inline constexpr TKey kTKeyFpuTrap = 1;
inline constexpr TKey kTKeyUser = 2;    // CPL 3
inline constexpr TKey kTKeyRing12 = 4;  // CPL 1 or 2 (CPL 0 when neither bit)
inline constexpr TKey kTKeySmap = 8;    // CR4.SMAP: POPFD (may change AC) leaves translated code
// Segmented code (real mode, virtual-8086 mode, 16-bit code or stack
// segments, non-zero CS/DS/ES/SS bases): every memory operand's linear
// address is formed in r13d with the segment base read from the context at
// run time, the offset with the address size's wrap; stack operations use
// SS's base and width.  Flat 32-bit code never has this bit.
inline constexpr TKey kTKeySegmented = 16;
inline constexpr TKey kTKeyCode16 = 32;   // CS.D = 0: decoded as 16-bit code
inline constexpr TKey kTKeyStack16 = 64;  // SS.B = 0: SP wraps at 64 KiB, ESP's upper half stays
inline constexpr TKey kTKeyV86 = 128;     // EFLAGS.VM: the IOPL-sensitive instructions stay the monitor's
// With kTKeySegmented: some segment register limits its offsets (a limit
// below 4 GiB, expand-down, read-only, a null selector: segment_limits.hpp),
// so every memory operand is checked against its segment's window in the
// Context first and leaves through the limit-trap page (#GP(0), #SS(0)).
inline constexpr TKey kTKeyLimits = 256;
// EFLAGS.TF: every instruction is run alone by the dispatcher (an uncached
// one-instruction block), which raises the single-step #DB after it.
inline constexpr TKey kTKeyTrapFlag = 512;

// A guest instruction as Zydis decodes it (kept with special blocks, so the
// monitor decodes each emulated instruction once).
struct DecodedInsn {
  ZydisDecodedInstruction insn;
  ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
};

struct Block {
  std::uint32_t eip = 0;        // guest EIP (offset in CS) of the start
  std::uint32_t cs_base = 0;    // the CS base it was translated for: linear start = cs_base + eip
  std::uint32_t end_eip = 0;    // first byte after the last guest instruction
  std::uint64_t pa_page[2] = {};  // guest-physical code pages
  int n_pages = 1;
  TKey tkey = 0;
  bool special = false;         // first instruction is emulated by the monitor (entry: a monitor call)
  bool monitor_site = false;    // ... because it kept faulting into the monitor (AdaptiveSites)
  bool breakpoint = false;      // ... because it is at an instruction breakpoint (the dispatcher's)
  bool valid = true;
  std::uint8_t* host = nullptr;  // start of host code (IRQ stub)
  std::uint8_t* entry = nullptr; // entry point (after the IRQ stub)
  std::uint32_t host_size = 0;
  std::uint32_t n_insns = 0;
  // host offset of each guest instruction's code -> guest EIP
  std::vector<std::pair<std::uint32_t, std::uint32_t>> side;
  // AH..BH cannot sit beside the REX prefix that guest memory operands
  // ([r12 + ...]) and ESP (r14d) need: such an instruction runs with a
  // borrowed EBP/ESI/EDI (index `reg`, its guest value saved in r11) between
  // host offsets [begin, end), holding the host address (esp=false) or, as a
  // fallback, guest ESP (esp=true).
  struct Swap {
    std::uint32_t begin, end;
    unsigned reg;
    bool esp = true;
  };
  std::vector<Swap> swaps;
  std::unique_ptr<DecodedInsn> decoded;  // special blocks: the instruction, once emulated
  // Special blocks: the instruction translated alone with its memory operand
  // on the vCPU's MMIO stage (emulate_mmio_native), once; freed with the cache.
  Block* staged = nullptr;
  std::uint32_t linear() const { return cs_base + eip; }
};

// Code bytes for translation: up to the end of the first page, plus the
// first bytes of the next page when it can be fetched.
struct CodeWindow {
  std::uint32_t cs_base = 0;  // the bytes start at linear cs_base + eip
  // kTKeyLimits: the block ends before an instruction that crosses CS's
  // limit (one at the start: TranslateStatus::CodeLimit).
  std::uint32_t cs_limit = 0xffffffffu;
  const std::uint8_t* bytes = nullptr;
  std::uint32_t first_page_bytes = 0;  // bytes available in the first page
  std::uint32_t total = 0;             // including the next page's bytes
  std::uint64_t pa_page[2] = {};
};

struct TranslatorStats {
  std::uint64_t blocks_translated = 0, guest_insns_translated = 0, chains = 0, flushes = 0, smc_invalidations = 0;
};

enum class TranslateStatus { Ok, Special, FetchFault, Undefined, CodeLimit };

// Classify an instruction decoded in the mode the translation flavour says
// (16-bit with kTKeyCode16, else 32-bit).
enum class InsnClass { Plain, ControlFlow, Stack, Special };
InsnClass classify(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops, TKey tkey);

class Translator {
 public:
  static constexpr std::size_t kDefaultCacheSize = 64u << 20;
  static constexpr std::uint32_t kMaxInsns = 64;

  explicit Translator(std::size_t cache_bytes = kDefaultCacheSize);
  ~Translator();
  Translator(const Translator&) = delete;
  Translator& operator=(const Translator&) = delete;

  // Translate the block at `eip`.  With redirect_mem, the (single) guest
  // memory operand is redirected to that host address (MMIO emulation).  On FetchFault the first instruction runs
  // into the next page, which could not be fetched.
  TranslateStatus translate(std::uint32_t eip, TKey tkey, const CodeWindow& code, Block** out,
                            std::uint32_t max_insns = kMaxInsns, bool transient = false,
                            const void* redirect_mem = nullptr);
  Block* find(std::uint32_t eip, std::uint64_t pa, TKey tkey, std::uint32_t cs_base = 0);

  // Run translated code from `host` until it exits; returns ctx->exit_reason.
  std::uint64_t enter(Context* ctx, const void* host);

  bool in_cache(std::uintptr_t pc) const {
    return pc >= reinterpret_cast<std::uintptr_t>(cache_) && pc < reinterpret_cast<std::uintptr_t>(cache_end_);
  }
  // The block and guest EIP for a host PC inside translated code.
  Block* block_at(std::uintptr_t pc) const;
  std::uint32_t guest_eip_at(const Block* b, std::uintptr_t pc) const;

  // Patch the rel32 at `site` to jump to `b`'s entry.
  void chain(std::uint64_t site, const Block* b);
  // Invalidate every block with code on this guest-physical page; true if any.
  bool invalidate_page(std::uint64_t pa_page, std::vector<DroppedBlock>* dropped = nullptr);
  void flush();
  bool needs_flush() const { return cache_end_ - cur_ < 64 * 1024; }
  bool has_code_on(std::uint64_t pa_page) const { return by_page_.count(pa_page) != 0; }

  std::uintptr_t exit_from_signal_routine() const { return reinterpret_cast<std::uintptr_t>(exit_signal_); }

  TranslatorStats stats;
  // Instructions translated as monitor calls (owned by the vCPU).
  void set_monitor_sites(const AdaptiveSites* sites) { sites_ = sites; }
  // Enabled instruction breakpoints (the caller flushes when they change).
  // Transient (single-instruction) translations ignore them.
  void set_code_breakpoints(const CodeBreakpoints& bps) { code_breakpoints_ = bps; }

 private:
  struct Key {
    std::uint32_t eip;
    std::uint64_t pa;
    TKey tkey;
    std::uint32_t cs_base;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    std::size_t operator()(const Key& k) const {
      return std::hash<std::uint64_t>()(k.pa * 0x9e3779b97f4a7c15ull ^ (std::uint64_t(k.tkey) << 40) ^ k.eip ^
                                        (std::uint64_t(k.cs_base) << 20));
    }
  };
  void emit_routines();

  CodeBreakpoints code_breakpoints_;
  std::uint8_t* cache_ = nullptr;
  std::uint8_t* cache_end_ = nullptr;
  std::uint8_t* cur_ = nullptr;
  std::uint8_t* blocks_start_ = nullptr;
  std::uint8_t* entry_ = nullptr;        // void entry(Context*, const void* host)
  std::uint8_t* exit_ = nullptr;         // translated code jumps here to leave
  std::uint8_t* exit_signal_ = nullptr;  // the fault handler resumes here (regs already saved)
  std::uint8_t* fpu_load_ = nullptr;     // loads the guest FPU/SSE state (lazily, once per entry)
  std::uint8_t* fpu_ret_ = nullptr;      // what Context::fpu_load points at once it is loaded
  std::uint8_t* monitor_call_ = nullptr; // translated code jumps here for an instruction the monitor emulates
  ZydisDecoder decoder_;
  ZydisDecoder decoder16_;  // CS.D = 0 code
  std::unordered_map<Key, Block*, KeyHash> blocks_;
  std::unordered_map<std::uint64_t, std::vector<Block*>> by_page_;
  std::map<std::uintptr_t, Block*> by_host_;
  std::vector<std::unique_ptr<Block>> all_;
  const AdaptiveSites* sites_ = nullptr;
};

}  // namespace modevisor::bt
