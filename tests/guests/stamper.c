/* stamper: the live-migration test guest (the idea of QEMU's migration test).
 * Forever: increments one byte in every 4 KiB page of a region, in order and
 * over and over, and prints "tick N" lines on COM1, so lost, repeated or
 * reordered state after a move shows in its memory and its output.
 * cmdline: mib=M  region size in MiB (the region starts at 4 MiB)
 *          rate=P pages stamped per millisecond (0: none, an idle guest)
 *          fast=1 stamp as fast as it can (ignores rate)
 *          khz=K  the TSC's rate, to pace itself (the host passes it)
 *          every=T milliseconds between ticks
 *          fill=1 first fill half of every region page with pseudo-random
 *                 words (a guest whose RAM is in use, half compressible) */
#include "rt.h"

static inline uint64_t rdtsc(void)
{
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}

int main(void)
{
  const unsigned long mib = cmdline_ulong("mib", 8);
  const unsigned long rate = cmdline_ulong("rate", 0);
  const unsigned long fast = cmdline_ulong("fast", 0);
  const uint64_t khz = cmdline_ulong("khz", 1000000);
  const uint64_t every = cmdline_ulong("every", 20);
  volatile uint8_t *region = (volatile uint8_t *)0x400000;
  const unsigned long pages = mib * 256;
  unsigned long page = 0, tick = 0;
  if (cmdline_ulong("fill", 0)) {
    uint32_t x = 12345;
    for (unsigned long p = 0; p < pages; p++) {
      volatile uint32_t *w = (volatile uint32_t *)(region + p * 4096);
      for (int i = 0; i < 512; i++) {
        x = x * 1103515245u + 12345u;
        w[i] = x;
      }
    }
  }
  printf("stamper: %lu pages at 0x400000, rate %lu/ms%s\n", pages, rate, fast ? " (fast)" : "");
  uint64_t next_ms = rdtsc() + khz, next_tick = rdtsc() + every * khz;
  for (;;) {
    unsigned long n = 0;
    if (fast) {
      n = 256;
    } else {
      while (rdtsc() < next_ms) {
      }
      next_ms += khz;
      n = rate;
    }
    for (unsigned long i = 0; i < n; i++) {
      region[page * 4096]++;
      page = page + 1 == pages ? 0 : page + 1;
    }
    uint64_t now = rdtsc();
    if (now >= next_tick) {
      printf("tick %lu\n", tick++);
      next_tick += every * khz;
      if (next_tick < now) next_tick = now + every * khz; /* after a long pause: no burst of ticks */
      if (next_ms < now) next_ms = now + khz;
    }
  }
}
