// bt_speed: early speed numbers for the translator (not a test; no asserts).
// Runs small compute kernels natively (same instructions, 64-bit host code)
// and as 32-bit guests under the BT engine, and prints the ratios and the
// translation-cache counters.
#include <chrono>
#include <cstdio>

#include "bt_test_support.hpp"
#include "vcpu.hpp"

using namespace bttest;
using modevisor::bt::Vcpu;

BT_GUEST_PROGRAM(k_alu, 0x100000,
  "  mov ecx, 300000000\n"
  "  xor eax, eax\n"
  "1: add eax, ecx\n"
  "  rol eax, 3\n"
  "  xor eax, 0x5a5a5a5a\n"
  "  dec ecx\n"
  "  jnz 1b\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n")

BT_GUEST_PROGRAM(k_mem, 0x100000,
  "  mov edx, 30000\n"
  "  xor eax, eax\n"
  "2: mov esi, 0x200000\n"
  "  mov ecx, 16384\n"
  "  call sumf\n"
  "  dec edx\n"
  "  jnz 2b\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n"
  "sumf: add eax, [esi]\n"
  "  xor [esi], eax\n"
  "  add esi, 4\n"
  "  dec ecx\n"
  "  jnz sumf\n"
  "  ret\n")

BT_GUEST_PROGRAM(k_fib, 0x100000,
  "  mov eax, 36\n"
  "  call fibf\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n"
  "fibf: cmp eax, 2\n"
  "  jb 9f\n"
  "  push eax\n"
  "  dec eax\n"
  "  call fibf\n"
  "  mov edx, eax\n"
  "  pop eax\n"
  "  push edx\n"
  "  sub eax, 2\n"
  "  call fibf\n"
  "  pop edx\n"
  "  add eax, edx\n"
  "9: ret\n")

extern "C" std::uint32_t native_alu(), native_mem(std::uint32_t*), native_fib(std::uint32_t);
asm(".text\n.intel_syntax noprefix\n"
    ".globl native_alu\nnative_alu:\n"
    "  mov ecx, 300000000\n  xor eax, eax\n"
    "1: add eax, ecx\n  rol eax, 3\n  xor eax, 0x5a5a5a5a\n  dec ecx\n  jnz 1b\n  ret\n"
    ".globl native_mem\nnative_mem:\n"
    "  mov r8, rdi\n  mov edx, 30000\n  xor eax, eax\n"
    "2: mov rsi, r8\n  mov ecx, 16384\n  call 3f\n  dec edx\n  jnz 2b\n  ret\n"
    "3: add eax, [rsi]\n  xor [rsi], eax\n  add rsi, 4\n  dec ecx\n  jnz 3b\n  ret\n"
    ".globl native_fib\nnative_fib:\n"
    "  mov eax, edi\n  call 5f\n  ret\n"
    "5: cmp eax, 2\n  jb 9f\n  push rax\n  dec eax\n  call 5b\n  mov edx, eax\n  pop rax\n  push rdx\n"
    "  sub eax, 2\n  call 5b\n  pop rdx\n  add eax, edx\n9: ret\n"
    ".att_syntax prefix\n");

namespace {

double secs(std::chrono::steady_clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct Run {
  double seconds;
  std::uint32_t result;
  Counters counters;
};

Run guest(const unsigned char* b, const unsigned char* e) {
  MemfdMemory mem(16u << 20);
  FakePlatform plat;
  NullLogger log;
  Vcpu cpu(mem, plat, log, 0);
  mem.load(0x100000, b, static_cast<std::size_t>(e - b));
  cpu.load(multiboot_state(0x100000));
  auto t0 = std::chrono::steady_clock::now();
  RunExit r = cpu.run();
  auto t1 = std::chrono::steady_clock::now();
  if (r.kind != ExitKind::Stopped) std::fprintf(stderr, "guest failed: %s\n", r.diagnostic.c_str());
  Run out{secs(t1 - t0), plat.post.empty() ? 0 : plat.post.back(), {}};
  cpu.add_counters(out.counters);
  return out;
}

std::uint64_t get(const Counters& c, const char* n) {
  for (auto& [k, v] : c)
    if (k == n) return v;
  return 0;
}

void report(const char* name, double native_s, std::uint32_t native_result, const Run& g) {
  const auto& c = g.counters;
  const double lookups = static_cast<double>(get(c, "bt.dispatcher_lookups") + get(c, "bt.indirect_lookup_hits"));
  const double translated = static_cast<double>(get(c, "bt.blocks_translated"));
  std::printf("%-6s native %.3fs  BT %.3fs  BT/native speed %.2f  results %s  blocks %llu  chains %llu  "
              "indirect hits %llu  dispatcher lookups %llu  cache-served entries %.4f%%\n",
              name, native_s, g.seconds, native_s / g.seconds, native_result == g.result ? "match" : "DIFFER",
              static_cast<unsigned long long>(translated), static_cast<unsigned long long>(get(c, "bt.chained_jumps")),
              static_cast<unsigned long long>(get(c, "bt.indirect_lookup_hits")),
              static_cast<unsigned long long>(get(c, "bt.dispatcher_lookups")),
              100.0 * (lookups - translated) / (lookups > 0 ? lookups : 1));
}

}  // namespace

int main() {
  {
    auto t0 = std::chrono::steady_clock::now();
    std::uint32_t r = native_alu();
    double n = secs(std::chrono::steady_clock::now() - t0);
    report("alu", n, r, guest(k_alu_start, k_alu_end));
  }
  {
    std::vector<std::uint32_t> buf(16384);
    auto t0 = std::chrono::steady_clock::now();
    std::uint32_t r = native_mem(buf.data());
    double n = secs(std::chrono::steady_clock::now() - t0);
    report("mem", n, r, guest(k_mem_start, k_mem_end));
  }
  {
    auto t0 = std::chrono::steady_clock::now();
    std::uint32_t r = native_fib(36);
    double n = secs(std::chrono::steady_clock::now() - t0);
    report("fib", n, r, guest(k_fib_start, k_fib_end));
  }
  return 0;
}
