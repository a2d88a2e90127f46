#include "compute.h"
void sort_gen(uint32_t *a, uint32_t n, uint32_t seed)
{
  uint32_t s = seed;
  for (uint32_t i = 0; i < n; i++)
    a[i] = xorshift32(&s);
}
static void insertion(uint32_t *a, uint32_t n)
{
  for (uint32_t i = 1; i < n; i++) {
    uint32_t v = a[i], j = i;
    while (j > 0 && a[j - 1] > v) {
      a[j] = a[j - 1];
      j--;
    }
    a[j] = v;
  }
}
/* Quicksort: median-of-three, Hoare partition, recurse on the smaller side. */
void quicksort_u32(uint32_t *a, uint32_t n)
{
  while (n > 16) {
    uint32_t m = n / 2, l = n - 1, t;
    if (a[m] < a[0]) { t = a[m]; a[m] = a[0]; a[0] = t; }
    if (a[l] < a[0]) { t = a[l]; a[l] = a[0]; a[0] = t; }
    if (a[l] < a[m]) { t = a[l]; a[l] = a[m]; a[m] = t; }
    uint32_t pivot = a[m];
    uint32_t i = 0, j = n - 1;
    for (;;) {
      while (a[i] < pivot) i++;
      while (a[j] > pivot) j--;
      if (i >= j) break;
      t = a[i]; a[i] = a[j]; a[j] = t;
      i++;
      j--;
    }
    uint32_t left = j + 1; /* a[0..j] <= pivot <= a[j+1..n) */
    if (left < n - left) {
      quicksort_u32(a, left);
      a += left;
      n -= left;
    } else {
      quicksort_u32(a + left, n - left);
      n = left;
    }
  }
  insertion(a, n);
}
/* Bottom-up mergesort, ping-ponging between a and tmp. */
void mergesort_u32(uint32_t *a, uint32_t *tmp, uint32_t n)
{
  uint32_t *src = a, *dst = tmp;
  for (uint32_t w = 1; w < n; w *= 2) {
    for (uint32_t lo = 0; lo < n; lo += 2 * w) {
      uint32_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
      uint32_t i = lo, j = mid, k = lo;
      while (i < mid && j < hi)
        dst[k++] = src[j] < src[i] ? src[j++] : src[i++];
      while (i < mid) dst[k++] = src[i++];
      while (j < hi) dst[k++] = src[j++];
    }
    uint32_t *t = src; src = dst; dst = t;
  }
  if (src != a)
    for (uint32_t i = 0; i < n; i++)
      a[i] = src[i];
}
int is_sorted_u32(const uint32_t *a, uint32_t n)
{
  for (uint32_t i = 1; i < n; i++)
    if (a[i - 1] > a[i])
      return 0;
  return 1;
}
uint32_t weighted_sum_u32(const uint32_t *a, uint32_t n)
{
  uint32_t s = 0;
  for (uint32_t i = 0; i < n; i++)
    s += a[i] * (i + 1);
  return s;
}
