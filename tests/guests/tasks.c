/* tasks: hardware task switches (SDM vol. 3 ch. 7) by every path, with the
 * TSS contents, the busy bits, the back link, EFLAGS.NT and CR0.TS checked
 * after each:
 *   far JMP to a TSS and back (no nesting: the old task is no longer busy),
 *   far CALL to a TSS returning by IRET with NT (back link, both busy while
 *   nested, the returning task's saved EFLAGS without NT),
 *   far CALL and JMP through a task gate in the GDT,
 *   INT n through a task gate in the IDT,
 *   #GP through an IDT task gate (error code pushed on the new task's stack,
 *   the faulting EIP saved in the old TSS), and #DF through one (#NP while
 *   delivering #GP), as 32-bit Linux handles double faults;
 *   with paging, each task's CR3 loaded from its TSS (never saved);
 *   a CALL to a task with a 16-bit TSS (word fields, no CR3) and IRET back;
 *   faults: JMP to a busy TSS (#GP(selector)), IRET with NT to an available
 *   TSS (#TS(link)), a TSS limit below 0x67 (#TS), an IDT task gate not
 *   present (#NP with the IDT error code).
 * The main task is the runtime's TSS (selector 0x28); task B is at 0x30,
 * the #GP task C at 0x38, the #DF task D at 0x40, a task gate to B at 0x48. */
#include "rt.h"

#define SEL_B 0x30
#define SEL_C 0x38
#define SEL_D 0x40
#define SEL_GATE_B 0x48
#define EFL_NT 0x4000u

#define SEL_E16 0x50 /* a 16-bit (80286) TSS */
static uint64_t gdt[11] __attribute__((aligned(8)));
static struct tss tss_b, tss_c, tss_d;
static uint8_t stack_b[4096] __attribute__((aligned(16)));
static uint8_t stack_c[4096] __attribute__((aligned(16)));
static uint8_t stack_d[4096] __attribute__((aligned(16)));

/* What task B sees while it runs (b_observe, called on B's own stack). */
volatile uint32_t b_mode; /* 0: return by IRET, 1: by JMP to the main task */
volatile uint32_t b_runs, b_eflags, b_cr0, b_link, b_main_type, b_own_type;
volatile uint16_t b_tr;
volatile uint32_t b_saw_value, b_saw_cr3; /* with paging: what B reads at 0x40000000, its CR3 */
/* The #GP and #DF tasks: the error code they popped, main's saved EIP, where main resumes. */
volatile uint32_t c_runs, c_error, c_saw_eip, c_resume;
volatile uint32_t d_runs, d_error, d_saw_eip, d_resume;

extern char task_b_entry[], b_after_iret[], b_after_jmp[], task_c_entry[], task_d_entry[];
extern char main_after_jmp[], main_after_call[], main_after_gate_call[], main_after_int[];
extern char gp_fault_insn[], gp_resume[], df_fault_insn[], df_resume[];

__asm__(".text\n"
        ".globl task_b_entry\n"
        "task_b_entry:\n"
        "  movl $0xb0b0b0b0, %ebx\n"
        "  movl $0x51515151, %esi\n"
        "  call b_observe\n"
        "  cmpl $1, b_mode\n"
        "  je 1f\n"
        "  iret\n"
        ".globl b_after_iret\n"
        "b_after_iret:\n"
        "  jmp task_b_entry\n"
        "1: ljmp $0x28, $0\n"
        ".globl b_after_jmp\n"
        "b_after_jmp:\n"
        "  jmp task_b_entry\n"
        ".globl task_c_entry\n"
        "task_c_entry:\n"
        "  popl c_error\n"
        "  incl c_runs\n"
        "  movl rt_tss+0x20, %eax\n"
        "  movl %eax, c_saw_eip\n"
        "  movl c_resume, %eax\n"
        "  movl %eax, rt_tss+0x20\n"
        "  iret\n"
        "  jmp task_c_entry\n"
        ".globl task_d_entry\n"
        "task_d_entry:\n"
        "  popl d_error\n"
        "  incl d_runs\n"
        "  movl rt_tss+0x20, %eax\n"
        "  movl %eax, d_saw_eip\n"
        "  movl d_resume, %eax\n"
        "  movl %eax, rt_tss+0x20\n"
        "  iret\n"
        "  jmp task_d_entry\n");

