#include "kernel-driver/kvm_probe.hpp"

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <utility>

namespace modevisor::kvm {

namespace {

// A module parameter as the kernel prints it: "Y"/"N" for bools, "1"/"0" for ints.
std::optional<bool> read_bool_param(const std::filesystem::path& file) {
  // A parameter is a few characters: read no more than that (a stray file
  // in its place must not be read without bound).
  std::ifstream in(file);
  char text[16] = {};
  in.read(text, sizeof text - 1);
  std::string value(text, static_cast<std::size_t>(in.gcount()));
  while (!value.empty() && (value.back() == '\n' || value.back() == ' ')) value.pop_back();
  if (value.empty()) return std::nullopt;
  if (value == "Y" || value == "y" || value == "1") return true;
  if (value == "N" || value == "n" || value == "0") return false;
  return std::nullopt;
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { if (fd_ >= 0) ::close(fd_); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

KvmFacts probe_kvm(const std::filesystem::path& device, const std::filesystem::path& sys_module) {
  KvmFacts facts;
  facts.device = device;
  std::error_code ec;
  facts.device_present = std::filesystem::exists(device, ec);

  // Which vendor module backs the device.  kvm_pvm is checked first: a host
  // can load it beside a vendor module, and then it owns /dev/kvm.
  for (const char* module : {"kvm_pvm", "kvm_intel", "kvm_amd"}) {
    if (std::filesystem::exists(sys_module / module, ec)) {
      facts.vendor_module = module;
      break;
    }
  }
  if (facts.vendor_module == "kvm_intel") facts.nested_paging_enabled = read_bool_param(sys_module / "kvm_intel/parameters/ept");
  if (facts.vendor_module == "kvm_amd") facts.nested_paging_enabled = read_bool_param(sys_module / "kvm_amd/parameters/npt");

  if (!facts.device_present) return facts;
  Fd kvm(::open(device.c_str(), O_RDWR | O_CLOEXEC));
  if (kvm.get() < 0) {
    facts.open_error = std::strerror(errno);
    return facts;
  }
  facts.opens = true;
  facts.api_version = ::ioctl(kvm.get(), KVM_GET_API_VERSION, 0);
  const std::pair<const char*, int> extensions[] = {
      {"USER_MEMORY", KVM_CAP_USER_MEMORY},   {"SET_TSS_ADDR", KVM_CAP_SET_TSS_ADDR},
      {"EXT_CPUID", KVM_CAP_EXT_CPUID},       {"IRQCHIP", KVM_CAP_IRQCHIP},
      {"NR_VCPUS", KVM_CAP_NR_VCPUS},         {"MAX_VCPUS", KVM_CAP_MAX_VCPUS},
      {"IMMEDIATE_EXIT", KVM_CAP_IMMEDIATE_EXIT}, {"XSAVE", KVM_CAP_XSAVE},
      {"VCPU_EVENTS", KVM_CAP_VCPU_EVENTS},   {"DEBUGREGS", KVM_CAP_DEBUGREGS},
      {"XCRS", KVM_CAP_XCRS},                 {"SYNC_MMU", KVM_CAP_SYNC_MMU},
  };
  for (const auto& [name, cap] : extensions) facts.extensions[name] = ::ioctl(kvm.get(), KVM_CHECK_EXTENSION, cap);
  return facts;
}

}  // namespace modevisor::kvm
