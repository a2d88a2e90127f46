// Guest code blobs for the KVM integration tests (see guest_blobs.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

extern "C" {
extern const unsigned char g_rm_io_start[], g_rm_io_end[];
extern const unsigned char g_pm_mmio_start[], g_pm_mmio_end[];
extern const unsigned char g_paging_start[], g_paging_end[];
extern const unsigned char g_ops_start[], g_ops_end[], g_ops_de[], g_ops_pf[], g_ops_int80[];
extern const unsigned char g_state_start[], g_state_end[];
extern const unsigned char g_triple_start[], g_triple_end[];
extern const unsigned char g_xcr0_start[], g_xcr0_end[];
extern const unsigned char g_irq_start[], g_irq_end[], g_irq_handler[], g_irq_spin[], g_irq_window[];
extern const unsigned char g_dirty_start[], g_dirty_end[];
extern const unsigned char g_nmi_start[], g_nmi_end[], g_nmi_handler[], g_nmi_hlt[], g_nmi_init[];
extern const unsigned char g_sipi_start[], g_sipi_end[];
extern const unsigned char g_lm_start[], g_lm_end[], g_lm_after_syscall[], g_lm_syscall[];
}

namespace modevisor::test {

inline constexpr std::uint64_t kGdtBase = 0x800, kIdtBase = 0x1000, kDataBase = 0x3000, kCodeBase = 0x4000,
                               kStackTop = 0x9000, kPageDir = 0x10000, kPageTable = 0x11000;

inline std::span<const unsigned char> blob(const unsigned char* start, const unsigned char* end) {
  return {start, static_cast<std::size_t>(end - start)};
}
// Guest address of a label inside a blob loaded at kCodeBase.
inline std::uint32_t guest_addr(const unsigned char* start, const unsigned char* label) {
  return static_cast<std::uint32_t>(kCodeBase + (label - start));
}

}  // namespace modevisor::test
