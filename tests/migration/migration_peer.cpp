// A receiving host in a process of its own, so a test can kill it at any
// step: `migration_peer SECRET [KILL-AT-STEP]` listens on loopback, prints
// "listening ADDRESS", serves connections (printing "step NAME" as each step
// starts and "end STEP" when a connection ends), and runs until killed.  With
// KILL-AT-STEP it sends itself SIGKILL the moment that step starts, before
// the step's message goes out: a crash at an exact point of the protocol.
#include <signal.h>

#include <cstdio>
#include <iostream>

#include "test_guest.hpp"
#include "test_network.hpp"

using namespace modevisor::test;

int main(int argc, char** argv) {
  if (argc != 2 && argc != 3) {
    std::fprintf(stderr, "usage: migration_peer SECRET [KILL-AT-STEP]\n");
    return 2;
  }
  ClusterSecret secret = ClusterSecret::from_string(argv[1]);
  TestDestination dest("peer", nullptr);
  ArrivalLedger ledger;
  TcpListener listener("127.0.0.1:0");
  std::printf("listening %s\n", listener.address().c_str());
  std::fflush(stdout);
  std::vector<std::unique_ptr<ArrivedVm>> running;
  for (;;) {
    std::string peer;
    int fd;
    try {
      fd = listener.accept(peer, std::chrono::milliseconds(1000));
    } catch (const MigrationError&) {
      continue;
    }
    ReceiverOptions o;
    o.io_timeout = std::chrono::milliseconds(3000);
    const std::string kill_at = argc == 3 ? argv[2] : "";
    o.on_step = [kill_at](const char* step) {
      std::printf("step %s\n", step);
      std::fflush(stdout);
      if (step == kill_at) ::raise(SIGKILL);
    };
    MigrationReceiver receiver(dest, ledger, secret, o);
    ReceiverResult r = receiver.serve(fd, peer);
    std::printf("end %s\n", to_string(r.end));
    std::fflush(stdout);
    if (r.vm) running.push_back(std::move(r.vm));
  }
}