static uint32_t desc_type(uint16_t sel) { return (uint32_t)(gdt[sel >> 3] >> 40) & 0xf; }

void b_observe(void)
{
  b_runs++;
  b_eflags = read_eflags();
  b_cr0 = read_cr0();
  uint16_t tr;
  __asm__ volatile("str %0" : "=r"(tr));
  b_tr = tr;
  b_link = tss_b.link & 0xffff;
  b_main_type = desc_type(SEL_TSS);
  b_own_type = desc_type(SEL_B);
  if (read_cr0() & CR0_PG) {
    b_saw_value = *(volatile uint32_t *)0x40000000u;
    b_saw_cr3 = read_cr3();
  }
}

static uint64_t tss_desc(struct tss *t)
{
  uint64_t base = (uint32_t)t, limit = sizeof *t - 1;
  return (limit & 0xffff) | (base & 0xffffff) << 16 | (uint64_t)0x89 << 40 | (base >> 24) << 56;
}
static uint64_t task_gate(uint16_t tss_sel) { return (uint64_t)tss_sel << 16 | (uint64_t)0x85 << 40; }

static void init_task(struct tss *t, void *entry, uint8_t *stack, size_t size)
{
  memset(t, 0, sizeof *t);
  t->eip = (uint32_t)entry;
  t->esp = (uint32_t)(stack + size);
  t->eflags = 0x2;
  t->cs = SEL_KCODE;
  t->ss = t->ds = t->es = t->fs = t->gs = SEL_KDATA;
  t->iomap = sizeof *t;
}

static uint64_t *idt;
static void setup(void)
{
  struct __attribute__((packed)) { uint16_t lim; uint32_t base; } d;
  __asm__ volatile("sgdt %0" : "=m"(d));
  memcpy(gdt, (void *)d.base, 6 * 8); /* the runtime's, with the main TSS busy */
  init_task(&tss_b, task_b_entry, stack_b, sizeof stack_b);
  init_task(&tss_c, task_c_entry, stack_c, sizeof stack_c);
  init_task(&tss_d, task_d_entry, stack_d, sizeof stack_d);
  gdt[SEL_B >> 3] = tss_desc(&tss_b);
  gdt[SEL_C >> 3] = tss_desc(&tss_c);
  gdt[SEL_D >> 3] = tss_desc(&tss_d);
  gdt[SEL_GATE_B >> 3] = task_gate(SEL_B);
  d.lim = sizeof gdt - 1;
  d.base = (uint32_t)gdt;
  __asm__ volatile("lgdt %0" : : "m"(d));
  __asm__ volatile("sidt %0" : "=m"(d));
  idt = (uint64_t *)d.base;
}

static int yes(int c) { return c ? 'y' : 'n'; }

