/* sha256: FIPS 180-2 test vectors and a generated buffer (n KiB x r) with known digests. */
#include "compute.h"
#include "known_answers.h"
#include "rt.h"

static void hex(char *out, const uint8_t *d)
{
  for (int i = 0; i < 32; i++)
    snprintf(out + 2 * i, 3, "%02x", d[i]);
}
static void digest(char out[65], const uint8_t *p, size_t len, uint32_t reps)
{
  struct sha256 s;
  uint8_t d[32];
  sha256_init(&s);
  for (uint32_t i = 0; i < reps; i++)
    sha256_update(&s, p, len);
  sha256_final(&s, d);
  hex(out, d);
}

int main(void)
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
  gen_bytes(buf, len, COMPUTE_SEED);
  digest(h, buf, len, r);
  printf("sha256(buffer) = %s\n", h);
  const char *want = sha256_known(kib, r);
  if (want)
    CHECK(!strcmp(h, want));
  printf("known answer: %s\n", want ? "checked" : "none for this n/r");
  rt_finish();
}
