/* lm64exc: the 64-bit IDT.  Exceptions from 64-bit code (#DE, #UD, #GP with
 * an error code, #PF with CR2 and an error code, #BP) and the 64-bit frame
 * (SS:RSP always pushed, RSP aligned to 16 first); gates: not present (#NP),
 * a 16-bit type (#GP), a trap gate leaving IF set; IST stacks (int $2 on an
 * IST gate, a #DF from a stack overflow); compatibility-mode code (32-bit
 * instructions, int n, #DE and a PIT interrupt taken into 64-bit handlers and
 * returned from).  Expected output recorded from qemu-system-x86_64 (-cpu qemu64). */
#include "lm64.h"

extern volatile uint64_t exc_rsp;
extern char exc_div0[], exc_div0_at[], exc_divovf[], exc_divovf_at[], exc_idivovf[], exc_idivovf_at[];
extern char exc_ud2[], exc_ud2_at[], exc_pushds[], exc_pushds_at[], exc_badsel[], exc_badsel_at[];
extern char exc_noncanon[], exc_noncanon_at[], exc_pf_read[], exc_pf_read_at[], exc_pf_write[], exc_pf_write_at[];
extern char exc_int3[], exc_int3_after[], exc_int2[], exc_int2_after[], exc_df[], exc_sti_hlt[], exc_hlt_after[];
extern char exc_compat_call[], compat_work[], compat_div0[], compat_div0_at[];
extern char exc_int50[], exc_int50_at[], exc_int51[], exc_int51_at[], exc_int_if[];

static uint8_t ist1_stack[4096] __attribute__((aligned(16)));
static uint8_t ist2_stack[4096] __attribute__((aligned(16)));

/* Run fn under lm64_try, expect vector vec at the instruction `at`, with the
 * frame a same-CPL exception from 64-bit code has. */
static void fault(const char *what, void *fn, int vec, const void *at)
{
  int v = lm64_try(fn, 0);
  int rip_ok = lm64_last.rip == (uint32_t)at, rsp_ok = lm64_last.rsp == exc_rsp;
  int aligned = lm64_last.frame_at == ((exc_rsp & ~15ull) - 40);
  printf("%s: vector %d error 0x%llx, RIP %s, CS 0x%llx, SS 0x%llx, RSP %s, frame %s\n", what, v, lm64_last.err,
         rip_ok ? "at it" : "elsewhere", lm64_last.cs, lm64_last.ss, rsp_ok ? "as before" : "changed",
         aligned ? "below it, 16-byte aligned" : "elsewhere");
  CHECK_EQ(v, vec);
  CHECK(rip_ok);
  CHECK(rsp_ok);
  CHECK(aligned);
  CHECK_EQ(lm64_last.cs, LM64_KCODE64);
  CHECK_EQ(lm64_last.ss, LM64_KDATA);
}

static void test_faults(void)
{
  fault("#DE divq by 0", exc_div0, 0, exc_div0_at);
  fault("#DE divq 2^64 / 1", exc_divovf, 0, exc_divovf_at);
  fault("#DE idivq INT64_MIN / -1", exc_idivovf, 0, exc_idivovf_at);
  fault("#UD ud2", exc_ud2, 6, exc_ud2_at);
  fault("#UD push %ds (invalid in 64-bit mode)", exc_pushds, 6, exc_pushds_at);
  fault("#GP mov to %fs of selector 0x1f8", exc_badsel, 13, exc_badsel_at);
  CHECK_EQ(lm64_last.err, 0x1f8);
  fault("#GP non-canonical 0x800000000000", exc_noncanon, 13, exc_noncanon_at);
  CHECK_EQ(lm64_last.err, 0);
  fault("#PF read of 0x7ffffffff008", exc_pf_read, 14, exc_pf_read_at);
  printf("  CR2 0x%llx\n", lm64_last.cr2);
  CHECK_EQ(lm64_last.err, 0);
  CHECK_EQ(lm64_last.cr2, 0x7ffffffff008ull);
  fault("#PF write of 0x123456788", exc_pf_write, 14, exc_pf_write_at);
  printf("  CR2 0x%llx\n", lm64_last.cr2);
  CHECK_EQ(lm64_last.err, 2);
  CHECK_EQ(lm64_last.cr2, 0x123456788ull);
}

/* int n through a gate the CPU refuses: vector vec, an error code naming the
 * IDT.  Only its low bits are printed: QEMU 7.2 puts the gate's byte offset
 * in it (vector * 16 + 2), the SDM the vector as an index (vector * 8 + 2). */
