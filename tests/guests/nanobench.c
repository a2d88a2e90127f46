/* nanobench: the nanobenchmarks Adams and Agesen (ASPLOS 2006) used to
 * compare software and hardware monitors, as cycles per operation measured
 * with rdtsc around N iterations minus an empty-loop baseline:
 *
 *   syscall   int 0x80 from ring 3 into a ring-0 handler, iret back
 *   sysenter  sysenter/sysexit round trip from ring 3 (if CPUID has SEP)
 *   in        inb from port 0x80 (ring 0)
 *   cr8wr     write of the local APIC TPR at 0xfee00080 (32-bit guests have
 *             no CR8), alternating 0x10 and 0
 *   call/ret  call to an empty function (ring 0)
 *   pgfault   load from a not-present page; the #PF handler checks CR2, sets P
 *             and returns, the load restarts; then clear P + invlpg (ring 0)
 *   divzero   div by zero; the #DE handler skips the instruction (ring 0)
 *   ptemod    write a PTE in a page table in use (switch the page between two
 *             frames), then invlpg (ring 0)
 *
 * Paging is on for all of them (identity map of the low 16 MiB in 4 KiB pages,
 * user-accessible; local APIC page supervisor/uncached; a test page table at
 * 0x40000000).  Handlers are minimal assembly stubs installed straight in the
 * IDT, so the numbers are dominated by what the CPU or monitor does.
 *
 * cmdline: count=N iterations per op (default 1000), trials=T (default 1,
 * or 5 with timing=1; the minimum is reported), timing=1 prints cycles/op,
 * only=<op> runs one op (for counter differentials), only=none none (the
 * empty-loop baselines alone: what a differential subtracts); any other
 * only= value fails.  Without timing=1 the transcript is deterministic: each
 * op's iteration and handler counts.
 */
#include "rt.h"

extern uint32_t nb_edx_in, nb_edx_out, nb_left;
extern volatile uint32_t nb_int80_count, nb_sysenter_count, nb_pf_count, nb_pf_bad, nb_de_count;
extern uint32_t nb_pf_pte, nb_pf_va;
typedef uint64_t (*loop_fn)(uint32_t n, uint32_t a, uint32_t b);
extern uint64_t nb_empty(uint32_t, uint32_t, uint32_t);
extern uint64_t nb_int80(uint32_t, uint32_t, uint32_t);
extern uint64_t nb_sysenter(uint32_t, uint32_t, uint32_t);
extern uint64_t nb_in(uint32_t, uint32_t, uint32_t);
extern uint64_t nb_tpr(uint32_t, uint32_t, uint32_t);
extern uint64_t nb_call(uint32_t, uint32_t, uint32_t);
extern uint64_t nb_pgfault(uint32_t, uint32_t, uint32_t);
extern uint64_t nb_divzero(uint32_t, uint32_t, uint32_t);
extern uint64_t nb_ptemod(uint32_t, uint32_t, uint32_t);
extern char nb_int80_stub[], nb_sysenter_stub[], nb_de_stub[], nb_pf_stub[];
extern char __image_end[];

#define MSR_SYSENTER_CS 0x174
#define MSR_SYSENTER_ESP 0x175
#define MSR_SYSENTER_EIP 0x176
#define TEST_VA 0x40000000u /* pgfault page; ptemod page at TEST_VA + 4 KiB */
#define PF_MARK 0x11111111u
#define FRAME_A_MARK 0xaaaaaaaau
#define FRAME_B_MARK 0xbbbbbbbbu

static uint32_t count, trials, timing;
static char only[16];

/* ---- cmdline "only=<op>" ---- */
static void parse_only(void)
{
  const char *s = mb_cmdline();
  while (*s) {
    while (*s == ' ')
      s++;
    if (!strncmp(s, "only=", 5)) {
      s += 5;
      size_t i = 0;
      while (*s && *s != ' ' && i + 1 < sizeof only)
        only[i++] = *s++;
      only[i] = 0;
      return;
    }
    while (*s && *s != ' ')
      s++;
  }
}
static int selected(const char *op) { return !only[0] || !strcmp(only, op); }
static const char *const op_names[] = {"syscall", "sysenter", "in", "cr8wr", "call/ret", "pgfault", "divzero", "ptemod",
                                       "none"};
