#include "platform/cpu_model.hpp"

#include <cstring>
#include <stdexcept>

namespace modevisor::host {

namespace {

api::CpuidLeaf vendor_leaf(std::uint32_t max_leaf, const char (&vendor)[13]) {
  api::CpuidLeaf l;
  l.eax = max_leaf;
  std::memcpy(&l.ebx, vendor, 4);
  std::memcpy(&l.edx, vendor + 4, 4);
  std::memcpy(&l.ecx, vendor + 8, 4);
  return l;
}

api::CpuidTable portable_32() {
  api::CpuidLeaf basic;
  basic.function = 1;
  basic.eax = 0x000006f1;                // family 6, model 15, stepping 1
  basic.ebx = (1u << 16) | (8u << 8);    // 1 logical processor, 64-byte CLFLUSH lines
  basic.ecx = 1u << 31;                  // hypervisor present
  basic.edx = (1u << 0) | (1u << 3) | (1u << 4) | (1u << 5) | (1u << 6) | (1u << 8) | (1u << 9) | (1u << 11) |
              (1u << 13) | (1u << 15) | (1u << 16) | (1u << 23) | (1u << 24) | (1u << 25) | (1u << 26);
  api::CpuidLeaf ext_max;
  ext_max.function = 0x80000000;
  ext_max.eax = 0x80000001;
  api::CpuidLeaf ext;
  ext.function = 0x80000001;
  ext.edx = 1u << 20;  // NX
  return {vendor_leaf(1, "GenuineIntel"), basic, ext_max, ext};
}

}  // namespace

std::vector<std::string> cpu_model_names() { return {"host", "portable-32"}; }

api::CpuidTable cpu_model(std::string_view name) {
  if (name == "host") return {};
  if (name == "portable-32") return portable_32();
  throw std::invalid_argument("unknown CPU model '" + std::string(name) + "'");
}

}  // namespace modevisor::host
