#include "config/vm_config.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "config_test_support.hpp"
#include "platform/cpu_model.hpp"

namespace modevisor::host {
namespace {

using ::testing::HasSubstr;
using testing::expect_input_error;
using testing::ScopedEnv;
using testing::TempDir;

const std::filesystem::path kSourceDir = MODEVISOR_SOURCE_DIR;
const std::filesystem::path kFixtureDir = MODEVISOR_FIXTURE_DIR;

constexpr std::uint64_t KiB = 1024, MiB = 1024 * KiB, GiB = 1024 * MiB;

class VmConfigTest : public ::testing::Test {
 protected:
  VmConfigTest() : guest_os_(GuestOsTable::load(kSourceDir / "configs/guest-os.yaml")) {
    dir_.write("kernel.bin", "not really a kernel");
    dir_.write("initrd.img", "not really an initrd");
  }

  VmConfig load(const std::string& yaml) { return load_vm_config(dir_.write("vm.yaml", yaml), guest_os_); }
  InputError load_error(const std::string& yaml) {
    return expect_input_error([&] { load(yaml); });
  }
  // A valid VM whose memory line is `memory` (line 5).
  std::string with_memory(const std::string& os, const std::string& memory) {
    return "name: sized\nguest:\n  os: " + os + "\n  kernel: kernel.bin\nmemory: " + memory + "\n";
  }