/* After task B ran once: what it saw, and what its TSS and the GDT say now. */
static void report_b(const char *path, int nested, char *saved_eip, char *main_eip)
{
  uint32_t cr0 = read_cr0();
  __asm__ volatile("clts");
  printf("%s: B ran %u, TR in B 0x%x, NT in B %u, CR0.TS in B %u, back link seen 0x%x, "
         "types seen main %x B %x\n",
         path, b_runs, b_tr, (b_eflags & EFL_NT) ? 1 : 0, (b_cr0 & CR0_TS) ? 1 : 0, b_link, b_main_type,
         b_own_type);
  printf("%s: after: B's TSS eip %c ebx %x esi %x NT %u link 0x%x; types main %x B %x; main eip %c NT %u TS %u\n",
         path, yes(tss_b.eip == (uint32_t)saved_eip), tss_b.ebx, tss_b.esi, (tss_b.eflags & EFL_NT) ? 1 : 0,
         tss_b.link & 0xffff, desc_type(SEL_TSS), desc_type(SEL_B), yes(rt_tss.eip == (uint32_t)main_eip),
         (read_eflags() & EFL_NT) ? 1 : 0, (cr0 & CR0_TS) ? 1 : 0);
  CHECK_EQ(b_tr, SEL_B);
  CHECK_EQ((b_eflags & EFL_NT) != 0, nested);
  CHECK(b_cr0 & CR0_TS);
  CHECK(cr0 & CR0_TS);
  CHECK_EQ(tss_b.eip, (uint32_t)saved_eip);
  CHECK_EQ(tss_b.ebx, 0xb0b0b0b0);
  CHECK_EQ(tss_b.esi, 0x51515151);
  CHECK_EQ(tss_b.eflags & EFL_NT, 0);
  CHECK_EQ(rt_tss.eip, (uint32_t)main_eip);
  CHECK_EQ(desc_type(SEL_TSS), 0xb);
  CHECK_EQ(desc_type(SEL_B), 0x9);
  CHECK_EQ(b_main_type, nested ? 0xb : 0x9); /* a JMP released the main task */
  CHECK_EQ(b_own_type, 0xb);
  CHECK_EQ(b_link, nested ? SEL_TSS : 0);
  CHECK(!(read_eflags() & EFL_NT));
  tss_b.link = 0;
}

static __attribute__((noinline)) void jump_to_b(void)
{
  b_mode = 1;
  __asm__ volatile("ljmp $0x30, $0\n.globl main_after_jmp\nmain_after_jmp:" ::: "memory");
}
static __attribute__((noinline)) void call_b(void)
{
  b_mode = 0;
  __asm__ volatile("lcall $0x30, $0\n.globl main_after_call\nmain_after_call:" ::: "memory");
}
static __attribute__((noinline)) void call_gate_b(void)
{
  b_mode = 0;
  __asm__ volatile("lcall $0x48, $0\n.globl main_after_gate_call\nmain_after_gate_call:" ::: "memory");
}
static __attribute__((noinline)) void jump_gate_b(void)
{
  b_mode = 1;
  __asm__ volatile("ljmp $0x48, $0\n.globl main_after_gate_jmp\nmain_after_gate_jmp:" ::: "memory");
}
extern char main_after_gate_jmp[];
static __attribute__((noinline)) void int_b(void)
{
  b_mode = 0;
  __asm__ volatile("int $0x40\n.globl main_after_int\nmain_after_int:" ::: "memory");
}
static __attribute__((noinline)) void gp_fault(void)
{
  __asm__ volatile("movw $0x1230, %%ax\n.globl gp_fault_insn\ngp_fault_insn: movw %%ax, %%ds\n"
                   ".globl gp_resume\ngp_resume:" ::: "eax", "memory");
}
static __attribute__((noinline)) void df_fault(void)
{
  __asm__ volatile("movw $0x1230, %%ax\n.globl df_fault_insn\ndf_fault_insn: movw %%ax, %%ds\n"
                   ".globl df_resume\ndf_resume:" ::: "eax", "memory");
}
/* A task with a 16-bit TSS: IP, FLAGS, the registers and ES CS SS DS are
 * words (the upper halves of EFLAGS and the registers stay), so its code
 * lives below 64 KiB (a stub copied to 0x7000). */
struct tss16 {
  uint16_t link, sp0, ss0, sp1, ss1, sp2, ss2, ip, flags, ax, cx, dx, bx, sp, bp, si, di, es, cs, ss, ds, ldt;
} __attribute__((packed));
static struct tss16 tss_e;
volatile uint32_t e_ebx, e_eflags, e_esp, e_runs;
volatile uint16_t e_tr;
extern char e_stub_start[], e_stub_end[], e_entry[], e_after_iret[];
__asm__(".pushsection .rodata.estub, \"a\"\n"
        ".globl e_stub_start\ne_stub_start:\n"
        ".globl e_entry\ne_entry:\n"
        "  movl %ebx, e_ebx\n"
        "  movl %esp, e_esp\n"
        "  pushfl\n  popl e_eflags\n"
        "  str e_tr\n"
        "  incl e_runs\n"
        "  movw $0x5678, %si\n"
        "  iret\n"
        ".globl e_after_iret\ne_after_iret:\n"
        "  jmp e_entry\n"
        ".globl e_stub_end\ne_stub_end:\n"
        ".popsection\n");
