/* debugreg: the debug registers' breakpoints (SDM 17.2-17.3).
 *   Instruction breakpoints (R/W 00): a #DB fault before the instruction at
 *   the linear address in DRn (the saved EIP is the instruction's, DR6.Bn
 *   set), enabled by Ln or Gn; the handler sets RF in the saved EFLAGS, so
 *   the instruction then runs once without faulting, and faults again the
 *   next time.  Reached in the middle of a block, as a loop's body (a
 *   chained jump), through an indirect call, and from ring 3; none while
 *   disabled.
 *   Data breakpoints (R/W 01 writes, 11 reads and writes): a #DB trap after
 *   the instruction whose access overlaps DRn's range (the saved EIP the next
 *   instruction's, DR6.Bn), none for reads of a write breakpoint or accesses
 *   beside the range; a REP STOSB traps after each iteration that hits (EIP
 *   the STOSB's, ECX counted down that far) and then completes.
 *   (I/O breakpoints: iobreak.c.)
 *   DR4/DR5 are DR6/DR7 while CR4.DE is clear and #UD while it is set; DR6
 *   and DR7 read back their fixed bits. */
#include "rt.h"

#define MAX_TRAPS 16
static volatile uint32_t trap_eip[MAX_TRAPS], trap_dr6[MAX_TRAPS], trap_cpl[MAX_TRAPS], trap_ecx[MAX_TRAPS], traps;
static volatile uint32_t watched[4] __attribute__((aligned(16)));
static volatile uint8_t stos_buf[8] __attribute__((aligned(8)));
extern char dw_seq[];
static volatile uint32_t loop_sum;
extern char bp_fn[], bp_target[], bp_loop_body[], bp_user_fn[], bp_user_target[];
extern uint32_t bp_fn_call(void);
extern void bp_loop(void);

__asm__(".text\n"
        "bp_fn:\n"
        "  movl $1, %eax\n"
        "bp_target:\n"
        "  addl $2, %eax\n"             /* DR0 points here: in the middle of the block */
        "  ret\n"
        "bp_loop:\n"
        "  movl $5, %ecx\n"
        "bp_loop_body:\n"
        "  addl %ecx, loop_sum\n"
        "  decl %ecx\n"
        "  jnz bp_loop_body\n"
        "  ret\n"
        "bp_user_fn:\n"
        "  nop\n"
        "bp_user_target:\n"
        "  nop\n"
        "  ret\n");

static struct regs *on_db(struct regs *r)
{
  uint32_t dr6;
  __asm__ volatile("mov %%dr6, %0" : "=r"(dr6));
  if (traps < MAX_TRAPS) {
    trap_eip[traps] = r->eip;
    trap_dr6[traps] = dr6 & 0xe00f;
    trap_cpl[traps] = r->cs & 3;
    trap_ecx[traps] = r->ecx;
  }
  traps++;
  __asm__ volatile("mov %0, %%dr6" : : "r"(0u));
  r->eflags |= 0x10000; /* RF: the faulting instruction runs when we return */
  return r;
}

static void set_dr7(uint32_t v) { __asm__ volatile("mov %0, %%dr7" : : "r"(v) : "memory"); }
static void set_dr(int n, uint32_t v)
{
  switch (n) {
    case 0: __asm__ volatile("mov %0, %%dr0" : : "r"(v)); break;
    case 1: __asm__ volatile("mov %0, %%dr1" : : "r"(v)); break;
    case 2: __asm__ volatile("mov %0, %%dr2" : : "r"(v)); break;
    default: __asm__ volatile("mov %0, %%dr3" : : "r"(v)); break;
  }
}

static void describe(const char *what, uint32_t first, uint32_t n)
{
  printf("%s: %u #DB", what, (unsigned)n);
  for (uint32_t i = first; i < first + n && i < MAX_TRAPS; i++) {
    const uint32_t eip = trap_eip[i];
    const char *at = eip == (uint32_t)bp_target        ? "bp_target"
                     : eip == (uint32_t)bp_loop_body   ? "bp_loop_body"
                     : eip == (uint32_t)bp_fn          ? "bp_fn"
                     : eip == (uint32_t)bp_user_target ? "bp_user_target"
                                                       : "elsewhere";
    printf(" [%s DR6 0x%x CPL %u]", at, (unsigned)trap_dr6[i], (unsigned)trap_cpl[i]);
  }
  printf("\n");
}

/* The data accesses (offsets from dw_seq in the transcript). */
static void data_sequence(void)
{
  __asm__ volatile("dw_seq:\n\t"
                   "movl watched, %%eax\n\t"         /* a read: DR0 watches writes */
                   "movl $1, watched+4\n\t"          /* beside the range */
                   "movl $0x11, watched\n\t"         /* DR0 */
                   "nop\n\t"
                   "movl watched+8, %%eax\n\t"       /* covers DR1's word at +10 */
                   "nop\n\t"
                   "movb $0x33, watched+12\n\t"      /* beside it */
                   "movl %0, %%edi\n\t"
                   "movl $8, %%ecx\n\t"
                   "movb $0x22, %%al\n\t"
                   "cld\n\t"
                   "rep stosb\n\t"                   /* DR2's byte at stos_buf+5 */
                   "nop"
                   : : "r"(stos_buf) : "eax", "ecx", "edi", "memory", "cc");
}

static uint32_t run_bp_fn(void)
{
  uint32_t eax;
  __asm__ volatile("call bp_fn" : "=a"(eax) : : "memory", "cc");
  return eax;
}

static uint32_t call_indirect(void (*fn)(void))
{
  uint32_t eax;
  __asm__ volatile("call *%1" : "=a"(eax) : "r"(fn) : "memory", "cc");
  return eax;
}

