// Vm with several vCPUs, against a scripted monitor plugin (no KVM, no
// translator): each vCPU on its own thread, application processors held
// in wait-for-SIPI until the guest starts them through its local APIC, INIT
// and STARTUP applied to their state, stop and failures reaching every vCPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "vm/vm.hpp"

namespace modevisor::host {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr std::uint64_t kIcrLow = 0xfee00300, kIcrHigh = 0xfee00310;

// "Guest code" for one vCPU: called repeatedly while the vCPU runs; returns
// an exit to leave run() with one.  It may spin, like guest code under
// KVM_RUN, and then only a kick brings the vCPU out (wait_for_kick).
class ScriptedVm;
using Step = std::function<std::optional<api::RunExit>(unsigned vcpu, ScriptedVm& vm)>;

struct Script {
  Step step;
  std::mutex mutex;
  std::vector<std::vector<api::VcpuState>> loads;       // by vCPU, every load_vcpu
  std::vector<std::vector<std::thread::id>> run_threads;  // by vCPU, the thread of every run()
  std::atomic<int> runs_with_code[8] = {};               // by vCPU: run() calls that executed steps
  std::atomic<int> nmis{0};
};

class ScriptedVm final : public api::VirtualMachine {
 public:
  ScriptedVm(const api::VmSpec& spec, api::VmServices services, Script& script)
      : platform(services.platform), script_(script), states_(spec.vcpus), kicked_(spec.vcpus) {
    std::lock_guard lock(script_.mutex);
    script_.loads.assign(spec.vcpus, {});
    script_.run_threads.assign(spec.vcpus, {});
    for (auto& s : states_) {  // what a new vCPU looks like: the reset state
      s.cs.selector = 0xf000;
      s.cs.base = 0xffff0000;
      s.rip = 0xfff0;
    }
  }

  api::RunExit run(unsigned i) override {
    {
      std::lock_guard lock(script_.mutex);
      script_.run_threads[i].push_back(std::this_thread::get_id());
    }
    if (states_[i].run_state == api::RunState::WaitForSipi) return {};
    ++script_.runs_with_code[i];
    for (;;) {
      if (kicked_[i].exchange(false) || platform.stop_requested()) return {};
      const api::CpuEvents e = platform.cpu_events(i);
      if (e.init || e.startup) return {};
      if (e.nmi && platform.acknowledge_nmi(i)) ++script_.nmis;
      if (auto exit = script_.step(i, *this)) return *exit;
      std::this_thread::yield();
    }
  }
  void kick(unsigned i) override { kicked_[i] = true; }
  api::VcpuState save_vcpu(unsigned i) override { return states_[i]; }
  void load_vcpu(unsigned i, const api::VcpuState& s) override {
    states_[i] = s;
    std::lock_guard lock(script_.mutex);
    script_.loads[i].push_back(s);
  }
  api::Counters counters() const override { return {{"scripted.vcpus", states_.size()}}; }
  bool collect_dirty_pages(std::vector<std::uint64_t>&) override { return false; }

  // Guest code that makes no exits: only a kick ends it (a bound keeps a
  // missing kick from hanging the test: it fails instead).
  std::optional<api::RunExit> wait_for_kick(unsigned i) {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!kicked_[i].load())
      if (std::chrono::steady_clock::now() > give_up) return api::RunExit{api::ExitKind::Error, "never kicked"};
    return std::nullopt;  // the run loop sees the kick
  }
  const api::VcpuState& state(unsigned i) const { return states_[i]; }

  void send_ipi(unsigned from, std::uint32_t low, std::uint8_t destination) {
    platform.mmio_write(from, kIcrHigh, 4, std::uint32_t{destination} << 24);
    platform.mmio_write(from, kIcrLow, 4, low);
  }
  void init_sipi(unsigned from, std::uint8_t to, std::uint8_t vector) {
    send_ipi(from, 0xc500, to);  // INIT, level, assert
    send_ipi(from, 0x8500, to);  // INIT level de-assert
    send_ipi(from, 0x0600u | vector, to);
    send_ipi(from, 0x0600u | vector, to);
  }
  void guest_exit(unsigned from, std::uint8_t code) { platform.io_out(from, 0xf4, 1, code); }

  api::Platform& platform;