  GuestOsTable guest_os_;
  TempDir dir_;
};

// ---- values and defaults ----------------------------------------------------

TEST_F(VmConfigTest, MinimalVmGetsDefaults) {
  const VmConfig vm = load(R"(name: tiny
guest:
  os: other-32
  kernel: kernel.bin
memory: 16MiB
)");
  EXPECT_EQ(vm.name, "tiny");
  EXPECT_EQ(vm.file, dir_.path() / "vm.yaml");
  EXPECT_EQ(vm.guest.os.name, "other-32");
  EXPECT_EQ(vm.guest.os.bits, 32u);
  EXPECT_EQ(vm.guest.kernel, dir_.path() / "kernel.bin");
  EXPECT_TRUE(vm.guest.kernel.is_absolute());
  EXPECT_EQ(vm.guest.cmdline, "");
  EXPECT_TRUE(vm.guest.initrd.empty());
  EXPECT_EQ(vm.memory_bytes, 16 * MiB);
  EXPECT_EQ(vm.vcpus, 1u);
  EXPECT_EQ(vm.monitor.virtual_exec, TechniqueHint::Automatic);
  EXPECT_EQ(vm.monitor.virtual_mmu, TechniqueHint::Automatic);
  EXPECT_FALSE(vm.fault_tolerance);
}

TEST_F(VmConfigTest, EveryKeySet) {
  const VmConfig vm = load(R"(name: full_vm-1.0
guest:
  os: windows-7-64
  kernel: kernel.bin
  cmdline: "console=ttyS0 quiet"
  initrd: initrd.img
memory: 4GiB
vcpus: 64
monitor:
  virtual_exec: hardware
  virtual_mmu: software
fault_tolerance: true
)");
  EXPECT_EQ(vm.name, "full_vm-1.0");
  EXPECT_EQ(vm.guest.os.family, "windows");
  EXPECT_EQ(vm.guest.os.bits, 64u);
  EXPECT_EQ(vm.guest.cmdline, "console=ttyS0 quiet");
  EXPECT_EQ(vm.guest.initrd, dir_.path() / "initrd.img");
  EXPECT_EQ(vm.memory_bytes, 4 * GiB);
  EXPECT_EQ(vm.vcpus, 64u);
  EXPECT_EQ(vm.monitor.virtual_exec, TechniqueHint::Hardware);
  EXPECT_EQ(vm.monitor.virtual_mmu, TechniqueHint::Software);
  EXPECT_TRUE(vm.fault_tolerance);
}

TEST_F(VmConfigTest, KernelPathIsRelativeToTheYamlFolderNotTheWorkingDirectory) {
  dir_.write("sub/boot/k.elf", "x");
  const auto file = dir_.write("sub/vm.yaml", "name: a\nguest: {os: linux-32, kernel: boot/k.elf}\nmemory: 1MiB\n");
  const VmConfig vm = load_vm_config(file, guest_os_);
  EXPECT_EQ(vm.guest.kernel, dir_.path() / "sub/boot/k.elf");
}

TEST_F(VmConfigTest, AbsoluteKernelPathIsKept) {
  const auto kernel = dir_.path() / "kernel.bin";
  const VmConfig vm =
      load("name: a\nguest:\n  os: linux-32\n  kernel: " + kernel.string() + "\nmemory: 1MiB\n");
  EXPECT_EQ(vm.guest.kernel, kernel);
}

TEST_F(VmConfigTest, MonitorHintsTakeEachValue) {
  for (const auto& [text, hint] : {std::pair{"software", TechniqueHint::Software},
                                   std::pair{"hardware", TechniqueHint::Hardware},
                                   std::pair{"automatic", TechniqueHint::Automatic}}) {
    const VmConfig vm = load(std::string("name: a\nguest: {os: linux-64, kernel: kernel.bin}\nmemory: 1MiB\n") +
                             "monitor:\n  virtual_mmu: " + text + "\n");
    EXPECT_EQ(vm.monitor.virtual_mmu, hint) << text;
    EXPECT_EQ(vm.monitor.virtual_exec, TechniqueHint::Automatic);
  }
}

TEST(TechniqueHintTest, ToStringMatchesTheYamlSpelling) {
  EXPECT_EQ(to_string(TechniqueHint::Automatic), "automatic");
  EXPECT_EQ(to_string(TechniqueHint::Software), "software");
  EXPECT_EQ(to_string(TechniqueHint::Hardware), "hardware");
}

// ---- memory sizes -----------------------------------------------------------

TEST(ParseMemorySizeTest, AcceptsBinaryUnitsAndPlainBytes) {
  EXPECT_EQ(parse_memory_size("256MiB"), 256 * MiB);
  EXPECT_EQ(parse_memory_size("1GiB"), 1 * GiB);
  EXPECT_EQ(parse_memory_size("512M"), 512 * MiB);
  EXPECT_EQ(parse_memory_size("64KiB"), 64 * KiB);
  EXPECT_EQ(parse_memory_size("64K"), 64 * KiB);
  EXPECT_EQ(parse_memory_size("3G"), 3 * GiB);
  EXPECT_EQ(parse_memory_size("1TiB"), 1024 * GiB);
  EXPECT_EQ(parse_memory_size("1073741824"), 1 * GiB);
  EXPECT_EQ(parse_memory_size("4096B"), 4 * KiB);
  EXPECT_EQ(parse_memory_size("256 MiB"), 256 * MiB);
  EXPECT_EQ(parse_memory_size("0"), 0u);
}

TEST(ParseMemorySizeTest, RejectsMalformedSizes) {
  for (const char* bad : {"", "MiB", "-1", "+5M", "1.5GiB", "12 parsecs", "256mib", "0x100000", "256MiB ", "1GiB2"})
    EXPECT_THROW(parse_memory_size(bad), std::invalid_argument) << "'" << bad << "'";
}

TEST(ParseMemorySizeTest, RefusesDecimalLookingUnitsAsAmbiguous) {
  try {
    parse_memory_size("512MB");
    FAIL() << "512MB accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("ambiguous"));
    EXPECT_THAT(e.what(), HasSubstr("MiB"));
  }
}

TEST(ParseMemorySizeTest, RejectsOverflow) {
  EXPECT_THROW(parse_memory_size("18446744073709551616"), std::invalid_argument);  // 2^64
  EXPECT_THROW(parse_memory_size("17179869184GiB"), std::invalid_argument);        // 2^64 bytes
  EXPECT_EQ(parse_memory_size("18446744073709551615"), 18446744073709551615ull);
}

TEST_F(VmConfigTest, MemoryLimitsFor32BitGuests) {
  EXPECT_EQ(load(with_memory("linux-32", "3GiB")).memory_bytes, 3 * GiB);
  EXPECT_EQ(load(with_memory("linux-32", "1MiB")).memory_bytes, 1 * MiB);
  EXPECT_ERROR_AT(load_error(with_memory("linux-32", "3145732KiB")), 5, 9, "at most 3 GiB for a 32-bit");
  EXPECT_ERROR_AT(load_error(with_memory("os2", "4GiB")), 5, 9, "at most 3 GiB");
}

TEST_F(VmConfigTest, MemoryLimitsFor64BitGuests) {
  EXPECT_EQ(load(with_memory("linux-64", "64GiB")).memory_bytes, 64 * GiB);
  EXPECT_ERROR_AT(load_error(with_memory("linux-64", "67108868KiB")), 5, 9, "at most 64 GiB for a 64-bit");
}

TEST_F(VmConfigTest, MemoryBelowOneMiBIsRefused) {
  EXPECT_ERROR_AT(load_error(with_memory("linux-64", "1020KiB")), 5, 9, "at least 1 MiB");
  EXPECT_ERROR_AT(load_error(with_memory("linux-64", "0")), 5, 9, "at least 1 MiB");
}

TEST_F(VmConfigTest, MemoryMustBeWholePages) {
  EXPECT_ERROR_AT(load_error(with_memory("linux-64", "1048577")), 5, 9, "multiple of 4 KiB");
  EXPECT_ERROR_AT(load_error(with_memory("linux-64", "1026KiB")), 5, 9, "multiple of 4 KiB");
}

TEST_F(VmConfigTest, MalformedMemoryIsAnErrorAtTheValue) {
  EXPECT_ERROR_AT(load_error(with_memory("linux-64", "lots")), 5, 9, "'lots' is not a memory size");
  EXPECT_ERROR_AT(load_error(with_memory("linux-64", "[1, 2]")), 5, 9, "expected a memory size");
}

// ---- errors, each at its node ---------------------------------------------

TEST_F(VmConfigTest, UnknownTopLevelKeyListsTheValidOnes) {
  const InputError e = load_error(R"(name: a
guest:
  os: other-32
  kernel: kernel.bin
memory: 16MiB
vpcus: 2
)");
  EXPECT_ERROR_AT(e, 6, 1, "unknown key 'vpcus'");
  EXPECT_THAT(e.message(), HasSubstr("name, guest, memory, vcpus, monitor, fault_tolerance"));
  EXPECT_THAT(std::string(e.what()), HasSubstr((dir_.path() / "vm.yaml").string() + ":6:1: unknown key"));
}

TEST_F(VmConfigTest, UnknownGuestKey) {
  EXPECT_ERROR_AT(load_error(R"(name: a
guest:
  os: other-32
  kernel: kernel.bin
  kernal_args: quiet
memory: 16MiB
)"),
                  5, 3, "unknown key 'kernal_args' (expected one of: os, kernel, cmdline, initrd)");
}

TEST_F(VmConfigTest, UnknownMonitorKey) {
  EXPECT_ERROR_AT(load_error(R"(name: a
guest: {os: other-32, kernel: kernel.bin}
memory: 16MiB
monitor:
  virtual_exec: software
  virtual_cpu: hardware
)"),
                  6, 3, "unknown key 'virtual_cpu' (expected one of: virtual_exec, virtual_mmu)");
}

TEST_F(VmConfigTest, BadMonitorHint) {
  EXPECT_ERROR_AT(load_error(R"(name: a
guest: {os: other-32, kernel: kernel.bin}
memory: 16MiB
monitor:
  virtual_mmu: fast
)"),
                  5, 16, "expected software, hardware or automatic, found 'fast'");
}

TEST_F(VmConfigTest, DuplicateKeyIsReportedAtItsSecondOccurrence) {
  EXPECT_ERROR_AT(load_error(R"(name: a
guest: {os: other-32, kernel: kernel.bin}
memory: 16MiB
name: b
)"),
                  4, 1, "key 'name' appears twice");
}

TEST_F(VmConfigTest, DuplicateKeyInsideGuest) {
  EXPECT_ERROR_AT(load_error(R"(name: a
guest:
  os: other-32
  kernel: kernel.bin
  os: linux-64
memory: 16MiB
)"),
                  5, 3, "key 'os' appears twice");
}

TEST_F(VmConfigTest, MissingRequiredKeysAreReportedAtTheirMap) {
  EXPECT_ERROR_AT(load_error("guest: {os: other-32, kernel: kernel.bin}\nmemory: 16MiB\n"), 1, 1,
                  "missing required key 'name'");
  EXPECT_ERROR_AT(load_error("name: a\nguest: {os: other-32, kernel: kernel.bin}\n"), 1, 1,
                  "missing required key 'memory'");
  EXPECT_ERROR_AT(load_error("name: a\nmemory: 16MiB\n"), 1, 1, "missing required key 'guest'");
  EXPECT_ERROR_AT(load_error("name: a\nmemory: 16MiB\nguest:\n  os: other-32\n"), 4, 3,
                  "missing required key 'kernel'");
  EXPECT_ERROR_AT(load_error("name: a\nmemory: 16MiB\nguest:\n  kernel: kernel.bin\n"), 4, 3,
                  "missing required key 'os'");
}

TEST_F(VmConfigTest, KeyWithoutValueIsReportedAtTheKey) {
  // yaml-cpp would place the empty value at the next line's first token.
  EXPECT_ERROR_AT(load_error("name: a\nmemory:\nguest: {os: other-32, kernel: kernel.bin}\n"), 2, 1,
                  "key 'memory' has no value");
  EXPECT_ERROR_AT(load_error("name: a\nmemory: 1MiB\nguest:\n  kernel:\n  os: other-32\n"), 4, 3,
                  "key 'kernel' has no value");
}

TEST_F(VmConfigTest, WrongTypes) {
  EXPECT_ERROR_AT(load_error("name: a\nguest: linux\nmemory: 16MiB\n"), 2, 8, "expected a map with os, kernel");
  EXPECT_ERROR_AT(load_error("name: [a, b]\nguest: {os: other-32, kernel: kernel.bin}\nmemory: 16MiB\n"), 1, 7,
                  "expected a VM name, found a list");
  EXPECT_ERROR_AT(load_error("name: a\nguest: {os: other-32, kernel: kernel.bin}\nmemory: 16MiB\nmonitor: hardware\n"),
                  4, 10, "expected a map with virtual_exec");
  EXPECT_ERROR_AT(load_error("name: a\nguest: {os: other-32, kernel: kernel.bin}\nmemory: 16MiB\n"
                             "fault_tolerance: maybe\n"),
                  4, 18, "expected true or false, found 'maybe'");
  EXPECT_ERROR_AT(load_error("name: a\nguest: {os: other-32, kernel: kernel.bin, cmdline: {a: 1}}\nmemory: 16MiB\n"),
                  2, 52, "expected a kernel command line");
  EXPECT_ERROR_AT(load_error("- name: a\n"), 1, 1, "expected a VM declaration");
}

TEST_F(VmConfigTest, VcpuCountMustBeOneToSixtyFour) {
  const std::string head = "name: a\nguest: {os: other-64, kernel: kernel.bin}\nmemory: 16MiB\nvcpus: ";
  EXPECT_EQ(load(head + "1\n").vcpus, 1u);
  EXPECT_EQ(load(head + "64\n").vcpus, 64u);
  EXPECT_ERROR_AT(load_error(head + "0\n"), 4, 8, "from 1 to 64, found 0");
  EXPECT_ERROR_AT(load_error(head + "65\n"), 4, 8, "from 1 to 64, found 65");
  EXPECT_ERROR_AT(load_error(head + "two\n"), 4, 8, "expected a vCPU count from 1 to 64, found 'two'");
  EXPECT_ERROR_AT(load_error(head + "-1\n"), 4, 8, "found '-1'");
}

TEST_F(VmConfigTest, VmNameMustBeUsableAsAFileName) {
  const std::string tail = "\nguest: {os: other-32, kernel: kernel.bin}\nmemory: 16MiB\n";
  EXPECT_EQ(load("name: A.b_c-9" + tail).name, "A.b_c-9");
  for (const char* bad : {"\"my vm\"", "a/b", "..", "\"\"", "caf\u00e9"}) {
    SCOPED_TRACE(bad);
    EXPECT_ERROR_AT(load_error(std::string("name: ") + bad + tail), 1, 7, "letters, digits");
  }
}

TEST_F(VmConfigTest, UnknownGuestOsListsTheValidTypes) {
  const InputError e = load_error("name: a\nguest:\n  os: windows-95\n  kernel: kernel.bin\nmemory: 16MiB\n");
  EXPECT_ERROR_AT(e, 3, 7, "unknown guest OS type 'windows-95'");
  EXPECT_THAT(e.message(), HasSubstr("freebsd-32, freebsd-64, linux-32"));
  EXPECT_THAT(e.message(), HasSubstr("windows-xp-64"));
}

TEST_F(VmConfigTest, MissingKernelShowsTheAbsolutePath) {
  const InputError e = load_error("name: a\nguest:\n  os: other-32\n  kernel: boot/missing.elf\nmemory: 16MiB\n");
  EXPECT_ERROR_AT(e, 4, 11, "kernel '" + (dir_.path() / "boot/missing.elf").string() + "' does not exist");
}

TEST_F(VmConfigTest, KernelMustBeARegularFile) {
  std::filesystem::create_directories(dir_.path() / "adir");
  EXPECT_ERROR_AT(load_error("name: a\nguest:\n  os: other-32\n  kernel: adir\nmemory: 16MiB\n"), 4, 11,
                  "is not a regular file");
}

TEST_F(VmConfigTest, MissingInitrd) {
  EXPECT_ERROR_AT(load_error("name: a\nguest:\n  os: linux-32\n  kernel: kernel.bin\n  initrd: none.img\n"
                             "memory: 16MiB\n"),
                  5, 11, "initrd '" + (dir_.path() / "none.img").string() + "' does not exist");
}

TEST_F(VmConfigTest, EmptyKernelPath) {
  EXPECT_ERROR_AT(load_error("name: a\nguest:\n  os: linux-32\n  kernel: \"\"\nmemory: 16MiB\n"), 4, 11,
                  "found an empty string");
}

TEST_F(VmConfigTest, SyntaxErrorHasAPosition) {
  const InputError e = load_error("name: a\nguest: {os: other-32\nmemory: 16MiB\n");
  EXPECT_GT(e.line(), 0);
  EXPECT_GT(e.column(), 0);
  EXPECT_THAT(e.message(), HasSubstr("YAML syntax error"));
}

TEST_F(VmConfigTest, EmptyAndMissingFiles) {
  EXPECT_THAT(load_error("# nothing but a comment\n").message(), HasSubstr("empty"));
  const InputError e = expect_input_error([&] { load_vm_config(dir_.path() / "nope.yaml", guest_os_); });
  EXPECT_THAT(e.message(), HasSubstr("cannot read"));
  EXPECT_EQ(e.file(), dir_.path() / "nope.yaml");
}

// ---- ${NAME} expansion ------------------------------------------------------

TEST_F(VmConfigTest, EnvironmentVariablesExpandInPaths) {
  dir_.write("guests/hello.elf", "x");
  const ScopedEnv env("MODEVISOR_TEST_GUESTS", (dir_.path() / "guests").string());
  const VmConfig vm = load("name: a\nguest:\n  os: other-32\n  kernel: ${MODEVISOR_TEST_GUESTS}/hello.elf\nmemory: 16MiB\n");
  EXPECT_EQ(vm.guest.kernel, dir_.path() / "guests/hello.elf");
}

TEST_F(VmConfigTest, RelativeExpansionStillResolvesAgainstTheYamlFolder) {
  dir_.write("guests/hello.elf", "x");
  const ScopedEnv env("MODEVISOR_TEST_SUBDIR", "guests");
  const VmConfig vm = load("name: a\nguest: {os: other-32, kernel: \"${MODEVISOR_TEST_SUBDIR}/hello.elf\"}\nmemory: 1M\n");
  EXPECT_EQ(vm.guest.kernel, dir_.path() / "guests/hello.elf");
}

TEST_F(VmConfigTest, UndefinedVariableIsNamedAtItsColumn) {
  const ScopedEnv env("MODEVISOR_TEST_UNSET", std::nullopt);
  EXPECT_ERROR_AT(load_error("name: a\nguest:\n  os: other-32\n  kernel: /x/${MODEVISOR_TEST_UNSET}/k.elf\n"
                             "memory: 16MiB\n"),
                  4, 14, "environment variable 'MODEVISOR_TEST_UNSET' is not defined");
  // Quoted: the column still points at the reference, past the quote.
  EXPECT_ERROR_AT(load_error("name: a\nguest:\n  os: other-32\n  kernel: \"${MODEVISOR_TEST_UNSET}\"\n"
                             "memory: 16MiB\n"),
                  4, 12, "'MODEVISOR_TEST_UNSET'");
}

TEST_F(VmConfigTest, MalformedReferences) {
  EXPECT_ERROR_AT(load_error("name: a\nguest:\n  os: other-32\n  kernel: ${HOME/k.elf\nmemory: 16MiB\n"), 4, 11,
                  "unterminated");
  EXPECT_ERROR_AT(load_error("name: a\nguest:\n  os: other-32\n  kernel: a/${1X}/k\nmemory: 16MiB\n"), 4, 13,
                  "'${1X}' is not a valid environment variable reference");
  EXPECT_ERROR_AT(load_error("name: a\nguest:\n  os: other-32\n  kernel: ${}\nmemory: 16MiB\n"), 4, 11,
                  "not a valid");
}

TEST_F(VmConfigTest, DollarWithoutBraceIsLiteral) {
  dir_.write("$k.bin", "x");
  EXPECT_EQ(load("name: a\nguest: {os: other-32, kernel: $k.bin}\nmemory: 1M\n").guest.kernel,
            dir_.path() / "$k.bin");
}

// ---- fixture files and shipped configs -------------------------------------

TEST_F(VmConfigTest, FixtureMinimalVmLoads) {
  const VmConfig vm = load_vm_config(kFixtureDir / "vms/minimal.yaml", guest_os_);
  EXPECT_EQ(vm.name, "minimal");
  EXPECT_EQ(vm.guest.kernel, (kFixtureDir / "vms/kernel.bin").lexically_normal());
}

struct BadFixture {
  const char* file;
  int line, column;
  const char* message;
};
void PrintTo(const BadFixture& bad, std::ostream* out) { *out << bad.file; }

class BadVmFixtureTest : public VmConfigTest, public ::testing::WithParamInterface<BadFixture> {};

TEST_P(BadVmFixtureTest, FailsAtTheOffendingNode) {
  const BadFixture& bad = GetParam();
  const auto file = kFixtureDir / "vms" / bad.file;
  const InputError e = expect_input_error([&] { load_vm_config(file, guest_os_); });
  EXPECT_ERROR_AT(e, bad.line, bad.column, bad.message);
  EXPECT_EQ(e.file(), file.lexically_normal());
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, BadVmFixtureTest,
    ::testing::Values(BadFixture{"bad-unknown-key.yaml", 8, 1, "unknown key 'cpus'"},
                      BadFixture{"bad-memory-32bit-limit.yaml", 7, 9, "at most 3 GiB for a 32-bit"},
                      BadFixture{"bad-missing-kernel.yaml", 6, 11, "does not exist"},
                      BadFixture{"bad-duplicate-key.yaml", 8, 1, "key 'memory' appears twice"},
                      BadFixture{"bad-hint.yaml", 9, 17, "found 'binary-translation'"},
                      BadFixture{"bad-guest-type.yaml", 4, 8, "expected a map"}),
    [](const auto& info) {
      std::string name = info.param.file;
      name = name.substr(4, name.size() - 9);  // "bad-" ... ".yaml"
      for (char& c : name)
        if (c == '-') c = '_';
      return name;
    });

TEST_F(VmConfigTest, EveryShippedVmLoads) {
  const ScopedEnv env("MODEVISOR_GUEST_DIR", (kFixtureDir / "guests-placeholder").string());
  int loaded = 0;
  for (const auto& entry : std::filesystem::directory_iterator(kSourceDir / "configs/vms")) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    VmConfig vm;
    ASSERT_NO_THROW(vm = load_vm_config(entry.path(), guest_os_));
    EXPECT_EQ(vm.name, entry.path().stem().string()) << "a VM's name should match its file";
    EXPECT_EQ(vm.guest.kernel.parent_path(), kFixtureDir / "guests-placeholder") << "kernels come from ${MODEVISOR_GUEST_DIR}";
    ++loaded;
  }
  EXPECT_GE(loaded, 6);
}

TEST_F(VmConfigTest, ShippedVmsSayWhatTheirCommentsPromise) {
  const ScopedEnv env("MODEVISOR_GUEST_DIR", (kFixtureDir / "guests-placeholder").string());
  const auto vms = kSourceDir / "configs/vms";
  EXPECT_EQ(load_vm_config(vms / "hello-32.yaml", guest_os_).guest.os.name, "other-32");
  EXPECT_EQ(load_vm_config(vms / "linux-64.yaml", guest_os_).guest.os.bits, 64u);
  EXPECT_EQ(load_vm_config(vms / "windows-xp-32.yaml", guest_os_).monitor.virtual_exec, TechniqueHint::Software);
  EXPECT_EQ(load_vm_config(vms / "os2.yaml", guest_os_).guest.os.family, "os2");
  EXPECT_TRUE(load_vm_config(vms / "ft-64.yaml", guest_os_).fault_tolerance);
  EXPECT_EQ(load_vm_config(vms / "nested-hint-64.yaml", guest_os_).monitor.virtual_mmu, TechniqueHint::Hardware);
}

TEST_F(VmConfigTest, ShippedVmsNeedTheGuestDirVariable) {
  const ScopedEnv env("MODEVISOR_GUEST_DIR", std::nullopt);
  const InputError e = expect_input_error([&] { load_vm_config(kSourceDir / "configs/vms/hello-32.yaml", guest_os_); });
  EXPECT_THAT(e.message(), HasSubstr("'MODEVISOR_GUEST_DIR' is not defined"));
}

}  // namespace
}  // namespace modevisor::host

