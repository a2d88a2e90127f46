/* singlestep: EFLAGS.TF and the flags CLI/STI keep.
 *   A POPF that sets TF: no #DB after it, then a single-step #DB (a trap:
 *   the saved EIP is the next instruction's, DR6.BS set) after each of NOP,
 *   MOV, ADD, a JMP (EIP its target), INC, a CALL (EIP the callee), a RET, a
 *   store, an OUT (an instruction the monitor runs), PUSHF, an AND to the
 *   stack and the POPF that clears TF (TF was set when it started), and none
 *   after that.  The #DB handler (an interrupt gate: TF clear inside it)
 *   counts, records the EIPs and returns with IRET, which restores TF.
 *   MOV SS and POP SS hold the single-step trap back until the instruction
 *   after them has run; INT n with TF set enters its handler with TF clear,
 *   and the trap comes after the instruction that follows the handler's IRET;
 *   a REP MOVSB traps after each iteration (EIP the MOVSB's until the last).
 *   At CPL 0 with IOPL 3 and NT set, CLI and STI change IF only (IOPL and NT
 *   read back by PUSHF). */
#include "rt.h"

#define MAX_TRAPS 32
static volatile uint32_t trap_eip[MAX_TRAPS], trap_bs[MAX_TRAPS], traps;
static volatile uint32_t ss_result;
extern char ss_seq[], ss_fn[];
extern void ss_run(void);

__asm__(".text\n"
        "ss_run:\n"
        "  pushfl\n"
        "  orl $0x100, (%esp)\n"
        "  popfl\n"                  /* TF = 1 from here: no #DB after this POPF */
        "ss_seq:\n"
        "  nop\n"
        "  movl $1, %eax\n"
        "  addl $2, %eax\n"
        "  jmp 1f\n"
        "  ud2\n"
        "1: incl %eax\n"
        "  call ss_fn\n"
        "  movl %eax, ss_result\n"
        "  outb %al, $0x80\n"
        "  pushfl\n"
        "  andl $~0x100, (%esp)\n"
        "  popfl\n"                  /* TF was set when it started: one more #DB */
        "  nop\n"
        "  nop\n"
        "  ret\n"
        "ss_fn:\n"
        "  ret\n");

/* MOV SS, POP SS and INT n under TF (offsets from ms_seq). */
extern char ms_seq[];
extern void ms_run(void);
__asm__(".text\n"
        "ms_run:\n"
        "  pushfl\n"
        "  orl $0x100, (%esp)\n"
        "  popfl\n"
        "ms_seq:\n"
        "  nop\n"                    /* +1 */
        "  movl %ss, %eax\n"         /* +3 */
        "  movl %eax, %ss\n"         /* no trap: held back */
        "  nop\n"                    /* +6 */
        "  pushl %ss\n"              /* +7 */
        "  popl %ss\n"               /* no trap: held back */
        "  nop\n"                    /* +9 */
        "  int $0x31\n"              /* the handler runs with TF clear */
        "  nop\n"
        "  movl $3, %ecx\n"
        "  leal ms_buf, %esi\n"
        "  leal ms_buf+8, %edi\n"
        "  rep movsb\n"               /* a trap after each iteration */
        "  nop\n"
        "  pushfl\n"
        "  andl $~0x100, (%esp)\n"
        "  popfl\n"
        "  ret\n");
static volatile uint32_t int31_tf;
volatile uint8_t ms_buf[16] = {1, 2, 3};
static struct regs *on_int31(struct regs *r)
{
  uint32_t fl;
  __asm__ volatile("pushfl; popl %0" : "=r"(fl));
  int31_tf = (fl >> 8) & 1;
  return r;
}

static struct regs *on_db(struct regs *r)
{
  uint32_t dr6;
  __asm__ volatile("mov %%dr6, %0" : "=r"(dr6));
  if (traps < MAX_TRAPS) {
    trap_eip[traps] = r->eip;
    trap_bs[traps] = (dr6 >> 14) & 1;
  }
  traps++;
  __asm__ volatile("mov %0, %%dr6" : : "r"(0u));
  return r;
}

