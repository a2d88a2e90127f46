/* paging: 32-bit (non-PAE) and PAE paging: 4 KiB, 4 MiB (PSE) and 2 MiB pages,
 * accessed/dirty bits, INVLPG, CR3 reload, U/S and R/W from ring 3, CR0.WP,
 * #PF error codes and CR2, and NX under PAE when the CPU has it. */
#include "rt.h"

#define P 0x001u
#define RW 0x002u
#define US 0x004u
#define A 0x020u
#define D 0x040u
#define PS 0x080u
#define TEST_VA 0x40000000u

static uint8_t f1[4096] __attribute__((aligned(4096)));
static uint8_t f2[4096] __attribute__((aligned(4096)));

static volatile uint32_t g_addr, g_val;
static void do_read(void) { g_val = *(volatile uint32_t *)g_addr; }
static void do_write(void) { *(volatile uint32_t *)g_addr = g_val; }
static void do_call(void) { ((void (*)(void))g_addr)(); }

/* Access g_addr in the given ring; returns -1 or the #PF error code (CR2 checked). */
static int access(int write, int ring3)
{
  struct trap_info ti;
  int v = trap_call(write ? do_write : do_read, ring3, &ti);
  if (v == -1)
    return -1;
  CHECK_EQ(v, 14);
  CHECK_EQ(ti.cr2, g_addr);
  return (int)ti.err;
}
/* compiler barriers: page-table stores must not move across test accesses */
static uint32_t rd(uint32_t va)
{
  __asm__ volatile("" ::: "memory");
  uint32_t v = *(volatile uint32_t *)va;
  __asm__ volatile("" ::: "memory");
  return v;
}
static void wr(uint32_t va, uint32_t v)
{
  __asm__ volatile("" ::: "memory");
  *(volatile uint32_t *)va = v;
  __asm__ volatile("" ::: "memory");
}

static void fill_frames(void)
{
  for (int i = 0; i < 1024; i++) {
    ((uint32_t *)f1)[i] = 0xf1000000u + (uint32_t)i;
    ((uint32_t *)f2)[i] = 0xf2000000u + (uint32_t)i;
  }
  *(volatile uint32_t *)(0x00400000u + 0x1234) = 0x4badcafe; /* marker for the large-page alias */
}

/* ------------------------------------------------------------ 32-bit paging */
static volatile uint32_t pd[1024] __attribute__((aligned(4096)));
static volatile uint32_t pt0[1024] __attribute__((aligned(4096)));
static volatile uint32_t ptt[1024] __attribute__((aligned(4096)));

static void set_pte(uint32_t v)
{
  ptt[0] = v;
  invlpg((void *)TEST_VA);
}

