// VM declarations in YAML.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "selection/guest_os.hpp"

namespace modevisor::host {

// monitor.virtual_exec / monitor.virtual_mmu: hints, never orders.
enum class TechniqueHint { Automatic, Software, Hardware };
std::string_view to_string(TechniqueHint hint);

struct VmConfig {
  std::filesystem::path file;  // where it was declared
  std::string name;
  struct Guest {
    GuestOsType os;
    std::filesystem::path kernel;  // multiboot ELF or Linux bzImage, absolute
    std::string cmdline;
    std::filesystem::path initrd;  // empty when none, else absolute
  } guest;
  std::uint64_t memory_bytes = 0;
  unsigned vcpus = 1;
  struct Monitor {
    TechniqueHint virtual_exec = TechniqueHint::Automatic;
    TechniqueHint virtual_mmu = TechniqueHint::Automatic;
  } monitor;
  bool fault_tolerance = false;
  std::string cpu_model = "host";  // a name from platform/cpu_model.hpp
};

// Parse and validate; relative paths are resolved against the file's folder.
// Throws InputError naming file, line, column and what was expected.
VmConfig load_vm_config(const std::filesystem::path& file, const GuestOsTable& guest_os);
// The same from the declaration's text (as a snapshot carries it), as if read from `file`.
VmConfig parse_vm_config(const std::string& yaml, const std::filesystem::path& file, const GuestOsTable& guest_os);

// "256MiB", "1GiB", "512M", "1073741824" (bytes).  Throws std::invalid_argument.
std::uint64_t parse_memory_size(std::string_view text);

}  // namespace modevisor::host