static void describe(uint32_t eip)
{
  if (eip >= (uint32_t)ss_fn && eip < (uint32_t)ss_fn + 1)
    printf(" ss_fn");
  else
    printf(" +%u", (unsigned)(eip - (uint32_t)ss_seq));
}

static uint32_t flags_after(uint32_t set, int sti)
{
  uint32_t before, after;
  __asm__ volatile("pushfl\n\t"
                   "popl %0\n\t"
                   "pushl %2\n\t"
                   "popfl\n\t"
                   "testl %3, %3\n\t"
                   "jz 1f\n\t"
                   "sti\n\t"
                   "jmp 2f\n"
                   "1: cli\n"
                   "2: pushfl\n\t"
                   "popl %1\n\t"
                   "pushl %0\n\t"
                   "popfl"
                   : "=&r"(before), "=&r"(after)
                   : "r"(set), "r"(sti)
                   : "memory", "cc");
  return after;
}

int main(void)
{
  pic_init(0x20, 0x28);  /* all IRQs masked: flags_after's STI must not let the BIOS's timer in */
  isr_set(1, on_db);
  __asm__ volatile("mov %0, %%dr6" : : "r"(0u));
  ss_run();
  printf("single-step #DBs: %u, result %u\n", (unsigned)traps, (unsigned)ss_result);
  printf("EIPs after each stepped instruction:");
  for (uint32_t i = 0; i < traps && i < MAX_TRAPS; i++) describe(trap_eip[i]);
  printf("\nDR6.BS:");
  for (uint32_t i = 0; i < traps && i < MAX_TRAPS; i++) printf(" %u", (unsigned)trap_bs[i]);
  printf("\n");
  CHECK_EQ(traps, 12);
  CHECK_EQ(ss_result, 4);
  CHECK_EQ(trap_eip[0], (uint32_t)ss_seq + 1);
  for (uint32_t i = 0; i < 12; i++) CHECK_EQ(trap_bs[i], 1);
  uint32_t eflags;
  __asm__ volatile("pushfl; popl %0" : "=r"(eflags));
  printf("TF after the sequence: %u\n", (unsigned)((eflags >> 8) & 1));
  CHECK_EQ((eflags >> 8) & 1, 0);

  const uint32_t before_ms = traps;
  isr_set(0x31, on_int31);
  ms_run();
  printf("MOV SS, POP SS, INT n under TF: %u #DBs at", (unsigned)(traps - before_ms));
  for (uint32_t i = before_ms; i < traps && i < MAX_TRAPS; i++) printf(" +%u", (unsigned)(trap_eip[i] - (uint32_t)ms_seq));
  printf("; TF in the INT handler %u\n", (unsigned)int31_tf);
  CHECK_EQ(int31_tf, 0);
  CHECK_EQ(ms_buf[8] + ms_buf[9] + ms_buf[10], 6);

  /* IF clear in the values popped, so no interrupt sees NT set. */
  const uint32_t cli_iopl_nt = flags_after(0x3002 | 0x4000, 0);
  const uint32_t sti_iopl = flags_after(0x3002, 1);
  printf("CLI with IOPL 3 and NT: IOPL %u NT %u IF %u; STI with IOPL 3: IOPL %u NT %u IF %u\n",
         (unsigned)((cli_iopl_nt >> 12) & 3), (unsigned)((cli_iopl_nt >> 14) & 1), (unsigned)((cli_iopl_nt >> 9) & 1),
         (unsigned)((sti_iopl >> 12) & 3), (unsigned)((sti_iopl >> 14) & 1), (unsigned)((sti_iopl >> 9) & 1));
  CHECK_EQ((cli_iopl_nt >> 12) & 7, 7);
  CHECK_EQ((cli_iopl_nt >> 9) & 1, 0);
  CHECK_EQ((sti_iopl >> 12) & 7, 3);
  CHECK_EQ((sti_iopl >> 9) & 1, 1);
  rt_finish();
}
