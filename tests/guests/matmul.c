/* matmul: n x n uint32 matrix multiply, Freivalds-verified, checksum with known answers. */
#include "compute.h"
#include "known_answers.h"
#include "rt.h"

int main(void)
{
  uint32_t n = cmdline_ulong("n", 200), r = cmdline_ulong("r", 1);
  printf("matmul: n=%u r=%u\n", n, r);
  size_t words = (size_t)n * n;
  uint32_t *a = rt_alloc(words * 4, 4096), *b = rt_alloc(words * 4, 4096), *c = rt_alloc(words * 4, 4096);
  uint32_t *tmp = rt_alloc(3 * n * 4, 16);
  matmul_gen(a, b, n, COMPUTE_SEED);
  uint32_t sum = 0;
  for (uint32_t i = 0; i < r; i++) {
    matmul_u32(a, b, c, n);
    uint32_t s = matmul_checksum(c, n);
    if (i == 0)
      sum = s;
    CHECK_EQ(s, sum);
  }
  CHECK(matmul_verify(a, b, c, n, tmp));
  printf("checksum = %08x\n", sum);
  const uint32_t *want = matmul_known(n);
  if (want)
    CHECK_EQ(sum, *want);
  printf("freivalds: checked, known answer: %s\n", want ? "checked" : "none for this n");
  /* a corrupted product must be detected by the verifier */
  c[n * n / 2] ^= 1;
  CHECK(!matmul_verify(a, b, c, n, tmp));
  rt_finish();
}
