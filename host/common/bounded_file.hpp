// Reading a whole file with a size limit that fits what the file is.  Every
// file modevisor reads whole goes through here, so that /dev/zero, a FIFO
// that never ends or a sparse multi-GiB file is refused with a clear error
// instead of growing the host's memory until it dies.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace modevisor::host {

// Limits by kind of file.  A kernel, initrd or module is also bounded by the
// guest RAM it must be copied into (the caller passes the smaller of the two).
inline constexpr std::uint64_t kMaxYamlFileBytes = 1u << 20;        // VM, host, profile, policy YAML
inline constexpr std::uint64_t kMaxProcTextBytes = 16u << 20;       // /proc/cpuinfo and the like
inline constexpr std::uint64_t kMaxGuestImageBytes = 4ull << 30;    // a 32-bit guest cannot hold more

// The file's bytes.  Throws InputError naming `file` and `what` when the file
// cannot be opened or read, is a directory, or holds more than `limit` bytes
// (a regular file is judged by its size before anything is read; a device or
// pipe is read up to the limit and refused past it).
std::vector<std::uint8_t> read_bounded_file(const std::filesystem::path& file, std::uint64_t limit,
                                            std::string_view what);
std::string read_bounded_text(const std::filesystem::path& file, std::uint64_t limit, std::string_view what);

// A kernel, initrd or module for a VM with `ram_bytes` of RAM: it is copied
// into that RAM (below 4 GiB), so a larger file is refused unread.
std::vector<std::uint8_t> read_guest_image(const std::filesystem::path& file, std::uint64_t ram_bytes,
                                           std::string_view what);

}  // namespace modevisor::host
