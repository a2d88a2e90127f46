/* iobreak: I/O breakpoints (SDM 17.2.4-17.2.5: DR7 R/W 10 with CR4.DE): a
 *   #DB trap after an OUT or IN whose ports overlap DR2's (LEN 1: port 0x80;
 *   LEN 2: 0x80-0x81, hit by an OUT to 0x81 and a word IN from 0x7f), the
 *   saved EIP the next instruction's and DR6.B2 set; none for other ports.
 *   (Instruction breakpoints and the DR4/DR5 rules: debugreg.c.) */
#include "rt.h"

#define MAX_TRAPS 8
static volatile uint32_t trap_eip[MAX_TRAPS], trap_dr6[MAX_TRAPS], traps;
extern char bp_io_after[];

static struct regs *on_db(struct regs *r)
{
  uint32_t dr6;
  __asm__ volatile("mov %%dr6, %0" : "=r"(dr6));
  if (traps < MAX_TRAPS) {
    trap_eip[traps] = r->eip;
    trap_dr6[traps] = dr6 & 0xe00f;
  }
  traps++;
  __asm__ volatile("mov %0, %%dr6" : : "r"(0u));
  return r;
}

static void set_dr7(uint32_t v) { __asm__ volatile("mov %0, %%dr7" : : "r"(v) : "memory"); }
static void out_port(uint16_t port) { __asm__ volatile("outb %%al, %%dx" : : "a"(0), "d"(port)); }
static void in_port_w(uint16_t port)
{
  uint16_t v;
  __asm__ volatile("inw %%dx, %%ax" : "=a"(v) : "d"(port));
  (void)v;
}

static void describe(const char *what, uint32_t first, uint32_t n)
{
  printf("%s: %u #DB", what, (unsigned)n);
  for (uint32_t i = first; i < first + n && i < MAX_TRAPS; i++)
    printf(" [%s DR6 0x%x]", trap_eip[i] == (uint32_t)bp_io_after ? "after the OUT" : "elsewhere",
           (unsigned)trap_dr6[i]);
  printf("\n");
}

int main(void)
{
  isr_set(1, on_db);
  __asm__ volatile("mov %0, %%dr6" : : "r"(0u));
  uint32_t first = 0;
  /* I/O breakpoints: CR4.DE, DR2 = port 0x80, LEN 1 then LEN 2. */
  write_cr4(read_cr4() | 0x8);
  __asm__ volatile("mov %0, %%dr2" : : "r"(0x80u));
  set_dr7(0x10 | (2u << 24));
  __asm__ volatile("movw $0x80, %%dx\n\t"
                   "bp_io_out: outb %%al, %%dx\n\t"
                   "bp_io_after: nop"
                   : : "a"(0) : "edx");
  out_port(0x81);
  describe("I/O DR2=0x80 LEN 1, OUT 0x80 then 0x81", first, traps - first);
  CHECK_EQ(traps - first, 1);
  CHECK_EQ(trap_eip[first], (uint32_t)bp_io_after);
  CHECK_EQ(trap_dr6[first] & 0xf, 4);
  first = traps;
  set_dr7(0x10 | (2u << 24) | (1u << 26));
  out_port(0x81);
  in_port_w(0x7f);
  out_port(0x82);
  describe("I/O DR2=0x80 LEN 2, OUT 0x81, IN word 0x7f, OUT 0x82", first, traps - first);
  CHECK_EQ(traps - first, 2);
  set_dr7(0);
  rt_finish();
}