static void gate_fault(const char *what, void *fn, int vec, const void *at)
{
  int v = lm64_try(fn, 0);
  printf("%s: vector %d, IDT bit %u, EXT %u, RIP %s, RSP %s\n", what, v, (unsigned)(lm64_last.err >> 1) & 1,
         (unsigned)lm64_last.err & 1, lm64_last.rip == (uint32_t)at ? "at it" : "elsewhere",
         lm64_last.rsp == exc_rsp ? "as before" : "changed");
  CHECK_EQ(v, vec);
  CHECK_EQ(lm64_last.err & 3, 2);
  CHECK_EQ(lm64_last.rip, (uint32_t)at);
  CHECK_EQ(lm64_last.rsp, exc_rsp);
}

/* Gates the CPU refuses to use, and the IF a trap gate leaves set. */
static void test_gates(void)
{
  lm64_gate_access(0x50, 0x0e); /* not present */
  gate_fault("int $0x50, gate not present: #NP", exc_int50, 11, exc_int50_at);
  lm64_gate_access(0x51, 0x86); /* a 16-bit interrupt gate: not valid in long mode */
  gate_fault("int $0x51, 16-bit gate type: #GP", exc_int51, 13, exc_int51_at);
  lm64_gate_access(0x52, 0x8f);
  lm64_action[0x52] = lm64_action[0x53] = LM64_RESUME;
  lm64_call(exc_int_if, 0x52, 0);
  unsigned trap_if = (lm64_last.handler_rflags & EFL_IF) != 0;
  lm64_call(exc_int_if, 0x53, 0);
  unsigned intr_if = (lm64_last.handler_rflags & EFL_IF) != 0;
  printf("IF in the handler with IF set before: trap gate %u, interrupt gate %u\n", trap_if, intr_if);
  CHECK_EQ(trap_if, 1);
  CHECK_EQ(intr_if, 0);
}

static void test_traps(void)
{
  lm64_action[3] = LM64_RESUME;
  for (uint32_t off = 0; off <= 8; off += 8) {
    uint64_t n = lm64_last.count;
    int v = lm64_try(exc_int3, off);
    uint64_t at = (exc_rsp & ~15ull) - 40;
    printf("#BP int3, RSP %s: returned, RIP after it %s, SS:RSP 0x%llx:%s, frame at %s\n",
           off ? "8 off alignment" : "16-byte aligned", lm64_last.rip == (uint32_t)exc_int3_after ? "yes" : "no",
           lm64_last.ss, lm64_last.rsp == exc_rsp ? "as before" : "changed",
           lm64_last.frame_at == at ? "(RSP & ~15) - 40" : "elsewhere");
    CHECK_EQ(v, -1);
    CHECK_EQ(lm64_last.count, n + 1);
    CHECK_EQ(lm64_last.vec, 3);
    CHECK_EQ(lm64_last.rip, (uint32_t)exc_int3_after);
    CHECK_EQ(lm64_last.rsp, exc_rsp);
    CHECK_EQ(lm64_last.frame_at, at);
  }
}

static void test_ist(void)
{
  uint64_t ist1 = (uint32_t)(ist1_stack + sizeof ist1_stack), ist2 = (uint32_t)(ist2_stack + sizeof ist2_stack);
  lm64_tss.ist[0] = ist1;
  lm64_tss.ist[1] = ist2;
  lm64_gate(2, 0, 2);
  lm64_action[2] = LM64_RESUME;
  int v = lm64_try(exc_int2, 0);
  printf("int $2 on an IST2 gate at CPL 0: %s, frame at the top of IST2 %s, RIP after it %s, RSP %s\n",
         v == -1 ? "returned" : "caught", lm64_last.frame_at == ist2 - 40 ? "yes" : "no",
         lm64_last.rip == (uint32_t)exc_int2_after ? "yes" : "no", lm64_last.rsp == exc_rsp ? "as before" : "changed");
  CHECK_EQ(v, -1);
  CHECK_EQ(lm64_last.frame_at, ist2 - 40);
  CHECK_EQ(lm64_last.rsp, exc_rsp);

  /* A stack overflow: #BP, then #PF, cannot push their frames; #DF on IST1 can. */
  lm64_gate(8, 0, 1);
  const uint64_t bad_rsp = 0x40001000; /* PDPT entry 1: not present */
  v = lm64_try(exc_df, (uint32_t)bad_rsp);
  printf("int3 with RSP in unmapped memory: vector %d error 0x%llx, frame at the top of IST1 %s, CR2 in the "
         "page below RSP %s\n",
         v, lm64_last.err, lm64_last.frame_at == ist1 - 40 ? "yes" : "no",
         (lm64_last.cr2 & ~0xfffull) == bad_rsp - 0x1000 ? "yes" : "no");
  CHECK_EQ(v, 8);
  CHECK_EQ(lm64_last.err, 0);
  CHECK_EQ(lm64_last.frame_at, ist1 - 40);
  CHECK_EQ(lm64_last.cr2 & ~0xfffull, bad_rsp - 0x1000);
}

