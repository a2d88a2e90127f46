/* cpufeat: optional CPU features a 32-bit kernel can use, each exercised only
 * when CPUID offers it (otherwise the instruction must raise #UD or the CR4
 * bit must be refused with #GP, which is checked instead):
 *   UMIP   (7.ECX[2])   sgdt/sidt/sldt/str/smsw raise #GP(0) at CPL 3 with
 *                       CR4.UMIP, work at CPL 0 and without CR4.UMIP;
 *   RDTSCP (80000001h.EDX[27]) and the IA32_TSC_AUX MSR (WRMSR): ECX = TSC_AUX, the
 *                       counter does not run backwards, CR4.TSD makes it #GP
 *                       at CPL 3;
 *   RDPID  (7.ECX[22])  returns TSC_AUX at CPL 0 and 3 (QEMU 7.2's TCG does
 *                       not offer it: there the #UD is what is checked, and
 *                       the transcript says only that RDPID agreed with CPUID);
 *   SMEP   (7.EBX[7])   a supervisor fetch from a user page: #PF, error code
 *                       P|I (0x11), CR2 the target; not present: 0x10; the
 *                       same call works with CR4.SMEP clear;
 *   SMAP   (7.EBX[20])  supervisor reads and writes of a user page: #PF 0x1
 *                       and 0x3 unless EFLAGS.AC (stac, or popfd with AC),
 *                       clac ends that; a REP MOVS from a user page too;
 *                       supervisor pages unaffected; stac at CPL 3 is #UD.
 * The ctest runs QEMU with -cpu qemu32,+nx,+smep,+smap,+umip,+rdtscp.  (QEMU
 * 7.2 hangs on the not-offered branches: it does not refuse a CR4 bit its
 * CPU model lacks.) */
#include "rt.h"

#define P 0x001u
#define RW 0x002u
#define US 0x004u
#define PS 0x080u
#define TEST_VA 0x40000000u
#define CR4_TSD (1u << 2)
#define CR4_UMIP (1u << 11)
#define CR4_SMEP (1u << 20)
#define CR4_SMAP (1u << 21)
#define EFL_AC (1u << 18)
#define MSR_TSC_AUX 0xc0000103u

static int has_smep, has_smap, has_umip, has_rdpid, has_rdtscp;

static void read_features(void)
{
  uint32_t a, b, c, d, max;
  cpuid(0, 0, &max, &b, &c, &d);
  if (max >= 7) {
    cpuid(7, 0, &a, &b, &c, &d);
    has_smep = (b >> 7) & 1;
    has_smap = (b >> 20) & 1;
    has_umip = (c >> 2) & 1;
    has_rdpid = (c >> 22) & 1;
  }
  cpuid(0x80000000u, 0, &max, &b, &c, &d);
  if (max >= 0x80000001u) {
    cpuid(0x80000001u, 0, &a, &b, &c, &d);
    has_rdtscp = (d >> 27) & 1;
  }
  printf("cpuid: smep %d smap %d umip %d rdtscp %d\n", has_smep, has_smap, has_umip, has_rdtscp);
}

/* Sets CR4 bits; returns the vector it raised (-1: none). */
static uint32_t g_cr4;
static void do_write_cr4(void) { write_cr4(g_cr4); }
static int try_cr4(uint32_t value)
{
  struct trap_info ti;
  g_cr4 = value;
  int v = trap_call(do_write_cr4, 0, &ti);
  if (v == 13)
    CHECK_EQ(ti.err, 0);
  return v;
}

/* ------------------------------------------------------------------ UMIP */
static volatile uint8_t desc_buf[8];
static volatile uint32_t stored;
static void do_sgdt(void) { __asm__ volatile("sgdt (%0)" : : "r"(desc_buf) : "memory"); }
static void do_sidt(void) { __asm__ volatile("sidt (%0)" : : "r"(desc_buf) : "memory"); }
static void do_sldt(void) { uint32_t v = 0; __asm__ volatile("sldt %0" : "+r"(v)); stored = v; }
static void do_str(void) { uint32_t v = 0; __asm__ volatile("str %0" : "+r"(v)); stored = v; }
static void do_smsw(void) { uint32_t v = 0; __asm__ volatile("smsw %0" : "+r"(v)); stored = v; }

