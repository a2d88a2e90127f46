/* Known answers of the compute guests (sieve.c ... sort.c) and of their
 * 64-bit builds (compute64.c): the result for a cmdline, or NULL where none
 * is known.  The values were computed once on the host (see each table). */
#pragma once

#include <stdint.h>
#include <stddef.h>

static inline const uint32_t *sieve_known(uint32_t n)
{
  static const struct { uint32_t n, count; } known[] = {
    { 100, 25 }, { 1000, 168 }, { 100000, 9592 }, { 1000000, 78498 }, { 2000000, 148933 },
    { 5000000, 348513 }, { 10000000, 664579 }, { 20000000, 1270607 }, { 50000000, 3001134 },
    { 100000000, 5761455 },
  };
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    if (known[i].n == n)
      return &known[i].count;
  return NULL;
}

static inline const uint32_t *crc32_known(uint32_t kib, uint32_t r)
{
  /* Computed with Python zlib.crc32 over gen_bytes(n KiB) repeated r times. */
  static const struct { uint32_t kib, r, crc; } known[] = {
    { 64, 1, 0x552a9e6f }, { 64, 4, 0x49952912 }, { 256, 1, 0x02a41d81 }, { 256, 16, 0xbdff16bc },
    { 1024, 1, 0x202250de }, { 1024, 32, 0x57dd05bf }, { 4096, 8, 0x120f3cb0 }, { 4096, 256, 0x86a105d8 },
  };
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    if (known[i].kib == kib && known[i].r == r)
      return &known[i].crc;
  return NULL;
}

static inline const char *sha256_known(uint32_t kib, uint32_t r)
{
  /* Computed with Python hashlib.sha256 over gen_bytes(n KiB) repeated r times. */
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
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    if (known[i].kib == kib && known[i].r == r)
      return known[i].hex;
  return NULL;
}

static inline const uint32_t *matmul_known(uint32_t n)
{
  /* Computed with a Python reference (triple loop, mod 2^32). */
  static const struct { uint32_t n, sum; } known[] = {
    { 16, 0xbcb5e2cd }, { 100, 0x80127b6e }, { 200, 0xa5783109 },
  };
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    if (known[i].n == n)
      return &known[i].sum;
  return NULL;
}

static inline const uint32_t *sort_known(uint32_t n)
{
  /* Computed with Python: sum((i+1)*v for i, v in enumerate(sorted(gen))) mod 2^32. */
  static const struct { uint32_t n, wsum; } known[] = {
    { 1000, 0x5b4e1dc6 }, { 200000, 0x82dd6bca }, { 1000000, 0xb81aa8ab }, { 4000000, 0xaece8561 },
  };
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    if (known[i].n == n)
      return &known[i].wsum;
  return NULL;
}

/* FIPS 180-2's SHA-256 examples, "abc" first (the last is 10^6 x 'a' as 20000 x 50). */
struct sha256_vector {
  const char *msg;
  uint32_t len, reps;
  const char *hex;
};
static inline const struct sha256_vector *sha256_vectors(unsigned *count)
{
  static const struct sha256_vector v[] = {
    { "abc", 3, 1, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
    { "", 0, 1, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
    { "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, 1,
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1" },
    { "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 50, 20000,
      "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0" },
  };
  *count = sizeof v / sizeof v[0];
  return v;
}