static int only_known(void)
{
  for (size_t i = 0; i < sizeof op_names / sizeof op_names[0]; i++)
    if (!strcmp(only, op_names[i]))
      return 1;
  return 0;
}

/* ---- IDT gates pointing straight at our stubs ---- */
static uint64_t *idt_base(void)
{
  struct __attribute__((packed)) { uint16_t lim; uint32_t base; } d;
  __asm__ volatile("sidt %0" : "=m"(d));
  return (uint64_t *)d.base;
}
static uint64_t gate_set(int vec, void *fn, int dpl)
{
  uint64_t *idt = idt_base(), old = idt[vec];
  uint32_t off = (uint32_t)fn;
  idt[vec] = (uint64_t)(off & 0xffff) | ((uint64_t)SEL_KCODE << 16) | ((uint64_t)(0x8e | (dpl << 5)) << 40) |
             ((uint64_t)(off >> 16) << 48);
  return old;
}
static void gate_restore(int vec, uint64_t old) { idt_base()[vec] = old; }

/* ---- paging ---- */
static uint32_t *pd, *pt_test, frame_pf, frame_a, frame_b;

static uint32_t *alloc_page(void)
{
  uint32_t *p = rt_alloc(4096, 4096);
  memset(p, 0, 4096);
  return p;
}
static void paging_on(void)
{
  pd = alloc_page();
  for (uint32_t t = 0; t < 4; t++) { /* 0..16 MiB identity, user, writable */
    uint32_t *pt = alloc_page();
    for (uint32_t i = 0; i < 1024; i++)
      pt[i] = ((t * 1024 + i) << 12) | 0x7;
    pd[t] = (uint32_t)pt | 0x7;
  }
  uint32_t *pt_apic = alloc_page();
  pt_apic[(LAPIC_BASE >> 12) & 1023] = LAPIC_BASE | 0x1b; /* P RW PWT PCD, supervisor */
  pd[LAPIC_BASE >> 22] = (uint32_t)pt_apic | 0x3;
  pt_test = alloc_page();
  pd[TEST_VA >> 22] = (uint32_t)pt_test | 0x3;
  frame_pf = (uint32_t)alloc_page();
  frame_a = (uint32_t)alloc_page();
  frame_b = (uint32_t)alloc_page();
  *(uint32_t *)frame_pf = PF_MARK;
  *(uint32_t *)frame_a = FRAME_A_MARK;
  *(uint32_t *)frame_b = FRAME_B_MARK;
  pt_test[0] = frame_pf | 0x2;     /* not present */
  pt_test[1] = frame_a | 0x3;      /* present */
  /* everything we touch must lie in the identity-mapped 16 MiB */
  uint32_t top = (uint32_t)rt_alloc(16, 16);
  CHECK(top < 16u << 20);
  CHECK((uint32_t)__image_end < 16u << 20);
  write_cr3((uint32_t)pd);
  write_cr0(read_cr0() | CR0_PG);
}

/* ---- measurement ---- */
static uint64_t base_ring0, base_ring3;

