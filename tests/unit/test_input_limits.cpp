// Input that used to be accepted silently or read without bound: duplicate
// keys anywhere, a second YAML document, numbers too large for their field,
// unknown guest OS families in a policy, and files too large for what they
// are (/dev/zero, a sparse multi-GiB file).  Each is an InputError at its
// FILE:LINE:COL (or naming the file).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/bounded_file.hpp"
#include "common/yaml_input.hpp"
#include "config/vm_config.hpp"
#include "config_test_support.hpp"
#include "selection/guest_os.hpp"
#include "selection/policy.hpp"

namespace modevisor::host {
namespace {

using testing::expect_input_error;
using testing::TempDir;
using ::testing::HasSubstr;

const std::filesystem::path kConfigs = std::filesystem::path(MODEVISOR_SOURCE_DIR) / "configs";

// A valid policy with `preference` as its only preference rule and `modes`
// as its modes map.
std::string policy_text(const std::string& modes, const std::string& preference) {
  return "name: test\n"
         "modes:\n" +
         modes +
         "preferences:\n" + preference;
}
const std::string kModes =
    "  BT:\n"
    "    - bits: [32]\n"
    "  HV:\n"
    "    - bits: [32, 64]\n"
    "  HWMMU:\n"
    "    - bits: [32, 64]\n";

TEST(PolicyInput, DuplicatedModeKeyIsRejectedAtTheSecondKey) {
  TempDir dir;
  const auto file = dir.write("p.yaml", policy_text(kModes + "  BT:\n    - bits: [64]\n",
                                                    "  - order: [HWMMU, HV, BT]\n"));
  EXPECT_ERROR_AT(expect_input_error([&] { load_policy(file, GuestOsTable::load(kConfigs / "guest-os.yaml")); }),
                  9, 3, "key 'BT' appears twice");
}

TEST(PolicyInput, UnknownOsFamilyIsRejectedAtTheName) {
  TempDir dir;
  const auto file = dir.write("p.yaml", policy_text(kModes, "  - when: {os_family: [linux, beos]}\n"
                                                            "    order: [HWMMU, HV, BT]\n"));
  EXPECT_ERROR_AT(expect_input_error([&] { load_policy(file, GuestOsTable::load(kConfigs / "guest-os.yaml")); }),
                  10, 31, "unknown guest OS family 'beos'");
}

TEST(PolicyInput, ThePoliciesShippedUseOnlyKnownFamilies) {
  const GuestOsTable guest_os = GuestOsTable::load(kConfigs / "guest-os.yaml");
  for (const auto& name : list_policies(kConfigs)) {
    EXPECT_NO_THROW(load_policy(kConfigs / "policies" / (name + ".yaml"), guest_os)) << name;
    // The one-argument form finds guest-os.yaml beside the policies folder.
    EXPECT_NO_THROW(load_policy(kConfigs / "policies" / (name + ".yaml"))) << name;
  }
}

TEST(PolicyInput, APolicyInTheConfigDirIsCheckedAgainstItsGuestOsTable) {
  TempDir dir;
  std::filesystem::copy_file(kConfigs / "guest-os.yaml", dir.path() / "guest-os.yaml");
  const auto file = dir.write("policies/p.yaml", policy_text(kModes, "  - when: {os_family: [amigaos]}\n"
                                                                    "    order: [HWMMU, HV, BT]\n"));
  EXPECT_ERROR_AT(expect_input_error([&] { load_policy(file); }), 10, 24, "unknown guest OS family 'amigaos'");
}

TEST(PolicyInput, BitsBeyond32BitsIsNotTruncatedInto32) {
  TempDir dir;
  // 4294967328 = 2^32 + 32: a cast to unsigned reads it as 32.
  const auto in_rule = dir.write("a.yaml", policy_text("  BT:\n    - bits: [4294967328]\n", "  - order: [BT]\n"
                                                                                          "    disallow: [HV, HWMMU]\n"));
  EXPECT_ERROR_AT(expect_input_error([&] { load_policy_checked(in_rule, nullptr); }), 4, 14,
                  "expected 32 or 64, found 4294967328");
  const auto in_when = dir.write("b.yaml", policy_text(kModes, "  - when: {bits: 4294967328}\n"
                                                               "    order: [HWMMU, HV, BT]\n"));
  EXPECT_ERROR_AT(expect_input_error([&] { load_policy_checked(in_when, nullptr); }), 10, 18,
                  "expected 32 or 64, found 4294967328");
  const auto guest_os = dir.write("guest-os.yaml", "odd-64:\n  bits: 4294967360\n  family: other\n");
  EXPECT_ERROR_AT(expect_input_error([&] { GuestOsTable::load(guest_os); }), 2, 9,
                  "expected 32 or 64, found 4294967360");
}

TEST(YamlInputLimits, ASecondDocumentIsRejectedWhereItStarts) {
  TempDir dir;
  const auto file = dir.write("two.yaml", "name: a\n---\nname: b\n");
  EXPECT_ERROR_AT(expect_input_error([&] { YamlInput in(file); }), 3, 1, "a second YAML document");
  // An empty second document too: its "---" is where it starts.
  const auto trailing = dir.write("trailing.yaml", "name: a\n---\n");
  EXPECT_ERROR_AT(expect_input_error([&] { YamlInput in(trailing); }), 2, 1, "a second YAML document");
  // One document with explicit markers is fine.
  EXPECT_NO_THROW(YamlInput(dir.write("one.yaml", "---\nname: a\n...\n")));
}

TEST(YamlInputLimits, DuplicateKeysAreRejectedInEveryMapOfTheFile) {
  TempDir dir;
  const auto file = dir.write("dup.yaml", "outer:\n  list:\n    - {a: 1, b: 2, a: 3}\n");
  EXPECT_ERROR_AT(expect_input_error([&] { YamlInput in(file); }), 3, 20, "key 'a' appears twice");
}

TEST(YamlInputLimits, DevZeroIsRefusedAfterTheLimitNotReadForever) {
  const InputError e = expect_input_error([] { YamlInput in("/dev/zero"); });
  EXPECT_THAT(e.what(), HasSubstr("/dev/zero: YAML file: more than 1 MiB to read"));
  EXPECT_THAT(e.what(), HasSubstr("a device or pipe"));
}

TEST(YamlInputLimits, ADirectoryIsNotAFile) {
  TempDir dir;
  const InputError e = expect_input_error([&] { YamlInput in(dir.path()); });
  EXPECT_THAT(e.what(), HasSubstr("is a directory"));
}

TEST(BoundedFile, ASparseHugeFileIsRefusedBeforeReading) {
  TempDir dir;
  const auto file = dir.path() / "sparse.bin";
  std::ofstream(file).close();
  std::filesystem::resize_file(file, 8ull << 30);
  const InputError e = expect_input_error([&] { read_bounded_file(file, 64 << 20, "kernel image"); });
  EXPECT_THAT(e.what(), HasSubstr("kernel image: the file is 8589934592 bytes; at most 64 MiB are accepted"));
}

TEST(BoundedFile, AFileAtTheLimitIsReadWhole) {
  TempDir dir;
  const auto file = dir.write("exact.txt", std::string(4096, 'y'));
  EXPECT_EQ(read_bounded_text(file, 4096, "text").size(), 4096u);
  EXPECT_THROW(read_bounded_text(file, 4095, "text"), InputError);
}

TEST(BoundedFile, AMissingFileNamesItself) {
  const InputError e = expect_input_error([] { read_bounded_file("/nonexistent/initrd", 1 << 20, "initrd"); });
  EXPECT_THAT(e.what(), HasSubstr("/nonexistent/initrd: initrd: cannot read the file (No such file or directory)"));
}

}  // namespace
}  // namespace modevisor::host