 private:
  Script& script_;
  std::vector<api::VcpuState> states_;
  std::vector<std::atomic<bool>> kicked_;
};

class ScriptedMonitor final : public api::Monitor {
 public:
  explicit ScriptedMonitor(Script& script) : script_(script) {}
  std::vector<std::string> probe(const api::HostCapabilities&) override { return {}; }
  std::unique_ptr<api::VirtualMachine> create_vm(const api::VmSpec& spec, api::VmServices services) override {
    return std::make_unique<ScriptedVm>(spec, services, script_);
  }

 private:
  Script& script_;
};

class VmTest : public ::testing::Test {
 protected:
  VmConfig config(unsigned vcpus) {
    VmConfig vm;
    vm.name = "smp-test";
    vm.guest.os = GuestOsType{"other-32", 32, "other", "test"};
    vm.guest.kernel = std::filesystem::path(MODEVISOR_BINARY_DIR) / "guests" / "hello.elf";
    vm.memory_bytes = 16 << 20;
    vm.vcpus = vcpus;
    plugin_.descriptor.name = "scripted";
    plugin_.descriptor.log_token = "BT";
    plugin_.descriptor.version = "0";
    plugin_.mode = "BT";
    plugin_.monitor = std::make_shared<ScriptedMonitor>(script_);
    return vm;
  }
  std::unique_ptr<Vm> create(unsigned vcpus) {
    auto log = std::make_shared<spdlog::logger>("smp-test", std::make_shared<spdlog::sinks::ostream_sink_mt>(log_));
    vm_config_ = config(vcpus);
    return Vm::create(vm_config_, std::make_shared<const LoadedPlugin>(plugin_), log);
  }
  SessionResult run(unsigned vcpus, const std::function<void(Vm&)>& while_running = nullptr) {
    auto vm = create(vcpus);
    vm->start();
    std::thread side;
    if (while_running) side = std::thread([&] { while_running(*vm); });
    SessionResult result = vm->wait();
    if (side.joinable()) side.join();
    return result;
  }

  Script script_;
  LoadedPlugin plugin_;
  VmConfig vm_config_;
  std::ostringstream log_;
};

TEST_F(VmTest, ApsWaitForSipiThenRunOnTheirOwnThreadsFromTheVectorsPage) {
  std::atomic<int> checked_in{0};
  std::vector<api::VcpuState> started(3);
  script_.step = [&](unsigned i, ScriptedVm& vm) -> std::optional<api::RunExit> {
    if (i == 0) {
      static thread_local bool sent = false;
      if (!sent) {
        vm.init_sipi(0, 1, 0x70);
        vm.init_sipi(0, 2, 0x70);
        sent = true;
      }
      if (checked_in == 2) vm.guest_exit(0, 0);
      return std::nullopt;
    }
    static thread_local bool announced = false;
    if (!announced) {
      started[i] = vm.state(i);
      announced = true;
      ++checked_in;
    }
    return vm.wait_for_kick(i);  // spins without exits until the VM stops
  };
  const SessionResult r = run(3);
  EXPECT_EQ(r.kind, SessionResult::Kind::GuestExit) << r.reason;
  EXPECT_EQ(r.guest_status, std::optional<int>(1));
  ASSERT_EQ(checked_in, 2);
  for (unsigned ap : {1u, 2u}) {
    ASSERT_GE(script_.loads[ap].size(), 2u) << ap;
    // Power-on state, the INIT (applied alone or with the STARTUP), then one start:
    // the second SIPI of INIT-SIPI-SIPI is ignored.
    EXPECT_EQ(std::count_if(script_.loads[ap].begin(), script_.loads[ap].end(),
                            [](const api::VcpuState& s) { return s.run_state == api::RunState::Runnable; }),
              1);
    EXPECT_EQ(script_.loads[ap].front().run_state, api::RunState::WaitForSipi) << "powered on waiting";
    EXPECT_EQ(started[ap].run_state, api::RunState::Runnable);
    EXPECT_EQ(started[ap].cs.selector, 0x7000);
    EXPECT_EQ(started[ap].cs.base, 0x70000u);
    EXPECT_EQ(started[ap].rip, 0u);
    EXPECT_EQ(started[ap].cr0 & 1, 0u);
  }
  EXPECT_EQ(script_.loads[0].size(), 1u) << "the BSP only got the kernel's entry state";
  EXPECT_NE(script_.run_threads[0].front(), std::this_thread::get_id()) << "vCPU 0 on a thread of its own";
  EXPECT_NE(script_.run_threads[1].front(), script_.run_threads[0].front());
  EXPECT_NE(script_.run_threads[2].front(), script_.run_threads[0].front());
  EXPECT_NE(script_.run_threads[1].front(), script_.run_threads[2].front());
  EXPECT_THAT(log_.str(), HasSubstr("vCPU 1: STARTUP vector 0x70: real mode at 7000:0000"));
  EXPECT_THAT(r.counters, ::testing::Contains(std::pair<std::string, std::uint64_t>("ipi startup", 4)));
}

