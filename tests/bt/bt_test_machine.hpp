// A whole VM for BT engine tests: memfd RAM, the fake platform and one vCPU
// starting in the multiboot state at kBase, with helpers for the GDT/TSS,
// IDT gates, running and reading counters.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "bt_test_support.hpp"
#include "vcpu.hpp"

namespace bttest {

using modevisor::bt::Vcpu;

constexpr std::uint32_t kBase = 0x100000;

struct Machine {
  MemfdMemory mem{16u << 20};
  FakePlatform plat;
  NullLogger log;
  std::unique_ptr<Vcpu> cpu = std::make_unique<Vcpu>(mem, plat, log, 0);
  VcpuState state = multiboot_state(kBase);

  void load(const unsigned char* b, const unsigned char* e, std::uint32_t at = kBase) {
    mem.load(at, b, static_cast<std::size_t>(e - b));
  }
  // GDT: null, code0 0x08, data0 0x10, code3 0x1b, data3 0x23, TSS 0x28 (at 0x3000).
  void tables() {
    const std::uint64_t gdt[6] = {0, 0x00cf9a000000ffffull, 0x00cf92000000ffffull, 0x00cffa000000ffffull,
                                  0x00cff2000000ffffull, 0x0000890000000067ull | (0x3000ull << 16)};
    mem.load(0x1000, gdt, sizeof gdt);
    state.gdtr = {0x1000, sizeof gdt - 1};
    state.idtr = {0x2000, 256 * 8 - 1};
    state.tr = Segment{};
    state.tr.selector = 0x28;
    state.tr.base = 0x3000;
    state.tr.limit = 0x67;
    state.tr.type = 0xb;
    state.tr.present = true;
    mem.w32(0x3004, 0x70000);  // esp0
    mem.w32(0x3008, 0x10);     // ss0
  }
  void gate(unsigned vec, const unsigned char* handler, const unsigned char* start, unsigned dpl = 0,
            bool trap = false) {
    const std::uint32_t off = kBase + static_cast<std::uint32_t>(handler - start);
    const std::uint64_t g = (off & 0xffff) | (0x08ull << 16) |
                            (static_cast<std::uint64_t>(0x80 | (dpl << 5) | (trap ? 0xf : 0xe)) << 40) |
                            (static_cast<std::uint64_t>(off >> 16) << 48);
    mem.load(0x2000 + vec * 8, &g, 8);
  }
  RunExit run() {
    cpu->load(state);
    RunExit r = cpu->run();
    state = cpu->save();
    return r;
  }
  // Runs `state` (not saved back) and kicks the vCPU out if it has not
  // stopped within `limit`: random code may loop forever.
  RunExit run_bounded(std::chrono::milliseconds limit) {
    std::mutex mutex;
    std::condition_variable changed;
    bool done = false;
    std::thread watchdog([&] {
      std::unique_lock lock(mutex);
      if (!changed.wait_for(lock, limit, [&] { return done; })) cpu->kick();
    });
    cpu->load(state);
    RunExit r = cpu->run();
    {
      std::lock_guard lock(mutex);
      done = true;
    }
    changed.notify_one();
    watchdog.join();
    return r;
  }
  std::uint64_t counter(const std::string& name) const {
    Counters c;
    cpu->add_counters(c);
    for (auto& [n, v] : c)
      if (n == name) return v;
    ADD_FAILURE() << "no counter " << name;
    return 0;
  }
};

}  // namespace bttest
