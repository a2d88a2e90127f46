/* The 64-bit compute guests: sieve64, crc32_64, sha256_64, matmul64, sort64
 * (COMPUTE64_<GUEST> selects one).  The same cmdline (n=, r=), checks, known
 * answers and result lines as the 32-bit guests (sieve.c ... sort.c), but the
 * work runs as x86-64 code: after lm64_init() this driver runs in
 * compatibility mode, allocates and prints, and calls the 64-bit blob
 * (compute/compute64_kernels.c with the cores) for everything it computes. */
#include "compute.h"
#include "known_answers.h"
#include "compute64.h"
#include "lm64.h"

extern char compute64_blob[]; /* compute64_blob.S: the x86-64 code, c64_entry first */

static struct c64_args A;

static void call64(uint32_t op)
{
  uint64_t rc = lm64_call(compute64_blob, op, (uint32_t)&A);
  if (rc != 0) {
    printf("64-bit op %u returned 0x%llx\n", op, rc);
    rt_fail_now("64-bit op failed");
  }
}
static void args(uint32_t n, uint32_t r, uint32_t len, const void *p0, const void *p1, const void *p2, const void *p3)
{
  A = (struct c64_args){ .n = n, .r = r, .len = len, .p0 = (uint32_t)p0, .p1 = (uint32_t)p1, .p2 = (uint32_t)p2,
                         .p3 = (uint32_t)p3 };
}

#if defined(COMPUTE64_SIEVE)
static uint32_t count64(uint32_t n, uint8_t *work)
{
  args(n, 1, 0, work, 0, 0, 0);
  call64(C64_SIEVE_COUNT);
  return A.out[0];
}
static void run(void)
{
  uint32_t n = cmdline_ulong("n", 10000000), r = cmdline_ulong("r", 1);
  printf("sieve: n=%u r=%u\n", n, r);
  static uint8_t small[1024];
  CHECK_EQ(count64(100, small), 25);
  CHECK_EQ(count64(1000, small), 168);
  CHECK_EQ(count64(3, small), 1);
  CHECK_EQ(count64(2, small), 0);
  uint8_t *work = rt_alloc(n / 2 + 16, 4096);
  args(n, r, 0, work, 0, 0, 0);
  call64(C64_SIEVE_RUN);
  CHECK_EQ(A.fails, 0);
  uint32_t count = A.out[0];
  printf("primes below %u: %u\n", n, count);
  const uint32_t *want = sieve_known(n);
  if (want)
    CHECK_EQ(count, *want);
  printf("known answer: %s\n", want ? "checked" : "none for this n");
}

#elif defined(COMPUTE64_CRC32)
static uint32_t crc64(uint32_t op, uint32_t crc, const uint8_t *p, uint32_t len)
{
  args(0, 1, len, p, 0, 0, 0);
  A.seed = crc;
  call64(op);
  return A.out[0];
}
static void run(void)
{
  uint32_t kib = cmdline_ulong("n", 1024), r = cmdline_ulong("r", 32);
  printf("crc32: n=%u KiB r=%u\n", kib, r);
  static const uint8_t chk[] = "123456789";
  CHECK_EQ(crc64(C64_CRC_UPDATE, 0, chk, 9), 0xCBF43926);
  CHECK_EQ(crc64(C64_CRC_BITWISE, 0, chk, 9), 0xCBF43926);
  CHECK_EQ(crc64(C64_CRC_UPDATE, 0, chk, 0), 0);
  CHECK_EQ(crc64(C64_CRC_UPDATE, crc64(C64_CRC_UPDATE, 0, chk, 4), chk + 4, 5), 0xCBF43926);
  size_t len = (size_t)kib * 1024;
  uint8_t *buf = rt_alloc(len, 4096);
  args(0, 0, len, buf, 0, 0, 0);
  call64(C64_GEN_BYTES);
  size_t pre = len < 4096 ? len : 4096;
  CHECK_EQ(crc64(C64_CRC_UPDATE, 0, buf, pre), crc64(C64_CRC_BITWISE, 0, buf, pre));
  args(0, r, len, buf, 0, 0, 0);
  call64(C64_CRC_RUN);
  uint32_t crc = A.out[0];
  printf("crc32 = %08x\n", crc);
  const uint32_t *want = crc32_known(kib, r);
  if (want)
    CHECK_EQ(crc, *want);
  printf("known answer: %s\n", want ? "checked" : "none for this n/r");
}

