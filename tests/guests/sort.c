/* sort: quicksort and mergesort of n pseudo-random words, cross-checked, with known answers. */
#include "compute.h"
#include "known_answers.h"
#include "rt.h"

int main(void)
{
  uint32_t n = cmdline_ulong("n", 1000000), r = cmdline_ulong("r", 1);
  printf("sort: n=%u r=%u\n", n, r);
  uint32_t *a = rt_alloc((size_t)n * 4, 4096), *b = rt_alloc((size_t)n * 4, 4096);
  uint32_t *tmp = rt_alloc((size_t)n * 4, 4096);
  uint32_t wq = 0, wm = 0;
  for (uint32_t it = 0; it < r; it++) {
    sort_gen(a, n, COMPUTE_SEED);
    uint32_t sum = 0, x = 0;
    for (uint32_t i = 0; i < n; i++) {
      sum += a[i];
      x ^= a[i];
      b[i] = a[i];
    }
    quicksort_u32(a, n);
    mergesort_u32(b, tmp, n);
    CHECK(is_sorted_u32(a, n));
    CHECK(is_sorted_u32(b, n));
    CHECK(!memcmp(a, b, (size_t)n * 4));
    uint32_t sum2 = 0, x2 = 0;
    for (uint32_t i = 0; i < n; i++) {
      sum2 += a[i];
      x2 ^= a[i];
    }
    CHECK_EQ(sum, sum2);
    CHECK_EQ(x, x2);
    wq = weighted_sum_u32(a, n);
    wm = weighted_sum_u32(b, n);
  }
  printf("weighted sum = %08x (quick) %08x (merge)\n", wq, wm);
  const uint32_t *want = sort_known(n);
  if (want)
    CHECK_EQ(wq, *want);
  printf("known answer: %s\n", want ? "checked" : "none for this n");
  rt_finish();
}
