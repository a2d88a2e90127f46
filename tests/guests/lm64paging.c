/* lm64paging: 4-level paging in long mode.  4 KiB pages with A/D at every
 * level, a 2 MiB page, NX (EFER.NXE: a fetch from an NX page or under an NX
 * directory entry is #PF with the I/D bit, reads still work), a reserved
 * bit, a read-only page under CR0.WP, global pages (CR4.PGE: the
 * invalidations a CPU must do), aliases above 4 GiB and in the upper half
 * (0xffff800000000000, and code run at -2 GiB using RIP-relative data).
 * Expected output recorded from qemu-system-x86_64 (-cpu qemu64). */
#include "lm64.h"

extern volatile uint64_t pg_addr, pg_value;
extern char pg_read[], pg_write[], pg_call[], pg_invlpg[], pg_reload_cr3[], rip_probe[];

#define AREA 0x40000000ull /* PDPT entry 1: the test's own PD and PT */
static uint64_t pd_area[512] __attribute__((aligned(4096)));
static uint64_t pt_area[512] __attribute__((aligned(4096)));
static uint64_t pdpt_high[512] __attribute__((aligned(4096)));
static uint64_t pdpt_top[512] __attribute__((aligned(4096)));
static uint8_t frames[6][4096] __attribute__((aligned(4096)));
#define BIG_FRAME 0x1000000u /* 16 MiB: the 2 MiB page's frame */

static uint64_t rd(uint64_t va) { pg_addr = va; return lm64_call(pg_read, 0, 0); }
static void wr(uint64_t va, uint64_t v) { pg_addr = va; pg_value = v; lm64_call(pg_write, 0, 0); }
static void flush(uint64_t va) { pg_addr = va; lm64_call(pg_invlpg, 0, 0); }
static uint64_t frame(int i) { return (uint32_t)frames[i]; }

/* lm64_try(fn) on pg_addr = va: the vector, error code and CR2 of its fault. */
static void expect_pf(const char *what, void *fn, uint64_t va, uint64_t err)
{
  pg_addr = va;
  int v = lm64_try(fn, 0);
  printf("%s: vector %d error 0x%llx, CR2 %s\n", what, v, lm64_last.err, lm64_last.cr2 == va ? "the address" : "other");
  CHECK_EQ(v, 14);
  CHECK_EQ(lm64_last.err, err);
  CHECK_EQ(lm64_last.cr2, va);
}

static void test_4k(void)
{
  for (int i = 0; i < 6; ++i) ((volatile uint64_t *)frames[i])[0] = 0x1111111111111111ull * (i + 1);
  pt_area[0] = frame(0) | PTE_W | PTE_P;
  pd_area[0] = (uint32_t)pt_area | PTE_W | PTE_P;
  lm64_pdpt[1] = (uint32_t)pd_area | PTE_W | PTE_P;
  lm64_call(pg_reload_cr3, 0, 0);
  printf("4 KiB page at 0x40000000 reads %llx\n", rd(AREA));
  CHECK_EQ(rd(AREA), 0x1111111111111111ull);
  printf("after a read: A in PML4E/PDPTE/PDE/PTE %u/%u/%u/%u, D in the PTE %u\n", (unsigned)(lm64_pml4[0] >> 5) & 1,
         (unsigned)(lm64_pdpt[1] >> 5) & 1, (unsigned)(pd_area[0] >> 5) & 1, (unsigned)(pt_area[0] >> 5) & 1,
         (unsigned)(pt_area[0] >> 6) & 1);
  CHECK(pt_area[0] & PTE_A);
  CHECK(!(pt_area[0] & PTE_D));
  wr(AREA + 8, 0xabcdef0123456789ull);
  printf("after a write: D in the PTE %u; the frame has %llx\n", (unsigned)(pt_area[0] >> 6) & 1,
         ((volatile uint64_t *)frames[0])[1]);
  CHECK(pt_area[0] & PTE_D);
  CHECK_EQ(((volatile uint64_t *)frames[0])[1], 0xabcdef0123456789ull);

  /* Remapped: INVLPG makes the new frame visible. */
  pt_area[0] = frame(1) | PTE_W | PTE_P;
  flush(AREA);
  printf("PTE changed + invlpg: reads %llx\n", rd(AREA));
  CHECK_EQ(rd(AREA), 0x2222222222222222ull);

  /* Read-only with CR0.WP: a supervisor write faults (P|W). */
  write_cr0(read_cr0() | CR0_WP);
  pt_area[0] = frame(1) | PTE_P;
  flush(AREA);
  expect_pf("write to a read-only page, CR0.WP=1", pg_write, AREA, 3);
  pt_area[0] = frame(1) | PTE_W | PTE_P;
  flush(AREA);

  /* A reserved bit (51: above MAXPHYADDR) in a present PTE: RSVD.  Only that
   * bit is printed: QEMU 7.2 reports 0x8, CPUs (and KVM's shadow MMU) 0x9. */
  pt_area[5] = frame(5) | (1ull << 51) | PTE_W | PTE_P;
  pg_addr = AREA + 0x5000;
  int v = lm64_try(pg_read, 0);
  printf("read through a PTE with reserved bit 51: vector %d, RSVD in the error code %u, CR2 %s\n", v,
         (unsigned)(lm64_last.err >> 3) & 1, lm64_last.cr2 == AREA + 0x5000 ? "the address" : "other");
  CHECK_EQ(v, 14);
  CHECK(lm64_last.err & 8);
  CHECK_EQ(lm64_last.cr2, AREA + 0x5000);
  expect_pf("read of a not-present page", pg_read, AREA + 0x6000, 0);
}

