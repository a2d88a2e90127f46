/* OS-independent compute kernels shared by the guest benchmarks.  Only
 * <stdint.h>/<stddef.h>; the same files compile natively for the host. */
#ifndef GUEST_COMPUTE_H
#define GUEST_COMPUTE_H
#include <stddef.h>
#include <stdint.h>

/* xorshift32 generator used to fill all inputs (seed must be non-zero). */
static inline uint32_t xorshift32(uint32_t *s)
{
  uint32_t x = *s;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return *s = x;
}
#define COMPUTE_SEED 2463534242u

/* Fill buf[0..len) with the top byte of successive xorshift32 outputs. */
void gen_bytes(uint8_t *buf, size_t len, uint32_t seed);

/* Number of primes below n; work must hold n/2+1 bytes. */
uint32_t sieve_count(uint32_t n, uint8_t *work);

/* CRC-32 (IEEE, reflected 0xEDB88320), zlib convention: crc32_update(0, ...) starts a new CRC. */
uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t len);
uint32_t crc32_bitwise(uint32_t crc, const uint8_t *p, size_t len);

/* SHA-256 */
struct sha256 { uint32_t h[8]; uint8_t buf[64]; uint64_t total; uint32_t fill; };
void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const uint8_t *p, size_t len);
void sha256_final(struct sha256 *s, uint8_t out[32]);

/* Integer matrix multiply C = A*B (n x n, row-major, mod 2^32). */
void matmul_gen(uint32_t *a, uint32_t *b, uint32_t n, uint32_t seed);
void matmul_u32(const uint32_t *a, const uint32_t *b, uint32_t *c, uint32_t n);
uint32_t matmul_checksum(const uint32_t *c, uint32_t n);
/* Freivalds check: returns 1 iff A*(B*x) == C*x for a generated vector x (tmp: 3n words). */
int matmul_verify(const uint32_t *a, const uint32_t *b, const uint32_t *c, uint32_t n, uint32_t *tmp);

/* Sorting */
void sort_gen(uint32_t *a, uint32_t n, uint32_t seed);
void quicksort_u32(uint32_t *a, uint32_t n);
void mergesort_u32(uint32_t *a, uint32_t *tmp, uint32_t n);
int is_sorted_u32(const uint32_t *a, uint32_t n);
uint32_t weighted_sum_u32(const uint32_t *a, uint32_t n); /* sum a[i]*(i+1) mod 2^32 */
#endif
