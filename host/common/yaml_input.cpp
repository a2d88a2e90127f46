#include "common/yaml_input.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>
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

namespace {
std::string read_yaml_file(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) throw InputError(file, 0, 0, "cannot read the file (missing or unreadable)");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}
}  // namespace

YamlInput::YamlInput(std::filesystem::path file) : YamlInput(file, read_yaml_file(file)) {}

YamlInput::YamlInput(std::filesystem::path file, const std::string& content) : file_(std::move(file)) {
  std::istringstream line_reader(content);
  for (std::string line; std::getline(line_reader, line);) lines_.push_back(line);
  try {
    root_ = YAML::Load(content);
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

void YamlInput::reject_duplicate_keys(const YAML::Node& map) const {
  std::set<std::string> seen;
  for (const auto& entry : map) {
    const std::string key = entry.first.Scalar();
    if (!seen.insert(key).second) throw error(entry.first, fmt::format("key '{}' appears twice", key));
  }
}

YAML::Node YamlInput::key_node(const YAML::Node& map, const std::string& key) const {
  for (const auto& entry : map)
    if (entry.first.IsScalar() && entry.first.Scalar() == key) return entry.first;
  return YAML::Node(YAML::NodeType::Undefined);
}

YAML::Node YamlInput::optional(const YAML::Node& map, const std::string& key) const {
  const YAML::Node& const_map = map;  // the non-const operator[] would insert the key
  YAML::Node value = const_map[key];
  if (value && value.IsNull()) throw error(key_node(map, key), fmt::format("key '{}' has no value", key));
  return value;
}

YAML::Node YamlInput::required(const YAML::Node& map, const std::string& key) const {
  YAML::Node value = optional(map, key);
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

int YamlInput::column_of(const YAML::Node& node, std::string_view needle) const {
  const YAML::Mark mark = node.Mark();
  if (mark.is_null()) return 0;
  if (mark.line >= 0 && static_cast<std::size_t>(mark.line) < lines_.size()) {
    const std::string& line = lines_[mark.line];
    const auto at = line.find(needle, static_cast<std::size_t>(mark.column));
    if (at != std::string::npos) return static_cast<int>(at) + 1;
  }
  return mark.column + 1;  // e.g. a multi-line scalar: the node's start is the best we know
}

std::string YamlInput::expanded_scalar(const YAML::Node& node, std::string_view expected) const {
  const std::string text = scalar(node, expected);
  const int line = node.Mark().is_null() ? 0 : node.Mark().line + 1;
  std::string out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t start = text.find("${", pos);
    if (start == std::string::npos) {
      out.append(text, pos);
      break;
    }
    out.append(text, pos, start - pos);
    const std::size_t close = text.find('}', start + 2);
    if (close == std::string::npos)
      throw InputError(file_, line, column_of(node, text.substr(start)),
                       "unterminated '${' (expected ${NAME})");
    const std::string name = text.substr(start + 2, close - start - 2);
    const std::string reference = text.substr(start, close - start + 1);
    const bool valid_name = !name.empty() && !std::isdigit(static_cast<unsigned char>(name[0])) &&
                            std::all_of(name.begin(), name.end(), [](char c) {
                              return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
                            });
    if (!valid_name)
      throw InputError(file_, line, column_of(node, reference),
                       fmt::format("'{}' is not a valid environment variable reference "
                                   "(expected ${{NAME}}, NAME made of letters, digits and _)",
                                   reference));
    const char* value = std::getenv(name.c_str());
    if (value == nullptr)
      throw InputError(file_, line, column_of(node, reference),
                       fmt::format("environment variable '{}' is not defined (referenced as {})", name,
                                   reference));
    out += value;
    pos = close + 1;
  }
  return out;
}

std::filesystem::path YamlInput::path(const YAML::Node& node, std::string_view expected) const {
  std::filesystem::path p = expanded_scalar(node, expected);
  if (p.empty()) throw error(node, fmt::format("expected {}, found an empty string", expected));
  if (p.is_relative()) p = folder() / p;
  return p.lexically_normal();
}

}  // namespace modevisor::host
