// Guest OS types (configs/guest-os.yaml): the type a VM declares gives its
// bitness and the family that selection policies match their preferences on.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace modevisor::host {

struct GuestOsType {
  std::string name;         // "windows-xp-32"
  unsigned bits = 32;       // 32 or 64
  std::string family;       // "windows", "linux", "os2", ...
  std::string description;  // "Windows XP, 32-bit"
};

class GuestOsTable {
 public:
  static GuestOsTable load(const std::filesystem::path& file);  // throws InputError
  const GuestOsType* find(const std::string& name) const;
  std::vector<std::string> names() const;
  std::vector<std::string> families() const;  // sorted, each once

 private:
  std::map<std::string, GuestOsType> types_;
};

}  // namespace modevisor::host
