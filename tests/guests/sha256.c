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
  gen_bytes(buf, len, COMPUTE_SEED);
  digest(h, buf, len, r);
  printf("sha256(buffer) = %s\n", h);
  const char *want = sha256_known(kib, r);
  if (want)
    CHECK(!strcmp(h, want));
  printf("known answer: %s\n", want ? "checked" : "none for this n/r");
  rt_finish();
}
