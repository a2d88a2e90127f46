// A plugin whose VM, once running, does what no monitor should: it opens a
// unix socket (the way to the daemon's control socket), which the monitor
// process's seccomp filter forbids.  The confinement test shows the filter
// kills this VM's process, and only it.  With the filter off it reports the
// call went through, as an error exit.
#include <sys/socket.h>
#include <unistd.h>

#include <modevisor/api/plugin.hpp>

#include <string>

#include "fixture_common.hpp"

namespace {

using namespace modevisor::api;

class ForbiddenCallVm final : public VirtualMachine {
 public:
  RunExit run(unsigned) override {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd >= 0) ::close(fd);
    return {ExitKind::Error, "the seccomp filter let socket(AF_UNIX) through (fd " + std::to_string(fd) + ")"};
  }
  void kick(unsigned) override {}
  VcpuState save_vcpu(unsigned) override { return {}; }
  void load_vcpu(unsigned, const VcpuState&) override {}
  Counters counters() const override { return {}; }
  bool collect_dirty_pages(std::vector<std::uint64_t>&) override { return false; }
};

class ForbiddenCallMonitor final : public fixture::IdleMonitor {
 public:
  std::unique_ptr<VirtualMachine> create_vm(const VmSpec&, VmServices) override {
    return std::make_unique<ForbiddenCallVm>();
  }
};

PluginDescriptor describe() { return fixture::valid_descriptor("test-forbidden-syscall"); }
std::unique_ptr<Monitor> create() { return std::make_unique<ForbiddenCallMonitor>(); }

}  // namespace

MODEVISOR_PLUGIN(describe, create)