static void test_nx(void)
{
  /* mov $0x1234, %eax; ret */
  static const uint8_t code[] = { 0xb8, 0x34, 0x12, 0x00, 0x00, 0xc3 };
  memcpy(frames[2], code, sizeof code);
  pt_area[1] = frame(2) | PTE_W | PTE_P;
  flush(AREA + 0x1000);
  pg_addr = AREA + 0x1000;
  printf("EFER.NXE=%u; code at 0x40001000 without NX returns 0x%llx\n", (unsigned)(rdmsr(MSR_EFER) >> 11) & 1,
         lm64_call(pg_call, 0, 0));
  CHECK_EQ(lm64_call(pg_call, 0, 0), 0x1234);
  pt_area[1] |= PTE_NX;
  flush(AREA + 0x1000);
  expect_pf("fetch from an NX page", pg_call, AREA + 0x1000, 0x11);
  CHECK_EQ(lm64_last.rip, AREA + 0x1000);
  printf("  RIP at the page: %s; a read of it gives %llx\n", lm64_last.rip == AREA + 0x1000 ? "yes" : "no",
         rd(AREA + 0x1000) & 0xffffffffffffull);
  pt_area[1] &= ~PTE_NX;
  pd_area[0] |= PTE_NX;
  lm64_call(pg_reload_cr3, 0, 0);
  expect_pf("fetch under an NX page-directory entry", pg_call, AREA + 0x1000, 0x11);
  pd_area[0] &= ~PTE_NX;
  lm64_call(pg_reload_cr3, 0, 0);
  expect_pf("fetch from a not-present page", pg_call, AREA + 0x7000, 0x10);
  pg_addr = AREA + 0x1000;
  CHECK_EQ(lm64_call(pg_call, 0, 0), 0x1234);
}

static void test_2m(void)
{
  pd_area[1] = BIG_FRAME | PTE_PS | PTE_W | PTE_P;
  lm64_call(pg_reload_cr3, 0, 0);
  wr(AREA + 0x200000 + 0x12340, 0x0200000002000000ull);
  printf("2 MiB page at 0x40200000: a write at +0x12340 lands at physical 0x%x: %llx; A/D in the PDE %u/%u\n",
         BIG_FRAME + 0x12340, *(volatile uint64_t *)(BIG_FRAME + 0x12340), (unsigned)(pd_area[1] >> 5) & 1,
         (unsigned)(pd_area[1] >> 6) & 1);
  CHECK_EQ(*(volatile uint64_t *)(BIG_FRAME + 0x12340), 0x0200000002000000ull);
  CHECK_EQ(pd_area[1] & (PTE_A | PTE_D), PTE_A | PTE_D);
  *(volatile uint8_t *)(BIG_FRAME + 0x1ff000) = 0xc3; /* ret */
  pd_area[1] |= PTE_NX;
  flush(AREA + 0x3ff000);
  expect_pf("fetch from an NX 2 MiB page", pg_call, AREA + 0x3ff000, 0x11);
}

