// migration_bench: live migration of a real VM (the stamper guest under
// bt-swmmu) between two Vms over loopback TCP, both ends in this process.
//   migration_bench --memory-mib 256 --rate 12 --runs 3 [--downtime-ms 300]
// --rate is the guest's stamping speed in pages per millisecond (12 = ~50
// MB/s; 0 = idle).  Its RAM is filled first (--no-fill: a fresh guest).  Prints
// one JSON record per run and the loopback TCP bandwidth measured the same way.
#include <x86intrin.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "local_host.hpp"  // tests/migration: a host in this process
#include "migration/channel.hpp"

using namespace modevisor::host;
using namespace modevisor::host::migration;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

std::uint64_t tsc_khz() {
  const auto t0 = std::chrono::steady_clock::now();
  const auto c0 = __rdtsc();
  std::this_thread::sleep_for(200ms);
  const auto c1 = __rdtsc();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return static_cast<std::uint64_t>(static_cast<double>(c1 - c0) / ms);
}

bool wait_for(const std::function<bool()>& done, std::chrono::seconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (done()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return done();
}

// The "tick N" lines of both consoles, joined, count up by one.
bool ticks_continue(const std::string& joined) {
  std::uint64_t expected = 0;
  for (auto at = joined.find("tick "); at != std::string::npos; at = joined.find("tick ", at + 1)) {
    if (std::stoull(joined.substr(at + 5)) != expected) return false;
    ++expected;
  }
  return expected > 0;
}

double loopback_bandwidth() {
  TcpListener listener("127.0.0.1:0");
  const std::size_t frame = 1 << 20, frames = 512;
  std::thread reader([&] {
    std::string peer;
    Channel ch(listener.accept(peer, 5s), peer, 10s);
    for (std::size_t i = 0; i < frames; ++i) ch.receive();
  });
  Channel ch(tcp_connect(listener.address(), 5s), "bench", 10s);
  std::vector<std::uint8_t> payload(frame, 0x5a);
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < frames; ++i) ch.send(MessageType::State, payload);
  reader.join();
  return static_cast<double>(frame * frames) / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  unsigned memory_mib = 256, rate = 0, runs = 3, downtime_ms = 300;
  bool fill = true, trust_tracking = false;
  int zstd_level = 1;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::stoul(argv[++i]) : 0ul; };
    if (a == "--memory-mib") memory_mib = static_cast<unsigned>(next());
    else if (a == "--rate") rate = static_cast<unsigned>(next());
    else if (a == "--runs") runs = static_cast<unsigned>(next());
    else if (a == "--downtime-ms") downtime_ms = static_cast<unsigned>(next());
    else if (a == "--no-fill") fill = false;
    else if (a == "--trust-tracking") trust_tracking = true;
    else if (a == "--zstd-level" && i + 1 < argc) zstd_level = std::stoi(argv[++i]);
    else {
      std::cerr << "usage: migration_bench [--memory-mib N] [--rate PAGES_PER_MS] [--runs N] [--downtime-ms N] [--no-fill]"
                   " [--trust-tracking] [--zstd-level L]\n";
      return 2;
    }
  }
  const ClusterSecret secret = ClusterSecret::from_string("migration bench cluster secret");
  const std::uint64_t khz = tsc_khz();
  std::cout << nlohmann::json{{"loopback_bytes_per_s", loopback_bandwidth()}}.dump() << std::endl;
  const fs::path dir = fs::temp_directory_path() / ("mv-bench-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path file = dir / "stamper-bench.yaml";
  const unsigned region_mib = memory_mib - 8;
  std::ofstream(file) << "name: stamper-bench\nguest:\n  os: other-32\n  kernel: " << MODEVISOR_BINARY_DIR
                      << "/guests/stamper.elf\n  cmdline: mib=" << region_mib << " rate=" << rate
                      << " khz=" << khz << " every=10" << (fill ? " fill=1" : "") << "\nmemory: " << memory_mib
                      << "MiB\ncpu_model: portable-32\n";
  int failures = 0;
  for (unsigned run = 0; run < runs; ++run) {
    LocalHost a("a"), b("b");
    VmConfig config = load_vm_config(file, a.guest_os);
    Selection s = select_monitor_mode(a.caps, a.candidates(), a.policy, config);
    if (!s.selected_plugin) {
      std::cerr << "no mode: " << s.none_reason << "\n";
      return 1;
    }
    auto plugin = a.registry.share(s.selected_plugin->descriptor.name);
    auto source = Vm::create(config, plugin, a.log, a.events());
    source->start();
    if (!wait_for([&] { return a.console_text().find("tick 20") != std::string::npos; }, 120s)) {
      std::cerr << "the guest did not start ticking: " << a.console_text() << "\n";
      return 1;
    }
    VmDestination destination(b.view());
    ArrivalLedger ledger;
    TcpListener listener("127.0.0.1:0");
    ReceiverResult received;
    std::thread receiver([&] {
      std::string peer;
      int fd = listener.accept(peer, 30s);
      ReceiverOptions o;
      MigrationReceiver r(destination, ledger, secret, o);
      received = r.serve(fd, peer);
    });
    SenderOptions o;
    o.destination = listener.address();
    o.downtime_limit = std::chrono::milliseconds(downtime_ms);
    o.verify_all_pages = !trust_tracking;
    o.zstd_level = zstd_level;
    nlohmann::json rounds = nlohmann::json::array();
    o.on_progress = [&](const RoundProgress& p) {
      rounds.push_back(to_json(p));
      std::cerr << progress_line(p) << "\n";
    };
    VmMigrationSource endpoint(*source);
    MigrationSender sender(endpoint, describe_for_migration(*source, "", "a"), secret, o);
    MigrationReport report = sender.run();
    receiver.join();
    std::unique_ptr<Vm> moved = take_vm(std::move(received.vm));
    bool continues = false;
    if (moved) {
      const std::size_t before = a.console_text().size();
      wait_for([&] { return b.console_text().find("tick ") != std::string::npos && b.console_text().size() > 64; }, 30s);
      std::string joined = a.console_text() + b.console_text();
      continues = ticks_continue(joined.substr(joined.find("tick 0"))) && before > 0;
      moved->stop("bench over");
      moved->wait();
    } else {
      source->stop("bench over");
      source->wait();
    }
    nlohmann::json out = to_json(report);
    out["run"] = run;
    out["memory_mib"] = memory_mib;
    out["rate_pages_per_ms"] = rate;
    out["dirty_mb_per_s_declared"] = rate * 4096.0 * 1000 / 1e6;
    out["output_continues"] = continues;
    out["verify_all_pages"] = !trust_tracking;
    out["zstd_level"] = zstd_level;
    out["rounds_detail"] = rounds;
    std::cout << out.dump() << std::endl;
    std::cerr << summary(report) << "\n";
    if (report.outcome != Outcome::Completed || !continues) ++failures;
  }
  fs::remove_all(dir);
  return failures ? 1 : 0;
}