TEST_F(VmTest, InitPutsARunningApBackAndANewStartupRestartsItElsewhere) {
  std::atomic<int> checked_in{0};
  std::vector<std::uint64_t> bases;
  std::mutex bases_mutex;
  script_.step = [&](unsigned i, ScriptedVm& vm) -> std::optional<api::RunExit> {
    if (i == 0) {
      static thread_local int phase = 0;
      if (phase == 0) vm.init_sipi(0, 1, 0x70), phase = 1;
      if (phase == 1 && checked_in == 1) vm.init_sipi(0, 1, 0x80), phase = 2;
      if (phase == 2 && checked_in == 2) vm.guest_exit(0, 0), phase = 3;
      return std::nullopt;
    }
    static thread_local std::uint64_t seen_base = ~0ull;
    if (vm.state(i).cs.base != seen_base) {
      seen_base = vm.state(i).cs.base;
      std::lock_guard lock(bases_mutex);
      bases.push_back(seen_base);
      ++checked_in;
    }
    return std::nullopt;  // runs on; the INIT makes run() return
  };
  const SessionResult r = run(2);
  EXPECT_EQ(r.kind, SessionResult::Kind::GuestExit) << r.reason;
  EXPECT_THAT(bases, ::testing::ElementsAre(0x70000u, 0x80000u));
  EXPECT_EQ(script_.loads[1].back().cs.selector, 0x8000);
}

TEST_F(VmTest, ShutdownOfAnApStopsTheVmWithThatVcpusDiagnostic) {
  script_.step = [&](unsigned i, ScriptedVm& vm) -> std::optional<api::RunExit> {
    if (i == 0) {
      static thread_local bool sent = false;
      if (!sent) vm.init_sipi(0, 1, 0x10), sent = true;
      return vm.wait_for_kick(0);
    }
    return api::RunExit{api::ExitKind::Shutdown, "triple fault; eip=00000000"};
  };
  const SessionResult r = run(2);
  EXPECT_EQ(r.kind, SessionResult::Kind::Shutdown);
  EXPECT_THAT(r.reason, StartsWith("vCPU 1: triple fault"));
  EXPECT_FALSE(r.guest_status);
}

TEST_F(VmTest, AnErrorWithoutDiagnosticGetsTheVcpusRegisterDump) {
  script_.step = [&](unsigned i, ScriptedVm& vm) -> std::optional<api::RunExit> {
    if (i == 0) {
      static thread_local bool sent = false;
      if (!sent) vm.init_sipi(0, 2, 0x10), sent = true;
      return vm.wait_for_kick(0);
    }
    return api::RunExit{api::ExitKind::Error, ""};
  };
  const SessionResult r = run(3);
  EXPECT_EQ(r.kind, SessionResult::Kind::Error);
  EXPECT_THAT(r.reason, StartsWith("vCPU 2: eip=00000000"));
  EXPECT_THAT(r.reason, HasSubstr("cs=1000"));
}

TEST_F(VmTest, StopReachesRunningVcpusAndThoseWaitingForSipi) {
  std::atomic<bool> ap_running{false};
  script_.step = [&](unsigned i, ScriptedVm& vm) -> std::optional<api::RunExit> {
    if (i == 0) {
      static thread_local bool sent = false;
      if (!sent) vm.init_sipi(0, 1, 0x10), sent = true;
    } else {
      ap_running = true;
    }
    return vm.wait_for_kick(i);
  };
  const SessionResult r = run(3, [&](Vm& session) {
    while (!ap_running) std::this_thread::yield();
    session.stop("operator");
  });
  EXPECT_EQ(r.kind, SessionResult::Kind::Stopped);
  EXPECT_EQ(r.reason, "operator");
  EXPECT_EQ(script_.runs_with_code[2], 0) << "vCPU 2 was never started";
  EXPECT_THAT(r.counters, ::testing::Contains(std::pair<std::string, std::uint64_t>("scripted.vcpus", 3)));
}

