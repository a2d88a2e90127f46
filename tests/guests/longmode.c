/* longmode: a multiboot guest that starts in 32-bit protected mode, as every
 * guest here, prints under 32-bit paging, then enters long mode (PAE 4-level
 * tables, EFER.LME, CR0.PG), prints from 64-bit code and does 64-bit work
 * there (a 128-bit product of a RIP-relative operand, an alias above 4 GiB,
 * 64-bit shifts), and comes back to 32-bit code (compatibility mode) to
 * check and print the results.  Under modevisor's BT32 the VM is handed to a
 * hardware mode when CR0.PG activates long mode (the seed's switch); where no
 * hardware mode is allowed, the VM stops with the reason.  Expected output
 * recorded from qemu-system-x86_64 (-cpu qemu64). */
#include "rt.h"
#include "x86.h"

struct lm_result {
  uint64_t product_lo, product_hi;
  uint64_t alias_read;   /* lm_factor read through the alias at 512 GiB */
  uint64_t alias_write;  /* written through the alias, read directly */
  uint64_t rotated;
  uint64_t cs;
  uint64_t efer;
};

void lm_enter(uint32_t pml4, struct lm_result *out);

static uint32_t pd32[1024] __attribute__((aligned(4096)));
static uint32_t pt32[1024] __attribute__((aligned(4096)));
static uint64_t pml4[512] __attribute__((aligned(4096)));
static uint64_t pdpt[512] __attribute__((aligned(4096)));
static uint64_t pdpt_high[512] __attribute__((aligned(4096)));
static uint64_t pd[512] __attribute__((aligned(4096)));
static volatile uint32_t probe;

/* The high 64 bits of a 64x64 product, from 32-bit pieces. */
static uint64_t mul_high(uint64_t a, uint64_t b)
{
  uint64_t a0 = (uint32_t)a, a1 = a >> 32, b0 = (uint32_t)b, b1 = b >> 32;
  uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
  uint64_t mid = (p00 >> 32) + (uint32_t)p01 + (uint32_t)p10;
  return p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
}

int main(void)
{
  uint32_t a, b, c, d;
  cli();
  printf("longmode: 32-bit protected mode, CR0.PG=%u\n", (read_cr0() >> 31) & 1);
  cpuid(0x80000000, 0, &a, &b, &c, &d);
  if (a < 0x80000001) rt_fail_now("CPUID has no leaf 0x80000001");
  cpuid(0x80000001, 0, &a, &b, &c, &d);
  if (!(d & (1u << 29))) rt_fail_now("CPUID offers no long mode");
  printf("CPUID: long mode offered\n");

  /* 32-bit paging: 0-4 MiB identity mapped, and again at 4 MiB. */
  for (unsigned i = 0; i < 1024; ++i) pt32[i] = i * 4096u | 3;
  pd32[0] = (uint32_t)pt32 | 3;
  pd32[1] = (uint32_t)pt32 | 3;
  write_cr3((uint32_t)pd32);
  write_cr0(read_cr0() | 0x80000000u);
  probe = 0x600dcafe;
  volatile uint32_t *alias = (volatile uint32_t *)((uint32_t)&probe + 0x400000u);
  printf("32-bit paging on: the alias at 4 MiB reads %x\n", *alias);
  CHECK_EQ(*alias, 0x600dcafe);
  *alias = 0x12345678;
  CHECK_EQ(probe, 0x12345678);
  write_cr0(read_cr0() & ~0x80000000u);
  printf("paging off again: CR0.PG=%u\n", (read_cr0() >> 31) & 1);

  /* Long mode's 4-level tables: 0-8 MiB in 2 MiB pages, the same PD again at 512 GiB. */
  for (unsigned i = 0; i < 4; ++i) pd[i] = (uint64_t)i * 0x200000u | 0x83;
  pdpt[0] = (uint32_t)pd | 3;
  pdpt_high[0] = (uint32_t)pd | 3;
  pml4[0] = (uint32_t)pdpt | 3;
  pml4[1] = (uint32_t)pdpt_high | 3;
  if (cmdline_ulong("wait", 0)) {  /* a test moves the VM first, then types a key */
    printf("waiting for a key\n");
    while (!(inb(0x3fd) & 1)) {
    }
    (void)inb(0x3f8);
  }
  printf("entering long mode\n");
  struct lm_result r;
  memset(&r, 0, sizeof r);
  lm_enter((uint32_t)pml4, &r);
  printf("back in 32-bit code (compatibility mode)\n");

  const uint64_t x = 0x0123456789abcdefull, y = 0xfedcba98ull;
  printf("64-bit mulq: %llx:%016llx\n", r.product_hi, r.product_lo);
  CHECK_EQ(r.product_lo, x * y);
  CHECK_EQ(r.product_hi, mul_high(x, y));
  printf("read through the alias at 512 GiB: %llx\n", r.alias_read);
  CHECK_EQ(r.alias_read, y);
  printf("written through the alias, read directly: %llx\n", r.alias_write);
  CHECK_EQ(r.alias_write, 0x1122334455667788ull);
  printf("64-bit shift and rotate: %llx\n", r.rotated);
  CHECK_EQ(r.rotated, 1ull << 6);
  printf("64-bit code segment: %llx\n", r.cs);
  CHECK_EQ(r.cs, 0x18);
  printf("EFER.LME/LMA in 64-bit code: %u/%u\n", (unsigned)(r.efer >> 8) & 1, (unsigned)(r.efer >> 10) & 1);
  CHECK_EQ(r.efer & 0x500, 0x500);
  rt_finish();
}
