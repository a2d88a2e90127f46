#include "selection/guest_os.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "config_test_support.hpp"

namespace modevisor::host {
namespace {

using ::testing::HasSubstr;
using testing::expect_input_error;
using testing::TempDir;

const std::filesystem::path kShippedTable = std::filesystem::path(MODEVISOR_SOURCE_DIR) / "configs/guest-os.yaml";

struct ExpectedType {
  const char* name;
  unsigned bits;
  const char* family;
};

constexpr ExpectedType kExpected[] = {
    {"linux-32", 32, "linux"},          {"linux-64", 64, "linux"},
    {"windows-xp-32", 32, "windows"},   {"windows-xp-64", 64, "windows"},
    {"windows-7-32", 32, "windows"},    {"windows-7-64", 64, "windows"},
    {"windows-2008-64", 64, "windows"}, {"os2", 32, "os2"},
    {"unixware", 32, "unixware"},       {"openserver", 32, "openserver"},
    {"solaris-10-32", 32, "solaris"},   {"solaris-10-64", 64, "solaris"},
    {"freebsd-32", 32, "freebsd"},      {"freebsd-64", 64, "freebsd"},
    {"other-32", 32, "other"},          {"other-64", 64, "other"},
};

TEST(GuestOsTableTest, ShippedTableHasExactlyTheExpectedTypes) {
  const GuestOsTable table = GuestOsTable::load(kShippedTable);
  std::vector<std::string> expected_names;
  for (const auto& type : kExpected) expected_names.push_back(type.name);
  std::sort(expected_names.begin(), expected_names.end());
  EXPECT_EQ(table.names(), expected_names);
}

TEST(GuestOsTableTest, ShippedTableHasBitnessFamilyAndDescription) {
  const GuestOsTable table = GuestOsTable::load(kShippedTable);
  for (const auto& expected : kExpected) {
    SCOPED_TRACE(expected.name);
    const GuestOsType* type = table.find(expected.name);
    ASSERT_NE(type, nullptr);
    EXPECT_EQ(type->name, expected.name);
    EXPECT_EQ(type->bits, expected.bits);
    EXPECT_EQ(type->family, expected.family);
    EXPECT_FALSE(type->description.empty());
  }
}

TEST(GuestOsTableTest, UnknownTypeIsNotFound) {
  const GuestOsTable table = GuestOsTable::load(kShippedTable);
  EXPECT_EQ(table.find("windows-95"), nullptr);
  EXPECT_EQ(table.find(""), nullptr);
}

class GuestOsTableErrorTest : public ::testing::Test {
 protected:
  InputError load_error(const std::string& yaml) {
    const auto file = dir_.write("guest-os.yaml", yaml);
    return expect_input_error([&] { GuestOsTable::load(file); });
  }
  TempDir dir_;
};

TEST_F(GuestOsTableErrorTest, BitsMustBe32Or64) {
  const InputError e = load_error("a-48:\n  bits: 48\n  family: other\n");
  EXPECT_EQ(e.line(), 2);
  EXPECT_EQ(e.column(), 9);
  EXPECT_THAT(e.message(), HasSubstr("expected 32 or 64"));
}

TEST_F(GuestOsTableErrorTest, RepeatedTypeIsRefused) {
  const InputError e = load_error("a:\n  bits: 32\n  family: x\na:\n  bits: 64\n  family: x\n");
  EXPECT_EQ(e.line(), 4);
  EXPECT_EQ(e.column(), 1);
  EXPECT_THAT(e.message(), HasSubstr("'a' appears twice"));
}

TEST_F(GuestOsTableErrorTest, UnknownAndMissingKeys) {
  InputError e = load_error("a:\n  bits: 32\n  famly: x\n");
  EXPECT_EQ(e.line(), 3);
  EXPECT_THAT(e.message(), HasSubstr("unknown key 'famly'"));
  e = load_error("a:\n  bits: 32\n");
  EXPECT_EQ(e.line(), 2);
  EXPECT_THAT(e.message(), HasSubstr("missing required key 'family'"));
}

}  // namespace
}  // namespace modevisor::host
