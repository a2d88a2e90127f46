/* opsize16: far transfers with a 16-bit operand size (0x66) in 32-bit code,
 * which push and pop words and leave a 16-bit EIP, so the code runs below
 * 64 KiB: a stub assembled here is copied to 0x7000 and entered from C.
 *   o16 far CALL (ptr16:16) and o16 RETF at the same privilege: the 4-byte
 *   frame (IP, CS), SP before and after;
 *   o16 IRET at the same privilege (FLAGS, CS, IP words);
 *   o16 IRET and o16 RETF to ring 3 (SP and SS popped as words too);
 *   o16 PUSH/POP of segment registers (a word each);
 *   o16 near CALL/RET (an IP word), o16 Jcc, and an o16 JMP whose target
 *   wraps past 64 KiB (to a landing copied to 0x1000);
 *   LOOP and JCXZ with a 16-bit address size (CX as the counter). */
#include "rt.h"

#define STUB 0x7000u

volatile uint32_t s_sp_target, s_frame, s_sp_after_call, s_sp_before_iret, s_sp_after_iret;
volatile uint32_t s_r3_esp, s_r3_cs, s_r3_ss, s_r3b_esp, s_r3b_cs;
volatile uint32_t s_e_sp_after, s_e_sp_in, s_e_ret_ip, s_f_result, s_g_result;
extern char stub16_start[], stub16_end[], entry_a[], entry_b[], entry_c[], entry_d[], far_target[], a_return[];
extern char entry_e[], e_ret[], entry_f[], entry_g[], landing_start[], landing_end[];

#define AT(label) "(" #label " - stub16_start + 0x7000)"
__asm__(".pushsection .rodata.stub16, \"a\"\n"
        ".globl stub16_start\nstub16_start:\n"
        ".globl entry_a\nentry_a:\n"
        "  lcallw $0x08, $" AT(far_target) "\n"
        ".globl a_return\na_return:\n"
        "  movl %esp, s_sp_after_call\n"
        "  ret\n"
        ".globl far_target\nfar_target:\n"
        "  movl %esp, s_sp_target\n"
        "  movl (%esp), %eax\n"
        "  movl %eax, s_frame\n"
        "  lretw\n"
        ".globl entry_b\nentry_b:\n"
        "  pushfw\n"
        "  pushw %cs\n"
        "  pushw $" AT(b_after) "\n"
        "  movl %esp, s_sp_before_iret\n"
        "  iretw\n"
        "b_after:\n"
        "  movl %esp, s_sp_after_iret\n"
        "  ret\n"
        ".globl entry_c\nentry_c:\n"
        "  pushw $0x23\n"
        "  pushw $0x7ff0\n"
        "  pushfw\n"
        "  pushw $0x1b\n"
        "  pushw $" AT(c_ring3) "\n"
        "  iretw\n"
        "c_ring3:\n"
        "  movw $0x23, %ax\n"
        "  movw %ax, %ds\n"
        "  movl %esp, s_r3_esp\n"
        "  movl %cs, %eax\n"
        "  movl %eax, s_r3_cs\n"
        "  movl %ss, %eax\n"
        "  movl %eax, s_r3_ss\n"
        "  int $0x81\n"
        ".globl entry_d\nentry_d:\n"
        "  pushw $0x23\n"
        "  pushw $0x7fe0\n"
        "  pushw $0x1b\n"
        "  pushw $" AT(d_ring3) "\n"
        "  lretw\n"
        "d_ring3:\n"
        "  movw $0x23, %ax\n"
        "  movw %ax, %ds\n"
        "  movl %esp, s_r3b_esp\n"
        "  movl %cs, %eax\n"
        "  movl %eax, s_r3b_cs\n"
        "  int $0x81\n"
        ".globl entry_e\nentry_e:\n"              /* callw rel16, retw */
        "  .byte 0x66, 0xe8\n"
        "  .word e_sub - e_ret\n"
        ".globl e_ret\ne_ret:\n"
        "  movl %esp, s_e_sp_after\n"
        "  ret\n"
        "e_sub:\n"
        "  movl %esp, s_e_sp_in\n"
        "  movzwl (%esp), %eax\n"
        "  movl %eax, s_e_ret_ip\n"
        "  .byte 0x66, 0xc3\n"
        ".globl entry_f\nentry_f:\n"              /* o16 je rel8: taken, then not taken */
        "  xorl %eax, %eax\n"
        "  .byte 0x66, 0x74, f_taken - 1f\n"
        "1: movl $1, s_f_result\n"
        "  ret\n"
        "f_taken:\n"
        "  cmpl $1, %eax\n"
        "  .byte 0x66, 0x74, f_wrong - 2f\n"
        "2: movl $2, s_f_result\n"
        "  ret\n"
        "f_wrong:\n"
        "  movl $3, s_f_result\n"
        "  ret\n"
        ".globl entry_g\nentry_g:\n"              /* jmpw whose target wraps past 64 KiB to 0x1000 */
        "  .byte 0x66, 0xe9\n"
        "  .word (0x1000 - (3f - stub16_start + 0x7000)) & 0xffff\n"
        "3: movl $0xbad, s_g_result\n"
        "  ret\n"
        ".globl stub16_end\nstub16_end:\n"
        ".globl landing_start\nlanding_start:\n"  /* copied to 0x1000 */
        "  movl $0x600d, s_g_result\n"
        "  ret\n"
        ".globl landing_end\nlanding_end:\n"
        ".popsection\n");