static void test_global(void)
{
  write_cr4(read_cr4() | CR4_PGE);
  pt_area[2] = frame(3) | PTE_G | PTE_W | PTE_P;
  pt_area[3] = frame(4) | PTE_W | PTE_P;
  lm64_call(pg_reload_cr3, 0, 0);
  printf("CR4.PGE=%u; global page reads %llx, non-global page reads %llx\n", (unsigned)(read_cr4() >> 7) & 1,
         rd(AREA + 0x2000), rd(AREA + 0x3000));
  /* Whether a CPU keeps a global translation across a CR3 load is its choice
   * (QEMU's TCG drops all), so the transcript checks only what it must drop. */
  pt_area[3] = frame(5) | PTE_W | PTE_P;
  lm64_call(pg_reload_cr3, 0, 0);
  printf("non-global PTE changed + CR3 reload: reads %llx\n", rd(AREA + 0x3000));
  CHECK_EQ(rd(AREA + 0x3000), 0x6666666666666666ull);
  pt_area[2] = frame(5) | PTE_G | PTE_W | PTE_P;
  flush(AREA + 0x2000);
  printf("global PTE changed + invlpg: reads %llx\n", rd(AREA + 0x2000));
  CHECK_EQ(rd(AREA + 0x2000), 0x6666666666666666ull);
  pt_area[2] = frame(3) | PTE_G | PTE_W | PTE_P;
  write_cr4(read_cr4() & ~CR4_PGE);
  write_cr4(read_cr4() | CR4_PGE);
  printf("global PTE changed + CR4.PGE off and on: reads %llx\n", rd(AREA + 0x2000));
  CHECK_EQ(rd(AREA + 0x2000), 0x4444444444444444ull);
}

static void test_aliases(void)
{
  /* Above 4 GiB: PDPT entry 4 -> the identity PD, so 4 GiB + x is x. */
  lm64_pdpt[4] = (uint32_t)lm64_pd | PTE_W | PTE_P;
  /* The upper half: PML4 entry 256 (0xffff800000000000) and 511 with its
   * PDPT entry 510 (0xffffffff80000000, -2 GiB) -> the identity map. */
  pdpt_high[0] = (uint32_t)lm64_pd | PTE_W | PTE_P;
  pdpt_top[510] = (uint32_t)lm64_pd | PTE_W | PTE_P;
  lm64_pml4[256] = (uint32_t)pdpt_high | PTE_W | PTE_P;
  lm64_pml4[511] = (uint32_t)pdpt_top | PTE_W | PTE_P;
  lm64_call(pg_reload_cr3, 0, 0);
  uint64_t x = (uint32_t)&frames[0][64];
  *(volatile uint64_t *)(uint32_t)x = 0x4000000040000000ull;
  printf("read at 4 GiB + x: %llx\n", rd(0x100000000ull + x));
  CHECK_EQ(rd(0x100000000ull + x), 0x4000000040000000ull);
  wr(0xffff800000000000ull + x, 0xffff8000ffff8000ull);
  printf("written at 0xffff800000000000 + x, read at x: %llx\n", *(volatile uint64_t *)(uint32_t)x);
  CHECK_EQ(*(volatile uint64_t *)(uint32_t)x, 0xffff8000ffff8000ull);
  printf("read at 0xffffffff80000000 + x: %llx\n", rd(0xffffffff80000000ull + x));
  CHECK_EQ(rd(0xffffffff80000000ull + x), 0xffff8000ffff8000ull);
  printf("A in PDPTE 4 / PML4E 256 / PDPTE 510: %u/%u/%u\n", (unsigned)(lm64_pdpt[4] >> 5) & 1,
         (unsigned)(lm64_pml4[256] >> 5) & 1, (unsigned)(pdpt_top[510] >> 5) & 1);

  /* Code run at -2 GiB: RIP is there, and its RIP-relative data is read through the alias. */
  const uint64_t top = 0xffffffff80000000ull;
  pg_value = 0;
  pg_addr = top + (uint32_t)rip_probe;
  uint64_t rip = lm64_call(pg_call, 0, 0);
  printf("code at 0xffffffff80000000 + rip_probe: RIP there %s, RIP-relative read %llx\n",
         rip == top + (uint32_t)rip_probe + 7 ? "yes" : "no", pg_value);
  CHECK_EQ(rip, top + (uint32_t)rip_probe + 7);
  CHECK_EQ(pg_value, 0x5249502d72656c61ull);
}

int main(void)
{
  printf("lm64paging: 4-level paging, NX, global pages, 2 MiB pages, aliases above 4 GiB\n");
  lm64_init(EFER_NXE);
  test_4k();
  test_nx();
  test_2m();
  test_global();
  test_aliases();
  rt_finish();
}
