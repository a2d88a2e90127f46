/* The compute guests' kernels as one call each, with fixed sizes and every
 * buffer passed in, for bench/bt64_compute.cpp: compiled for the host with
 * -mgeneral-regs-only and no library calls, so BT64's translator (integer
 * instructions only so far) can run the very same machine code natively and
 * translated. */
#include "compute.h"

enum { kSieveN = 4000000, kCrcBytes = 1 << 20, kShaBytes = 1 << 18, kMatN = 300, kSortN = 1000000 };

uint64_t k_sieve(uint8_t *work)
{
  uint64_t c = 0;
  for (int i = 0; i < 16; i++) c += sieve_count(kSieveN, work);
  return c;
}

uint64_t k_crc32(uint8_t *buf)
{
  gen_bytes(buf, kCrcBytes, COMPUTE_SEED);
  uint32_t crc = 0;
  for (int i = 0; i < 24; i++) crc = crc32_update(crc, buf, kCrcBytes);
  return crc;
}

uint64_t k_sha256(uint8_t *buf)
{
  struct sha256 s;
  uint8_t d[32];
  gen_bytes(buf, kShaBytes, COMPUTE_SEED);
  sha256_init(&s);
  for (int i = 0; i < 64; i++) sha256_update(&s, buf, kShaBytes);
  sha256_final(&s, d);
  uint64_t x = 0;
  for (int i = 0; i < 8; i++) x = (x << 8) | d[i];
  return x;
}

uint64_t k_matmul(uint32_t *abc)
{
  uint32_t *a = abc, *b = abc + kMatN * kMatN, *c = abc + 2 * kMatN * kMatN;
  matmul_gen(a, b, kMatN, COMPUTE_SEED);
  matmul_u32(a, b, c, kMatN);
  return matmul_checksum(c, kMatN);
}

uint64_t k_sort(uint32_t *a)
{
  uint32_t *tmp = a + kSortN, *b = a + 2 * kSortN;
  sort_gen(a, kSortN, COMPUTE_SEED);
  for (uint32_t i = 0; i < kSortN; i++) b[i] = a[i];
  quicksort_u32(a, kSortN);
  mergesort_u32(b, tmp, kSortN);
  return ((uint64_t)weighted_sum_u32(a, kSortN) << 32) | weighted_sum_u32(b, kSortN);
}
