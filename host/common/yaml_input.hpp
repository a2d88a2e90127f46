// Reading a YAML file so that every complaint names file, line and column.
// All of modevisor's YAML (VMs, hosts, CPU profiles, policies, guest OS types)
// is read through this.
#pragma once

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "common/errors.hpp"

namespace modevisor::host {

class YamlInput {
 public:
  // Reads and parses; a missing/unreadable file or a syntax error throws InputError.
  explicit YamlInput(std::filesystem::path file);
  // Parses `content` as if read from `file` (a declaration carried in a snapshot).
  YamlInput(std::filesystem::path file, const std::string& content);

  const YAML::Node& root() const { return root_; }
  const std::filesystem::path& file() const { return file_; }
  std::filesystem::path folder() const { return file_.parent_path(); }

  // An InputError at `node`'s position.
  InputError error(const YAML::Node& node, const std::string& message) const;

  void expect_map(const YAML::Node& node, std::string_view expected) const;
  // Unknown or duplicate keys in a map are errors; the message lists the known ones.
  void reject_unknown_keys(const YAML::Node& map, std::initializer_list<std::string_view> known) const;
  // Keys that appear twice in a map are errors (yaml-cpp keeps both silently).
  void reject_duplicate_keys(const YAML::Node& map) const;
  // map[key], or an error at the map saying the key is missing.  A key written
  // with no value ("memory:") is an error at the key, since yaml-cpp places an
  // empty value at the next token, which would point the user at the wrong line.
  YAML::Node required(const YAML::Node& map, const std::string& key) const;
  // map[key] when present (same empty-value rule), else an undefined node.
  YAML::Node optional(const YAML::Node& map, const std::string& key) const;

  std::string scalar(const YAML::Node& node, std::string_view expected) const;
  bool boolean(const YAML::Node& node) const;
  std::uint64_t unsigned_value(const YAML::Node& node, std::string_view expected) const;
  std::vector<std::string> string_list(const YAML::Node& node, std::string_view expected) const;
  // A scalar with ${NAME} replaced by environment variable NAME; an undefined
  // or malformed reference is an error at the reference's own column.
  std::string expanded_scalar(const YAML::Node& node, std::string_view expected) const;
  // A path (after ${NAME} expansion) relative to the file's folder, made absolute.
  std::filesystem::path path(const YAML::Node& node, std::string_view expected) const;

 private:
  // Column (1-based) of `needle` on the node's first line, or the node's own column.
  int column_of(const YAML::Node& node, std::string_view needle) const;
  // The key node itself (for its position), or an undefined node.
  YAML::Node key_node(const YAML::Node& map, const std::string& key) const;

  std::filesystem::path file_;
  std::vector<std::string> lines_;  // the raw text, to place errors inside a scalar
  YAML::Node root_;
};

}  // namespace modevisor::host
