/* host_nano: host-process analogues of some nanobench operations, measured
 * with rdtsc around N iterations minus an empty-loop baseline, like the guest.
 * These are NOT the guest operations: a Linux user process cannot execute
 * in/TPR writes/int 0x80 into its own handler or edit its page tables, so
 *
 *   syscall   getppid through the syscall instruction (user -> Linux -> user)
 *   call/ret  call to an empty function
 *   divzero   div by zero, SIGFPE handler skips the instruction
 *   pgfault   load from an anonymous page after madvise(MADV_DONTNEED)
 *             (minor fault mapping the zero page; the madvise, a syscall with
 *             a TLB flush, is part of each iteration like the guest's unmap)
 *
 * usage: host_nano [count=N] [trials=T]   (x86-64 Linux, built by bench.py)
 * Output lines: "host <op>: N iterations, X cycles/op (<what>)". */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>

/* uint64_t fn(uint64_t n): rdtsc delta around n iterations (n >= 1). */
uint64_t hn_empty(uint64_t n);
uint64_t hn_call(uint64_t n);
uint64_t hn_getppid(uint64_t n);
uint64_t hn_divzero(uint64_t n);
__asm__(".text\n"
        ".macro HN_START name\n"
        "  .globl \\name\n"
        "  .p2align 4\n"
        "\\name:\n"
        "  pushq %rbx\n"
        "  pushq %r12\n"
        "  movq %rdi, %rbx\n"
        "  rdtsc\n"
        "  shlq $32, %rdx\n"
        "  orq %rax, %rdx\n"
        "  movq %rdx, %r12\n"
        "  xorl %ecx, %ecx\n"
        "  .p2align 4\n"
        "1:\n"
        ".endm\n"
        ".macro HN_END\n"
        "  decq %rbx\n"
        "  jnz 1b\n"
        "  rdtsc\n"
        "  shlq $32, %rdx\n"
        "  orq %rdx, %rax\n"
        "  subq %r12, %rax\n"
        "  popq %r12\n"
        "  popq %rbx\n"
        "  ret\n"
        ".endm\n"
        "HN_START hn_empty\n"
        "HN_END\n"
        "HN_START hn_call\n"
        "  call hn_empty_fn\n"
        "HN_END\n"
        "  .p2align 4\n"
        "hn_empty_fn:\n"
        "  ret\n"
        "HN_START hn_getppid\n"
        "  movl $" "110" ", %eax\n" /* __NR_getppid on x86-64 */
        "  syscall\n"
        "HN_END\n"
        "HN_START hn_divzero\n"
        "  xorl %ecx, %ecx\n"
        "  divl %ecx\n" /* f7 f1: 2 bytes */
        "HN_END\n");

static volatile uint64_t fpe_count;
static void on_fpe(int sig, siginfo_t *si, void *uc_)
{
  (void)sig;
  (void)si;
  ucontext_t *uc = uc_;
  uc->uc_mcontext.gregs[REG_RIP] += 2;
  fpe_count++;
}

static uint64_t rdtsc(void)
{
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}
static uint64_t pgfault_loop(uint64_t n, volatile uint32_t *page, uint32_t *sum)
{
  uint32_t s = 0;
  uint64_t t0 = rdtsc();
  for (uint64_t i = 0; i < n; i++) {
    s += *page;
    madvise((void *)page, 4096, MADV_DONTNEED);
  }
  uint64_t t = rdtsc() - t0;
  *sum = s;
  return t;
}

/* TSC ticks per second over ~100 ms of CLOCK_MONOTONIC, to turn cycles into ns. */
static double tsc_hz(void)
{
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  uint64_t t0 = rdtsc();
  do
    clock_gettime(CLOCK_MONOTONIC, &b);
  while ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec) < 1e8);
  uint64_t t1 = rdtsc();
  return (double)(t1 - t0) / ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9);
}

static unsigned long arg(int argc, char **argv, const char *key, unsigned long def)
{
  size_t kl = strlen(key);
  for (int i = 1; i < argc; i++)
    if (!strncmp(argv[i], key, kl) && argv[i][kl] == '=')
      return strtoul(argv[i] + kl + 1, 0, 0);
  return def;
}
static void report(const char *op, uint64_t n, uint64_t best, uint64_t base, const char *what)
{
  printf("host %s: %llu iterations, %.1f cycles/op (%s)\n", op, (unsigned long long)n,
         ((double)best - (double)base) / (double)n, what);
}

int main(int argc, char **argv)
{
  uint64_t n = arg(argc, argv, "count", 100000), trials = arg(argc, argv, "trials", 5);
  if (n < 1) n = 1;
  if (trials < 1) trials = 1;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_fpe;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGFPE, &sa, 0);
  volatile uint32_t *page = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  uint64_t base = ~0ull, call = ~0ull, sys = ~0ull, de = ~0ull, pf = ~0ull;
  int bad = 0;
  for (uint64_t t = 0; t < trials; t++) {
    uint64_t v;
    if ((v = hn_empty(n)) < base) base = v;
    if ((v = hn_call(n)) < call) call = v;
    if ((v = hn_getppid(n)) < sys) sys = v;
    fpe_count = 0;
    if ((v = hn_divzero(n)) < de) de = v;
    if (fpe_count != n) bad = 1;
    uint32_t sum;
    if ((v = pgfault_loop(n, page, &sum)) < pf) pf = v;
    if (sum != 0) bad = 1; /* the zero page each time */
  }
  printf("host TSC: %.3f GHz\n", tsc_hz() * 1e-9);
  printf("host baseline (empty loop): %.1f cycles/iteration\n", (double)base / (double)n);
  report("syscall", n, sys, base, "host Linux analogue: getppid via the syscall instruction");
  report("call/ret", n, call, base, "host Linux analogue: call to an empty function");
  report("divzero", n, de, base, "host Linux analogue: div by zero, SIGFPE handler skips it");
  report("pgfault", n, pf, base, "host Linux analogue: minor fault on an anonymous page + madvise(DONTNEED)");
  if (bad) {
    printf("host: FAIL (SIGFPE count or page contents wrong)\n");
    return 1;
  }
  return 0;
}