static void test_legacy(void)
{
  for (int i = 0; i < 1024; i++)
    pt0[i] = ((uint32_t)i << 12) | P | RW | US;
  pt0[0] = 0; /* catch null pointers */
  pd[0] = (uint32_t)pt0 | P | RW | US;
  for (uint32_t i = 1; i < 4; i++)
    pd[i] = (i << 22) | PS | P | RW | US;
  pd[TEST_VA >> 22] = (uint32_t)ptt | P | RW | US;
  write_cr4(read_cr4() | CR4_PSE);
  write_cr3((uint32_t)pd);
  write_cr0(read_cr0() | CR0_PG);

  /* basic mapping and aliasing */
  ptt[0] = (uint32_t)f1 | P | RW | US;
  ptt[1] = (uint32_t)f2 | P | RW | US;
  CHECK_EQ(rd(TEST_VA + 8), 0xf1000002);
  CHECK_EQ(rd(TEST_VA + 0x1000 + 12), 0xf2000003);
  wr(TEST_VA + 16, 0x11223344);
  CHECK_EQ(((volatile uint32_t *)f1)[4], 0x11223344);
  ((uint32_t *)f1)[4] = 0xf1000004;
  printf("legacy: 4 KiB mappings and aliases ok\n");

  /* accessed / dirty */
  set_pte((uint32_t)f1 | P | RW | US);
  pd[TEST_VA >> 22] &= ~A;
  write_cr3((uint32_t)pd);
  (void)rd(TEST_VA);
  CHECK_EQ(ptt[0] & (A | D), A);
  CHECK(pd[TEST_VA >> 22] & A);
  wr(TEST_VA + 4, 0xf1000001);
  CHECK_EQ(ptt[0] & (A | D), A | D);
  CHECK(!(pd[TEST_VA >> 22] & D)); /* D only exists in the PTE for 4 KiB pages */
  printf("legacy: accessed/dirty bits set by the CPU\n");

  /* INVLPG and CR3 reload pick up changed PTEs */
  (void)rd(TEST_VA); /* cached in the TLB */
  set_pte((uint32_t)f2 | P | RW | US);
  CHECK_EQ(rd(TEST_VA), 0xf2000000);
  ptt[0] = (uint32_t)f1 | P | RW | US;
  write_cr3((uint32_t)pd);
  CHECK_EQ(rd(TEST_VA), 0xf1000000);
  printf("legacy: INVLPG and CR3 reload\n");

  /* 4 MiB page alias of physical 4 MiB */
  pd[(TEST_VA >> 22) + 1] = 0x00400000u | PS | P | RW | US;
  CHECK_EQ(rd(TEST_VA + 0x400000 + 0x1234), 0x4badcafe);
  CHECK_EQ(pd[(TEST_VA >> 22) + 1] & (A | D), A);
  wr(TEST_VA + 0x400000 + 0x1238, 0x600d);
  CHECK_EQ(*(volatile uint32_t *)0x00401238, 0x600d);
  CHECK_EQ(pd[(TEST_VA >> 22) + 1] & (A | D), A | D);
  printf("legacy: 4 MiB PSE page, A/D in the PDE\n");

  /* faults: not present, U/S and R/W from ring 3, CR0.WP from ring 0 */
  g_addr = TEST_VA + 0x20;
  g_val = 0x5a5a;
  set_pte(0);
  CHECK_EQ(access(0, 0), 0x0);
  CHECK_EQ(access(1, 0), 0x2);
  CHECK_EQ(access(0, 1), 0x4);
  CHECK_EQ(access(1, 1), 0x6);
  set_pte((uint32_t)f1 | P | RW); /* supervisor */
  CHECK_EQ(access(0, 0), -1);
  CHECK_EQ(access(0, 1), 0x5);
  CHECK_EQ(access(1, 1), 0x7);
  set_pte((uint32_t)f1 | P | US); /* user, read-only */
  CHECK_EQ(access(0, 1), -1);
  CHECK_EQ(g_val, 0xf1000008);
  CHECK_EQ(access(1, 1), 0x7);
  g_val = 0x1234;
  CHECK_EQ(access(1, 0), -1); /* WP=0: supervisor may write */
  CHECK_EQ(((uint32_t *)f1)[8], 0x1234);
  write_cr0(read_cr0() | CR0_WP);
  CHECK_EQ(access(1, 0), 0x3);
  write_cr0(read_cr0() & ~CR0_WP);
  /* effective permission is the AND of PDE and PTE */
  set_pte((uint32_t)f1 | P | RW | US);
  pd[TEST_VA >> 22] &= ~US;
  write_cr3((uint32_t)pd);
  CHECK_EQ(access(0, 1), 0x5);
  pd[TEST_VA >> 22] = ((uint32_t)ptt | P | US);
  write_cr3((uint32_t)pd);
  CHECK_EQ(access(0, 1), -1);
  CHECK_EQ(access(1, 1), 0x7);
  pd[TEST_VA >> 22] |= RW;
  /* non-present page directory entry */
  g_addr = 0x80000000u;
  CHECK_EQ(access(0, 0), 0x0);
  printf("legacy: #PF error codes/CR2 for not-present, U/S, R/W, CR0.WP, PDE&PTE\n");

  write_cr0(read_cr0() & ~CR0_PG);
}

/* ------------------------------------------------------------ PAE paging */
static volatile uint64_t pdpt[4] __attribute__((aligned(32)));
static volatile uint64_t pdp[4][512] __attribute__((aligned(4096)));
static volatile uint64_t pte_pae[512] __attribute__((aligned(4096)));

static void set_pte64(uint64_t v)
{
  pte_pae[0] = v;
  invlpg((void *)TEST_VA);
}

