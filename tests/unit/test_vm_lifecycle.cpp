// The VM lifecycle with real guests (tests/guests/) under bt-swmmu: pause and
// resume with the guest's output and clock going on as if nothing happened,
// save -> snapshot file -> restore into a new Vm with the same output as an
// uninterrupted run, and transitions a state does not allow.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <unistd.h>
#include <cstring>

#include "config/vm_config.hpp"
#include "platform/clock.hpp"
#include "platform/machine.hpp"
#include "plugins/registry.hpp"
#include "selection/guest_os.hpp"
#include "snapshot/snapshot.hpp"
#include "vm/vm.hpp"

namespace modevisor::host {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

class VmLifecycleTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    registry_ = new PluginRegistry({fs::path(MODEVISOR_BINARY_DIR) / "plugins"});
    registry_->rescan();
    guest_os_ = new GuestOsTable(GuestOsTable::load(fs::path(MODEVISOR_SOURCE_DIR) / "configs" / "guest-os.yaml"));
  }
  static void TearDownTestSuite() {
    delete registry_;
    delete guest_os_;
  }

  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("modevisor-vm-lifecycle-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    const LoadedPlugin* bt = registry_->find("bt-swmmu");
    ASSERT_NE(bt, nullptr) << "the bt-swmmu plugin is not built";
    plugin_ = std::make_shared<const LoadedPlugin>(*bt);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A VM declaration of guest `elf` with `cmdline`, written to a file.
  VmConfig declare(const std::string& elf, const std::string& cmdline) {
    const fs::path file = dir_ / "vm.yaml";
    std::ofstream(file) << "name: lifecycle\nguest:\n  os: other-32\n  kernel: "
                        << (fs::path(MODEVISOR_BINARY_DIR) / "guests" / elf).string() << "\n  cmdline: " << cmdline
                        << "\nmemory: 32MiB\n";
    return load_vm_config(file, *guest_os_);
  }
  std::shared_ptr<spdlog::logger> log() {
    return std::make_shared<spdlog::logger>("vm", std::make_shared<spdlog::sinks::ostream_sink_mt>(log_));
  }
  // The output of an uninterrupted run.
  std::pair<std::string, SessionResult> run_through(const VmConfig& config) {
    auto vm = Vm::create(config, plugin_, log());
    vm->start();
    SessionResult r = vm->wait();
    return {vm->console_output(), r};
  }
  static void wait_for_output(Vm& vm, const std::string& text) {
    while (vm.console_output().find(text) == std::string::npos && vm.state() == VmState::Running)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }

  static inline PluginRegistry* registry_ = nullptr;
  static inline GuestOsTable* guest_os_ = nullptr;
  fs::path dir_;
  std::shared_ptr<const LoadedPlugin> plugin_;
  std::ostringstream log_;
};

// Long enough to be paused in the middle (about a second under BT on an idle
// machine; r=60 took 0.1 s once BT got faster and the pause came too late), and its
// output does not depend on time.
constexpr const char* kSieve = "n=1000000 r=1000";

// The seed's BT32 switch, its session side, with the plugins that run here:
// the guest enters long mode under bt-swmmu, the session stops every vCPU,
// asks the handler which plugin takes the guest over and builds that one's VM
// on the same RAM and devices.  Without a plugin the VM fails with the
// handler's reason; with bt-swmmu itself (its BT64 loads the long-mode vCPU)
// the guest goes on to its end in the new VM; never a crash.
TEST_F(VmLifecycleTest, AGuestEnteringLongModeUnderBtIsHandedToTheModeChangeHandler) {
  const fs::path file = dir_ / "longmode.yaml";
  std::ofstream(file) << "name: longmode\nguest:\n  os: other-32\n  kernel: "
                      << (fs::path(MODEVISOR_BINARY_DIR) / "guests" / "longmode.elf").string()
                      << "\nmemory: 32MiB\ncpu_model: kvm64\n";
  const VmConfig config = load_vm_config(file, *guest_os_);

  std::string asked;
  VmEvents events;
  events.mode_change = [&](const std::string& guest_event) {
    asked = guest_event;
    return ModeChangeOutcome{nullptr, "no hardware mode here", nullptr};
  };
  auto vm = Vm::create(config, plugin_, log(), std::move(events));
  vm->start();
  SessionResult r = vm->wait();
  EXPECT_THAT(asked, HasSubstr("activated long mode"));
  EXPECT_EQ(r.kind, SessionResult::Kind::Error);
  EXPECT_THAT(r.reason, HasSubstr("no other monitor mode takes the VM over: no hardware mode here"));
  EXPECT_THAT(vm->console_output(), HasSubstr("entering long mode\n"));
  EXPECT_EQ(vm->mode_switches(), 0u);
  EXPECT_EQ(vm->state(), VmState::Failed);

  VmEvents bt64;
  bt64.mode_change = [&](const std::string&) { return ModeChangeOutcome{plugin_, "", nullptr}; };
  auto again = Vm::create(config, plugin_, log(), std::move(bt64));
  again->start();
  r = again->wait();
  EXPECT_EQ(r.kind, SessionResult::Kind::GuestExit) << r.reason;
  EXPECT_THAT(again->console_output(), HasSubstr("back in 32-bit code (compatibility mode)\n"));
  EXPECT_THAT(again->console_output(), HasSubstr("RESULT: PASS"));
  EXPECT_EQ(again->mode_switches(), 1u);
  bool counted = false;
  for (const auto& [name, value] : r.counters) counted |= name == "vm.mode_switches" && value == 1;
  EXPECT_TRUE(counted);
}