static void test_compat(void)
{
  /* 32-bit code under long mode, called from 64-bit code. */
  uint64_t r = lm64_call(exc_compat_call, (uint32_t)compat_work, 0);
  printf("compatibility mode: 0x40 is inc %%eax (%llu), push takes %llu bytes\n", r & 0xffffffff, r >> 32);
  CHECK_EQ(r, 42 | 4ull << 32);

  /* This C code is compatibility-mode code too: int n from it. */
  lm64_action[0x40] = LM64_RESUME;
  uint32_t esp, after;
  __asm__ volatile("mov %%esp, %0\n\t int $0x40\n1:\t movl $1b, %1" : "=&r"(esp), "=r"(after));
  printf("int $0x40 from compatibility mode: vector 0x%llx, CS 0x%llx, RIP after it %s, SS:RSP 0x%llx:%s\n",
         lm64_last.vec, lm64_last.cs, lm64_last.rip == after ? "yes" : "no", lm64_last.ss,
         lm64_last.rsp == esp ? "ESP as before" : "changed");
  CHECK_EQ(lm64_last.vec, 0x40);
  CHECK_EQ(lm64_last.cs, LM64_KCODE32);
  CHECK_EQ(lm64_last.rip, after);
  CHECK_EQ(lm64_last.rsp, esp);

  /* #DE in 32-bit code, into the 64-bit handler (lm64_try runs 64-bit code, which far-calls it). */
  int v = lm64_try(exc_compat_call, (uint32_t)compat_div0);
  printf("#DE in compatibility mode: vector %d, CS 0x%llx, RIP at the divl %s, RSP %s\n", v, lm64_last.cs,
         lm64_last.rip == (uint32_t)compat_div0_at ? "yes" : "no", lm64_last.rsp == exc_rsp ? "as before" : "changed");
  CHECK_EQ(v, 0);
  CHECK_EQ(lm64_last.cs, LM64_KCODE32);
  CHECK_EQ(lm64_last.rip, (uint32_t)compat_div0_at);
  CHECK_EQ(lm64_last.rsp, exc_rsp);

  /* The PIT's IRQ0, taken in compatibility mode and in 64-bit mode. */
  lm64_action[0x20] = LM64_IRQ;
  pit_periodic(1000);
  pic_unmask(0);
  uint64_t start = lm64_last.count;
  while (lm64_last.count - start < 5)
    sti_hlt();
  cli();
  printf("IRQ0 x5 during sti; hlt in compatibility mode: vector 0x%llx, CS 0x%llx\n", lm64_last.vec, lm64_last.cs);
  CHECK_EQ(lm64_last.vec, 0x20);
  CHECK_EQ(lm64_last.cs, LM64_KCODE32);
  lm64_call(exc_sti_hlt, 0, 0);
  printf("IRQ0 during sti; hlt in 64-bit mode: vector 0x%llx, CS 0x%llx, RIP after the hlt %s\n", lm64_last.vec,
         lm64_last.cs, lm64_last.rip == (uint32_t)exc_hlt_after ? "yes" : "no");
  CHECK_EQ(lm64_last.vec, 0x20);
  CHECK_EQ(lm64_last.cs, LM64_KCODE64);
  CHECK_EQ(lm64_last.rip, (uint32_t)exc_hlt_after);
  pic_mask_all();
}

int main(void)
{
  printf("lm64exc: the 64-bit IDT, IST stacks, compatibility mode\n");
  pic_init(0x20, 0x28); /* all masked: some tests run with IF set */
  lm64_init(0);
  printf("long mode: EFER.LMA=%u, CS 0x%x (compatibility mode)\n", (unsigned)(rdmsr(MSR_EFER) >> 10) & 1,
         ({ uint32_t cs; __asm__ volatile("mov %%cs, %0" : "=r"(cs)); cs; }));
  test_faults();
  test_gates();
  test_traps();
  test_ist();
  test_compat();
  rt_finish();
}