static void test_pae(void)
{
  uint32_t a, b, c, d;
  cpuid(1, 0, &a, &b, &c, &d);
  if (!(d & (1u << 6))) {
    printf("PAE: not supported by this CPU, skipped\n");
    return;
  }
  for (int i = 0; i < 4; i++)
    pdpt[i] = (uint32_t)pdp[i] | P; /* PDPTEs have no RW/US bits under PAE */
  for (uint32_t i = 0; i < 8; i++)
    pdp[0][i] = ((uint64_t)i << 21) | PS | P | RW | US; /* 16 MiB identity, 2 MiB pages */
  pdp[1][0] = (uint32_t)pte_pae | P | RW | US;              /* TEST_VA = 1 GiB: pdpt[1] */
  pdp[1][2] = 0x00400000u | PS | P | RW | US;              /* TEST_VA + 4 MiB: 2 MiB alias */
  pte_pae[0] = (uint32_t)f1 | P | RW | US;
  pte_pae[1] = (uint32_t)f2 | P | RW | US;
  write_cr4(read_cr4() | CR4_PAE);
  write_cr3((uint32_t)pdpt);
  write_cr0(read_cr0() | CR0_PG);

  CHECK_EQ(rd(TEST_VA + 8), 0xf1000002);
  CHECK_EQ(rd(TEST_VA + 0x1000 + 12), 0xf2000003);
  CHECK_EQ(rd(TEST_VA + 0x400000 + 0x1234), 0x4badcafe);
  printf("PAE: 4 KiB and 2 MiB mappings ok\n");

  set_pte64((uint32_t)f1 | P | RW | US);
  (void)rd(TEST_VA);
  CHECK_EQ(pte_pae[0] & (A | D), A);
  wr(TEST_VA + 4, 0xf1000001);
  CHECK_EQ(pte_pae[0] & (A | D), A | D);
  CHECK_EQ(pdp[1][2] & (A | D), A);
  set_pte64((uint32_t)f2 | P | RW | US);
  CHECK_EQ(rd(TEST_VA), 0xf2000000);
  pte_pae[0] = (uint32_t)f1 | P | RW | US;
  write_cr3((uint32_t)pdpt);
  CHECK_EQ(rd(TEST_VA), 0xf1000000);
  printf("PAE: accessed/dirty, INVLPG, CR3 reload\n");

  g_addr = TEST_VA + 0x20;
  g_val = 0x77;
  set_pte64(0);
  CHECK_EQ(access(0, 0), 0x0);
  CHECK_EQ(access(1, 1), 0x6);
  set_pte64((uint32_t)f1 | P | RW);
  CHECK_EQ(access(0, 1), 0x5);
  set_pte64((uint32_t)f1 | P | US);
  CHECK_EQ(access(0, 1), -1);
  CHECK_EQ(access(1, 1), 0x7);
  write_cr0(read_cr0() | CR0_WP);
  CHECK_EQ(access(1, 0), 0x3);
  write_cr0(read_cr0() & ~CR0_WP);
  g_addr = 0xc0000000u; /* pdpt[3] present, PDE empty */
  CHECK_EQ(access(0, 0), 0x0);
  printf("PAE: #PF error codes/CR2 for not-present, U/S, R/W, CR0.WP\n");

  /* NX */
  uint32_t maxext;
  cpuid(0x80000000u, 0, &maxext, &b, &c, &d);
  d = 0;
  if (maxext >= 0x80000001u)
    cpuid(0x80000001u, 0, &a, &b, &c, &d);
  if (!(d & (1u << 20))) {
    printf("PAE: NX not supported by this CPU (CPUID 80000001h EDX[20] clear), NX test skipped\n");
  } else {
    wrmsr(0xc0000080u, rdmsr(0xc0000080u) | (1u << 11)); /* EFER.NXE */
    f1[0x40] = 0xc3;                                     /* ret */
    g_addr = TEST_VA + 0x40;
    set_pte64((uint32_t)f1 | P | RW | US);
    struct trap_info ti;
    CHECK_EQ(trap_call(do_call, 0, &ti), -1);
    set_pte64((uint32_t)f1 | P | RW | US | (1ull << 63));
    CHECK_EQ(trap_call(do_call, 0, &ti), 14);
    CHECK_EQ(ti.err, 0x11);
    CHECK_EQ(ti.cr2, TEST_VA + 0x40);
    CHECK_EQ(rd(TEST_VA + 0x40) & 0xff, 0xc3); /* still readable */
    printf("PAE: NX page faults on fetch (err 0x11), data reads ok\n");
  }
  write_cr0(read_cr0() & ~CR0_PG);
  write_cr4(read_cr4() & ~CR4_PAE);
}

int main(void)
{
  printf("paging guest\n");
  fill_frames();
  test_legacy();
  test_pae();
  rt_finish();
}
