// A snapshot file: one paused VM (MachineState + guest RAM), versioned and
// checksummed.
//
//   header   magic "MVSNAP\r\n", format version (u32), section count (u32),
//            XXH3-64 of every byte before the file checksum
//   sections kind (u32), flags (u32), stored length (u64), raw length (u64),
//            XXH3-64 of the stored bytes, then the stored bytes
//   trailer  XXH3-64 of the whole file before it
//
// Sections, each at most once, in this order: declaration (the VM's YAML and
// its file), CPU model (name + CPUID leaves), vCPUs (vcpu_codec), devices
// (the platform's JSON), RAM (size, then the pages that are not all zeros,
// by page number; zstd-compressed).  Reading checks everything before it
// returns anything: a truncated or corrupted file, another format version, an
// unknown section, lengths that disagree, are refused with SnapshotError
// naming the file and the defect.  Lengths are bounded before allocation.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>

#include "platform/guest_ram.hpp"
#include "snapshot/snapshot_error.hpp"
#include "vm/vm.hpp"

namespace modevisor::host {

inline constexpr std::uint32_t kSnapshotFormat = 1;

// Written to a temporary file beside `file`, then renamed over it: a failed
// write leaves no partial snapshot.  Throws SnapshotError.
void write_snapshot(const std::filesystem::path& file, const MachineState& state, const GuestRam& ram);

struct LoadedSnapshot {
  MachineState state;
  std::unique_ptr<GuestRam> ram;
};
LoadedSnapshot read_snapshot(const std::filesystem::path& file);  // throws SnapshotError naming file + what

}  // namespace modevisor::host