namespace modevisor::host {
namespace {

TEST_F(VmConfigTest, CpuModelIsANamedModelAndHostByDefault) {
  EXPECT_EQ(load(with_memory("linux-32", "16MiB")).cpu_model, "host");
  EXPECT_EQ(load(with_memory("linux-32", "16MiB") + "cpu_model: portable-32\n").cpu_model, "portable-32");
  EXPECT_ERROR_AT(load_error(with_memory("linux-32", "16MiB") + "cpu_model: pentium-9\n"), 6, 12,
                  "unknown CPU model 'pentium-9'; the models are: host, portable-32, kvm64");
}

TEST(CpuModelTest, Portable32IsTheP6ClassModelEveryModePresents) {
  EXPECT_TRUE(cpu_model("host").empty());
  const api::CpuidTable t = cpu_model("portable-32");
  const api::CpuidLeaf* basic = api::find_cpuid_leaf(t, 1);
  ASSERT_NE(basic, nullptr);
  EXPECT_EQ(basic->eax, 0x6f1u);
  EXPECT_EQ(basic->edx, 0x0781ab79u);
  EXPECT_EQ(basic->ecx, 1u << 31);
  const api::CpuidLeaf* ext = api::find_cpuid_leaf(t, 0x80000001);
  ASSERT_NE(ext, nullptr);
  EXPECT_EQ(ext->edx, 1u << 20);
  EXPECT_EQ(api::find_cpuid_leaf(t, 0x40000000), nullptr) << "no hypervisor leaves";
  EXPECT_THROW(cpu_model("pentium-9"), std::invalid_argument);
}

TEST(CpuModelTest, Kvm64IsQemusX86_64BaselineWithTheKvmClock) {
  const api::CpuidTable t = cpu_model("kvm64");
  const api::CpuidLeaf* ext = api::find_cpuid_leaf(t, 0x80000001);
  ASSERT_NE(ext, nullptr);
  EXPECT_EQ(ext->edx, (1u << 11) | (1u << 20) | (1u << 29)) << "SYSCALL, NX, LM";
  std::string brand;
  for (std::uint32_t f = 0x80000002; f <= 0x80000004; ++f) {
    const api::CpuidLeaf* l = api::find_cpuid_leaf(t, f);
    ASSERT_NE(l, nullptr) << std::hex << f;
    for (std::uint32_t r : {l->eax, l->ebx, l->ecx, l->edx})
      for (int i = 0; i < 4; ++i)
        if (char c = static_cast<char>(r >> (8 * i))) brand.push_back(c);
  }
  EXPECT_EQ(brand, "Common KVM processor");
  const api::CpuidLeaf* kvm = api::find_cpuid_leaf(t, 0x40000000);
  ASSERT_NE(kvm, nullptr);
  EXPECT_EQ(kvm->ebx, 0x4b4d564bu) << "KVMK";
  EXPECT_EQ(api::find_cpuid_leaf(t, 1)->eax, 0xf61u) << "family 15 model 6 stepping 1";
}

}  // namespace
}  // namespace modevisor::host
