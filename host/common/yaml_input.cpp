#include "common/yaml_input.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <set>
#include <sstream>

namespace modevisor::host {

namespace {

std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null: return "nothing";
    case YAML::NodeType::Scalar: return fmt::format("'{}'", node.Scalar());
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a map";
    default: return "an undefined value";
  }
}

}  // namespace

YamlInput::YamlInput(std::filesystem::path file) : file_(std::move(file)) {
  std::ifstream in(file_);
  if (!in) throw InputError(file_, 0, 0, "cannot read the file (missing or unreadable)");
  std::stringstream text;
  text << in.rdbuf();
  try {
    root_ = YAML::Load(text.str());
  } catch (const YAML::ParserException& e) {
    throw InputError(file_, e.mark.line + 1, e.mark.column + 1, "YAML syntax error: " + e.msg);
  }
  if (!root_ || root_.IsNull()) throw InputError(file_, 1, 1, "the file is empty");
}

InputError YamlInput::error(const YAML::Node& node, const std::string& message) const {
  const YAML::Mark mark = node.Mark();
  if (mark.is_null()) return InputError(file_, 0, 0, message);
  return InputError(file_, mark.line + 1, mark.column + 1, message);
}

void YamlInput::expect_map(const YAML::Node& node, std::string_view expected) const {
  if (!node.IsMap()) throw error(node, fmt::format("expected {}, found {}", expected, describe(node)));
}

void YamlInput::reject_unknown_keys(const YAML::Node& map, std::initializer_list<std::string_view> known) const {
  std::set<std::string> seen;
  for (const auto& entry : map) {
    const std::string key = entry.first.Scalar();
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      std::string list;
      for (auto k : known) list += (list.empty() ? "" : ", ") + std::string(k);
      throw error(entry.first, fmt::format("unknown key '{}' (expected one of: {})", key, list));
    }
    if (!seen.insert(key).second) throw error(entry.first, fmt::format("key '{}' appears twice", key));
  }
}

YAML::Node YamlInput::required(const YAML::Node& map, const std::string& key) const {
  const YAML::Node& const_map = map;
  YAML::Node value = const_map[key];
  if (!value) throw error(map, fmt::format("missing required key '{}'", key));
  return value;
}

std::string YamlInput::scalar(const YAML::Node& node, std::string_view expected) const {
  if (!node.IsScalar()) throw error(node, fmt::format("expected {}, found {}", expected, describe(node)));
  return node.Scalar();
}

bool YamlInput::boolean(const YAML::Node& node) const {
  const std::string text = scalar(node, "true or false");
  if (text == "true" || text == "yes" || text == "on") return true;
  if (text == "false" || text == "no" || text == "off") return false;
  throw error(node, fmt::format("expected true or false, found '{}'", text));
}

std::uint64_t YamlInput::unsigned_value(const YAML::Node& node, std::string_view expected) const {
  const std::string text = scalar(node, expected);
  std::uint64_t value = 0;
  int base = 10;
  std::string_view digits = text;
  if (digits.size() > 2 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) {
    base = 16;
    digits.remove_prefix(2);
  }
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value, base);
  if (ec != std::errc() || end != digits.data() + digits.size())
    throw error(node, fmt::format("expected {}, found '{}'", expected, text));
  return value;
}

std::vector<std::string> YamlInput::string_list(const YAML::Node& node, std::string_view expected) const {
  if (!node.IsSequence()) throw error(node, fmt::format("expected a list of {}, found {}", expected, describe(node)));
  std::vector<std::string> out;
  for (const auto& item : node) out.push_back(scalar(item, expected));
  return out;
}

std::filesystem::path YamlInput::path(const YAML::Node& node, std::string_view expected) const {
  std::filesystem::path p = scalar(node, expected);
  if (p.is_relative()) p = folder() / p;
  return p.lexically_normal();
}

}  // namespace modevisor::host
