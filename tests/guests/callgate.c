/* callgate: far CALL and JMP through 32-bit call gates (SDM vol. 3 5.8):
 *   ring 3 -> ring 0 through a DPL-3 gate with 2 parameters: the ring-0 stack
 *   from the TSS (ESP0), the frame (EIP, CS, the 2 parameters copied from the
 *   ring-3 stack in order, ESP, SS), CS/SS/CPL in the handler, and RETF 8
 *   back to ring 3 with the parameters released from the ring-3 stack;
 *   ring 0 -> ring 0 through a gate (no stack switch, no parameters);
 *   JMP through a gate in ring 0;
 *   faults: a DPL-0 gate from ring 3 (#GP(gate)), a gate not present
 *   (#NP(gate)), a JMP from ring 3 through a gate to ring 0 (#GP(code
 *   segment): a JMP never changes privilege). */
#include "rt.h"

#define SEL_GATE_USER 0x30   /* DPL 3, 2 parameters -> ring 0 cg_inner */
#define SEL_GATE_KERNEL 0x38 /* DPL 0 -> ring 0 cg_same */
#define SEL_GATE_JMP 0x40    /* DPL 0 -> ring 0 cg_jmp */
#define SEL_GATE_ABSENT 0x48 /* DPL 3, not present */

static uint64_t gdt[10] __attribute__((aligned(8)));

volatile uint32_t cg_frame[6], cg_inner_esp, cg_inner_cs, cg_inner_ss;
volatile uint32_t cg_same_frame[2], cg_same_esp, cg_same_cs;
volatile uint32_t cg_jmp_cs, cg_jmp_back;
volatile uint32_t u_esp_before, u_esp_after, u_cs_after;
extern char cg_inner[], cg_same[], cg_jmp[], cg_ret3[], cg_ret0[], cg_jmp_done[];

__asm__(".text\n"
        ".globl cg_inner\n"
        "cg_inner:\n"
        "  movl %esp, cg_inner_esp\n"
        "  movl %cs, %eax\n"
        "  movl %eax, cg_inner_cs\n"
        "  movl %ss, %eax\n"
        "  movl %eax, cg_inner_ss\n"
        "  movl 0(%esp), %eax\n  movl %eax, cg_frame+0\n"
        "  movl 4(%esp), %eax\n  movl %eax, cg_frame+4\n"
        "  movl 8(%esp), %eax\n  movl %eax, cg_frame+8\n"
        "  movl 12(%esp), %eax\n  movl %eax, cg_frame+12\n"
        "  movl 16(%esp), %eax\n  movl %eax, cg_frame+16\n"
        "  movl 20(%esp), %eax\n  movl %eax, cg_frame+20\n"
        "  lret $8\n"
        ".globl cg_same\n"
        "cg_same:\n"
        "  movl %esp, cg_same_esp\n"
        "  movl %cs, %eax\n"
        "  movl %eax, cg_same_cs\n"
        "  movl 0(%esp), %eax\n  movl %eax, cg_same_frame+0\n"
        "  movl 4(%esp), %eax\n  movl %eax, cg_same_frame+4\n"
        "  lret\n"
        ".globl cg_jmp\n"
        "cg_jmp:\n"
        "  movl %cs, %eax\n"
        "  movl %eax, cg_jmp_cs\n"
        "  jmp *cg_jmp_back\n");

static uint64_t call_gate(void *target, unsigned dpl, unsigned params, int present)
{
  uint32_t off = (uint32_t)target;
  return (off & 0xffff) | (uint64_t)SEL_KCODE << 16 | (uint64_t)params << 32 |
         (uint64_t)((present ? 0x80 : 0) | dpl << 5 | 0xc) << 40 | (uint64_t)(off >> 16) << 48;
}

static void setup(void)
{
  struct __attribute__((packed)) { uint16_t lim; uint32_t base; } d;
  __asm__ volatile("sgdt %0" : "=m"(d));
  memcpy(gdt, (void *)d.base, 6 * 8);
  gdt[SEL_GATE_USER >> 3] = call_gate(cg_inner, 3, 2, 1);
  gdt[SEL_GATE_KERNEL >> 3] = call_gate(cg_same, 0, 0, 1);
  gdt[SEL_GATE_JMP >> 3] = call_gate(cg_jmp, 0, 0, 1);
  gdt[SEL_GATE_ABSENT >> 3] = call_gate(cg_same, 3, 0, 0);
  d.lim = sizeof gdt - 1;
  d.base = (uint32_t)gdt;
  __asm__ volatile("lgdt %0" : : "m"(d));
}