static void test_umip(void)
{
  static const struct { const char *name; void (*fn)(void); } insns[] = {
      {"sgdt", do_sgdt}, {"sidt", do_sidt}, {"sldt", do_sldt}, {"str", do_str}, {"smsw", do_smsw}};
  if (!has_umip) {
    CHECK_EQ(try_cr4(read_cr4() | CR4_UMIP), 13);
    printf("umip: not offered, CR4.UMIP refused with #GP(0)\n");
    return;
  }
  struct trap_info ti;
  for (unsigned i = 0; i < sizeof insns / sizeof insns[0]; i++) {
    int ring3_plain = trap_call(insns[i].fn, 1, &ti);
    CHECK_EQ(try_cr4(read_cr4() | CR4_UMIP), -1);
    int ring0 = trap_call(insns[i].fn, 0, &ti);
    int ring3 = trap_call(insns[i].fn, 1, &ti);
    uint32_t err = ring3 == 13 ? ti.err : 0xffffffffu;
    uint32_t eip_ok = ring3 == 13 && (ti.cs & 3) == 3;
    write_cr4(read_cr4() & ~CR4_UMIP);
    printf("umip: %s ring 3 without UMIP %d, ring 0 %d, ring 3 vector %d error %u user eip %u\n", insns[i].name,
           ring3_plain, ring0, ring3, err, eip_ok);
    CHECK_EQ(ring3_plain, -1);
    CHECK_EQ(ring0, -1);
    CHECK_EQ(ring3, 13);
    CHECK_EQ(err, 0);
  }
  /* What ring 0 stores under UMIP is the real table register. */
  write_cr4(read_cr4() | CR4_UMIP);
  do_sgdt();
  uint16_t limit = (uint16_t)(desc_buf[0] | desc_buf[1] << 8);
  write_cr4(read_cr4() & ~CR4_UMIP);
  CHECK(limit >= 0x2f);
  do_str();
  CHECK_EQ(stored & 0xffff, SEL_TSS);
}

/* ---------------------------------------------------------- RDTSCP / RDPID */
static volatile uint32_t r_lo, r_hi, r_aux;
static void do_rdtscp(void)
{
  uint32_t lo, hi, aux;
  __asm__ volatile("rdtscp" : "=a"(lo), "=d"(hi), "=c"(aux));
  r_lo = lo, r_hi = hi, r_aux = aux;
}
static void do_rdpid(void)
{
  uint32_t v;
  __asm__ volatile(".byte 0xf3, 0x0f, 0xc7, 0xf8" : "=a"(v)); /* rdpid eax */
  r_aux = v;
}
static uint64_t rdtsc64(void)
{
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return (uint64_t)hi << 32 | lo;
}

static void test_rdtscp_rdpid(void)
{
  struct trap_info ti;
  if (has_rdtscp || has_rdpid) {
    /* (No RDMSR of it here: qemu-system-i386 7.2 reads IA32_TSC_AUX as 0,
     * its RDMSR knows the MSR only in the 64-bit build.) */
    wrmsr(MSR_TSC_AUX, 0x5eed1234u);
  }
  if (has_rdtscp) {
    uint64_t before = rdtsc64();
    CHECK_EQ(trap_call(do_rdtscp, 0, &ti), -1);
    uint64_t t = (uint64_t)r_hi << 32 | r_lo;
    CHECK(t >= before);
    CHECK(rdtsc64() >= t);
    printf("rdtscp: ring 0 aux 0x%x\n", r_aux);
    r_aux = 0;
    CHECK_EQ(trap_call(do_rdtscp, 1, &ti), -1);
    printf("rdtscp: ring 3 aux 0x%x\n", r_aux);
    wrmsr(MSR_TSC_AUX, 7);
    write_cr4(read_cr4() | CR4_TSD);
    CHECK_EQ(trap_call(do_rdtscp, 0, &ti), -1);
    printf("rdtscp: CR4.TSD ring 0 aux %u\n", r_aux);
    int v = trap_call(do_rdtscp, 1, &ti);
    printf("rdtscp: CR4.TSD ring 3 vector %d error %u\n", v, ti.err);
    CHECK_EQ(v, 13);
    write_cr4(read_cr4() & ~CR4_TSD);
  } else {
    int v = trap_call(do_rdtscp, 0, &ti);
    printf("rdtscp: not offered, vector %d\n", v);
    CHECK_EQ(v, 6);
  }
  /* RDPID: TSC_AUX at every CPL (CR4.TSD does not matter) if offered, else #UD. */
  int agrees;
  if (has_rdpid) {
    wrmsr(MSR_TSC_AUX, 0xabc);
    write_cr4(read_cr4() | CR4_TSD);
    int v0 = trap_call(do_rdpid, 0, &ti);
    uint32_t a0 = r_aux;
    r_aux = 0;
    int v3 = trap_call(do_rdpid, 1, &ti);
    write_cr4(read_cr4() & ~CR4_TSD);
    agrees = v0 == -1 && v3 == -1 && a0 == 0xabc && r_aux == 0xabc;
  } else {
    agrees = trap_call(do_rdpid, 0, &ti) == 6 && trap_call(do_rdpid, 1, &ti) == 6;
  }
  printf("rdpid: behaves as CPUID says: %s\n", agrees ? "yes" : "no");
  CHECK(agrees);
}

