// Emits host x86-64 code into a buffer: instructions through Zydis' encoder,
// and the raw jumps translated code patches when it chains blocks.  Both
// translators (BT32's and BT64's) write with it.
#pragma once

#include <Zydis/Zydis.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "encoder_operands.hpp"

namespace modevisor::bt {

// Translated code holds the active shadow region's base in r12 (loaded from
// Context::region_base on every entry into the cache and after a monitor call).
constexpr ZydisRegister kRegionBase = ZYDIS_REGISTER_R12;

using encode::Op;

// A translation cache: `bytes` of readable, writable, executable memory
// (freed with munmap by its translator).  `engine` names it in the error.
inline std::uint8_t* map_code_cache(std::size_t bytes, const char* engine) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error(std::string(engine) + ": cannot allocate the translation cache");
  return static_cast<std::uint8_t*>(p);
}

class Emitter {
 public:
  Emitter(std::uint8_t* p, std::uint8_t* end) : start_(p), p_(p), end_(end) {}
  std::uint8_t* pos() const { return p_; }
  std::uint32_t off() const { return static_cast<std::uint32_t>(p_ - start_); }
  bool ok() const { return ok_; }
  bool enc_failed() const { return enc_failed_; }
  void reset_to(std::uint8_t* p) {
    p_ = p;
    enc_failed_ = false;
  }
  void b(std::uint8_t v) {
    if (p_ < end_) *p_++ = v; else ok_ = false;
  }
  void d(std::uint32_t v) {
    for (int i = 0; i < 4; ++i) b(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  // Encode one instruction.  `guest`: its memory operand is guest memory, an
  // offset [r32 + disp] (zero-extended in a host register) into the active
  // shadow region, which becomes [r12 + r64 + disp].  `a32`: the 32-bit
  // address size (LEA).
  bool ins(ZydisMnemonic m, std::initializer_list<Op> ops, bool guest = false, bool a32 = false) {
    ZydisEncoderRequest req;
    std::memset(&req, 0, sizeof(req));
    req.machine_mode = ZYDIS_MACHINE_MODE_LONG_64;
    req.mnemonic = m;
    req.operand_count = static_cast<ZyanU8>(ops.size());
    int i = 0;
    for (auto& o : ops) {
      req.operands[i] = o.o;
      if (guest) in_region(req.operands[i]);
      ++i;
    }
    if (a32) req.address_size_hint = ZYDIS_ADDRESS_SIZE_HINT_32;
    if (m == ZYDIS_MNEMONIC_LEA && req.operands[1].mem.size == 0) {
      // The encoder wants the memory operand size of LEA to match the address size.
      for (ZyanU16 sz : {8, 4, 2}) {
        req.operands[1].mem.size = sz;
        ZyanUSize len = static_cast<ZyanUSize>(end_ - p_);
        if (p_ < end_ && ZYAN_SUCCESS(ZydisEncoderEncodeInstruction(&req, p_, &len))) {
          p_ += len;
          return true;
        }
      }
    }
    return raw(req);
  }
  bool raw(const ZydisEncoderRequest& req) {
    ZyanUSize len = static_cast<ZyanUSize>(end_ - p_);
    if (p_ >= end_ || !ZYAN_SUCCESS(ZydisEncoderEncodeInstruction(&req, p_, &len))) {
      if (end_ - p_ < 16) ok_ = false; else enc_failed_ = true;
      return false;
    }
    p_ += len;
    return true;
  }
  // jmp rel32 to an absolute target; returns the address of the rel32 field.
  std::uint8_t* jmp(const void* target) {
    b(0xe9);
    std::uint8_t* site = p_;
    rel32(target);
    return site;
  }
  std::uint8_t* jcc(unsigned cc, const void* target) {
    b(0x0f);
    b(static_cast<std::uint8_t>(0x80 | cc));
    std::uint8_t* site = p_;
    rel32(target);
    return site;
  }
  void rel32(const void* target) {
    auto t = reinterpret_cast<std::intptr_t>(target);
    auto next = reinterpret_cast<std::intptr_t>(p_) + 4;
    d(static_cast<std::uint32_t>(static_cast<std::int32_t>(t - next)));
  }
  // [r32 + disp] -> [r12 + r64 + disp] (r12: the region base); operands
  // already region-relative (host_mem's) or host addresses stay.
  static void in_region(ZydisEncoderOperand& o) {
    if (o.type != ZYDIS_OPERAND_TYPE_MEMORY || o.mem.index != ZYDIS_REGISTER_NONE ||
        ZydisRegisterGetClass(o.mem.base) != ZYDIS_REGCLASS_GPR32)
      return;
    o.mem.index = ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, o.mem.base);
    o.mem.scale = 1;
    o.mem.base = kRegionBase;
  }
  static void patch_rel32(std::uint8_t* site, const void* target) {
    auto t = reinterpret_cast<std::intptr_t>(target);
    auto next = reinterpret_cast<std::intptr_t>(site) + 4;
    std::int32_t v = static_cast<std::int32_t>(t - next);
    std::memcpy(site, &v, 4);
  }

 private:
  std::uint8_t* start_;
  std::uint8_t* p_;
  std::uint8_t* end_;
  bool ok_ = true;
  bool enc_failed_ = false;
};


}  // namespace modevisor::bt
