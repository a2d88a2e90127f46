/* callgate: far CALL and JMP through 32-bit call gates (SDM vol. 3 5.8):
 *   ring 3 -> ring 0 through a DPL-3 gate with 2 parameters: the ring-0 stack
 *   from the TSS (ESP0), the frame (EIP, CS, the 2 parameters copied from the
 *   ring-3 stack in order, ESP, SS), CS/SS/CPL in the handler, and RETF 8
 *   back to ring 3 with the parameters released from the ring-3 stack;
 *   ring 0 -> ring 0 through a gate (no stack switch, no parameters);
 *   JMP through a gate in ring 0;
 *   16-bit call gates (word frames, a 16-bit offset; the code copied below
 *   64 KiB): ring 0 -> 0, and ring 3 -> 0 with two word parameters, RETF 4;
 *   faults: a DPL-0 gate from ring 3 (#GP(gate)), a gate not present
 *   (#NP(gate)), a JMP from ring 3 through a gate to ring 0 (#GP(code
 *   segment): a JMP never changes privilege). */
#include "rt.h"

#define SEL_GATE_USER 0x30   /* DPL 3, 2 parameters -> ring 0 cg_inner */
#define SEL_GATE_KERNEL 0x38 /* DPL 0 -> ring 0 cg_same */
#define SEL_GATE_JMP 0x40    /* DPL 0 -> ring 0 cg_jmp */
#define SEL_GATE_ABSENT 0x48 /* DPL 3, not present */

#define SEL_GATE16_KERNEL 0x50 /* 16-bit, DPL 0 -> cg16_same (low memory) */
#define SEL_GATE16_USER 0x58   /* 16-bit, DPL 3, 2 word parameters -> cg16_inner */
#define STUB 0x7000u

static uint64_t gdt[12] __attribute__((aligned(8)));

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

static uint64_t gate(uint32_t off, unsigned dpl, unsigned params, int present, unsigned type)
{
  return (off & 0xffff) | (uint64_t)SEL_KCODE << 16 | (uint64_t)params << 32 |
         (uint64_t)((present ? 0x80 : 0) | dpl << 5 | type) << 40 | (uint64_t)(off >> 16) << 48;
}
static uint64_t call_gate(void *target, unsigned dpl, unsigned params, int present)
{
  return gate((uint32_t)target, dpl, params, present, 0xc);
}

/* 16-bit gates: a 16-bit offset and word frames, so the code runs below
 * 64 KiB: a stub copied to 0x7000. */
volatile uint32_t s16_same_esp, s16_same_frame, s16_after_same_esp;
volatile uint32_t s16_inner_esp, s16_frame[3], s16_r3_esp;
extern char stub16_start[], stub16_end[], r0_16[], r0_16_ret[], cg16_same[], r3_16[], r3_16_ret[], cg16_inner[];
#define AT(label) "(" #label " - stub16_start + 0x7000)"
__asm__(".pushsection .rodata.stub16, \"a\"\n"
        ".globl stub16_start\nstub16_start:\n"
        ".globl r0_16\nr0_16:\n"
        "  movl %esp, s16_after_same_esp\n"
        "  lcall $0x50, $0\n"
        ".globl r0_16_ret\nr0_16_ret:\n"
        "  subl %esp, s16_after_same_esp\n"   /* 0 when the frame was released */
        "  ret\n"
        ".globl cg16_same\ncg16_same:\n"
        "  movl %esp, s16_same_esp\n"
        "  movl (%esp), %eax\n  movl %eax, s16_same_frame\n"
        "  lretw\n"
        ".globl r3_16\nr3_16:\n"
        "  movl $0x7f00, %esp\n"
        "  pushw $0x2222\n"
        "  pushw $0x1111\n"
        "  lcall $0x5b, $0\n"
        ".globl r3_16_ret\nr3_16_ret:\n"
        "  movl %esp, s16_r3_esp\n"
        "  int $0x81\n"
        ".globl cg16_inner\ncg16_inner:\n"
        "  movl %esp, s16_inner_esp\n"
        "  movl 0(%esp), %eax\n  movl %eax, s16_frame+0\n"
        "  movl 4(%esp), %eax\n  movl %eax, s16_frame+4\n"
        "  movl 8(%esp), %eax\n  movl %eax, s16_frame+8\n"
        "  lretw $4\n"
        ".globl stub16_end\nstub16_end:\n"
        ".popsection\n");
static uint32_t low(char *label) { return STUB + (uint32_t)(label - stub16_start); }
static void run_r3_16(void) { ((void (*)(void))low(r3_16))(); }

static void setup(void)
{
  struct __attribute__((packed)) { uint16_t lim; uint32_t base; } d;
  __asm__ volatile("sgdt %0" : "=m"(d));
  memcpy(gdt, (void *)d.base, 6 * 8);
  gdt[SEL_GATE_USER >> 3] = call_gate(cg_inner, 3, 2, 1);
  gdt[SEL_GATE_KERNEL >> 3] = call_gate(cg_same, 0, 0, 1);
  gdt[SEL_GATE_JMP >> 3] = call_gate(cg_jmp, 0, 0, 1);
  gdt[SEL_GATE_ABSENT >> 3] = call_gate(cg_same, 3, 0, 0);
  gdt[SEL_GATE16_KERNEL >> 3] = gate(low(cg16_same), 0, 0, 1, 0x4);
  gdt[SEL_GATE16_USER >> 3] = gate(low(cg16_inner), 3, 2, 1, 0x4);
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

  /* 16-bit gates: ring 0 -> 0, and ring 3 -> 0 with two word parameters. */
  memcpy((void *)STUB, stub16_start, (size_t)(stub16_end - stub16_start));
  ((void (*)(void))low(r0_16))();
  printf("16-bit gate, ring 0 -> 0: frame IP %s CS 0x%x, frame released %s\n",
         (s16_same_frame & 0xffff) == (low(r0_16_ret) & 0xffff) ? "= return" : "wrong", s16_same_frame >> 16,
         s16_after_same_esp == 0 ? "yes" : "no");
  CHECK_EQ(s16_same_frame, low(r0_16_ret) | (uint32_t)SEL_KCODE << 16);
  CHECK_EQ(s16_after_same_esp, 0);
  v = trap_call(run_r3_16, 1, &ti);
  printf("16-bit gate, ring 3 -> 0: returned %d, ESP0 - ESP %u, IP %s CS 0x%x, params 0x%x 0x%x, SP 0x%x SS 0x%x, "
         "ring 3 SP after 0x%x\n",
         v, rt_tss.esp0 - s16_inner_esp, (s16_frame[0] & 0xffff) == (low(r3_16_ret) & 0xffff) ? "= return" : "wrong",
         s16_frame[0] >> 16, s16_frame[1] & 0xffff, s16_frame[1] >> 16, s16_frame[2] & 0xffff, s16_frame[2] >> 16,
         s16_r3_esp);
  CHECK_EQ(v, -1);
  CHECK_EQ(rt_tss.esp0 - s16_inner_esp, 12);
  CHECK_EQ(s16_frame[0], low(r3_16_ret) | (uint32_t)SEL_UCODE << 16);
  CHECK_EQ(s16_frame[1], 0x22221111);
  CHECK_EQ(s16_frame[2], 0x7efc | (uint32_t)SEL_UDATA << 16);
  CHECK_EQ(s16_r3_esp, 0x7f00);

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
