// The plugin as the host sees it: dlopen the module, check the descriptor,
// create a VM through the Monitor interface and run a guest.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <modevisor/api/plugin.hpp>

#include "bt_test_support.hpp"

using namespace bttest;

BT_GUEST_PROGRAM(plug, 0x100000,
  "  mov dx, 0x3f8\n"
  "  mov al, 'B'\n"
  "  out dx, al\n"
  "  mov al, 'T'\n"
  "  out dx, al\n"
  "  out 0xf4, al\n")

namespace {
struct Plugin {
  void* h = dlopen(BT_PLUGIN_PATH, RTLD_NOW | RTLD_LOCAL);
  ~Plugin() {
    if (h) dlclose(h);
  }
  template <typename F>
  F* sym(const char* n) {
    return reinterpret_cast<F*>(dlsym(h, n));
  }
};
}  // namespace

TEST(BtPlugin, DescriptorAndCreateVmRunAGuest) {
  Plugin p;
  ASSERT_NE(p.h, nullptr) << dlerror();
  auto abi = p.sym<AbiVersionFn>(symbols::kAbiVersion);
  auto describe = p.sym<DescribeFn>(symbols::kDescribe);
  auto create = p.sym<CreateFn>(symbols::kCreate);
  ASSERT_TRUE(abi && describe && create);
  EXPECT_EQ(abi(), kAbiVersion);
  PluginDescriptor d = describe();
  EXPECT_EQ(d.name, "bt-swmmu");
  EXPECT_EQ(d.log_token, "BT");

  auto monitor = create();
  MemfdMemory mem(8u << 20);
  FakePlatform plat;
  NullLogger log;
  VmSpec spec;
  spec.name = "t";
  spec.memory_bytes = mem.size();
  spec.guest_bits = 16;
  EXPECT_THROW(monitor->create_vm(spec, VmServices{mem, plat, log}), MonitorError);
  spec.guest_bits = 32;
  auto vm = monitor->create_vm(spec, VmServices{mem, plat, log});
  mem.load(0x100000, plug_start, static_cast<std::size_t>(plug_end - plug_start));
  vm->load_vcpu(0, multiboot_state(0x100000));
  RunExit r = vm->run(0);
  EXPECT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  EXPECT_EQ(plat.serial, "BT");
  VcpuState s = vm->save_vcpu(0);
  EXPECT_EQ(s.rip, 0x100000u + static_cast<std::uint64_t>(plug_end - plug_start));
  bool found = false;
  for (auto& [n, v] : vm->counters()) found |= n == "bt.io_exits" && v == 3;
  EXPECT_TRUE(found);
  std::vector<std::uint64_t> bitmap;
  EXPECT_TRUE(vm->collect_dirty_pages(bitmap));  // first call: everything
  EXPECT_EQ(bitmap.size(), (mem.size() / 4096 + 63) / 64);
  EXPECT_EQ(bitmap[0], ~0ull);
  // A state with EFER.LMA goes to BT64, which checks it is long mode indeed.
  VcpuState lm = s;
  lm.efer = 0x500;
  EXPECT_THROW(vm->load_vcpu(0, lm), MonitorError);
  lm.cr0 |= 0x80000000u;
  lm.cr4 |= 0x20;
  vm->load_vcpu(0, lm);
  EXPECT_EQ(vm->save_vcpu(0).efer, 0x500u);
  EXPECT_FALSE(vm->collect_dirty_pages(bitmap));  // BT64 keeps no dirty log yet
  EXPECT_TRUE(d.guests.bits64);
  EXPECT_FALSE(d.guests.bits64_needs_segment_limits);
}
