#include "selection/guest_os.hpp"

#include <set>

#include <yaml-cpp/yaml.h>

#include "common/errors.hpp"
#include "common/yaml_input.hpp"

namespace modevisor::host {

GuestOsTable GuestOsTable::load(const std::filesystem::path& file) {
  YamlInput in(file);
  GuestOsTable table;
  const YAML::Node root = in.root();
  in.expect_map(root, "guest OS types (a map from type name to {bits, family, description})");
  in.reject_duplicate_keys(root);  // a repeated type would silently replace the first
  for (const auto& entry : root) {
    GuestOsType type;
    type.name = in.scalar(entry.first, "a guest OS type name");
    const YAML::Node& body = entry.second;
    in.expect_map(body, "a map with bits, family and description");
    in.reject_unknown_keys(body, {"bits", "family", "description"});
    type.bits = in.bitness(in.required(body, "bits"));
    type.family = in.scalar(in.required(body, "family"), "a family name such as linux or windows");
    if (body["description"]) type.description = in.scalar(body["description"], "a description");
    table.types_[type.name] = std::move(type);
  }
  return table;
}

const GuestOsType* GuestOsTable::find(const std::string& name) const {
  auto it = types_.find(name);
  return it == types_.end() ? nullptr : &it->second;
}

std::vector<std::string> GuestOsTable::names() const {
  std::vector<std::string> out;
  for (const auto& [name, type] : types_) out.push_back(name);
  return out;
}

}  // namespace modevisor::host

namespace modevisor::host {

std::vector<std::string> GuestOsTable::families() const {
  std::set<std::string> unique;
  for (const auto& [name, type] : types_) unique.insert(type.family);
  return {unique.begin(), unique.end()};
}

}  // namespace modevisor::host