#elif defined(COMPUTE64_SHA256)
static void digest(char out[65], const uint8_t *p, size_t len, uint32_t reps)
{
  static uint8_t d[32];
  args(0, reps, len, p, d, 0, 0);
  call64(C64_SHA_DIGEST);
  for (int i = 0; i < 32; i++)
    snprintf(out + 2 * i, 3, "%02x", d[i]);
}
static void run(void)
{
  uint32_t kib = cmdline_ulong("n", 256), r = cmdline_ulong("r", 16);
  char h[65];
  printf("sha256: n=%u KiB r=%u\n", kib, r);
  unsigned n_vectors;
  const struct sha256_vector *v = sha256_vectors(&n_vectors);
  for (unsigned i = 0; i < n_vectors; i++) {
    digest(h, (const uint8_t *)v[i].msg, v[i].len, v[i].reps);
    if (i == 0)
      printf("sha256(\"abc\") = %s\n", h);
    CHECK(!strcmp(h, v[i].hex));
  }
  size_t len = (size_t)kib * 1024;
  uint8_t *buf = rt_alloc(len, 4096);
  args(0, 0, len, buf, 0, 0, 0);
  call64(C64_GEN_BYTES);
  digest(h, buf, len, r);
  printf("sha256(buffer) = %s\n", h);
  const char *want = sha256_known(kib, r);
  if (want)
    CHECK(!strcmp(h, want));
  printf("known answer: %s\n", want ? "checked" : "none for this n/r");
}

#elif defined(COMPUTE64_MATMUL)
static void run(void)
{
  uint32_t n = cmdline_ulong("n", 200), r = cmdline_ulong("r", 1);
  printf("matmul: n=%u r=%u\n", n, r);
  size_t words = (size_t)n * n;
  uint32_t *a = rt_alloc(words * 4, 4096), *b = rt_alloc(words * 4, 4096), *c = rt_alloc(words * 4, 4096);
  uint32_t *tmp = rt_alloc(3 * n * 4, 16);
  args(n, 0, 0, a, b, 0, 0);
  call64(C64_MATMUL_GEN);
  args(n, r, 0, a, b, c, 0);
  call64(C64_MATMUL_RUN);
  CHECK_EQ(A.fails, 0);
  uint32_t sum = A.out[0];
  args(n, 0, 0, a, b, c, tmp);
  call64(C64_MATMUL_VERIFY);
  CHECK(A.out[0]);
  printf("checksum = %08x\n", sum);
  const uint32_t *want = matmul_known(n);
  if (want)
    CHECK_EQ(sum, *want);
  printf("freivalds: checked, known answer: %s\n", want ? "checked" : "none for this n");
  /* a corrupted product must be detected by the verifier */
  c[n * n / 2] ^= 1;
  args(n, 0, 0, a, b, c, tmp);
  call64(C64_MATMUL_VERIFY);
  CHECK(!A.out[0]);
}

#elif defined(COMPUTE64_SORT)
static void run(void)
{
  uint32_t n = cmdline_ulong("n", 1000000), r = cmdline_ulong("r", 1);
  printf("sort: n=%u r=%u\n", n, r);
  uint32_t *a = rt_alloc((size_t)n * 4, 4096), *b = rt_alloc((size_t)n * 4, 4096);
  uint32_t *tmp = rt_alloc((size_t)n * 4, 4096);
  args(n, r, 0, a, b, tmp, 0);
  call64(C64_SORT_RUN);
  CHECK(!(A.fails & C64_SORT_A_UNSORTED));
  CHECK(!(A.fails & C64_SORT_B_UNSORTED));
  CHECK(!(A.fails & C64_SORT_DIFFER));
  CHECK(!(A.fails & C64_SORT_SUM));
  CHECK(!(A.fails & C64_SORT_XOR));
  uint32_t wq = r ? A.out[0] : 0, wm = r ? A.out[1] : 0;
  printf("weighted sum = %08x (quick) %08x (merge)\n", wq, wm);
  const uint32_t *want = sort_known(n);
  if (want)
    CHECK_EQ(wq, *want);
  printf("known answer: %s\n", want ? "checked" : "none for this n");
}
#else
#error "define one of COMPUTE64_SIEVE, _CRC32, _SHA256, _MATMUL, _SORT"
#endif

int main(void)
{
  lm64_init(0);
  run();
  rt_finish();
}