static void user_code(void) { ((void (*)(void))bp_user_fn)(); }

static uint32_t read_dr(int n)
{
  uint32_t v = 0;
  if (n == 4) __asm__ volatile("mov %%dr4, %0" : "=r"(v));
  else if (n == 5) __asm__ volatile("mov %%dr5, %0" : "=r"(v));
  else if (n == 6) __asm__ volatile("mov %%dr6, %0" : "=r"(v));
  else __asm__ volatile("mov %%dr7, %0" : "=r"(v));
  return v;
}
static void read_dr4(void) { (void)read_dr(4); }

int main(void)
{
  isr_set(1, on_db);
  __asm__ volatile("mov %0, %%dr6" : : "r"(0u));
  uint32_t first = 0;

  /* Disabled: DR0 set, DR7 clear. */
  set_dr(0, (uint32_t)bp_target);
  set_dr7(0);
  uint32_t r = run_bp_fn();
  describe("disabled", first, traps - first);
  CHECK_EQ(traps, 0);
  CHECK_EQ(r, 3);

  /* L0, then G0: one fault per call, RF lets the ADD run. */
  set_dr7(0x1);
  r = run_bp_fn();
  r += run_bp_fn();
  describe("L0, two calls", first, traps - first);
  CHECK_EQ(traps - first, 2);
  CHECK_EQ(r, 6);
  CHECK_EQ(trap_eip[first], (uint32_t)bp_target);
  CHECK_EQ(trap_dr6[first] & 0xf, 1);
  first = traps;
  set_dr7(0x2);
  r = run_bp_fn();
  describe("G0", first, traps - first);
  CHECK_EQ(traps - first, 1);
  CHECK_EQ(r, 3);

  /* DR1 on a loop body: every iteration faults (a chained jump in BT). */
  first = traps;
  set_dr(0, 0);
  set_dr(1, (uint32_t)bp_loop_body);
  set_dr7(0x4);
  loop_sum = 0;
  bp_loop();
  describe("DR1 on a loop body", first, traps - first);
  printf("loop sum %u\n", (unsigned)loop_sum);
  CHECK_EQ(traps - first, 5);
  CHECK_EQ(loop_sum, 15);
  CHECK_EQ(trap_dr6[first] & 0xf, 2);

  /* DR3 on a function's first instruction, reached by an indirect call. */
  first = traps;
  set_dr(1, 0);
  set_dr(3, (uint32_t)bp_fn);
  set_dr7(0x40);
  r = call_indirect((void (*)(void))bp_fn);
  describe("DR3 by an indirect call", first, traps - first);
  CHECK_EQ(traps - first, 1);
  CHECK_EQ(r, 3);
  CHECK_EQ(trap_dr6[first] & 0xf, 8);

  /* From ring 3 (the handler runs at CPL 0 and returns there). */
  first = traps;
  set_dr(3, 0);
  set_dr(2, (uint32_t)bp_user_target);
  set_dr7(0x10);
  struct trap_info ti;
  const int v = trap_call(user_code, 1, &ti);
  describe("DR2 in ring 3", first, traps - first);
  CHECK_EQ(v, -1);
  CHECK_EQ(traps - first, 1);
  CHECK_EQ(trap_cpl[first], 3);
  set_dr7(0);
  set_dr(2, 0);

  /* Data breakpoints: DR0 writes of watched[0] (LEN 4), DR1 reads and
   * writes of the word at watched+10 (LEN 2), DR2 writes of stos_buf[5]. */
  first = traps;
  set_dr(0, (uint32_t)&watched[0]);
  set_dr(1, (uint32_t)&watched[2] + 2);
  set_dr(2, (uint32_t)&stos_buf[5]);
  set_dr7(0x1 | (1u << 16) | (3u << 18) | 0x4 | (3u << 20) | (1u << 22) | 0x10 | (1u << 24));
  data_sequence();
  set_dr7(0);
  printf("data breakpoints: %u #DB", (unsigned)(traps - first));
  for (uint32_t i = first; i < traps && i < MAX_TRAPS; i++)
    printf(" [+%u DR6 0x%x ECX %u]", (unsigned)(trap_eip[i] - (uint32_t)dw_seq), (unsigned)trap_dr6[i],
           (unsigned)trap_ecx[i]);
  printf("\nwatched[0] 0x%x, stos_buf[7] 0x%x\n", (unsigned)watched[0], (unsigned)stos_buf[7]);
  CHECK_EQ(traps - first, 3);
  CHECK_EQ(watched[0], 0x11);
  CHECK_EQ(stos_buf[7], 0x22);
  set_dr(0, 0);
  set_dr(1, 0);
  set_dr(2, 0);

  /* DR4/DR5 with CR4.DE set: #UD; clear: DR6/DR7. */
  write_cr4(read_cr4() | 0x8);
  const int ud = trap_call(read_dr4, 0, &ti);
  printf("MOV from DR4 with CR4.DE: vector %d\n", ud);
  CHECK_EQ(ud, 6);
  write_cr4(read_cr4() & ~0x8u);
  set_dr7(0x1);
  __asm__ volatile("mov %0, %%dr6" : : "r"(0u));
  printf("CR4.DE clear: DR5 0x%x (DR7 0x%x), DR4 0x%x (DR6 0x%x)\n", (unsigned)read_dr(5), (unsigned)read_dr(7),
         (unsigned)read_dr(4), (unsigned)read_dr(6));
  CHECK_EQ(read_dr(5), read_dr(7));
  CHECK_EQ(read_dr(4), read_dr(6));
  set_dr7(0);
  printf("DR7 written 0 reads 0x%x\n", (unsigned)read_dr(7));
  CHECK_EQ(read_dr(7), 0x400);
  rt_finish();
}