TEST_F(VmLifecycleTest, PauseAndResumeContinueTheOutputWithNoGapOrRepeatAndTheClockDoesNotJump) {
  const VmConfig config = declare("sieve.elf", kSieve);
  const auto [expected, expected_result] = run_through(config);
  ASSERT_EQ(expected_result.kind, SessionResult::Kind::GuestExit) << expected_result.reason;

  std::vector<VmState> states;
  std::mutex states_mutex;
  VmEvents events;
  events.state_changed = [&](VmState s) {
    std::lock_guard lock(states_mutex);
    states.push_back(s);
  };
  auto vm = Vm::create(config, plugin_, log(), events);
  vm->start();
  wait_for_output(*vm, "sieve: n=");
  vm->pause();
  ASSERT_EQ(vm->state(), VmState::Paused) << "the guest ended before it could be paused";
  const std::string at_pause = vm->console_output();
  const std::uint64_t frozen = vm->guest_time_ns();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(vm->guest_time_ns(), frozen) << "guest time stands still while paused";
  EXPECT_EQ(vm->console_output(), at_pause) << "no guest output while paused";

  const auto before_resume = std::chrono::steady_clock::now();
  vm->resume();
  const std::uint64_t after = vm->guest_time_ns();
  const auto elapsed = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() -
                                                                           before_resume).count();
  EXPECT_GE(after, frozen);
  EXPECT_LE(after - frozen, static_cast<std::uint64_t>(elapsed)) << "the 300 ms paused do not show in guest time";

  const SessionResult r = vm->wait();
  EXPECT_EQ(r.kind, SessionResult::Kind::GuestExit) << r.reason;
  EXPECT_EQ(r.guest_status, expected_result.guest_status);
  EXPECT_EQ(vm->console_output(), expected);
  std::lock_guard lock(states_mutex);
  EXPECT_THAT(states, ::testing::ElementsAre(VmState::Running, VmState::Paused, VmState::Running, VmState::Stopped));
  EXPECT_THAT(log_.str(), HasSubstr("pause: every vCPU left its run loop"));
}

TEST_F(VmLifecycleTest, SaveToASnapshotFileAndRestoreInANewVmContinuesAsAnUninterruptedRun) {
  const VmConfig config = declare("sieve.elf", kSieve);
  const auto [expected, expected_result] = run_through(config);

  auto vm = Vm::create(config, plugin_, log());
  vm->start();
  wait_for_output(*vm, "sieve: n=");
  vm->pause();
  ASSERT_EQ(vm->state(), VmState::Paused) << "the guest ended before it could be paused";
  const std::string before = vm->console_output();
  const fs::path file = dir_ / "vm.snapshot";
  write_snapshot(file, vm->save_state(), vm->ram());
  std::printf("[snapshot] %ju bytes for a VM of %ju MiB of RAM\n", static_cast<std::uintmax_t>(fs::file_size(file)),
              static_cast<std::uintmax_t>(vm->ram().size() >> 20));
  vm->stop("saved");
  EXPECT_EQ(vm->wait().kind, SessionResult::Kind::Stopped);
  vm.reset();

  LoadedSnapshot snapshot = read_snapshot(file);
  const VmConfig restored_config = parse_vm_config(snapshot.state.vm_yaml, snapshot.state.vm_file, *guest_os_);
  EXPECT_EQ(restored_config.guest.cmdline, kSieve);
  // The contract's form: the declaration parsed from the snapshot itself.
  auto restored = Vm::restore(snapshot.state, std::move(snapshot.ram), plugin_, log());
  EXPECT_EQ(restored->config().guest.cmdline, kSieve);
  EXPECT_EQ(restored->state(), VmState::Paused);
  restored->resume();
  const SessionResult r = restored->wait();
  EXPECT_EQ(r.kind, SessionResult::Kind::GuestExit) << r.reason;
  EXPECT_EQ(r.guest_status, expected_result.guest_status);
  EXPECT_EQ(before + restored->console_output(), expected);
  EXPECT_THAT(log_.str(), HasSubstr("restore: VM lifecycle restored"));
}