static uint32_t e_low(char *label) { return 0x7000u + (uint32_t)(label - e_stub_start); }

static void test_tss16(void)
{
  memcpy((void *)0x7000, e_stub_start, (size_t)(e_stub_end - e_stub_start));
  memset(&tss_e, 0, sizeof tss_e);
  tss_e.ip = (uint16_t)e_low(e_entry);
  tss_e.flags = 0x2;
  tss_e.bx = 0x1234;
  /* ESP's upper half stays the caller's (as for every register): SP points
   * 512 bytes below the main task's stack pointer, into its free stack. */
  uint32_t esp_now;
  __asm__ volatile("movl %%esp, %0" : "=r"(esp_now));
  tss_e.sp = (uint16_t)(esp_now - 0x200);
  tss_e.cs = SEL_KCODE;
  tss_e.ss = tss_e.ds = tss_e.es = SEL_KDATA;
  uint64_t base = (uint32_t)&tss_e, limit = sizeof tss_e - 1;
  gdt[SEL_E16 >> 3] = (limit & 0xffff) | (base & 0xffffff) << 16 | (uint64_t)0x81 << 40 | (base >> 24) << 56;
  uint32_t ebx_after;
  __asm__ volatile("movl $0xdead0000, %%ebx\n\tlcall $0x50, $0\n\tmovl %%ebx, %0" : "=r"(ebx_after) : : "ebx", "memory");
  __asm__ volatile("clts");
  const uint32_t want_esp = (esp_now & 0xffff0000u) | tss_e.sp;
  printf("16-bit TSS: E ran %u, TR 0x%x, EBX in E 0x%x, ESP in E = caller's upper half | SP %c, NT in E %u; "
         "types main %x E %x\n", e_runs, e_tr, e_ebx, yes(e_esp == want_esp), (e_eflags & EFL_NT) ? 1 : 0,
         desc_type(SEL_TSS), desc_type(SEL_E16));
  printf("16-bit TSS: after: E's IP %c FLAGS NT %u SI 0x%x BX 0x%x link 0x%x; main's EBX 0x%x\n",
         yes(tss_e.ip == (uint16_t)e_low(e_after_iret)), (tss_e.flags & EFL_NT) ? 1 : 0, tss_e.si, tss_e.bx, tss_e.link,
         ebx_after);
  CHECK_EQ(e_runs, 1);
  CHECK_EQ(e_tr, SEL_E16);
  CHECK_EQ(e_ebx & 0xffff, 0x1234);
  CHECK_EQ(e_esp, want_esp);
  CHECK(e_eflags & EFL_NT);
  CHECK_EQ(tss_e.ip, (uint16_t)e_low(e_after_iret));
  CHECK_EQ(tss_e.flags & EFL_NT, 0);
  CHECK_EQ(tss_e.si, 0x5678);
  CHECK_EQ(tss_e.link, SEL_TSS);
  CHECK_EQ(desc_type(SEL_E16), 0x1);
  CHECK_EQ(ebx_after, 0xdead0000);
}

static void do_jump_busy(void) { __asm__ volatile("ljmp $0x28, $0" ::: "memory"); }
static void do_jump_b(void) { __asm__ volatile("ljmp $0x30, $0" ::: "memory"); }
static void do_int_40(void) { __asm__ volatile("int $0x40" ::: "memory"); }
/* IRET with NT set: back to the task in the main TSS's link field. */
static void do_iret_nt(void)
{
  __asm__ volatile("pushfl\n\torl $0x4000, (%%esp)\n\tpopfl\n\t"
                   "pushfl\n\tpushl %%cs\n\tpushl $1f\n\tiret\n1:" ::: "memory", "cc");
}

/* With paging: each task's CR3 comes from its TSS (the outgoing one is not
 * saved).  Both directories map 0-8 MiB identically with 4 MiB pages;
 * 0x40000000 is a different page in each. */