/* ------------------------------------------------------------ SMEP / SMAP */
static volatile uint32_t pd[1024] __attribute__((aligned(4096)));
static volatile uint32_t ptt[1024] __attribute__((aligned(4096)));
static uint8_t user_code[4096] __attribute__((aligned(4096)));
static uint8_t user_data[4096] __attribute__((aligned(4096)));
static uint8_t kernel_data[4096] __attribute__((aligned(4096)));
static uint8_t copy_buf[64];

static volatile uint32_t g_addr, g_val;
static void do_call(void) { g_val = ((uint32_t(*)(void))g_addr)(); }
static void do_read(void) { g_val = *(volatile uint32_t *)g_addr; }
static void do_write(void) { *(volatile uint32_t *)g_addr = g_val; }
static void do_read_stac(void)
{
  __asm__ volatile(".byte 0x0f, 0x01, 0xcb" ::: "memory"); /* stac */
  g_val = *(volatile uint32_t *)g_addr;
  __asm__ volatile(".byte 0x0f, 0x01, 0xca" ::: "memory"); /* clac */
}
static void do_write_stac(void)
{
  __asm__ volatile(".byte 0x0f, 0x01, 0xcb" ::: "memory");
  *(volatile uint32_t *)g_addr = g_val;
  __asm__ volatile(".byte 0x0f, 0x01, 0xca" ::: "memory");
}
static void do_read_popf_ac(void)
{
  /* AC set by POPFD (not STAC), cleared by POPFD again. */
  __asm__ volatile("pushfl\n\torl $0x40000, (%%esp)\n\tpopfl\n\t"
                   "movl (%1), %0\n\t"
                   "pushfl\n\tandl $~0x40000, (%%esp)\n\tpopfl"
                   : "=r"(g_val) : "r"(g_addr) : "memory", "cc");
}
static void do_stac(void) { __asm__ volatile(".byte 0x0f, 0x01, 0xcb" ::: "memory"); }
static void do_rep_movs(void)
{
  uint32_t n = 16, s = g_addr, d = (uint32_t)copy_buf;
  __asm__ volatile("rep movsl" : "+c"(n), "+S"(s), "+D"(d) : : "memory");
}

/* Runs fn in ring 0; prints and returns the vector, the #PF error code and CR2's page offset. */
static int probe(const char *what, void (*fn)(void))
{
  struct trap_info ti;
  int v = trap_call(fn, 0, &ti);
  if (v == 14) {
    printf("%s: #PF error 0x%x cr2 %s\n", what, ti.err, ti.cr2 == g_addr ? "= address" : "wrong");
    CHECK_EQ(ti.cr2, g_addr);
    return (int)ti.err;
  }
  printf("%s: %s (vector %d)\n", what, v == -1 ? "ok" : "fault", v);
  return v == -1 ? -1 : 1000 + v;
}

static void paging_on(void)
{
  /* 0-4 MiB: supervisor identity (the kernel); TEST_VA: user code page,
   * user data page, supervisor data page, not present. */
  pd[0] = 0 | PS | P | RW;
  pd[TEST_VA >> 22] = (uint32_t)ptt | P | RW | US;
  ptt[0] = (uint32_t)user_code | P | RW | US;
  ptt[1] = (uint32_t)user_data | P | RW | US;
  ptt[2] = (uint32_t)kernel_data | P | RW;
  ptt[3] = 0;
  write_cr4(read_cr4() | CR4_PSE);
  write_cr3((uint32_t)pd);
  write_cr0(read_cr0() | CR0_PG);
}

