#include "compute.h"
void gen_bytes(uint8_t *buf, size_t len, uint32_t seed)
{
  uint32_t s = seed;
  for (size_t i = 0; i < len; i++)
    buf[i] = (uint8_t)(xorshift32(&s) >> 24);
}