#define TEST_VA 0x40000000u
static volatile uint32_t pd_main[1024] __attribute__((aligned(4096)));
static volatile uint32_t pd_b[1024] __attribute__((aligned(4096)));
static volatile uint32_t pt_main[1024] __attribute__((aligned(4096)));
static volatile uint32_t pt_b[1024] __attribute__((aligned(4096)));
static volatile uint32_t page_main[1024] __attribute__((aligned(4096)));
static volatile uint32_t page_b[1024] __attribute__((aligned(4096)));

static void test_paging(void)
{
  for (uint32_t i = 0; i < 2; i++)
    pd_main[i] = pd_b[i] = (i << 22) | 0x83; /* 4 MiB, present, writable, supervisor */
  pd_main[TEST_VA >> 22] = (uint32_t)pt_main | 3;
  pd_b[TEST_VA >> 22] = (uint32_t)pt_b | 3;
  pt_main[0] = (uint32_t)page_main | 3;
  pt_b[0] = (uint32_t)page_b | 3;
  page_main[0] = 0x3a1a;
  page_b[0] = 0xb0b;
  rt_tss.cr3 = (uint32_t)pd_main; /* where the main task's CR3 comes back from */
  tss_b.cr3 = (uint32_t)pd_b;
  write_cr4(read_cr4() | CR4_PSE);
  write_cr3((uint32_t)pd_main);
  write_cr0(read_cr0() | CR0_PG);
  uint32_t before = *(volatile uint32_t *)TEST_VA;
  b_saw_value = b_saw_cr3 = 0;
  b_mode = 0;
  __asm__ volatile("lcall $0x30, $0" ::: "memory");
  uint32_t nested_value = b_saw_value, nested_cr3 = b_saw_cr3;
  uint32_t after_call = *(volatile uint32_t *)TEST_VA, cr3_after_call = read_cr3();
  b_mode = 1;
  __asm__ volatile("ljmp $0x30, $0" ::: "memory");
  uint32_t after_jmp = *(volatile uint32_t *)TEST_VA, cr3_after_jmp = read_cr3();
  write_cr0(read_cr0() & ~CR0_PG);
  __asm__ volatile("clts");
  printf("paging: main sees 0x%x, B (call) sees 0x%x with its CR3 %c, main after IRET sees 0x%x CR3 %c, "
         "B (jmp) sees 0x%x, main after JMP sees 0x%x CR3 %c, B's TSS CR3 kept %c\n",
         before, nested_value, yes(nested_cr3 == (uint32_t)pd_b), after_call, yes(cr3_after_call == (uint32_t)pd_main),
         b_saw_value, after_jmp, yes(cr3_after_jmp == (uint32_t)pd_main), yes(tss_b.cr3 == (uint32_t)pd_b));
  CHECK_EQ(before, 0x3a1a);
  CHECK_EQ(nested_value, 0xb0b);
  CHECK_EQ(nested_cr3, (uint32_t)pd_b);
  CHECK_EQ(after_call, 0x3a1a);
  CHECK_EQ(b_saw_value, 0xb0b);
  CHECK_EQ(after_jmp, 0x3a1a);
  CHECK_EQ(cr3_after_jmp, (uint32_t)pd_main);
  CHECK_EQ(tss_b.cr3, (uint32_t)pd_b);
}

