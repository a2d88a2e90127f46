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

api::CpuidLeaf leaf(std::uint32_t function, std::uint32_t eax, std::uint32_t ebx, std::uint32_t ecx, std::uint32_t edx) {
  api::CpuidLeaf l;
  l.function = function;
  l.eax = eax, l.ebx = ebx, l.ecx = ecx, l.edx = edx;
  return l;
}

// The processor brand string, 16 bytes per leaf 0x80000002-4.
void add_brand(api::CpuidTable& t, const char* brand) {
  char text[48] = {};
  std::strncpy(text, brand, sizeof text - 1);
  for (std::uint32_t i = 0; i < 3; ++i) {
    std::uint32_t r[4];
    std::memcpy(r, text + 16 * i, 16);
    t.push_back(leaf(0x80000002 + i, r[0], r[1], r[2], r[3]));
  }
}

// QEMU's "kvm64" baseline (family 15 model 6, "Common KVM processor"): the
// x86-64 features every KVM host has, plus KVM's paravirtual clock.
api::CpuidTable kvm64() {
  constexpr std::uint32_t edx = (1u << 0) | (1u << 1) | (1u << 2) | (1u << 3) | (1u << 4) | (1u << 5) | (1u << 6) |
                                (1u << 7) | (1u << 8) | (1u << 9) | (1u << 11) | (1u << 12) | (1u << 13) |
                                (1u << 14) | (1u << 15) | (1u << 16) | (1u << 17) | (1u << 19) | (1u << 23) |
                                (1u << 24) | (1u << 25) | (1u << 26);  // FPU..SSE2 incl. VME, MTRR, MCA, PSE36, CLFLUSH
  constexpr std::uint32_t ecx = (1u << 0) | (1u << 13) | (1u << 31);  // SSE3, CX16, hypervisor
  api::CpuidTable t = {vendor_leaf(1, "GenuineIntel"),
                       leaf(1, 0x00000f61, (1u << 16) | (8u << 8), ecx, edx),
                       leaf(0x40000000, 0x40000001, 0x4b4d564b, 0x564b4d56, 0x4d),  // "KVMKVMKVM"
                       leaf(0x40000001, (1u << 0) | (1u << 1) | (1u << 3) | (1u << 24), 0, 0, 0),
                       leaf(0x80000000, 0x80000008, 0, 0, 0),
                       leaf(0x80000001, 0, 0, 0, (1u << 11) | (1u << 20) | (1u << 29))};  // SYSCALL, NX, LM
  add_brand(t, "Common KVM processor");
  t.push_back(leaf(0x80000008, 0x00003028, 0, 0, 0));  // 40-bit physical, 48-bit virtual addresses
  return t;
}

}  // namespace

std::vector<std::string> cpu_model_names() { return {"host", "portable-32", "kvm64"}; }

api::CpuidTable cpu_model(std::string_view name) {
  if (name == "host") return {};
  if (name == "portable-32") return portable_32();
  if (name == "kvm64") return kvm64();
  throw std::invalid_argument("unknown CPU model '" + std::string(name) + "'");
}

}  // namespace modevisor::host