static void paging_off(void) { write_cr0(read_cr0() & ~CR0_PG); }

static void test_smep(void)
{
  if (!has_smep) {
    CHECK_EQ(try_cr4(read_cr4() | CR4_SMEP), 13);
    printf("smep: not offered, CR4.SMEP refused with #GP(0)\n");
    return;
  }
  /* mov $0x5a, %eax; ret */
  static const uint8_t fn[] = {0xb8, 0x5a, 0, 0, 0, 0xc3};
  memcpy(user_code, fn, sizeof fn);
  paging_on();
  g_addr = TEST_VA;
  g_val = 0;
  CHECK_EQ(probe("smep off: call into a user page", do_call), -1);
  CHECK_EQ(g_val, 0x5a);
  write_cr4(read_cr4() | CR4_SMEP);
  CHECK_EQ(probe("smep on: call into a user page", do_call), 0x11);
  g_addr = TEST_VA + 0x3000;
  CHECK_EQ(probe("smep on: call into a not-present page", do_call), 0x10);
  g_addr = TEST_VA + 0x1000;
  CHECK_EQ(probe("smep on: read a user page", do_read), -1);
  write_cr4(read_cr4() & ~CR4_SMEP);
  g_addr = TEST_VA;
  g_val = 0;
  CHECK_EQ(probe("smep off again: call into a user page", do_call), -1);
  CHECK_EQ(g_val, 0x5a);
  paging_off();
}

static void test_smap(void)
{
  struct trap_info ti;
  if (!has_smap) {
    CHECK_EQ(try_cr4(read_cr4() | CR4_SMAP), 13);
    printf("smap: not offered, CR4.SMAP refused with #GP(0), stac vector %d\n", trap_call(do_stac, 0, &ti));
    return;
  }
  for (int i = 0; i < 1024; i++)
    ((uint32_t *)user_data)[i] = 0xda7a0000u + (uint32_t)i;
  paging_on();
  g_addr = TEST_VA + 0x1000;
  CHECK_EQ(probe("smap off: read a user page", do_read), -1);
  CHECK_EQ(g_val, 0xda7a0000u);
  write_cr4(read_cr4() | CR4_SMAP);
  CHECK_EQ(probe("smap on: read a user page", do_read), 0x1);
  g_val = 0x600d;
  CHECK_EQ(probe("smap on: write a user page", do_write), 0x3);
  CHECK_EQ(((uint32_t *)user_data)[0], 0xda7a0000u);
  g_addr = TEST_VA + 0x1004;
  CHECK_EQ(probe("smap on, stac: read a user page", do_read_stac), -1);
  CHECK_EQ(g_val, 0xda7a0001u);
  g_val = 0x600d;
  CHECK_EQ(probe("smap on, stac: write a user page", do_write_stac), -1);
  CHECK_EQ(((uint32_t *)user_data)[1], 0x600d);
  CHECK_EQ(probe("smap on, after clac: read a user page", do_read), 0x1);
  g_addr = TEST_VA + 0x1008;
  CHECK_EQ(probe("smap on, popfd with AC: read a user page", do_read_popf_ac), -1);
  CHECK_EQ(g_val, 0xda7a0002u);
  CHECK_EQ(probe("smap on, popfd without AC: read a user page", do_read), 0x1);
  g_addr = TEST_VA + 0x1010;
  CHECK_EQ(probe("smap on: rep movsd from a user page", do_rep_movs), 0x1);
  g_addr = TEST_VA + 0x2000;
  g_val = 0x1234;
  CHECK_EQ(probe("smap on: write a supervisor page", do_write), -1);
  CHECK_EQ(((uint32_t *)kernel_data)[0], 0x1234);
  CHECK(!(read_eflags() & EFL_AC));
  write_cr4(read_cr4() & ~CR4_SMAP);
  g_addr = TEST_VA + 0x1000;
  CHECK_EQ(probe("smap off again: read a user page", do_read), -1);
  paging_off();
  int v = trap_call(do_stac, 1, &ti);
  printf("smap: stac at CPL 3 vector %d\n", v);
  CHECK_EQ(v, 6);
}

int main(void)
{
  read_features();
  test_umip();
  test_rdtscp_rdpid();
  test_smep();
  test_smap();
  rt_finish();
}