TEST_F(VmTest, PauseParksRunningVcpusAndThoseWaitingForSipiAndResumeGoesOn) {
  std::atomic<bool> ap_running{false};
  std::atomic<bool> finish{false};
  script_.step = [&](unsigned i, ScriptedVm& vm) -> std::optional<api::RunExit> {
    if (i == 0) {
      static thread_local bool sent = false;
      if (!sent) vm.init_sipi(0, 1, 0x10), sent = true;
      if (finish) vm.guest_exit(0, 0);
      return std::nullopt;
    }
    ap_running = true;
    return std::nullopt;  // spins; only a kick (pause) brings it out
  };
  auto vm = create(3);
  vm->start();
  while (!ap_running) std::this_thread::yield();
  vm->pause();
  ASSERT_EQ(vm->state(), VmState::Paused);
  const int runs_at_pause = script_.runs_with_code[1];
  const MachineState saved = vm->save_state();
  ASSERT_EQ(saved.vcpus.size(), 3u);
  EXPECT_EQ(saved.vcpus[1].run_state, api::RunState::Runnable);
  EXPECT_EQ(saved.vcpus[2].run_state, api::RunState::WaitForSipi) << "vCPU 2 was never started";
  EXPECT_EQ(saved.devices["lapic"].size(), 3u);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(script_.runs_with_code[1], runs_at_pause) << "no vCPU runs while paused";
  EXPECT_THROW(vm->pause(), VmStateError);
  vm->resume();
  EXPECT_EQ(vm->state(), VmState::Running);
  // vCPU 1 must run again before vCPU 0 ends the guest; ending it at once
  // would race vCPU 1's first run after resume.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (script_.runs_with_code[1] <= runs_at_pause && std::chrono::steady_clock::now() < deadline)
    std::this_thread::yield();
  EXPECT_GT(script_.runs_with_code[1], runs_at_pause) << "vCPU 1 ran again after resume";
  finish = true;
  const SessionResult r = vm->wait();
  EXPECT_EQ(r.kind, SessionResult::Kind::GuestExit) << r.reason;
  EXPECT_EQ(script_.runs_with_code[2], 0);
  EXPECT_EQ(vm->state(), VmState::Stopped);
}

TEST_F(VmTest, AnNmiIpiReachesTheTargetsRunLoop) {
  script_.step = [&](unsigned i, ScriptedVm& vm) -> std::optional<api::RunExit> {
    if (i != 0) return std::nullopt;
    static thread_local int phase = 0;
    if (phase == 0) vm.init_sipi(0, 1, 0x10), phase = 1;
    if (phase == 1 && script_.runs_with_code[1] > 0) vm.send_ipi(0, 0x400, 1), phase = 2;  // NMI to APIC 1
    if (phase == 2 && script_.nmis == 1) vm.guest_exit(0, 0), phase = 3;
    return std::nullopt;
  };
  const SessionResult r = run(2);
  EXPECT_EQ(r.kind, SessionResult::Kind::GuestExit) << r.reason;
  EXPECT_EQ(script_.nmis, 1);
}

TEST_F(VmTest, AUniprocessorVmRunsOnOneThreadOfItsOwn) {
  script_.step = [&](unsigned, ScriptedVm& vm) -> std::optional<api::RunExit> {
    vm.guest_exit(0, 3);
    return std::nullopt;
  };
  const SessionResult r = run(1);
  EXPECT_EQ(r.kind, SessionResult::Kind::GuestExit);
  EXPECT_EQ(r.guest_status, std::optional<int>(7));
  ASSERT_EQ(script_.run_threads.size(), 1u);
  EXPECT_NE(script_.run_threads[0].front(), std::this_thread::get_id());
}

}  // namespace
}  // namespace modevisor::host
