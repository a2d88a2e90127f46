/* cpuid: prints what CPUID answers and checks it is the portable-32 CPU model
 * (host/platform/cpu_model.cpp), which a VM declares with `cpu_model:
 * portable-32` (configs/vms/portable-32.yaml).  Every monitor mode must give
 * the same transcript; without the model each shows its own CPU and fails.
 * Leaves beyond the reported maxima are not read (real CPUs differ there). */
#include "rt.h"

int main(void)
{
  uint32_t a, b, c, d;
  char vendor[13];
  cpuid(0, 0, &a, &b, &c, &d);
  memcpy(vendor, &b, 4);
  memcpy(vendor + 4, &d, 4);
  memcpy(vendor + 8, &c, 4);
  vendor[12] = 0;
  printf("cpuid 0x0: max leaf 0x%x, vendor %s\n", a, vendor);
  CHECK_EQ(a, 1);
  CHECK(!strcmp(vendor, "GenuineIntel"));

  cpuid(1, 0, &a, &b, &c, &d);
  printf("cpuid 0x1: eax 0x%08x ebx 0x%06x (APIC ID %u) ecx 0x%08x edx 0x%08x\n", a, b & 0xffffff, b >> 24, c, d);
  CHECK_EQ(a, 0x6f1);
  CHECK_EQ(b & 0xffffff, 0x010800);
  CHECK_EQ(b >> 24, 0);
  CHECK_EQ(c, 0x80000000u);
  CHECK_EQ(d, 0x0781ab79u);

  cpuid(0x80000000u, 0, &a, &b, &c, &d);
  printf("cpuid 0x80000000: max extended leaf 0x%x\n", a);
  CHECK_EQ(a, 0x80000001u);
  cpuid(0x80000001u, 0, &a, &b, &c, &d);
  printf("cpuid 0x80000001: ecx 0x%08x edx 0x%08x\n", c, d);
  CHECK_EQ(c, 0);
  CHECK_EQ(d, 1u << 20);
  rt_finish();
}
