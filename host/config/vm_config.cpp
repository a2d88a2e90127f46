#include "config/vm_config.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <limits>
#include <stdexcept>
#include <system_error>

#include "common/errors.hpp"
#include "common/yaml_input.hpp"
#include "platform/cpu_model.hpp"

namespace modevisor::host {

namespace {

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;
constexpr std::uint64_t GiB = 1024 * MiB;

// Guest memory is mapped in 4 KiB pages; 1 MiB leaves room for the real-mode
// area plus a kernel; 3 GiB keeps a 32-bit guest's RAM below its MMIO hole.
constexpr std::uint64_t kMemoryGranule = 4 * KiB;
constexpr std::uint64_t kMinMemory = 1 * MiB;
constexpr std::uint64_t kMaxMemory32 = 3 * GiB;
constexpr std::uint64_t kMaxMemory64 = 64 * GiB;
constexpr std::uint64_t kMaxVcpus = 64;

struct SizeUnit {
  std::string_view suffix;
  std::uint64_t factor;
};
// Binary units only; "MB" is refused rather than guessed (1000^2 or 1024^2?).
constexpr std::array kSizeUnits{
    SizeUnit{"", 1},        SizeUnit{"B", 1},     SizeUnit{"K", KiB},       SizeUnit{"KiB", KiB},
    SizeUnit{"M", MiB},     SizeUnit{"MiB", MiB}, SizeUnit{"G", GiB},       SizeUnit{"GiB", GiB},
    SizeUnit{"T", 1024 * GiB}, SizeUnit{"TiB", 1024 * GiB},
};

std::string format_size(std::uint64_t bytes) {
  if (bytes != 0 && bytes % GiB == 0) return fmt::format("{} GiB", bytes / GiB);
  if (bytes != 0 && bytes % MiB == 0) return fmt::format("{} MiB", bytes / MiB);
  if (bytes != 0 && bytes % KiB == 0) return fmt::format("{} KiB", bytes / KiB);
  return fmt::format("{} bytes", bytes);
}

bool is_valid_vm_name(std::string_view name) {
  if (name.empty() || name == "." || name == "..") return false;  // it becomes a file name
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

TechniqueHint parse_hint(const YamlInput& in, const YAML::Node& node) {
  const std::string text = in.scalar(node, "software, hardware or automatic");
  if (text == "software") return TechniqueHint::Software;
  if (text == "hardware") return TechniqueHint::Hardware;
  if (text == "automatic") return TechniqueHint::Automatic;
  throw in.error(node, fmt::format("expected software, hardware or automatic, found '{}'", text));
}

// An existing regular file; the message shows the absolute path we looked at.
std::filesystem::path existing_file(const YamlInput& in, const YAML::Node& node, std::string_view what) {
  const std::filesystem::path file = in.path(node, fmt::format("a path to the {}", what));
  std::error_code ec;
  const auto status = std::filesystem::status(file, ec);
  if (!std::filesystem::exists(status))
    throw in.error(node, fmt::format("{} '{}' does not exist", what, file.string()));
  if (!std::filesystem::is_regular_file(status))
    throw in.error(node, fmt::format("{} '{}' is not a regular file", what, file.string()));
  return file;
}

VmConfig::Guest parse_guest(const YamlInput& in, const YAML::Node& node, const GuestOsTable& guest_os) {
  in.expect_map(node, "a map with os, kernel and optionally cmdline and initrd");
  in.reject_unknown_keys(node, {"os", "kernel", "cmdline", "initrd"});
  VmConfig::Guest guest;

  const YAML::Node os_node = in.required(node, "os");
  const std::string os_name = in.scalar(os_node, "a guest OS type name");
  const GuestOsType* os = guest_os.find(os_name);
  if (os == nullptr)
    throw in.error(os_node, fmt::format("unknown guest OS type '{}' (valid types: {})", os_name,
                                        fmt::join(guest_os.names(), ", ")));
  guest.os = *os;

  guest.kernel = existing_file(in, in.required(node, "kernel"), "kernel");
  if (const YAML::Node cmdline = in.optional(node, "cmdline"))
    guest.cmdline = in.scalar(cmdline, "a kernel command line (a string)");
  if (const YAML::Node initrd = in.optional(node, "initrd")) guest.initrd = existing_file(in, initrd, "initrd");
  return guest;
}

std::uint64_t parse_memory(const YamlInput& in, const YAML::Node& node, const GuestOsType& os) {
  const std::string text = in.scalar(node, "a memory size such as 256MiB or 1GiB");
  std::uint64_t bytes = 0;
  try {
    bytes = parse_memory_size(text);
  } catch (const std::invalid_argument& e) {
    throw in.error(node, e.what());
  }
  if (bytes % kMemoryGranule != 0)
    throw in.error(node, fmt::format("memory must be a multiple of 4 KiB, found {} bytes", bytes));
  if (bytes < kMinMemory)
    throw in.error(node, fmt::format("memory must be at least 1 MiB, found {}", format_size(bytes)));
  const std::uint64_t limit = os.bits == 64 ? kMaxMemory64 : kMaxMemory32;
  if (bytes > limit)
    throw in.error(node, fmt::format("memory must be at most {} for a {}-bit guest OS type ({}), found {}",
                                     format_size(limit), os.bits, os.name, format_size(bytes)));
  return bytes;
}

}  // namespace

std::string_view to_string(TechniqueHint hint) {
  switch (hint) {
    case TechniqueHint::Automatic: return "automatic";
    case TechniqueHint::Software: return "software";
    case TechniqueHint::Hardware: return "hardware";
  }
  return "unknown";
}

std::uint64_t parse_memory_size(std::string_view text) {
  const auto fail = [&](std::string_view why) {
    return std::invalid_argument(
        fmt::format("'{}' is not a memory size: {} (expected a byte count or a number with "
                    "K, KiB, M, MiB, G, GiB, T or TiB, e.g. 256MiB)",
                    text, why));
  };
  std::uint64_t number = 0;
  const char* const end = text.data() + text.size();
  const auto [after_digits, ec] = std::from_chars(text.data(), end, number);
  if (ec == std::errc::result_out_of_range) throw fail("too large");
  if (ec != std::errc()) throw fail("it does not start with a number");
  std::string_view suffix(after_digits, static_cast<std::size_t>(end - after_digits));
  while (!suffix.empty() && suffix.front() == ' ') suffix.remove_prefix(1);  // "256 MiB" reads fine too
  const auto unit = std::find_if(kSizeUnits.begin(), kSizeUnits.end(),
                                 [&](const SizeUnit& u) { return u.suffix == suffix; });
  if (unit == kSizeUnits.end()) {
    if (suffix == "KB" || suffix == "MB" || suffix == "GB" || suffix == "TB")
      throw fail(fmt::format("'{}' is ambiguous, write {}iB", suffix, suffix.front()));
    throw fail(fmt::format("unknown unit '{}'", suffix));
  }
  if (number > std::numeric_limits<std::uint64_t>::max() / unit->factor) throw fail("too large");
  return number * unit->factor;
}

namespace {
VmConfig parse_vm(const YamlInput& in, const GuestOsTable& guest_os);
}  // namespace

VmConfig load_vm_config(const std::filesystem::path& file, const GuestOsTable& guest_os) {
  return parse_vm(YamlInput(std::filesystem::absolute(file).lexically_normal()), guest_os);
}

VmConfig parse_vm_config(const std::string& yaml, const std::filesystem::path& file, const GuestOsTable& guest_os) {
  return parse_vm(YamlInput(std::filesystem::absolute(file).lexically_normal(), yaml), guest_os);
}

namespace {
VmConfig parse_vm(const YamlInput& in, const GuestOsTable& guest_os) {
  const YAML::Node root = in.root();
  in.expect_map(root, "a VM declaration (a map with name, guest, memory, ...)");
  in.reject_unknown_keys(root, {"name", "guest", "memory", "vcpus", "monitor", "fault_tolerance", "cpu_model"});

  VmConfig vm;
  vm.file = in.file();

  const YAML::Node name = in.required(root, "name");
  vm.name = in.scalar(name, "a VM name");
  if (!is_valid_vm_name(vm.name))
    throw in.error(name, fmt::format("VM name '{}' must be made of letters, digits, '.', '_' and '-' "
                                     "(it names the VM's log file)",
                                     vm.name));

  // guest before memory: the memory limit depends on the guest's bitness.
  vm.guest = parse_guest(in, in.required(root, "guest"), guest_os);
  vm.memory_bytes = parse_memory(in, in.required(root, "memory"), vm.guest.os);

  if (const YAML::Node vcpus = in.optional(root, "vcpus")) {
    const std::uint64_t count = in.unsigned_value(vcpus, "a vCPU count from 1 to 64");
    if (count < 1 || count > kMaxVcpus)
      throw in.error(vcpus, fmt::format("expected a vCPU count from 1 to {}, found {}", kMaxVcpus, count));
    vm.vcpus = static_cast<unsigned>(count);
  }

  if (const YAML::Node monitor = in.optional(root, "monitor")) {
    in.expect_map(monitor, "a map with virtual_exec and/or virtual_mmu");
    in.reject_unknown_keys(monitor, {"virtual_exec", "virtual_mmu"});
    if (const YAML::Node exec = in.optional(monitor, "virtual_exec")) vm.monitor.virtual_exec = parse_hint(in, exec);
    if (const YAML::Node mmu = in.optional(monitor, "virtual_mmu")) vm.monitor.virtual_mmu = parse_hint(in, mmu);
  }

  if (const YAML::Node ft = in.optional(root, "fault_tolerance")) vm.fault_tolerance = in.boolean(ft);
  if (const YAML::Node model = in.optional(root, "cpu_model")) {
    vm.cpu_model = in.scalar(model, "a CPU model name");
    const auto names = cpu_model_names();
    if (std::find(names.begin(), names.end(), vm.cpu_model) == names.end())
      throw in.error(model, fmt::format("unknown CPU model '{}'; the models are: {}", vm.cpu_model,
                                        fmt::join(names, ", ")));
  }
  return vm;
}

}  // namespace

}  // namespace modevisor::host