static uint32_t low(char *label) { return STUB + (uint32_t)(label - stub16_start); }

static uint32_t g_entry;
static void run_stub(void) { ((void (*)(void))g_entry)(); }

int main(void)
{
  memcpy((void *)STUB, stub16_start, (size_t)(stub16_end - stub16_start));
  struct trap_info ti;

  ((void (*)(void))low(entry_a))();
  printf("o16 call far: frame IP %s CS 0x%x, SP in target = after return - 4: %s\n",
         (s_frame & 0xffff) == (low(a_return) & 0xffff) ? "= return" : "wrong", s_frame >> 16,
         s_sp_target == s_sp_after_call - 4 ? "yes" : "no");
  CHECK_EQ(s_frame & 0xffff, low(a_return));
  CHECK_EQ(s_frame >> 16, SEL_KCODE);
  CHECK_EQ(s_sp_target, s_sp_after_call - 4);

  ((void (*)(void))low(entry_b))();
  printf("o16 iret, same privilege: SP after = before + 6: %s\n",
         s_sp_after_iret == s_sp_before_iret + 6 ? "yes" : "no");
  CHECK_EQ(s_sp_after_iret, s_sp_before_iret + 6);

  uint32_t before, during, after, pushed;
  __asm__ volatile("movl %%esp, %0\n\tpushw %%ds\n\tmovl %%esp, %1\n\tmovzwl (%%esp), %3\n\t"
                   "popw %%es\n\tmovl %%esp, %2"
                   : "=&r"(before), "=&r"(during), "=&r"(after), "=&r"(pushed) : : "memory");
  printf("o16 push ds / pop es: ESP -%u then +%u, word 0x%x\n", before - during, after - during, pushed);
  CHECK_EQ(before - during, 2);
  CHECK_EQ(after, before);
  CHECK_EQ(pushed, SEL_KDATA);

  ((void (*)(void))low(entry_e))();
  printf("o16 near call/ret: pushed IP %s, SP in callee = after - 2: %s\n",
         s_e_ret_ip == (low(e_ret) & 0xffff) ? "= return" : "wrong", s_e_sp_in == s_e_sp_after - 2 ? "yes" : "no");
  CHECK_EQ(s_e_ret_ip, low(e_ret));
  CHECK_EQ(s_e_sp_in, s_e_sp_after - 2);
  ((void (*)(void))low(entry_f))();
  printf("o16 je: taken then not taken: %s\n", s_f_result == 2 ? "yes" : "no");
  CHECK_EQ(s_f_result, 2);
  memcpy((void *)0x1000, landing_start, (size_t)(landing_end - landing_start));
  ((void (*)(void))low(entry_g))();
  printf("o16 jmp past 64 KiB wraps to 0x1000: %s\n", s_g_result == 0x600d ? "yes" : "no");
  CHECK_EQ(s_g_result, 0x600d);

  /* A 16-bit address size: LOOP and JCXZ count in CX, ECX's upper half stays. */
  uint32_t ecx = 0x12340003, n = 0, r = 0;
  __asm__ volatile("1: incl %1\n\t.byte 0x67, 0xe2, 1b - 2f\n2:" : "+c"(ecx), "+r"(n));
  __asm__ volatile("movl $0x12340000, %%ecx\n\t.byte 0x67, 0xe3, 1f - 2f\n"
                   "2: movl $1, %0\n\tjmp 3f\n1: movl $2, %0\n3:" : "=r"(r) : : "ecx");
  printf("a16 loop: %u iterations, ECX 0x%x; a16 jcxz with CX 0: %s\n", n, ecx, r == 2 ? "taken" : "not taken");
  CHECK_EQ(n, 3);
  CHECK_EQ(ecx, 0x12340000);
  CHECK_EQ(r, 2);

  g_entry = low(entry_c);
  int v = trap_call(run_stub, 0, &ti);
  printf("o16 iret to ring 3: returned %d, ESP 0x%x CS 0x%x SS 0x%x\n", v, s_r3_esp, s_r3_cs & 0xffff,
         s_r3_ss & 0xffff);
  CHECK_EQ(v, -1);
  CHECK_EQ(s_r3_esp, 0x7ff0);
  CHECK_EQ(s_r3_cs & 0xffff, SEL_UCODE);
  CHECK_EQ(s_r3_ss & 0xffff, SEL_UDATA);

  g_entry = low(entry_d);
  v = trap_call(run_stub, 0, &ti);
  printf("o16 retf to ring 3: returned %d, ESP 0x%x CS 0x%x\n", v, s_r3b_esp, s_r3b_cs & 0xffff);
  CHECK_EQ(v, -1);
  CHECK_EQ(s_r3b_esp, 0x7fe0);
  CHECK_EQ(s_r3b_cs & 0xffff, SEL_UCODE);
  rt_finish();
}
