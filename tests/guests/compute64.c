/* The 64-bit compute guests: sieve64, crc32_64, sha256_64, matmul64, sort64
 * (COMPUTE64_<GUEST> selects one).  The same cmdline (n=, r=), checks, known
 * answers and result lines as the 32-bit guests (sieve.c ... sort.c), but the
 * work runs as x86-64 code: after lm64_init() this driver runs in
 * compatibility mode, allocates and prints, and calls the 64-bit blob
 * (compute/compute64_kernels.c with the cores) for everything it computes. */
#include "compute.h"
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
static const struct { uint32_t n, count; } known[] = {
  { 100, 25 }, { 1000, 168 }, { 100000, 9592 }, { 1000000, 78498 }, { 2000000, 148933 },
  { 5000000, 348513 }, { 10000000, 664579 }, { 20000000, 1270607 }, { 50000000, 3001134 },
  { 100000000, 5761455 },
};
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
  int have = 0;
  for (unsigned i = 0; i < sizeof known / sizeof known[0]; i++)
    if (known[i].n == n) {
      have = 1;
      CHECK_EQ(count, known[i].count);
    }
  printf("known answer: %s\n", have ? "checked" : "none for this n");
}

#elif defined(COMPUTE64_CRC32)
/* Computed with Python zlib.crc32 over gen_bytes(n KiB) repeated r times (as crc32.c). */
static const struct { uint32_t kib, r, crc; } known[] = {
  { 64, 1, 0x552a9e6f }, { 64, 4, 0x49952912 }, { 256, 1, 0x02a41d81 }, { 256, 16, 0xbdff16bc },
  { 1024, 1, 0x202250de }, { 1024, 32, 0x57dd05bf }, { 4096, 8, 0x120f3cb0 }, { 4096, 256, 0x86a105d8 },
};
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
  int have = 0;
  for (unsigned i = 0; i < sizeof known / sizeof known[0]; i++)
    if (known[i].kib == kib && known[i].r == r) {
      have = 1;
      CHECK_EQ(crc, known[i].crc);
    }
  printf("known answer: %s\n", have ? "checked" : "none for this n/r");
}

#elif defined(COMPUTE64_SHA256)
/* Computed with Python hashlib.sha256 over gen_bytes(n KiB) repeated r times (as sha256.c). */
static const struct { uint32_t kib, r; const char *hex; } known[] = {
  { 64, 1, "646b221edcdbfc47be760eb6b8ad28eb7e47f470d537769205c9d58e3cea0e54" },
  { 64, 4, "6c67fcbc39bae20a3bcfc9c2161d0340fbc2f5e9e174e578f592f0ff7304eecf" },
  { 256, 1, "a9bdfb1ac93bdbd375329e1c73a30aa844a22bd3b98cd1e62dce0ac84600ea87" },
  { 256, 16, "851e9433c274d72ccfd1ce8c37b1b22dd26d455f7941dd8ff35243370f4d0eca" },
  { 1024, 1, "345ff1588412dc933d13714b12f198f2635ce4ee0646a679c22714b22b372b55" },
  { 1024, 32, "de28ffbd876d3ab935d47a10dd8d3d76dc04563ee26c57b528790609e41a6cfd" },
  { 4096, 8, "d047e7fc4298b921a92c1b999340ad586e14c2d36669c5bd2e0b31bea706cf10" },
  { 4096, 64, "4be4ee3cad57e8323e58a53ec4f7e87fc0a96fbe8f538ce4cf5257d856e25d1f" },
};
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
  digest(h, (const uint8_t *)"abc", 3, 1);
  printf("sha256(\"abc\") = %s\n", h);
  CHECK(!strcmp(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
  digest(h, (const uint8_t *)"", 0, 1);
  CHECK(!strcmp(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
  digest(h, (const uint8_t *)"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, 1);
  CHECK(!strcmp(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"));
  digest(h, (const uint8_t *)"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 50, 20000); /* 10^6 x 'a' */
  CHECK(!strcmp(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"));
  size_t len = (size_t)kib * 1024;
  uint8_t *buf = rt_alloc(len, 4096);
  args(0, 0, len, buf, 0, 0, 0);
  call64(C64_GEN_BYTES);
  digest(h, buf, len, r);
  printf("sha256(buffer) = %s\n", h);
  int have = 0;
  for (unsigned i = 0; i < sizeof known / sizeof known[0]; i++)
    if (known[i].kib == kib && known[i].r == r) {
      have = 1;
      CHECK(!strcmp(h, known[i].hex));
    }
  printf("known answer: %s\n", have ? "checked" : "none for this n/r");
}

#elif defined(COMPUTE64_MATMUL)
/* Computed with a Python reference (triple loop, mod 2^32), as matmul.c. */
static const struct { uint32_t n, sum; } known[] = {
  { 16, 0xbcb5e2cd }, { 100, 0x80127b6e }, { 200, 0xa5783109 },
};
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
  int have = 0;
  for (unsigned i = 0; i < sizeof known / sizeof known[0]; i++)
    if (known[i].n == n) {
      have = 1;
      CHECK_EQ(sum, known[i].sum);
    }
  printf("freivalds: checked, known answer: %s\n", have ? "checked" : "none for this n");
  /* a corrupted product must be detected by the verifier */
  c[n * n / 2] ^= 1;
  args(n, 0, 0, a, b, c, tmp);
  call64(C64_MATMUL_VERIFY);
  CHECK(!A.out[0]);
}

#elif defined(COMPUTE64_SORT)
/* Computed with Python: sum((i+1)*v for i, v in enumerate(sorted(gen))) mod 2^32, as sort.c. */
static const struct { uint32_t n, wsum; } known[] = {
  { 1000, 0x5b4e1dc6 }, { 200000, 0x82dd6bca }, { 1000000, 0xb81aa8ab }, { 4000000, 0xaece8561 },
};
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
  int have = 0;
  for (unsigned i = 0; i < sizeof known / sizeof known[0]; i++)
    if (known[i].n == n) {
      have = 1;
      CHECK_EQ(wq, known[i].wsum);
    }
  printf("known answer: %s\n", have ? "checked" : "none for this n");
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
