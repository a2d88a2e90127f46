// modevisor-vmm: the monitor process of one VM, started by modevisord.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "vmm/vmm.hpp"

int main(int argc, char** argv) {
  if (argc != 3 || std::string(argv[1]) != "--control-fd") {
    std::fprintf(stderr, "modevisor-vmm: started by modevisord only (modevisor-vmm --control-fd N)\n");
    return 2;
  }
  return modevisor::vmm::run_monitor_process(std::atoi(argv[2]));
}
