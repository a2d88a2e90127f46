/* Native (host) driver for the compute kernels, for speed comparisons with the
 * guests: native_bench sieve|crc32|sha256|matmul|sort [n=N] [r=R]
 * Uses the same core files and defaults as the guests and prints the same
 * result values plus the elapsed wall-clock time. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "compute.h"

static unsigned long arg(int argc, char **argv, const char *key, unsigned long def)
{
  size_t kl = strlen(key);
  for (int i = 2; i < argc; i++)
    if (!strncmp(argv[i], key, kl) && argv[i][kl] == '=')
      return strtoul(argv[i] + kl + 1, 0, 0);
  return def;
}
static double now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
  if (argc < 2) {
    fprintf(stderr, "usage: %s sieve|crc32|sha256|matmul|sort [n=N] [r=R]\n", argv[0]);
    return 2;
  }
  const char *b = argv[1];
  double t0 = now();
  if (!strcmp(b, "sieve")) {
    uint32_t n = arg(argc, argv, "n", 10000000), r = arg(argc, argv, "r", 1), c = 0;
    uint8_t *w = malloc(n / 2 + 16);
    for (uint32_t i = 0; i < r; i++)
      c = sieve_count(n, w);
    printf("primes below %u: %u\n", n, c);
  } else if (!strcmp(b, "crc32")) {
    uint32_t kib = arg(argc, argv, "n", 1024), r = arg(argc, argv, "r", 32), crc = 0;
    uint8_t *buf = malloc((size_t)kib * 1024);
    gen_bytes(buf, (size_t)kib * 1024, COMPUTE_SEED);
    for (uint32_t i = 0; i < r; i++)
      crc = crc32_update(crc, buf, (size_t)kib * 1024);
    printf("crc32 = %08x\n", crc);
  } else if (!strcmp(b, "sha256")) {
    uint32_t kib = arg(argc, argv, "n", 256), r = arg(argc, argv, "r", 16);
    uint8_t *buf = malloc((size_t)kib * 1024), d[32];
    gen_bytes(buf, (size_t)kib * 1024, COMPUTE_SEED);
    struct sha256 s;
    sha256_init(&s);
    for (uint32_t i = 0; i < r; i++)
      sha256_update(&s, buf, (size_t)kib * 1024);
    sha256_final(&s, d);
    printf("sha256(buffer) = ");
    for (int i = 0; i < 32; i++)
      printf("%02x", d[i]);
    printf("\n");
  } else if (!strcmp(b, "matmul")) {
    uint32_t n = arg(argc, argv, "n", 200), r = arg(argc, argv, "r", 1);
    uint32_t *a = malloc((size_t)n * n * 4), *bb = malloc((size_t)n * n * 4), *c = malloc((size_t)n * n * 4);
    uint32_t *tmp = malloc((size_t)n * 12);
    matmul_gen(a, bb, n, COMPUTE_SEED);
    for (uint32_t i = 0; i < r; i++)
      matmul_u32(a, bb, c, n);
    printf("checksum = %08x freivalds=%s\n", matmul_checksum(c, n), matmul_verify(a, bb, c, n, tmp) ? "ok" : "BAD");
  } else if (!strcmp(b, "sort")) {
    uint32_t n = arg(argc, argv, "n", 1000000), r = arg(argc, argv, "r", 1);
    uint32_t *a = malloc((size_t)n * 4), *bb = malloc((size_t)n * 4), *tmp = malloc((size_t)n * 4);
    for (uint32_t i = 0; i < r; i++) {
      sort_gen(a, n, COMPUTE_SEED);
      memcpy(bb, a, (size_t)n * 4);
      quicksort_u32(a, n);
      mergesort_u32(bb, tmp, n);
    }
    printf("weighted sum = %08x (quick) %08x (merge)\n", weighted_sum_u32(a, n), weighted_sum_u32(bb, n));
  } else {
    fprintf(stderr, "unknown benchmark %s\n", b);
    return 2;
  }
  printf("time: %.3f s\n", now() - t0);
  return 0;
}
