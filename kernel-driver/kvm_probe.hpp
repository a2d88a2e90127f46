// What the Linux KVM driver on this host offers, read without creating a VM.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>

namespace modevisor::kvm {

struct KvmFacts {
  std::filesystem::path device = "/dev/kvm";  // the node probed, for messages
  bool device_present = false;  // the device node exists
  bool opens = false;           // open(O_RDWR) succeeded
  std::string open_error;       // strerror of the failed open
  int api_version = 0;          // KVM_GET_API_VERSION (12 on every current kernel)
  // The vendor module that backs /dev/kvm: "kvm_intel", "kvm_amd", "kvm_pvm"
  // (PVM: a paravirtual switcher that runs only PVM-aware guest kernels, no
  // VT-x/AMD-V), or "" when none is loaded.
  std::string vendor_module;
  // kvm_intel `ept` / kvm_amd `npt` module parameter, when readable.
  std::optional<bool> nested_paging_enabled;
  std::map<std::string, int> extensions;  // KVM_CHECK_EXTENSION results by name
};

// `sys_module` is /sys/module; tests point both paths at fixture trees.
KvmFacts probe_kvm(const std::filesystem::path& device = "/dev/kvm",
                   const std::filesystem::path& sys_module = "/sys/module");

}  // namespace modevisor::kvm
