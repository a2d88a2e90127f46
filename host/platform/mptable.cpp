#include "platform/mptable.hpp"

#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>

#include "platform/interrupt_router.hpp"
#include "platform/lapic.hpp"

namespace modevisor::host {

namespace {

constexpr std::uint32_t kIoApicAddress = 0xfec00000;
constexpr std::uint8_t kLapicVersion = 0x14, kIoApicVersion = 0x20;
enum : std::uint8_t { kProcessor = 0, kBus = 1, kIoApic = 2, kIoInterrupt = 3, kLocalInterrupt = 4 };
enum : std::uint8_t { kInt = 0, kNmi = 1, kExtInt = 3 };

class Writer {
 public:
  template <typename T>
  void put(T v) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(&v);
    bytes.insert(bytes.end(), p, p + sizeof v);
  }
  void text(const char* s, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) bytes.push_back(static_cast<std::uint8_t>(i < std::strlen(s) ? s[i] : ' '));
  }
  std::vector<std::uint8_t> bytes;
};

std::uint8_t checksum(const std::uint8_t* p, std::size_t n) {
  const unsigned sum = std::accumulate(p, p + n, 0u);
  return static_cast<std::uint8_t>(-sum);
}

}  // namespace

std::vector<std::uint8_t> build_mp_table(const MpTableConfig& config, std::uint32_t address) {
  if (config.cpus == 0 || config.cpus > 254)
    throw std::invalid_argument("MP table: " + std::to_string(config.cpus) + " CPUs (1-254 fit the xAPIC ID space)");
  const std::uint8_t ioapic_id = static_cast<std::uint8_t>(config.cpus);

  Writer t;  // the configuration table, header first
  t.text("PCMP", 4);
  t.put<std::uint16_t>(0);  // base table length, patched below
  t.put<std::uint8_t>(4);   // spec revision 1.4
  t.put<std::uint8_t>(0);   // checksum, patched below
  t.text("MODEVSR", 8);
  t.text("PC", 12);
  t.put<std::uint32_t>(0);  // no OEM table
  t.put<std::uint16_t>(0);
  t.put<std::uint16_t>(0);  // entry count, patched below
  t.put<std::uint32_t>(Lapic::kDefaultBase);
  t.put<std::uint16_t>(0);  // no extended entries
  t.put<std::uint8_t>(0);
  t.put<std::uint8_t>(0);
  std::uint16_t entries = 0;

  for (unsigned cpu = 0; cpu < config.cpus; ++cpu, ++entries) {
    t.put<std::uint8_t>(kProcessor);
    t.put<std::uint8_t>(static_cast<std::uint8_t>(cpu));
    t.put<std::uint8_t>(kLapicVersion);
    t.put<std::uint8_t>(cpu == 0 ? 0x03 : 0x01);  // enabled, BSP
    t.put<std::uint32_t>(config.cpu_signature);
    t.put<std::uint32_t>(config.cpu_features);
    t.put<std::uint64_t>(0);
  }
  t.put<std::uint8_t>(kBus), t.put<std::uint8_t>(0), t.text("ISA", 6), ++entries;
  t.put<std::uint8_t>(kIoApic), t.put<std::uint8_t>(ioapic_id), t.put<std::uint8_t>(kIoApicVersion);
  t.put<std::uint8_t>(1), t.put<std::uint32_t>(kIoApicAddress), ++entries;

  auto io_interrupt = [&](std::uint8_t type, std::uint8_t irq, std::uint8_t pin) {
    t.put<std::uint8_t>(kIoInterrupt), t.put<std::uint8_t>(type), t.put<std::uint16_t>(0);  // conforms to the bus
    t.put<std::uint8_t>(0), t.put<std::uint8_t>(irq), t.put<std::uint8_t>(ioapic_id), t.put<std::uint8_t>(pin);
    ++entries;
  };
  io_interrupt(kExtInt, 0, 0);
  for (std::uint8_t irq = 0; irq < 16; ++irq)
    if (irq != 2) io_interrupt(kInt, irq, static_cast<std::uint8_t>(InterruptRouter::ioapic_pin(irq)));
  auto local_interrupt = [&](std::uint8_t type, std::uint8_t lint) {
    t.put<std::uint8_t>(kLocalInterrupt), t.put<std::uint8_t>(type), t.put<std::uint16_t>(0);
    t.put<std::uint8_t>(0), t.put<std::uint8_t>(0), t.put<std::uint8_t>(0xff), t.put<std::uint8_t>(lint);
    ++entries;
  };
  local_interrupt(kExtInt, 0);
  local_interrupt(kNmi, 1);

  auto& table = t.bytes;
  const auto length = static_cast<std::uint16_t>(table.size());
  std::memcpy(&table[4], &length, 2);
  std::memcpy(&table[34], &entries, 2);
  table[7] = checksum(table.data(), table.size());

  Writer f;  // floating pointer structure, then the table right after it
  f.text("_MP_", 4);
  f.put<std::uint32_t>(address + 16);
  f.put<std::uint8_t>(1);  // length in 16-byte units
  f.put<std::uint8_t>(4);
  f.put<std::uint8_t>(0);  // checksum
  f.put<std::uint8_t>(0);  // feature 1: the configuration table is present
  f.put<std::uint32_t>(0); // feature 2-5: no IMCR (virtual wire mode)
  f.bytes[10] = checksum(f.bytes.data(), 16);
  f.bytes.insert(f.bytes.end(), table.begin(), table.end());
  return f.bytes;
}

void write_mp_table(api::GuestMemory& ram, const MpTableConfig& config) {
  const auto bytes = build_mp_table(config);
  if (ram.size() < kMpTableAddress + bytes.size())
    throw std::invalid_argument("MP table: guest RAM does not reach the BIOS area at 0xf0000");
  std::memcpy(ram.host_base() + kMpTableAddress, bytes.data(), bytes.size());
  ram.mark_dirty(kMpTableAddress, bytes.size());
}

}  // namespace modevisor::host