int main(void)
{
  setup();
  printf("main task TR 0x%x type %x\n", SEL_TSS, desc_type(SEL_TSS));

  jump_to_b();
  report_b("jmp to TSS", 0, b_after_jmp, main_after_jmp);
  call_b();
  report_b("call to TSS", 1, b_after_iret, main_after_call);
  call_gate_b();
  report_b("call through task gate", 1, b_after_iret, main_after_gate_call);
  jump_gate_b();
  report_b("jmp through task gate", 0, b_after_jmp, main_after_gate_jmp);

  uint64_t saved40 = idt[0x40];
  idt[0x40] = task_gate(SEL_B);
  int_b();
  idt[0x40] = saved40;
  report_b("int 0x40 through task gate", 1, b_after_iret, main_after_int);

  /* #GP through a task gate: the error code on C's stack, main's faulting EIP saved. */
  uint64_t saved13 = idt[13];
  idt[13] = task_gate(SEL_C);
  c_resume = (uint32_t)gp_resume;
  gp_fault();
  idt[13] = saved13;
  __asm__ volatile("clts");
  printf("#GP through task gate: C ran %u, error 0x%x, saved eip at the fault %c, C's link 0x%x, types main %x C %x\n",
         c_runs, c_error, yes(c_saw_eip == (uint32_t)gp_fault_insn), tss_c.link & 0xffff, desc_type(SEL_TSS),
         desc_type(SEL_C));
  CHECK_EQ(c_runs, 1);
  CHECK_EQ(c_error, 0x1230);
  CHECK_EQ(c_saw_eip, (uint32_t)gp_fault_insn);
  CHECK_EQ(tss_c.link & 0xffff, SEL_TSS);
  CHECK_EQ(desc_type(SEL_C), 0x9);

  /* #DF through a task gate: #GP's gate not present, so delivering #GP raises #NP. */
  uint64_t saved8 = idt[8];
  idt[8] = task_gate(SEL_D);
  idt[13] = saved13 & ~((uint64_t)1 << 47);
  d_resume = (uint32_t)df_resume;
  df_fault();
  idt[13] = saved13;
  idt[8] = saved8;
  __asm__ volatile("clts");
  printf("#DF through task gate: D ran %u, error 0x%x, saved eip at the fault %c, D's link 0x%x, types main %x D %x\n",
         d_runs, d_error, yes(d_saw_eip == (uint32_t)df_fault_insn), tss_d.link & 0xffff, desc_type(SEL_TSS),
         desc_type(SEL_D));
  CHECK_EQ(d_runs, 1);
  CHECK_EQ(d_error, 0);
  CHECK_EQ(d_saw_eip, (uint32_t)df_fault_insn);
  CHECK_EQ(tss_d.link & 0xffff, SEL_TSS);

  test_paging();
  test_tss16();

  /* The main task is busy: jumping to it is #GP(selector). */
  struct trap_info ti;
  int v = trap_call(do_jump_busy, 0, &ti);
  printf("jmp to the busy main TSS: vector %d error 0x%x\n", v, ti.err);
  CHECK_EQ(v, 13);
  CHECK_EQ(ti.err, SEL_TSS);
  /* IRET with NT whose back link names an available TSS (B): #TS(link). */
  rt_tss.link = SEL_B;
  v = trap_call(do_iret_nt, 0, &ti);
  rt_tss.link = 0;
  printf("iret with NT to an available TSS: vector %d error 0x%x, B still available %c\n", v, ti.err,
         yes(desc_type(SEL_B) == 9));
  CHECK_EQ(v, 10);
  CHECK_EQ(ti.err, SEL_B);
  CHECK_EQ(desc_type(SEL_B), 9);

  /* A TSS limit below 0x67: #TS(selector), nothing switched. */
  uint64_t saved_b = gdt[SEL_B >> 3];
  gdt[SEL_B >> 3] = (saved_b & ~0xffffull) | 0x50;
  v = trap_call(do_jump_b, 0, &ti);
  gdt[SEL_B >> 3] = saved_b;
  printf("jmp to a TSS with limit 0x50: vector %d error 0x%x, main still busy %c\n", v, ti.err,
         yes(desc_type(SEL_TSS) == 0xb));
  CHECK_EQ(v, 10);
  CHECK_EQ(ti.err, SEL_B);
  CHECK_EQ(desc_type(SEL_TSS), 0xb);

  /* An IDT task gate not present: #NP with the IDT error code. */
  saved40 = idt[0x40];
  idt[0x40] = task_gate(SEL_B) & ~((uint64_t)1 << 47);
  v = trap_call(do_int_40, 0, &ti);
  idt[0x40] = saved40;
  printf("int 0x40 through a task gate not present: vector %d error 0x%x\n", v, ti.err);
  CHECK_EQ(v, 11);
  CHECK_EQ(ti.err, 0x40 * 8 + 2);
  rt_finish();
}
