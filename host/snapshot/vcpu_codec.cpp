#include "snapshot/vcpu_codec.hpp"

#include <fmt/format.h>

#include "snapshot/byte_codec.hpp"

namespace modevisor::host {

namespace {

constexpr std::uint32_t kVcpuMagic = 0x55504356;     // "VCPU"
constexpr std::uint32_t kMachineMagic = 0x4d434e4d;  // "MNCM"
// Bounds checked before anything is allocated.
constexpr std::size_t kMaxMsrs = 4096;
constexpr std::size_t kMaxXsaveExtended = 1 << 16;  // the largest XSAVE area is ~11 KiB today
constexpr std::size_t kMaxYaml = 1 << 20;
constexpr std::size_t kMaxPath = 4096;
constexpr std::size_t kMaxModelName = 64;
constexpr std::size_t kMaxCpuidLeaves = 1024;
constexpr std::size_t kMaxVcpus = 255;
constexpr std::size_t kMaxVcpuRecord = 1 << 20;
constexpr std::size_t kMaxDevices = 64 << 20;

void put_segment(ByteWriter& w, const api::Segment& s) {
  w.put(s.selector);
  w.put(s.base);
  w.put(s.limit);
  w.put(s.type);
  w.put(s.dpl);
  const std::uint8_t flags = (s.s ? 1 : 0) | (s.present ? 2 : 0) | (s.avl ? 4 : 0) | (s.l ? 8 : 0) | (s.db ? 16 : 0) |
                             (s.g ? 32 : 0) | (s.unusable ? 64 : 0);
  w.put(flags);
}

api::Segment get_segment(ByteReader& r, const char* name) {
  api::Segment s;
  s.selector = r.get<std::uint16_t>(name);
  s.base = r.get<std::uint64_t>(name);
  s.limit = r.get<std::uint32_t>(name);
  s.type = r.get<std::uint8_t>(name);
  if (s.type > 15) r.fail(name, fmt::format("descriptor type {} is not 0-15", s.type));
  s.dpl = r.get<std::uint8_t>(name);
  if (s.dpl > 3) r.fail(name, fmt::format("DPL {} is not 0-3", s.dpl));
  const auto flags = r.get<std::uint8_t>(name);
  if (flags & 0x80) r.fail(name, fmt::format("unknown segment flags {:#x}", flags));
  s.s = flags & 1;
  s.present = flags & 2;
  s.avl = flags & 4;
  s.l = flags & 8;
  s.db = flags & 16;
  s.g = flags & 32;
  s.unusable = flags & 64;
  return s;
}

void put_vcpu(ByteWriter& w, const api::VcpuState& s) {
  w.put(kVcpuMagic);
  w.put(kVcpuStateFormat);
  for (auto v : s.gpr) w.put(v);
  w.put(s.rip);
  w.put(s.rflags);
  for (const api::Segment* seg : {&s.es, &s.cs, &s.ss, &s.ds, &s.fs, &s.gs, &s.ldtr, &s.tr}) put_segment(w, *seg);
  for (const api::DescriptorTable* t : {&s.gdtr, &s.idtr}) {
    w.put(t->base);
    w.put(t->limit);
  }
  for (auto v : {s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer}) w.put(v);
  for (auto v : s.dr) w.put(v);
  w.put(static_cast<std::uint32_t>(s.msrs.size()));
  for (const auto& m : s.msrs) {
    w.put(m.index);
    w.put(m.value);
  }
  w.put_bytes(s.fpu.fxsave);
  w.put(s.fpu.xcr0);
  w.put_blob(s.fpu.xsave_extended);
  const auto& e = s.events;
  w.put_bool(e.exception.has_value());
  const api::PendingException exception = e.exception.value_or(api::PendingException{});
  w.put(exception.vector);
  w.put_bool(exception.has_error_code);
  w.put(exception.error_code);
  w.put_bool(exception.injected);
  w.put_bool(e.interrupt.has_value());
  w.put(e.interrupt.value_or(0));
  w.put_bool(e.nmi_pending);
  w.put_bool(e.nmi_masked);
  w.put_bool(e.interrupt_shadow);
  w.put(static_cast<std::uint8_t>(s.run_state));
}

api::VcpuState get_vcpu(ByteReader& r) {
  if (r.get<std::uint32_t>("magic") != kVcpuMagic) r.fail("magic", "not a vCPU state record");
  const auto format = r.get<std::uint32_t>("format version");
  if (format != kVcpuStateFormat)
    r.fail("format version", fmt::format("version {} (this build reads version {})", format, kVcpuStateFormat));
  api::VcpuState s;
  for (auto& v : s.gpr) v = r.get<std::uint64_t>("general registers");
  s.rip = r.get<std::uint64_t>("rip");
  s.rflags = r.get<std::uint64_t>("rflags");
  s.es = get_segment(r, "es");
  s.cs = get_segment(r, "cs");
  s.ss = get_segment(r, "ss");
  s.ds = get_segment(r, "ds");
  s.fs = get_segment(r, "fs");
  s.gs = get_segment(r, "gs");
  s.ldtr = get_segment(r, "ldtr");
  s.tr = get_segment(r, "tr");
  for (auto [t, name] : {std::pair{&s.gdtr, "gdtr"}, {&s.idtr, "idtr"}}) {
    t->base = r.get<std::uint64_t>(name);
    t->limit = r.get<std::uint16_t>(name);
  }
  for (auto [v, name] : {std::pair{&s.cr0, "cr0"}, {&s.cr2, "cr2"}, {&s.cr3, "cr3"}, {&s.cr4, "cr4"}, {&s.cr8, "cr8"},
                         {&s.efer, "efer"}})
    *v = r.get<std::uint64_t>(name);
  for (auto& v : s.dr) v = r.get<std::uint64_t>("debug registers");
  const auto msrs = r.get<std::uint32_t>("MSR count");
  if (msrs > kMaxMsrs) r.fail("MSR count", fmt::format("{} exceeds the limit {}", msrs, kMaxMsrs));
  s.msrs.reserve(msrs);
  for (std::uint32_t i = 0; i < msrs; ++i) {
    api::Msr m;
    m.index = r.get<std::uint32_t>("MSR index");
    m.value = r.get<std::uint64_t>("MSR value");
    for (const auto& earlier : s.msrs)
      if (earlier.index == m.index) r.fail("MSRs", fmt::format("MSR {:#x} appears twice", m.index));
    s.msrs.push_back(m);
  }
  const auto fx = r.get_bytes(512, "FXSAVE image");
  std::copy(fx.begin(), fx.end(), s.fpu.fxsave.begin());
  s.fpu.xcr0 = r.get<std::uint64_t>("xcr0");
  if (!(s.fpu.xcr0 & 1)) r.fail("xcr0", fmt::format("{:#x} lacks x87 state (bit 0 is always set)", s.fpu.xcr0));
  const auto ext = r.get_blob(kMaxXsaveExtended, "XSAVE extended state");
  s.fpu.xsave_extended.assign(ext.begin(), ext.end());
  const bool has_exception = r.get_bool("pending exception");
  api::PendingException exception;
  exception.vector = r.get<std::uint8_t>("exception vector");
  exception.has_error_code = r.get_bool("exception error code flag");
  exception.error_code = r.get<std::uint32_t>("exception error code");
  exception.injected = r.get_bool("exception injected flag");
  if (has_exception) {
    if (exception.vector > 31) r.fail("exception vector", fmt::format("{} is not an exception (0-31)", exception.vector));
    s.events.exception = exception;
  }
  const bool has_interrupt = r.get_bool("pending interrupt");
  const auto vector = r.get<std::uint8_t>("interrupt vector");
  if (has_interrupt) s.events.interrupt = vector;
  s.events.nmi_pending = r.get_bool("NMI pending");
  s.events.nmi_masked = r.get_bool("NMI masked");
  s.events.interrupt_shadow = r.get_bool("interrupt shadow");
  const auto run_state = r.get<std::uint8_t>("run state");
  if (run_state > static_cast<std::uint8_t>(api::RunState::Shutdown))
    r.fail("run state", fmt::format("{} is not a run state", run_state));
  s.run_state = static_cast<api::RunState>(run_state);
  return s;
}

}  // namespace

std::vector<std::uint8_t> encode_vcpu_state(const api::VcpuState& state) {
  ByteWriter w;
  put_vcpu(w, state);
  return std::move(w.bytes());
}

api::VcpuState decode_vcpu_state(std::span<const std::uint8_t> bytes) {
  ByteReader r(bytes, "vCPU state");
  api::VcpuState s = get_vcpu(r);
  r.expect_end();
  return s;
}

void encode_declaration(ByteWriter& w, const MachineState& s) {
  w.put_string(s.vm_yaml);
  w.put_string(s.vm_file);
}
void decode_declaration(ByteReader& r, MachineState& s) {
  s.vm_yaml = r.get_string(kMaxYaml, "VM declaration");
  s.vm_file = r.get_string(kMaxPath, "VM file");
}

void encode_cpu_model(ByteWriter& w, const MachineState& s) {
  w.put_string(s.cpu_model);
  w.put(static_cast<std::uint32_t>(s.cpuid.size()));
  for (const auto& l : s.cpuid) {
    w.put(l.function);
    w.put(l.index);
    w.put_bool(l.indexed);
    for (auto v : {l.eax, l.ebx, l.ecx, l.edx}) w.put(v);
  }
}
void decode_cpu_model(ByteReader& r, MachineState& s) {
  s.cpu_model = r.get_string(kMaxModelName, "CPU model name");
  const auto count = r.get<std::uint32_t>("CPUID leaf count");
  if (count > kMaxCpuidLeaves) r.fail("CPUID leaf count", fmt::format("{} exceeds the limit {}", count, kMaxCpuidLeaves));
  s.cpuid.resize(count);
  for (auto& l : s.cpuid) {
    l.function = r.get<std::uint32_t>("CPUID function");
    l.index = r.get<std::uint32_t>("CPUID index");
    l.indexed = r.get_bool("CPUID indexed flag");
    for (auto* v : {&l.eax, &l.ebx, &l.ecx, &l.edx}) *v = r.get<std::uint32_t>("CPUID register");
  }
}

void encode_vcpus(ByteWriter& w, const MachineState& s) {
  w.put(static_cast<std::uint32_t>(s.vcpus.size()));
  for (const auto& v : s.vcpus) w.put_blob(encode_vcpu_state(v));
}
void decode_vcpus(ByteReader& r, MachineState& s) {
  const auto count = r.get<std::uint32_t>("vCPU count");
  if (count == 0 || count > kMaxVcpus) r.fail("vCPU count", fmt::format("{} is not 1-{}", count, kMaxVcpus));
  s.vcpus.reserve(count);
  for (std::uint32_t i = 0; i < count; ++i) {
    const auto record = r.get_blob(kMaxVcpuRecord, "vCPU record");
    try {
      s.vcpus.push_back(decode_vcpu_state(record));
    } catch (const SnapshotError& e) {
      throw SnapshotError(fmt::format("vCPU {}: {}", i, e.what()));
    }
  }
}

void encode_devices(ByteWriter& w, const MachineState& s) { w.put_string(s.devices.dump()); }
void decode_devices(ByteReader& r, MachineState& s) {
  const std::string text = r.get_string(kMaxDevices, "device state");
  try {
    s.devices = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    r.fail("device state", fmt::format("not JSON: {}", e.what()));
  }
  if (!s.devices.is_object()) r.fail("device state", "not a JSON object");
}

std::vector<std::uint8_t> encode_machine_state(const MachineState& state) {
  ByteWriter w;
  w.put(kMachineMagic);
  w.put(kMachineStateFormat);
  encode_declaration(w, state);
  encode_cpu_model(w, state);
  encode_vcpus(w, state);
  encode_devices(w, state);
  return std::move(w.bytes());
}

MachineState decode_machine_state(std::span<const std::uint8_t> bytes) {
  ByteReader r(bytes, "machine state");
  if (r.get<std::uint32_t>("magic") != kMachineMagic) r.fail("magic", "not a machine state record");
  const auto format = r.get<std::uint32_t>("format version");
  if (format != kMachineStateFormat)
    r.fail("format version", fmt::format("version {} (this build reads version {})", format, kMachineStateFormat));
  MachineState s;
  decode_declaration(r, s);
  decode_cpu_model(r, s);
  decode_vcpus(r, s);
  decode_devices(r, s);
  r.expect_end();
  return s;
}

}  // namespace modevisor::host
