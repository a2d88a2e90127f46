#include "compute.h"
void matmul_gen(uint32_t *a, uint32_t *b, uint32_t n, uint32_t seed)
{
  uint32_t s = seed;
  for (uint32_t i = 0; i < n * n; i++)
    a[i] = xorshift32(&s);
  for (uint32_t i = 0; i < n * n; i++)
    b[i] = xorshift32(&s);
}
/* i-k-j order with a row accumulator: cache friendly, plain scalar code. */
void matmul_u32(const uint32_t *a, const uint32_t *b, uint32_t *c, uint32_t n)
{
  for (uint32_t i = 0; i < n; i++) {
    uint32_t *ci = c + (size_t)i * n;
    for (uint32_t j = 0; j < n; j++)
      ci[j] = 0;
    for (uint32_t k = 0; k < n; k++) {
      uint32_t aik = a[(size_t)i * n + k];
      const uint32_t *bk = b + (size_t)k * n;
      for (uint32_t j = 0; j < n; j++)
        ci[j] += aik * bk[j];
    }
  }
}
uint32_t matmul_checksum(const uint32_t *c, uint32_t n)
{
  uint32_t sum = 0;
  for (uint32_t i = 0; i < n * n; i++)
    sum += c[i] * (i + 1);
  return sum;
}
int matmul_verify(const uint32_t *a, const uint32_t *b, const uint32_t *c, uint32_t n, uint32_t *tmp)
{
  uint32_t *x = tmp, *bx = tmp + n, *cx = tmp + 2 * n;
  uint32_t s = 0x9e3779b9u;
  for (uint32_t i = 0; i < n; i++)
    x[i] = xorshift32(&s);
  for (uint32_t i = 0; i < n; i++) {
    uint32_t t = 0, u = 0;
    for (uint32_t j = 0; j < n; j++) {
      t += b[(size_t)i * n + j] * x[j];
      u += c[(size_t)i * n + j] * x[j];
    }
    bx[i] = t;
    cx[i] = u;
  }
  for (uint32_t i = 0; i < n; i++) {
    uint32_t t = 0;
    for (uint32_t j = 0; j < n; j++)
      t += a[(size_t)i * n + j] * bx[j];
    if (t != cx[i])
      return 0;
  }
  return 1;
}
