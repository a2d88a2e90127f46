// The state codec (every field of a VcpuState and a MachineState round trips
// exactly, bad records are refused naming the field) and snapshot files
// (a round trip, and the files a reader must refuse without changing
// anything: truncated, one flipped bit, another version, another CPU model,
// an unknown section, lengths that disagree).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <xxhash.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <unistd.h>

#include "platform/cpu_model.hpp"
#include "platform/machine.hpp"
#include "platform/pc.hpp"
#include "snapshot/snapshot.hpp"
#include "snapshot/vcpu_codec.hpp"

namespace modevisor::host {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

api::Segment segment(std::uint16_t selector, std::uint8_t salt) {
  api::Segment s;
  s.selector = selector;
  s.base = 0x1000ull * salt + 0xabc;
  s.limit = 0xfffff - salt;
  s.type = salt & 15;
  s.s = true;
  s.dpl = salt & 3;
  s.present = true;
  s.avl = salt & 1;
  s.l = salt & 2;
  s.db = !(salt & 2);
  s.g = true;
  s.unusable = salt == 7;
  return s;
}

// A state with every field away from its default.
api::VcpuState full_state() {
  api::VcpuState s;
  for (unsigned i = 0; i < 16; ++i) s.gpr[i] = 0x0123456789abcdefull ^ (i * 0x1111);
  s.rip = 0xffffffff81000000ull;
  s.rflags = 0x246;
  s.es = segment(0x10, 1); s.cs = segment(0x08, 2); s.ss = segment(0x18, 3); s.ds = segment(0x20, 4);
  s.fs = segment(0x28, 5); s.gs = segment(0x30, 6); s.ldtr = segment(0x38, 7); s.tr = segment(0x40, 8);
  s.gdtr = {0xfffffe0000001000ull, 0x7f};
  s.idtr = {0xfffffe0000000000ull, 0xfff};
  s.cr0 = 0x80050033; s.cr2 = 0xdeadbeef; s.cr3 = 0x1234000; s.cr4 = 0x3406f0; s.cr8 = 5; s.efer = 0xd01;
  s.dr = {1, 2, 3, 4, 5, 6, 0xffff4ff0, 0x455};
  s.msrs = {{0x10, 123456789}, {0x174, 0x10}, {0x4b564d01, 0x12345671}, {0xc0000082, 0xffffffff81a00000ull}};
  for (unsigned i = 0; i < 512; ++i) s.fpu.fxsave[i] = static_cast<std::uint8_t>(i * 7 + 1);
  s.fpu.xcr0 = 7;
  s.fpu.xsave_extended.resize(256 + 64);
  for (unsigned i = 0; i < s.fpu.xsave_extended.size(); ++i) s.fpu.xsave_extended[i] = static_cast<std::uint8_t>(i ^ 0x5a);
  s.events.exception = api::PendingException{14, true, 0x2, true};
  s.events.interrupt = 0x31;
  s.events.nmi_pending = true;
  s.events.nmi_masked = true;
  s.events.interrupt_shadow = true;
  s.run_state = api::RunState::Halted;
  return s;
}

void expect_same(const api::Segment& a, const api::Segment& b) {
  EXPECT_EQ(a.selector, b.selector); EXPECT_EQ(a.base, b.base); EXPECT_EQ(a.limit, b.limit);
  EXPECT_EQ(a.type, b.type); EXPECT_EQ(a.s, b.s); EXPECT_EQ(a.dpl, b.dpl); EXPECT_EQ(a.present, b.present);
  EXPECT_EQ(a.avl, b.avl); EXPECT_EQ(a.l, b.l); EXPECT_EQ(a.db, b.db); EXPECT_EQ(a.g, b.g);
  EXPECT_EQ(a.unusable, b.unusable);
}

void expect_same(const api::VcpuState& a, const api::VcpuState& b) {
  EXPECT_EQ(a.gpr, b.gpr); EXPECT_EQ(a.rip, b.rip); EXPECT_EQ(a.rflags, b.rflags);
  for (auto [x, y] : {std::pair{&a.es, &b.es}, {&a.cs, &b.cs}, {&a.ss, &b.ss}, {&a.ds, &b.ds}, {&a.fs, &b.fs},
                      {&a.gs, &b.gs}, {&a.ldtr, &b.ldtr}, {&a.tr, &b.tr}})
    expect_same(*x, *y);
  EXPECT_EQ(a.gdtr.base, b.gdtr.base); EXPECT_EQ(a.gdtr.limit, b.gdtr.limit);
  EXPECT_EQ(a.idtr.base, b.idtr.base); EXPECT_EQ(a.idtr.limit, b.idtr.limit);
  EXPECT_EQ(a.cr0, b.cr0); EXPECT_EQ(a.cr2, b.cr2); EXPECT_EQ(a.cr3, b.cr3); EXPECT_EQ(a.cr4, b.cr4);
  EXPECT_EQ(a.cr8, b.cr8); EXPECT_EQ(a.efer, b.efer); EXPECT_EQ(a.dr, b.dr);
  ASSERT_EQ(a.msrs.size(), b.msrs.size());
  for (std::size_t i = 0; i < a.msrs.size(); ++i) {
    EXPECT_EQ(a.msrs[i].index, b.msrs[i].index);
    EXPECT_EQ(a.msrs[i].value, b.msrs[i].value);
  }
  EXPECT_EQ(a.fpu.fxsave, b.fpu.fxsave); EXPECT_EQ(a.fpu.xcr0, b.fpu.xcr0);
  EXPECT_EQ(a.fpu.xsave_extended, b.fpu.xsave_extended);
  ASSERT_EQ(a.events.exception.has_value(), b.events.exception.has_value());
  if (a.events.exception) {
    EXPECT_EQ(a.events.exception->vector, b.events.exception->vector);
    EXPECT_EQ(a.events.exception->has_error_code, b.events.exception->has_error_code);
    EXPECT_EQ(a.events.exception->error_code, b.events.exception->error_code);
    EXPECT_EQ(a.events.exception->injected, b.events.exception->injected);
  }
  EXPECT_EQ(a.events.interrupt, b.events.interrupt);
  EXPECT_EQ(a.events.nmi_pending, b.events.nmi_pending);
  EXPECT_EQ(a.events.nmi_masked, b.events.nmi_masked);
  EXPECT_EQ(a.events.interrupt_shadow, b.events.interrupt_shadow);
  EXPECT_EQ(a.run_state, b.run_state);
}

std::string decode_error(std::span<const std::uint8_t> bytes) {
  try {
    decode_vcpu_state(bytes);
  } catch (const SnapshotError& e) {
    return e.what();
  }
  return "no error";
}

TEST(VcpuCodec, EveryFieldRoundTripsExactly) {
  const api::VcpuState s = full_state();
  expect_same(decode_vcpu_state(encode_vcpu_state(s)), s);
  expect_same(decode_vcpu_state(encode_vcpu_state(api::VcpuState{})), api::VcpuState{});
}

TEST(VcpuCodec, EveryTruncationIsRefusedNamingTheField) {
  const auto bytes = encode_vcpu_state(full_state());
  for (std::size_t n = 0; n < bytes.size(); ++n)
    EXPECT_THAT(decode_error(std::span(bytes).first(n)), HasSubstr("vCPU state: truncated in")) << n;
  auto longer = bytes;
  longer.push_back(0);
  EXPECT_THAT(decode_error(longer), HasSubstr("1 unexpected bytes after the end"));
}

TEST(VcpuCodec, FieldsOutOfRangeAreRefused) {
  auto bytes = encode_vcpu_state(full_state());
  auto version = bytes;
  version[4] = 2;
  EXPECT_THAT(decode_error(version), HasSubstr("format version"));
  auto run_state = bytes;
  run_state.back() = 9;
  EXPECT_THAT(decode_error(run_state), HasSubstr("run state (at byte"));
  auto nmi = bytes;
  nmi[nmi.size() - 2] = 2;  // interrupt shadow flag
  EXPECT_THAT(decode_error(nmi), HasSubstr("interrupt shadow"));
  auto es_type = bytes;
  es_type[8 + 16 * 8 + 16 + 2 + 8 + 4] = 0x10;  // es.type
  EXPECT_THAT(decode_error(es_type), HasSubstr("es (at byte"));
  // An MSR count far beyond what the record holds is refused before allocating.
  api::VcpuState s = full_state();
  auto msrs = encode_vcpu_state(s);
  const std::size_t count_at = 8 + 16 * 8 + 16 + 8 * 17 + 2 * 10 + 6 * 8 + 8 * 8;
  ASSERT_EQ(msrs[count_at], s.msrs.size());
  msrs[count_at + 3] = 0x7f;
  EXPECT_THAT(decode_error(msrs), HasSubstr("MSR count"));
}

MachineState machine_state(unsigned vcpus = 1) {
  Machine machine;
  Pc pc(machine, PcConfig{16 << 20, vcpus});
  MachineState s;
  s.vm_yaml = "name: t\nguest:\n  os: other-32\n";
  s.vm_file = "/somewhere/t.yaml";
  s.cpu_model = "portable-32";
  s.cpuid = cpu_model("portable-32");
  for (unsigned i = 0; i < vcpus; ++i) s.vcpus.push_back(full_state());
  s.devices = pc.save_state();
  return s;
}

TEST(MachineCodec, RoundTrips) {
  const MachineState s = machine_state(2);
  const MachineState d = decode_machine_state(encode_machine_state(s));
  EXPECT_EQ(d.vm_yaml, s.vm_yaml);
  EXPECT_EQ(d.vm_file, s.vm_file);
  EXPECT_EQ(d.cpu_model, s.cpu_model);
  ASSERT_EQ(d.cpuid.size(), s.cpuid.size());
  EXPECT_EQ(d.cpuid[1].ecx, s.cpuid[1].ecx);
  ASSERT_EQ(d.vcpus.size(), 2u);
  expect_same(d.vcpus[1], s.vcpus[1]);
  EXPECT_EQ(d.devices, s.devices);
  const auto bytes = encode_machine_state(s);
  EXPECT_THROW(decode_machine_state(std::span(bytes).first(bytes.size() - 1)), SnapshotError);
}

class SnapshotFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("modevisor-snapshot-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    file_ = dir_ / "vm.snapshot";
    ram_ = std::make_unique<GuestRam>(4 << 20);
    std::memcpy(ram_->host_base() + 0x1000, "page one", 8);
    ram_->host_base()[0x3fffff] = 0x77;  // the last byte of the last page
    for (int i = 0; i < 4096; ++i) ram_->host_base()[0x200000 + i] = static_cast<std::uint8_t>(i * 13);
    state_ = machine_state();
    write_snapshot(file_, state_, *ram_);
    bytes_ = read_bytes();
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::vector<std::uint8_t> read_bytes() {
    std::ifstream in(file_, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }
  void write_bytes(const std::vector<std::uint8_t>& bytes) {
    std::ofstream(file_, std::ios::binary | std::ios::trunc)
        .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  // The header's and the file's checksums recomputed (a well-formed file with other content).
  static void reseal(std::vector<std::uint8_t>& b) {
    const std::uint64_t header = XXH3_64bits(b.data(), 16);
    std::memcpy(b.data() + 16, &header, 8);
    const std::uint64_t file = XXH3_64bits(b.data(), b.size() - 8);
    std::memcpy(b.data() + b.size() - 8, &file, 8);
  }
  std::string refusal() {
    const auto before = read_bytes();
    std::string message = "no error";
    try {
      read_snapshot(file_);
    } catch (const SnapshotError& e) {
      message = e.what();
    }
    EXPECT_EQ(read_bytes(), before) << "reading changed the file";
    EXPECT_THAT(message, HasSubstr(file_.string())) << "the message names the file";
    return message;
  }

  fs::path dir_, file_;
  std::unique_ptr<GuestRam> ram_;
  MachineState state_;
  std::vector<std::uint8_t> bytes_;
};

TEST_F(SnapshotFileTest, RoundTripsStateAndRamWithZeroPagesElided) {
  const LoadedSnapshot s = read_snapshot(file_);
  ASSERT_EQ(s.ram->size(), ram_->size());
  EXPECT_EQ(std::memcmp(s.ram->host_base(), ram_->host_base(), ram_->size()), 0);
  EXPECT_EQ(s.state.cpu_model, "portable-32");
  ASSERT_EQ(s.state.vcpus.size(), 1u);
  expect_same(s.state.vcpus[0], full_state());
  EXPECT_EQ(s.state.devices, state_.devices);
  EXPECT_LT(bytes_.size(), 64u * 1024) << "4 MiB of mostly zero RAM is small on disk";
  EXPECT_FALSE(fs::exists(file_.string() + ".partial"));
}

TEST_F(SnapshotFileTest, TruncatedFilesAreRefused) {
  for (std::size_t n : {std::size_t{0}, std::size_t{10}, std::size_t{40}, bytes_.size() / 2, bytes_.size() - 9,
                        bytes_.size() - 1}) {
    write_bytes(std::vector<std::uint8_t>(bytes_.begin(), bytes_.begin() + static_cast<std::ptrdiff_t>(n)));
    const std::string why = refusal();
    EXPECT_TRUE(why.find("truncated") != std::string::npos || why.find("corrupted") != std::string::npos) << n << ": " << why;
  }
  write_bytes(std::vector<std::uint8_t>(bytes_.begin(), bytes_.begin() + static_cast<std::ptrdiff_t>(bytes_.size() / 2)));
  EXPECT_THAT(refusal(), HasSubstr("truncated"));
}

TEST_F(SnapshotFileTest, EverySingleFlippedBitIsRefused) {
  // Every bit of the header and section headers, and a sample of the rest.
  for (std::size_t bit = 0; bit < bytes_.size() * 8; bit += (bit < 8 * 200 ? 1 : 997)) {
    auto b = bytes_;
    b[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
    write_bytes(b);
    EXPECT_THAT(refusal(), ::testing::Not(HasSubstr("no error"))) << "bit " << bit;
  }
  auto b = bytes_;
  b[b.size() - 20] ^= 4;  // inside the RAM section
  write_bytes(b);
  EXPECT_THAT(refusal(), HasSubstr("corrupted: the checksum of section 5"));
}

TEST_F(SnapshotFileTest, AnotherFormatVersionIsRefused) {
  auto b = bytes_;
  b[8] = 2;
  reseal(b);
  write_bytes(b);
  EXPECT_THAT(refusal(), HasSubstr("format version 2; this build reads version 1 only"));
}

TEST_F(SnapshotFileTest, AnUnknownSectionIsRefused) {
  auto b = bytes_;
  b[12] += 1;  // one more section
  const std::vector<std::uint8_t> extra = {99, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0};
  std::vector<std::uint8_t> section(extra);
  const std::uint8_t payload = 0x42;
  const std::uint64_t sum = XXH3_64bits(&payload, 1);
  section.insert(section.end(), reinterpret_cast<const std::uint8_t*>(&sum), reinterpret_cast<const std::uint8_t*>(&sum) + 8);
  section.push_back(payload);
  b.insert(b.end() - 8, section.begin(), section.end());
  reseal(b);
  write_bytes(b);
  EXPECT_THAT(refusal(), HasSubstr("unknown section kind 99"));
}

TEST_F(SnapshotFileTest, AVmOfACpuModelThisHostDoesNotPresentIsRefused) {
  MachineState s = machine_state();
  s.cpu_model = "pentium-9000";
  write_snapshot(file_, s, *ram_);
  EXPECT_THAT(refusal(), HasSubstr("CPU model 'pentium-9000', which this host does not know"));
  s = machine_state();
  s.cpuid[1].ecx ^= 1u << 28;  // AVX, which this host's portable-32 does not have
  write_snapshot(file_, s, *ram_);
  EXPECT_THAT(refusal(), HasSubstr("CPUID leaves that differ from what this host presents as portable-32"));
}

TEST_F(SnapshotFileTest, SizesThatDisagreeAreRefused) {
  MachineState s = machine_state();
  s.vcpus.push_back(full_state());  // two vCPUs, one local APIC
  write_snapshot(file_, s, *ram_);
  EXPECT_THAT(refusal(), HasSubstr("local APICs do not match its 2 vCPUs"));
  // A section that declares more bytes than the file has.
  auto b = bytes_;
  b[24 + 8] = 0xff;  // the first section's stored length
  b[24 + 9] = 0xff;
  reseal(b);
  write_bytes(b);
  EXPECT_THAT(refusal(), HasSubstr("truncated: section 1 of 5"));
  // The RAM section's raw length (its page data) changed.
  b = bytes_;
  write_bytes(b);
  EXPECT_NO_THROW(read_snapshot(file_));
}

TEST_F(SnapshotFileTest, AMissingFileIsRefusedNamingIt) {
  fs::remove(file_);
  try {
    read_snapshot(file_);
    FAIL();
  } catch (const SnapshotError& e) {
    EXPECT_THAT(e.what(), HasSubstr(file_.string() + ": cannot open the file"));
  }
}

}  // namespace
}  // namespace modevisor::host
