/* The 64-bit side of the 64-bit compute guests (compute64.h): each op is the
 * work of the 32-bit guest's driver (sieve.c, crc32.c, sha256.c, matmul.c,
 * sort.c), loops and checks included, compiled as x86-64 code with the cores.
 * Built with -mgeneral-regs-only (BT64 translates no x87/SSE yet), -fpie and
 * no library calls: linked into a flat blob that runs wherever the 32-bit
 * image puts it.  c64_entry must come first (offset 0 of the blob). */
#include "compute.h"
#include "compute64.h"

#define P8(x) ((uint8_t *)(uintptr_t)(x))
#define P32(x) ((uint32_t *)(uintptr_t)(x))

static void sort_round(struct c64_args *a)
{
  uint32_t n = a->n, *x = P32(a->p0), *y = P32(a->p1), *tmp = P32(a->p2);
  sort_gen(x, n, COMPUTE_SEED);
  uint32_t sum = 0, xr = 0;
  for (uint32_t i = 0; i < n; i++) {
    sum += x[i];
    xr ^= x[i];
    y[i] = x[i];
  }
  quicksort_u32(x, n);
  mergesort_u32(y, tmp, n);
  if (!is_sorted_u32(x, n)) a->fails |= C64_SORT_A_UNSORTED;
  if (!is_sorted_u32(y, n)) a->fails |= C64_SORT_B_UNSORTED;
  for (uint32_t i = 0; i < n; i++)
    if (x[i] != y[i]) {
      a->fails |= C64_SORT_DIFFER;
      break;
    }
  uint32_t sum2 = 0, xr2 = 0;
  for (uint32_t i = 0; i < n; i++) {
    sum2 += x[i];
    xr2 ^= x[i];
  }
  if (sum != sum2) a->fails |= C64_SORT_SUM;
  if (xr != xr2) a->fails |= C64_SORT_XOR;
  a->out[0] = weighted_sum_u32(x, n);
  a->out[1] = weighted_sum_u32(y, n);
}

__attribute__((section(".text.entry"))) uint64_t c64_entry(uint64_t op, uint64_t args)
{
  struct c64_args *a = (struct c64_args *)(uintptr_t)args;
  switch (op) {
  case C64_SIEVE_COUNT:
    a->out[0] = sieve_count(a->n, P8(a->p0));
    return 0;
  case C64_SIEVE_RUN:
    for (uint32_t i = 0; i < a->r; i++) {
      uint32_t c = sieve_count(a->n, P8(a->p0));
      if (i == 0) a->out[0] = c;
      if (c != a->out[0]) a->fails++;
    }
    return 0;
  case C64_GEN_BYTES:
    gen_bytes(P8(a->p0), a->len, COMPUTE_SEED);
    return 0;
  case C64_CRC_UPDATE:
    a->out[0] = crc32_update(a->seed, P8(a->p0), a->len);
    return 0;
  case C64_CRC_BITWISE:
    a->out[0] = crc32_bitwise(a->seed, P8(a->p0), a->len);
    return 0;
  case C64_CRC_RUN: {
    uint32_t crc = 0;
    for (uint32_t i = 0; i < a->r; i++) crc = crc32_update(crc, P8(a->p0), a->len);
    a->out[0] = crc;
    return 0;
  }
  case C64_SHA_DIGEST: {
    struct sha256 s;
    sha256_init(&s);
    for (uint32_t i = 0; i < a->r; i++) sha256_update(&s, P8(a->p0), a->len);
    sha256_final(&s, P8(a->p1));
    return 0;
  }
  case C64_MATMUL_GEN:
    matmul_gen(P32(a->p0), P32(a->p1), a->n, COMPUTE_SEED);
    return 0;
  case C64_MATMUL_RUN:
    for (uint32_t i = 0; i < a->r; i++) {
      matmul_u32(P32(a->p0), P32(a->p1), P32(a->p2), a->n);
      uint32_t s = matmul_checksum(P32(a->p2), a->n);
      if (i == 0) a->out[0] = s;
      if (s != a->out[0]) a->fails++;
    }
    return 0;
  case C64_MATMUL_VERIFY:
    a->out[0] = matmul_verify(P32(a->p0), P32(a->p1), P32(a->p2), a->n, P32(a->p3));
    return 0;
  case C64_SORT_RUN:
    for (uint32_t i = 0; i < a->r; i++) sort_round(a);
    return 0;
  }
  return ~0ull; /* unknown op */
}