TEST_F(VmLifecycleTest, ARestoredVmCanBeSavedAgainBeforeItRuns) {
  const VmConfig config = declare("sieve.elf", kSieve);
  auto vm = Vm::create(config, plugin_, log());
  vm->start();
  wait_for_output(*vm, "sieve: n=");
  vm->pause();
  ASSERT_EQ(vm->state(), VmState::Paused) << "the guest ended before it could be paused";
  const MachineState first = vm->save_state();
  auto ram = std::make_unique<GuestRam>(vm->ram().size());
  std::memcpy(ram->host_base(), vm->ram().host_base(), ram->size());
  vm->stop("done");
  auto restored = Vm::restore(config, first, std::move(ram), plugin_, log());
  const MachineState second = restored->save_state();
  ASSERT_EQ(second.vcpus.size(), first.vcpus.size());
  EXPECT_EQ(second.devices, first.devices) << "guest time and devices as saved";
  EXPECT_EQ(second.vcpus[0].rip, first.vcpus[0].rip);
}

TEST_F(VmLifecycleTest, PendingAndInDeliveryEventsSurviveARestoreAndSaveThroughBt) {
  const VmConfig config = declare("sieve.elf", kSieve);
  auto vm = Vm::create(config, plugin_, log());
  vm->start();
  wait_for_output(*vm, "sieve: n=");
  vm->pause();
  ASSERT_EQ(vm->state(), VmState::Paused) << "the guest ended before it could be paused";
  MachineState state = vm->save_state();
  auto ram = std::make_unique<GuestRam>(vm->ram().size());
  std::memcpy(ram->host_base(), vm->ram().host_base(), ram->size());
  vm->stop("done");
  vm->wait();
  api::PendingEvents cases[3];
  cases[0].exception = api::PendingException{11, true, 0x1a, true};  // #NP in delivery
  cases[0].nmi_masked = true;
  cases[1].interrupt = 0x31;
  cases[1].interrupt_shadow = true;
  cases[2].exception = api::PendingException{14, true, 0x2, false};
  cases[2].nmi_pending = true;
  for (const auto& events : cases) {
    MachineState s = state;
    s.vcpus[0].events = events;
    auto copy = std::make_unique<GuestRam>(ram->size());
    std::memcpy(copy->host_base(), ram->host_base(), ram->size());
    auto restored = Vm::restore(config, s, std::move(copy), plugin_, log());
    const api::PendingEvents got = restored->save_state().vcpus[0].events;
    ASSERT_EQ(got.exception.has_value(), events.exception.has_value());
    if (got.exception) {
      EXPECT_EQ(got.exception->vector, events.exception->vector);
      EXPECT_EQ(got.exception->has_error_code, events.exception->has_error_code);
      EXPECT_EQ(got.exception->error_code, events.exception->error_code);
      EXPECT_EQ(got.exception->injected, events.exception->injected);
    }
    EXPECT_EQ(got.interrupt, events.interrupt);
    EXPECT_EQ(got.interrupt_shadow, events.interrupt_shadow);
    EXPECT_EQ(got.nmi_pending, events.nmi_pending);
    EXPECT_EQ(got.nmi_masked, events.nmi_masked);
  }
}

