// Short constructors for Zydis encoder operands: R(reg), M(base, disp, size),
// I(imm).  The translator emits host code with them; the differential tests
// assemble guest code with them.
#pragma once

#include <Zydis/Zydis.h>

#include <cstdint>

namespace modevisor::bt::encode {

struct Op {
  ZydisEncoderOperand o{};
};

inline Op R(ZydisRegister r) {
  Op x;
  x.o.type = ZYDIS_OPERAND_TYPE_REGISTER;
  x.o.reg.value = r;
  return x;
}

inline Op M(ZydisRegister base, std::int64_t disp, unsigned size, ZydisRegister index = ZYDIS_REGISTER_NONE,
            unsigned scale = 0) {
  Op x;
  x.o.type = ZYDIS_OPERAND_TYPE_MEMORY;
  x.o.mem.base = base;
  x.o.mem.index = index;
  x.o.mem.scale = static_cast<ZyanU8>(index == ZYDIS_REGISTER_NONE ? 0 : scale);
  x.o.mem.displacement = disp;
  x.o.mem.size = static_cast<ZyanU16>(size);
  return x;
}

inline Op I(std::int64_t v) {
  Op x;
  x.o.type = ZYDIS_OPERAND_TYPE_IMMEDIATE;
  x.o.imm.s = v;
  return x;
}

}  // namespace modevisor::bt::encode
