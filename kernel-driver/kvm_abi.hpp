// KVM ioctls whose argument struct ends in a flexible array.  Linux's uapi
// headers declare those with __DECLARE_FLEX_ARRAY, an anonymous struct holding
// an empty struct: in C++ the empty struct takes a byte, so sizeof() and the
// array's offset differ from C, and the _IOWR numbers built from sizeof()
// are not the kernel's (KVM answers EINVAL).  These are the C layouts.
#pragma once

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstddef>

namespace modevisor::kvm::abi {

// C layouts: header size == offset of the flexible array.
inline constexpr std::size_t kCpuid2Header = 8;    // kvm_cpuid2 { u32 nent; u32 padding; entries[] }
inline constexpr std::size_t kMsrsHeader = 8;      // kvm_msrs { u32 nmsrs; u32 pad; entries[] }
inline constexpr std::size_t kMsrListHeader = 4;   // kvm_msr_list { u32 nmsrs; indices[] }
inline constexpr std::size_t kXsaveSize = 4096;    // kvm_xsave { u32 region[1024]; extra[] }
inline constexpr std::size_t kStatsDescHeader = 16;  // kvm_stats_desc { u32; s16; u16; u32; u32; char name[] }
inline constexpr std::size_t kSignalMaskHeader = 4;  // kvm_signal_mask { u32 len; u8 sigset[] }
inline constexpr std::size_t kKernelSigsetBytes = 8;  // the kernel's sigset_t on x86-64

inline constexpr unsigned long kGetMsrIndexList = _IOC(_IOC_READ | _IOC_WRITE, KVMIO, 0x02, kMsrListHeader);
inline constexpr unsigned long kGetSupportedCpuid = _IOC(_IOC_READ | _IOC_WRITE, KVMIO, 0x05, kCpuid2Header);
inline constexpr unsigned long kGetMsrs = _IOC(_IOC_READ | _IOC_WRITE, KVMIO, 0x88, kMsrsHeader);
inline constexpr unsigned long kSetMsrs = _IOC(_IOC_WRITE, KVMIO, 0x89, kMsrsHeader);
inline constexpr unsigned long kSetCpuid2 = _IOC(_IOC_WRITE, KVMIO, 0x90, kCpuid2Header);
inline constexpr unsigned long kSetSignalMask = _IOC(_IOC_WRITE, KVMIO, 0x8b, kSignalMaskHeader);
inline constexpr unsigned long kGetXsave = _IOC(_IOC_READ, KVMIO, 0xa4, kXsaveSize);
inline constexpr unsigned long kSetXsave = _IOC(_IOC_WRITE, KVMIO, 0xa5, kXsaveSize);

}  // namespace modevisor::kvm::abi
