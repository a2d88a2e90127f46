// BT64's translator on the compute guests' kernels: the same host-compiled
// 64-bit machine code run natively and translated (guest memory = the host's
// own, every access through the slot table), in the same run.  What this
// measures is the translator and its confinement alone: no guest OS, no
// shadow paging (the mapping is the identity), no monitor (the kernels have
// no sensitive instruction).  Prints only.
#include <sys/mman.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bt64_flat_runner.hpp"

extern "C" {
std::uint64_t k_sieve(std::uint8_t*);
std::uint64_t k_crc32(std::uint8_t*);
std::uint64_t k_sha256(std::uint8_t*);
std::uint64_t k_matmul(std::uint32_t*);
std::uint64_t k_sort(std::uint32_t*);
}

using namespace modevisor::bt::bt64;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Calls fn(arg) translated: a guest stack whose return address is a
// sentinel RIP where the dispatcher stops.
struct TranslatedCall {
  TranslatedRunner runner;
  std::vector<std::uint8_t> stack = std::vector<std::uint8_t>(1 << 20);
  alignas(16) std::uint8_t sentinel[16] = {0xcc};

  std::uint64_t call(const void* fn, void* arg, std::string* err) {
    State s;
    auto top = (reinterpret_cast<std::uint64_t>(stack.data() + stack.size()) & ~std::uint64_t{15}) - 8;
    *reinterpret_cast<std::uint64_t*>(top) = reinterpret_cast<std::uint64_t>(sentinel);
    s.gpr[4] = top;
    s.gpr[7] = reinterpret_cast<std::uint64_t>(arg);
    *err = runner.run(s, reinterpret_cast<std::uint64_t>(fn), reinterpret_cast<std::uint64_t>(sentinel));
    return s.gpr[0];
  }
};

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 3;
  const std::size_t buf_bytes = 16u << 20;
  void* buf = mmap(nullptr, buf_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TranslatedCall t;
  t.runner.max_dispatches = 0;
  t.runner.map_identity(buf, buf_bytes);
  t.runner.map_identity(t.stack.data(), t.stack.size());
  t.runner.map_identity(t.sentinel, sizeof t.sentinel);
  struct Kernel {
    const char* name;
    std::uint64_t (*fn)(void*);
  };
  const Kernel kernels[] = {
      {"sieve", reinterpret_cast<std::uint64_t (*)(void*)>(k_sieve)},
      {"crc32", reinterpret_cast<std::uint64_t (*)(void*)>(k_crc32)},
      {"sha256", reinterpret_cast<std::uint64_t (*)(void*)>(k_sha256)},
      {"matmul", reinterpret_cast<std::uint64_t (*)(void*)>(k_matmul)},
      {"sort", reinterpret_cast<std::uint64_t (*)(void*)>(k_sort)},
  };
  for (const auto& k : kernels) t.runner.map_identity(reinterpret_cast<const void*>(k.fn), 1);
  std::printf("%-8s %12s %12s %9s %10s %s\n", "kernel", "native s", "BT64 s", "BT64/nat", "blocks", "result");
  double log_sum = 0;
  int n = 0;
  for (const auto& k : kernels) {
    double best_native = 1e9, best_bt = 1e9;
    std::uint64_t want = 0, got = 0;
    std::string err;
    for (int r = 0; r < rounds; ++r) {
      std::memset(buf, 0, buf_bytes);
      auto t0 = std::chrono::steady_clock::now();
      want = k.fn(buf);
      best_native = std::min(best_native, seconds_since(t0));
      std::memset(buf, 0, buf_bytes);
      t0 = std::chrono::steady_clock::now();
      got = t.call(reinterpret_cast<const void*>(k.fn), buf, &err);
      best_bt = std::min(best_bt, seconds_since(t0));
      if (!err.empty()) break;
    }
    if (!err.empty()) {
      std::printf("%-8s translated run stopped: %s\n", k.name, err.c_str());
      continue;
    }
    std::printf("%-8s %12.4f %12.4f %9.2f %10llu %s\n", k.name, best_native, best_bt, best_bt / best_native,
                static_cast<unsigned long long>(t.runner.translator().stats.blocks),
                got == want ? "same" : "DIFFERENT");
    log_sum += std::log(best_bt / best_native);
    ++n;
  }
  if (n) std::printf("geomean BT64/native (time): %.2f over %d kernels (best of %d)\n", std::exp(log_sum / n), n, rounds);
  return 0;
}