static void user_call(void)
{
  uint32_t before, after, cs;
  __asm__ volatile("movl %%esp, %0\n\t"
                   "pushl $0x2222\n\tpushl $0x1111\n\t"
                   "lcall $0x33, $0\n"
                   ".globl cg_ret3\ncg_ret3:\n\t"
                   "movl %%esp, %1\n\t"
                   "movl %%cs, %2"
                   : "=&b"(before), "=&c"(after), "=&d"(cs) : : "eax", "memory");
  u_esp_before = before;
  u_esp_after = after;
  u_cs_after = cs;
}
static void user_call_kernel_gate(void) { __asm__ volatile("lcall $0x3b, $0" ::: "eax", "memory"); }
static void user_call_absent_gate(void) { __asm__ volatile("lcall $0x4b, $0" ::: "eax", "memory"); }
static void user_jump_gate(void) { __asm__ volatile("ljmp $0x33, $0" ::: "eax", "memory"); }

int main(void)
{
  setup();
  struct trap_info ti;

  /* Ring 3 -> ring 0 with two parameters, and back. */
  int v = trap_call(user_call, 1, &ti);
  CHECK_EQ(v, -1);
  printf("ring 3 -> 0: handler CS 0x%x SS 0x%x, ESP0 - ESP %u\n", cg_inner_cs & 0xffff, cg_inner_ss & 0xffff,
         rt_tss.esp0 - cg_inner_esp);
  printf("ring 3 -> 0: frame EIP %s CS 0x%x params 0x%x 0x%x, ESP %s SS 0x%x\n",
         cg_frame[0] == (uint32_t)cg_ret3 ? "= return" : "wrong", cg_frame[1], cg_frame[2], cg_frame[3],
         cg_frame[4] == u_esp_before - 8 ? "= caller's after the pushes" : "wrong", cg_frame[5]);
  printf("ring 3 -> 0: back in CS 0x%x, parameters released %s\n", u_cs_after & 0xffff,
         u_esp_after == u_esp_before ? "yes" : "no");
  CHECK_EQ(cg_inner_cs & 0xffff, SEL_KCODE);
  CHECK_EQ(cg_inner_ss & 0xffff, SEL_KDATA);
  CHECK_EQ(rt_tss.esp0 - cg_inner_esp, 24);
  CHECK_EQ(cg_frame[0], (uint32_t)cg_ret3);
  CHECK_EQ(cg_frame[1], SEL_UCODE);
  CHECK_EQ(cg_frame[2], 0x1111);
  CHECK_EQ(cg_frame[3], 0x2222);
  CHECK_EQ(cg_frame[4], u_esp_before - 8);
  CHECK_EQ(cg_frame[5], SEL_UDATA);
  CHECK_EQ(u_cs_after & 0xffff, SEL_UCODE);
  CHECK_EQ(u_esp_after, u_esp_before);

  /* Ring 0 -> ring 0: no stack switch. */
  uint32_t esp;
  __asm__ volatile("movl %%esp, %0\n\tlcall $0x38, $0\n.globl cg_ret0\ncg_ret0:" : "=&b"(esp) : : "eax", "memory");
  printf("ring 0 -> 0: handler CS 0x%x, ESP %s, frame EIP %s CS 0x%x\n", cg_same_cs & 0xffff,
         cg_same_esp == esp - 8 ? "= caller's - 8" : "wrong", cg_same_frame[0] == (uint32_t)cg_ret0 ? "= return" : "wrong",
         cg_same_frame[1]);
  CHECK_EQ(cg_same_esp, esp - 8);
  CHECK_EQ(cg_same_frame[0], (uint32_t)cg_ret0);
  CHECK_EQ(cg_same_frame[1], SEL_KCODE);

  /* JMP through a gate in ring 0. */
  cg_jmp_back = (uint32_t)cg_jmp_done;
  __asm__ volatile("ljmp $0x40, $0\n.globl cg_jmp_done\ncg_jmp_done:" ::: "eax", "memory");
  printf("jmp through a gate: target CS 0x%x\n", cg_jmp_cs & 0xffff);
  CHECK_EQ(cg_jmp_cs & 0xffff, SEL_KCODE);

  /* Faults. */
  v = trap_call(user_call_kernel_gate, 1, &ti);
  printf("ring 3 call through a DPL 0 gate: vector %d error 0x%x\n", v, ti.err);
  CHECK_EQ(v, 13);
  CHECK_EQ(ti.err, SEL_GATE_KERNEL);
  v = trap_call(user_call_absent_gate, 1, &ti);
  printf("ring 3 call through a gate not present: vector %d error 0x%x\n", v, ti.err);
  CHECK_EQ(v, 11);
  CHECK_EQ(ti.err, SEL_GATE_ABSENT);
  v = trap_call(user_jump_gate, 1, &ti);
  printf("ring 3 jmp through a gate to ring 0: vector %d error 0x%x\n", v, ti.err);
  CHECK_EQ(v, 13);
  CHECK_EQ(ti.err, SEL_KCODE);
  rt_finish();
}
