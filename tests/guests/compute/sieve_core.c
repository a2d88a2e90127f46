#include "compute.h"
/* Odd-only sieve of Eratosthenes: work[i] represents 2*i+1. */
uint32_t sieve_count(uint32_t n, uint8_t *work)
{
  if (n <= 2)
    return 0;
  uint32_t m = n / 2; /* odd numbers 1,3,... below n */
  for (uint32_t i = 0; i < m; i++)
    work[i] = 1;
  work[0] = 0; /* 1 is not prime */
  for (uint32_t i = 1; (2 * i + 1) * (2 * i + 1) < n; i++) {
    if (!work[i])
      continue;
    uint32_t p = 2 * i + 1;
    for (uint32_t j = (p * p) / 2; j < m; j += p)
      work[j] = 0;
  }
  uint32_t count = 1; /* 2 */
  for (uint32_t i = 0; i < m; i++)
    count += work[i];
  return count;
}
