// modevisor-vmm: the monitor process of one VM, started by modevisord.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "vmm/confinement.hpp"
#include "vmm/vmm.hpp"

int main(int argc, char** argv) {
  if (argc != 3 || std::string(argv[1]) != "--control-fd") {
    std::fprintf(stderr, "modevisor-vmm: started by modevisord only (modevisor-vmm --control-fd N)\n");
    return 2;
  }
  const int control_fd = std::atoi(argv[2]);
  // Only the daemon's link is ours: nothing else of the daemon's (its control
  // socket, listeners, files) may reach a VM's process.
  modevisor::vmm::close_inherited_descriptors(control_fd);
  return modevisor::vmm::run_monitor_process(control_fd);
}
