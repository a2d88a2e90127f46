/* sieve: count primes below n (cmdline n=, repeat r=) with known answers. */
#include "compute.h"
#include "known_answers.h"
#include "rt.h"

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
  const uint32_t *want = sieve_known(n);
  if (want)
    CHECK_EQ(count, *want);
  printf("known answer: %s\n", want ? "checked" : "none for this n");
  rt_finish();
}