TEST_F(VmLifecycleTest, TransitionsTheStateDoesNotAllowAreErrorsNamingTheState) {
  const VmConfig config = declare("hello.elf", "hello=world n=42");
  auto vm = Vm::create(config, plugin_, log());
  EXPECT_EQ(vm->state(), VmState::Created);
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const VmStateError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message([&] { vm->pause(); }), "cannot pause VM lifecycle: it is created");
  EXPECT_EQ(message([&] { vm->resume(); }), "cannot resume VM lifecycle: it is created");
  EXPECT_EQ(message([&] { vm->save_state(); }), "cannot save the state of VM lifecycle: it is created");
  vm->start();
  EXPECT_THAT(message([&] { vm->start(); }), HasSubstr("cannot start VM lifecycle: it is "));
  const SessionResult r = vm->wait();
  EXPECT_EQ(r.kind, SessionResult::Kind::GuestExit);
  EXPECT_EQ(vm->state(), VmState::Stopped);
  EXPECT_EQ(message([&] { vm->start(); }), "cannot start VM lifecycle: it is stopped");
  EXPECT_EQ(message([&] { vm->pause(); }), "cannot pause VM lifecycle: it is stopped");
  EXPECT_EQ(message([&] { vm->resume(); }), "cannot resume VM lifecycle: it is stopped");
  vm->stop("again");  // stopping a stopped VM changes nothing
  EXPECT_EQ(vm->state(), VmState::Stopped);
}

TEST_F(VmLifecycleTest, ACreatedVmStopsWithoutRunning) {
  auto vm = Vm::create(declare("hello.elf", "hello=world n=42"), plugin_, log());
  vm->stop("never started");
  const SessionResult r = vm->wait();
  EXPECT_EQ(r.kind, SessionResult::Kind::Stopped);
  EXPECT_EQ(r.reason, "never started");
  EXPECT_EQ(vm->state(), VmState::Stopped);
}

TEST_F(VmLifecycleTest, ATripleFaultEndsTheVmFailedWithItsDiagnostic) {
  auto vm = Vm::create(declare("triple.elf", "x=1"), plugin_, log());
  vm->start();
  const SessionResult r = vm->wait();
  EXPECT_EQ(r.kind, SessionResult::Kind::Shutdown);
  EXPECT_EQ(vm->state(), VmState::Failed);
  EXPECT_THAT(r.reason, HasSubstr("triple fault"));
}

TEST_F(VmLifecycleTest, GuestConsoleLinesAreTaggedAndEscapedInTheVmLog) {
  auto vm = Vm::create(declare("hello.elf", "hello=world n=42"), plugin_, log());
  vm->start();
  vm->wait();
  EXPECT_THAT(log_.str(), HasSubstr("guest-console| hello from hello"));
}

TEST_F(VmLifecycleTest, ACmdlineWithANewlineCannotForgeAVmLogLine) {
  const fs::path file = dir_ / "forge.yaml";
  std::ofstream(file) << "name: forge\nguest:\n  os: other-32\n  kernel: "
                      << (fs::path(MODEVISOR_BINARY_DIR) / "guests" / "hello.elf").string()
                      << "\n  cmdline: \"x\\n2026-01-01T00:00:00.000 info MONITOR MODE: selected : HWMMU\"\nmemory: 32MiB\n";
  auto vm = Vm::create(load_vm_config(file, *guest_os_), plugin_, log());
  vm->stop("not run");
  std::istringstream lines(log_.str());
  for (std::string line; std::getline(lines, line);) {
    EXPECT_THAT(line, ::testing::Not(HasSubstr("MONITOR MODE"))) << line;
    EXPECT_THAT(line, ::testing::Not(::testing::StartsWith("2026-01-01"))) << line;
  }
  EXPECT_THAT(log_.str(), HasSubstr("x\\x0a2026-01-01T00:00:00.000 info MONITOR\\x20MODE"));
}

// Guest time stands still while the machine is paused and goes on from there.
TEST(MachinePause, GuestTimeFreezesAndContinuesWithoutAJump) {
  auto clock = std::make_shared<ManualClock>(1000);
  Machine machine(clock);
  EXPECT_EQ(machine.now_ns(), 1000u);
  EXPECT_FALSE(machine.stop_requested());
  machine.set_paused(true);
  EXPECT_TRUE(machine.stop_requested()) << "every vCPU leaves its run loop";
  EXPECT_FALSE(machine.stopping());
  clock->advance(5'000'000);
  EXPECT_EQ(machine.now_ns(), 1000u);
  machine.set_paused(false);
  EXPECT_FALSE(machine.stop_requested());
  EXPECT_EQ(machine.now_ns(), 1000u);
  clock->advance(10);
  EXPECT_EQ(machine.now_ns(), 1010u);
  machine.set_paused(true);
  machine.set_guest_time(77);  // a restore while paused sets the frozen time
  EXPECT_EQ(machine.now_ns(), 77u);
  clock->advance(99);
  machine.set_paused(false);
  EXPECT_EQ(machine.now_ns(), 77u);
}

}  // namespace
}  // namespace modevisor::host
