// A plugin whose VM, once running, tries to read a file by path (the file a
// test put at kProbeFile, standing in for the cluster secret), and stops
// with what happened as its diagnostic: "read N bytes" or the error.  The
// confinement test shows a confined monitor process cannot read it
// (Landlock), and one with MODEVISOR_VMM_SECCOMP=off can.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include <modevisor/api/plugin.hpp>

#include "fixture_common.hpp"

namespace {

using namespace modevisor::api;

constexpr const char* kProbeFile = "/tmp/modevisor-test-confinement-probe";

class ReadingVm final : public VirtualMachine {
 public:
  RunExit run(unsigned) override {
    const int fd = ::open(kProbeFile, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return {ExitKind::Error, std::string("open for reading: ") + std::strerror(errno)};
    char buffer[256];
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    ::close(fd);
    return {ExitKind::Error, "read " + std::to_string(n) + " bytes"};
  }
  void kick(unsigned) override {}
  VcpuState save_vcpu(unsigned) override { return {}; }
  void load_vcpu(unsigned, const VcpuState&) override {}
  Counters counters() const override { return {}; }
  bool collect_dirty_pages(std::vector<std::uint64_t>&) override { return false; }
};

class ReadingMonitor final : public fixture::IdleMonitor {
 public:
  std::unique_ptr<VirtualMachine> create_vm(const VmSpec&, VmServices) override { return std::make_unique<ReadingVm>(); }
};

PluginDescriptor describe() { return fixture::valid_descriptor("test-reads-a-file"); }
std::unique_ptr<Monitor> create() { return std::make_unique<ReadingMonitor>(); }

}  // namespace

MODEVISOR_PLUGIN(describe, create)
