/* smc: self-modifying and generated code.  Code written then executed in the
 * same page and across pages, with and without an intervening jump, patched
 * return sites, a loop patching its own body, generated code in a data buffer
 * (rewritten many times), and code written through a different linear alias. */
#include "rt.h"

uint32_t smc_same_nojump(uint32_t v);
uint32_t smc_same_jump(uint32_t v);
uint32_t smc_loop(uint32_t n);
uint32_t smc_retpatch(uint32_t v);
uint32_t smc_cross_jump(uint32_t v);
uint32_t smc_cross_fall(uint32_t v);
uint32_t smc_straddle(uint32_t v);
extern char smc_page2[];

static uint8_t codebuf[3 * 4096] __attribute__((aligned(4096)));
typedef uint32_t (*fn0)(void);
typedef uint32_t (*fn1)(uint32_t);

/* emit "movl $imm, %eax; ret" */
static void emit_ret_imm(uint8_t *p, uint32_t imm)
{
  p[0] = 0xb8;
  memcpy(p + 1, &imm, 4);
  p[5] = 0xc3;
}
static void barrier(void) { __asm__ volatile("" ::: "memory"); }

static void test_patched_text(void)
{
  static const uint32_t vals[] = { 1, 0xdeadbeef, 0x80000000, 7, 0 };
  for (unsigned i = 0; i < 5; i++) {
    CHECK_EQ(smc_same_nojump(vals[i]), vals[i]);
    CHECK_EQ(smc_same_jump(vals[i] ^ 0x5555), vals[i] ^ 0x5555);
    CHECK_EQ(smc_retpatch(vals[i] + 3), vals[i] + 3);
    CHECK_EQ(smc_cross_jump(vals[i] + 1), vals[i] + 1);
    CHECK_EQ(smc_cross_fall(vals[i] + 2), vals[i] + 2);
    CHECK_EQ(smc_straddle(vals[i] ^ 0xa5a5a5a5), vals[i] ^ 0xa5a5a5a5);
  }
  /* layout checks (through volatiles: GCC assumes function symbols are aligned) */
  volatile uint32_t page2 = (uint32_t)smc_page2, fall = (uint32_t)smc_cross_fall, strad = (uint32_t)smc_straddle;
  CHECK_EQ(page2 & 0xfff, 0);
  CHECK_EQ((fall + 9) & 0xfff, 0);
  CHECK_EQ((strad + 11) & 0xfff, 0);
  printf("patched .text: next insn (no jump), after jump, return site, cross page (jump, fall-through, straddling)\n");
  CHECK_EQ(smc_loop(1), 1);
  CHECK_EQ(smc_loop(1000), 500500);
  CHECK_EQ(smc_loop(100000), 705082704u); /* 5000050000 mod 2^32 */
  printf("loop patching its own add immediate: ok\n");
}

static void test_codebuf(void)
{
  /* rewrite the same function many times, calling it in between */
  uint32_t sum = 0, want = 0;
  for (uint32_t i = 0; i < 2000; i++) {
    uint32_t imm = i * 2654435761u;
    emit_ret_imm(codebuf, imm);
    barrier();
    sum += ((fn0)codebuf)();
    want += imm;
  }
  CHECK_EQ(sum, want);
  /* change the instruction kind, not just the immediate: add/sub/xor on the argument */
  static const uint8_t add5[] = { 0x8b, 0x44, 0x24, 0x04, 0x83, 0xc0, 0x05, 0xc3 }; /* mov 4(%esp),%eax; add $5; ret */
  static const uint8_t neg_[] = { 0x8b, 0x44, 0x24, 0x04, 0xf7, 0xd8, 0xc3 };       /* mov; neg %eax; ret */
  static const uint8_t shl3[] = { 0x8b, 0x44, 0x24, 0x04, 0xc1, 0xe0, 0x03, 0xc3 }; /* mov; shl $3; ret */
  memcpy(codebuf + 100, add5, sizeof add5);
  barrier();
  CHECK_EQ(((fn1)(codebuf + 100))(10), 15);
  memcpy(codebuf + 100, neg_, sizeof neg_);
  barrier();
  CHECK_EQ(((fn1)(codebuf + 100))(10), (uint32_t)-10);
  memcpy(codebuf + 100, shl3, sizeof shl3);
  barrier();
  CHECK_EQ(((fn1)(codebuf + 100))(10), 80);
  /* a function spanning two pages of the buffer, second page rewritten */
  uint8_t *p = codebuf + 4096 - 4;
  static const uint8_t span[] = { 0x8b, 0x44, 0x24, 0x04, 0x83, 0xc0, 0x01, 0x83, 0xc0, 0x01, 0xc3 }; /* +1 +1 */
  memcpy(p, span, sizeof span);
  barrier();
  CHECK_EQ(((fn1)p)(40), 42);
  p[9] = 0x10; /* second add becomes +16 (on the second page) */
  barrier();
  CHECK_EQ(((fn1)p)(40), 57);
  p[6] = 0x20; /* first add becomes +32 (first page) */
  barrier();
  CHECK_EQ(((fn1)p)(40), 88);
  printf("generated code buffer: 2000 rewrites, opcode changes, function spanning pages\n");
}

/* ---- write through one linear alias, execute through another ---- */
static volatile uint32_t pd[1024] __attribute__((aligned(4096)));
static volatile uint32_t pt[1024] __attribute__((aligned(4096)));
#define ALIAS_VA 0x40000000u
static void test_alias(void)
{
  for (uint32_t i = 0; i < 4; i++)
    pd[i] = (i << 22) | 0x83; /* 4 MiB identity, RW, present */
  pd[ALIAS_VA >> 22] = (uint32_t)pt | 0x3;
  pt[0] = ((uint32_t)codebuf + 8192) | 0x3;
  write_cr4(read_cr4() | CR4_PSE);
  write_cr3((uint32_t)pd);
  write_cr0(read_cr0() | CR0_PG);
  uint8_t *w = (uint8_t *)ALIAS_VA;
  fn0 x = (fn0)(codebuf + 8192);
  uint32_t sum = 0, want = 0;
  for (uint32_t i = 0; i < 500; i++) {
    emit_ret_imm(w, i ^ 0x31337);
    barrier();
    sum += x();
    want += i ^ 0x31337;
  }
  CHECK_EQ(sum, want);
  /* and the other way round: execute the alias after writing the identity view */
  fn0 xa = (fn0)ALIAS_VA;
  emit_ret_imm(codebuf + 8192, 0xfeedface);
  barrier();
  CHECK_EQ(xa(), 0xfeedface);
  emit_ret_imm(codebuf + 8192, 0x0badf00d);
  barrier();
  CHECK_EQ(xa(), 0x0badf00d);
  write_cr0(read_cr0() & ~CR0_PG);
  printf("paging alias: write via one virtual address, execute via another\n");
}

int main(void)
{
  printf("smc guest\n");
  test_patched_text();
  test_codebuf();
  test_alias();
  rt_finish();
}
