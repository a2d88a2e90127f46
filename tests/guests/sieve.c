/* sieve: count primes below n (cmdline n=, repeat r=) with known answers. */
#include "compute.h"
#include "rt.h"

static const struct { uint32_t n, count; } known[] = {
  { 100, 25 }, { 1000, 168 }, { 100000, 9592 }, { 1000000, 78498 }, { 2000000, 148933 },
  { 5000000, 348513 }, { 10000000, 664579 }, { 20000000, 1270607 }, { 50000000, 3001134 },
  { 100000000, 5761455 },
};

int main(void)
{
  uint32_t n = cmdline_ulong("n", 10000000), r = cmdline_ulong("r", 1);
  printf("sieve: n=%u r=%u\n", n, r);
  static uint8_t small[1024];
  CHECK_EQ(sieve_count(100, small), 25);
  CHECK_EQ(sieve_count(1000, small), 168);
  CHECK_EQ(sieve_count(3, small), 1);
  CHECK_EQ(sieve_count(2, small), 0);
  uint8_t *work = rt_alloc(n / 2 + 16, 4096);
  uint32_t count = 0;
  for (uint32_t i = 0; i < r; i++) {
    uint32_t c = sieve_count(n, work);
    if (i == 0)
      count = c;
    CHECK_EQ(c, count);
  }
  printf("primes below %u: %u\n", n, count);
  int have = 0;
  for (unsigned i = 0; i < sizeof known / sizeof known[0]; i++)
    if (known[i].n == n) {
      have = 1;
      CHECK_EQ(count, known[i].count);
    }
  printf("known answer: %s\n", have ? "checked" : "none for this n");
  rt_finish();
}