/* Ring-3 runs go through trap_call; the loop and its arguments via globals. */
static loop_fn r3_fn;
static uint32_t r3_n;
static uint64_t r3_cycles;
static void r3_body(void) { r3_cycles = r3_fn(r3_n, 0, 0); }
static uint64_t run_ring3(loop_fn fn, uint32_t n)
{
  struct trap_info ti;
  r3_fn = fn;
  r3_n = n;
  int v = trap_call(r3_body, 1, &ti);
  if (v != -1) {
    printf("ring 3 loop: unexpected vector %d err 0x%x eip 0x%08x\n", v, ti.err, ti.eip);
    rt_fail_now("ring 3 loop faulted");
  }
  return r3_cycles;
}
static uint64_t min64(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* Iterations the last loop completed (the counter counts down to 0). */
static uint32_t done_iters;
static uint64_t timed(uint64_t cycles)
{
  CHECK_EQ(nb_left, 0);
  done_iters = count - nb_left;
  return cycles;
}

/* One line per op: deterministic part, then cycles/op only with timing=1. */
static void report(const char *op, uint32_t iters, int handler, uint32_t hits, uint64_t best, uint64_t base)
{
  printf("nb %s: %u iterations", op, iters);
  if (handler)
    printf(", %u handler entries", hits);
  if (timing) {
    int64_t d = (int64_t)best - (int64_t)base;
    int neg = d < 0;
    uint64_t m = (uint64_t)(neg ? -d : d), x10 = (m * 10 + count / 2) / count; /* timed over count iterations */
    printf(", %s%llu.%llu cycles/op", neg ? "-" : "", x10 / 10, x10 % 10);
  }
  printf("\n");
}

static void baselines(void)
{
  base_ring0 = base_ring3 = ~0ull;
  for (uint32_t t = 0; t < trials; t++) {
    base_ring0 = min64(base_ring0, timed(nb_empty(count, 0, 0)));
    base_ring3 = min64(base_ring3, timed(run_ring3(nb_empty, count)));
  }
  if (timing) {
    uint64_t r0 = (base_ring0 * 10 + count / 2) / count, r3 = (base_ring3 * 10 + count / 2) / count;
    printf("baseline (empty loop): ring 0 %llu.%llu, ring 3 %llu.%llu cycles/iteration\n", r0 / 10, r0 % 10,
           r3 / 10, r3 % 10);
  }
}

static void op_syscall(void)
{
  uint64_t old = gate_set(0x80, nb_int80_stub, 3), best = ~0ull;
  for (uint32_t t = 0; t < trials; t++) {
    nb_int80_count = 0;
    best = min64(best, timed(run_ring3(nb_int80, count)));
    CHECK_EQ(nb_int80_count, count);
  }
  gate_restore(0x80, old);
  report("syscall", done_iters, 1, nb_int80_count, best, base_ring3);
}

static int have_sep(void)
{
  uint32_t a, b, c, d;
  cpuid(0, 0, &a, &b, &c, &d);
  if (a < 1)
    return 0;
  cpuid(1, 0, &a, &b, &c, &d);
  uint32_t family = (a >> 8) & 0xf, model = (a >> 4) & 0xf, stepping = a & 0xf;
  if (family == 6 && model < 3 && stepping < 3) /* early Pentium Pro: SEP bit is bogus */
    return 0;
  return (d >> 11) & 1;
}
static uint8_t sysenter_stack[4096] __attribute__((aligned(16)));
static void op_sysenter(void)
{
  if (!have_sep()) {
    printf("nb sysenter: skipped (CPUID.01h:EDX.SEP clear)\n");
    return;
  }
  wrmsr(MSR_SYSENTER_CS, SEL_KCODE);
  wrmsr(MSR_SYSENTER_ESP, (uint32_t)(sysenter_stack + sizeof sysenter_stack));
  wrmsr(MSR_SYSENTER_EIP, (uint32_t)nb_sysenter_stub);
  uint64_t best = ~0ull;
  for (uint32_t t = 0; t < trials; t++) {
    nb_sysenter_count = 0;
    best = min64(best, timed(run_ring3(nb_sysenter, count)));
    CHECK_EQ(nb_sysenter_count, count);
  }
  wrmsr(MSR_SYSENTER_CS, 0);
  report("sysenter", done_iters, 1, nb_sysenter_count, best, base_ring3);
}

static void op_in(void)
{
  uint64_t best = ~0ull;
  for (uint32_t t = 0; t < trials; t++)
    best = min64(best, timed(nb_in(count, 0, 0)));
  report("in", done_iters, 0, 0, best, base_ring0);
}

static void op_cr8wr(void)
{
  uint64_t best = ~0ull;
  for (uint32_t t = 0; t < trials; t++) {
    best = min64(best, timed(nb_tpr(count, 0, 0)));
    CHECK_EQ(lapic_read(LAPIC_TPR) & 0xff, (count & 1) ? 0x10 : 0);
    lapic_write(LAPIC_TPR, 0);
  }
  report("cr8wr", done_iters, 0, 0, best, base_ring0);
}

static void op_callret(void)
{
  uint64_t best = ~0ull;
  for (uint32_t t = 0; t < trials; t++)
    best = min64(best, timed(nb_call(count, 0, 0)));
  report("call/ret", done_iters, 0, 0, best, base_ring0);
}

static void op_pgfault(void)
{
  uint64_t old = gate_set(14, nb_pf_stub, 0), best = ~0ull;
  nb_pf_pte = (uint32_t)&pt_test[0];
  nb_pf_va = TEST_VA;
  for (uint32_t t = 0; t < trials; t++) {
    nb_pf_count = 0;
    nb_pf_bad = 0;
    nb_edx_in = 0;
    best = min64(best, timed(nb_pgfault(count, TEST_VA, (uint32_t)&pt_test[0])));
    CHECK_EQ(nb_pf_count, count);
    CHECK_EQ(nb_pf_bad, 0);
    CHECK_EQ(nb_edx_out, count * PF_MARK);
    CHECK_EQ(pt_test[0] & 1, 0);
  }
  gate_restore(14, old);
  report("pgfault", done_iters, 1, nb_pf_count, best, base_ring0);
}

static void op_divzero(void)
{
  uint64_t old = gate_set(0, nb_de_stub, 0), best = ~0ull;
  for (uint32_t t = 0; t < trials; t++) {
    nb_de_count = 0;
    best = min64(best, timed(nb_divzero(count, 0, 0)));
    CHECK_EQ(nb_de_count, count);
  }
  gate_restore(0, old);
  report("divzero", done_iters, 1, nb_de_count, best, base_ring0);
}

static void op_ptemod(void)
{
  uint64_t best = ~0ull;
  volatile uint32_t *page = (volatile uint32_t *)(TEST_VA + 4096);
  for (uint32_t t = 0; t < trials; t++) {
    pt_test[1] = frame_a | 0x3;
    invlpg(page);
    CHECK_EQ(*page, FRAME_A_MARK); /* the mapping is cached before the loop */
    nb_edx_in = frame_a ^ frame_b;
    best = min64(best, timed(nb_ptemod(count, TEST_VA + 4096, (uint32_t)&pt_test[1])));
    CHECK_EQ(*page, (count & 1) ? FRAME_B_MARK : FRAME_A_MARK);
  }
  report("ptemod", done_iters, 0, 0, best, base_ring0);
}

int main(void)
{
  timing = cmdline_ulong("timing", 0) != 0;
  count = cmdline_ulong("count", 1000);
  trials = cmdline_ulong("trials", timing ? 5 : 1);
  parse_only();
  if (count < 1)
    count = 1;
  if (trials < 1)
    trials = 1;
  printf("nanobench: count=%u trials=%u%s%s\n", count, trials, only[0] ? " only=" : "", only);
  if (only[0] && !only_known())
    rt_fail_now("unknown op in only= (known: syscall sysenter in cr8wr call/ret pgfault divzero ptemod none)");
  paging_on();
  lapic_enable(0xff);
  baselines();
  if (selected("syscall")) op_syscall();
  if (selected("sysenter")) op_sysenter();
  if (selected("in")) op_in();
  if (selected("cr8wr")) op_cr8wr();
  if (selected("call/ret")) op_callret();
  if (selected("pgfault")) op_pgfault();
  if (selected("divzero")) op_divzero();
  if (selected("ptemod")) op_ptemod();
  rt_finish();
}
