/* The 64-bit compute guests (sieve64 crc32_64 ... built from compute64.c):
 * a 32-bit driver (compatibility mode after lm64_init, printing and checking
 * as the 32-bit guests do) calls the work, compiled as x86-64 code
 * (compute64_kernels.c and the cores, one position-independent blob), with
 * lm64_call(compute64_blob, op, (uint32_t)&args).  Fixed-width fields only:
 * both sides see the same layout.  Addresses are 32-bit (identity-mapped). */
#ifndef GUEST_COMPUTE64_H
#define GUEST_COMPUTE64_H
#include <stdint.h>

enum c64_op {
  C64_SIEVE_COUNT = 1, /* out[0] = sieve_count(n, p0) */
  C64_SIEVE_RUN,       /* r times sieve_count(n, p0): out[0] the first count, fails = mismatching runs */
  C64_GEN_BYTES,       /* gen_bytes(p0, len, COMPUTE_SEED) */
  C64_CRC_UPDATE,      /* out[0] = crc32_update(seed, p0, len) */
  C64_CRC_BITWISE,     /* out[0] = crc32_bitwise(seed, p0, len) */
  C64_CRC_RUN,         /* out[0] = r times crc = crc32_update(crc, p0, len), from 0 */
  C64_SHA_DIGEST,      /* the SHA-256 of r copies of p0[0..len) into the 32 bytes at p1 */
  C64_MATMUL_GEN,      /* matmul_gen(p0, p1, n, COMPUTE_SEED) */
  C64_MATMUL_RUN,      /* r times C = A*B (p0, p1 -> p2): out[0] the first checksum, fails = mismatches */
  C64_MATMUL_VERIFY,   /* out[0] = matmul_verify(p0, p1, p2, n, p3) */
  C64_SORT_RUN,        /* r rounds of the sort guest's loop on p0, p1 (tmp p2): out[0], out[1] the weighted
                        * sums (quick, merge), fails = a bit per failed check (C64_SORT_*) */
};
enum { C64_SORT_A_UNSORTED = 1, C64_SORT_B_UNSORTED = 2, C64_SORT_DIFFER = 4, C64_SORT_SUM = 8, C64_SORT_XOR = 16 };

struct c64_args {
  uint32_t n, r, len, seed;
  uint32_t p0, p1, p2, p3; /* buffer addresses */
  uint32_t out[2];
  uint32_t fails;
};
#endif
