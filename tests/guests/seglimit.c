/* seglimit: segment limits and access rights on data accesses (SDM Vol. 3
 * 5.3, 5.5; Vol. 2 "Protected Mode Exceptions" of MOV, ADD, BT, STOS, PUSH,
 * POP): every access whose bytes leave the segment's limit raises #GP(0),
 * or #SS(0) through SS, at the instruction, with no register or memory
 * changed.  Checked with DS/ES/FS/GS loaded with:
 *   a byte-granular limit 0xfff; a page-granular limit 0 (0xfff); expand-down
 *   segments with B = 1 (offsets 0x1000..0xffffffff) and B = 0
 *   (0x1000..0xffff); a read-only segment (writes and read-modify-writes
 *   refused); a null selector (everything refused);
 * loads of 1, 2 and 4 bytes at and across the limit, a store, an ADD to
 * memory, an FS-relative load, BT with a register bit offset reaching past
 * the limit, REP STOSB running into the limit (ECX and EDI at the fault);
 * and in ring 3 with SS loaded with an expand-down stack (B = 1) and a
 * 4 KiB expand-up one: PUSH into and past the bottom (#SS, ESP unchanged),
 * POP across the limit, an EBP-based (SS) load; and CS's limit (a code
 * segment of 256 bytes): JMP, CALL and RET to an offset beyond it raise
 * #GP(0) at the branch (nothing pushed or popped), an instruction that
 * crosses the limit raises it at that instruction, a JMP inside it runs.
 *
 * QEMU's TCG does not check data segment limits (QEMU 7.2 runs every access
 * and this guest reports each missing fault), so the expected transcript is
 * written from the SDM, not recorded from QEMU: the test runs under
 * modevisor only. */
#include "rt.h"

#define SEL_LIM 0x30      /* data, base DATA_BASE, byte-granular limit 0xfff */
#define SEL_LIMG 0x38     /* data, base DATA_BASE, page-granular limit 0 (0xfff) */
#define SEL_DOWN32 0x40   /* expand-down data, limit 0xfff, B = 1 */
#define SEL_DOWN16 0x48   /* expand-down data, limit 0xfff, B = 0 */
#define SEL_RO 0x50       /* read-only data, limit 0xffff */
#define SEL_SS_DOWN 0x5b  /* ring-3 expand-down stack, base STACK_BASE, limit 0x7fff, B = 1 */
#define SEL_SS_LIM 0x63   /* ring-3 stack, base STACK_BASE, byte-granular limit 0xfff */
#define SEL_CODE_LIM 0x68 /* 32-bit code, base CODE_BASE, byte-granular limit 0xff */
#define GDT_ENTRIES 14
#define CODE_BASE 0x210000u

#define DATA_BASE 0x200000u
#define STACK_BASE 0x300000u

static uint64_t gdt[GDT_ENTRIES] __attribute__((aligned(8)));


static void setup(void)
{
  gdt_extend(gdt, GDT_ENTRIES);
  gdt[SEL_LIM >> 3] = seg_desc(DATA_BASE, 0xfff, 0x92, 0x4);
  gdt[SEL_LIMG >> 3] = seg_desc(DATA_BASE, 0, 0x92, 0xc);
  gdt[SEL_DOWN32 >> 3] = seg_desc(DATA_BASE, 0xfff, 0x96, 0x4);
  gdt[SEL_DOWN16 >> 3] = seg_desc(DATA_BASE, 0xfff, 0x96, 0x0);
  gdt[SEL_RO >> 3] = seg_desc(DATA_BASE, 0xffff, 0x90, 0x4);
  gdt[SEL_SS_DOWN >> 3] = seg_desc(STACK_BASE, 0x7fff, 0xf6, 0x4);
  gdt[SEL_SS_LIM >> 3] = seg_desc(STACK_BASE, 0xfff, 0xf2, 0x4);
  gdt[SEL_CODE_LIM >> 3] = seg_desc(CODE_BASE, 0xff, 0x9a, 0x4);
}

/* What a test function reads: set before trap_call. */
static volatile uint32_t g_sel, g_off, g_ecx;
/* What it leaves: EAX after the access, the address of the access. */
static volatile uint32_t g_val, g_site, g_site2;
static volatile uint32_t g_saved_esp;
static int failures;

/* Loads DS, ES, FS and GS with g_sel, EBX = EDI = g_off, ECX = g_ecx, EAX =
 * 0x11111111, runs `insn` (its address in g_site), restores the segments and
 * stores EAX in g_val.  A fault leaves through trap_call (the exception
 * handler loads the kernel's data segments again). */
#define ACCESS_TEST(name, insn)                                                                 \
  static void name(void)                                                                        \
  {                                                                                             \
    __asm__ volatile("movl $1f, g_site\n\t"                                                     \
                     "movl g_off, %%ebx\n\t"                                                    \
                     "movl %%ebx, %%edi\n\t"                                                    \
                     "movl g_ecx, %%ecx\n\t"                                                    \
                     "movw g_sel, %%dx\n\t"                                                     \
                     "movl $0x11111111, %%eax\n\t"                                              \
                     "cld\n\t"                                                                   \
                     "push %%ds\n\t push %%es\n\t push %%fs\n\t push %%gs\n\t"                  \
                     "movw %%dx, %%ds\n\t movw %%dx, %%es\n\t movw %%dx, %%fs\n\t movw %%dx, %%gs\n\t" \
                     "1: " insn "\n\t"                                                          \
                     "pop %%gs\n\t pop %%fs\n\t pop %%es\n\t pop %%ds\n\t"                      \
                     "movl %%eax, g_val\n\t"                                                    \
                     :                                                                          \
                     :                                                                          \
                     : "eax", "ebx", "ecx", "edx", "edi", "memory", "cc");                     \
  }

ACCESS_TEST(load8, "movb (%%ebx), %%al")
ACCESS_TEST(load16, "movw (%%ebx), %%ax")
ACCESS_TEST(load32, "movl (%%ebx), %%eax")
ACCESS_TEST(store32, "movl %%eax, (%%ebx)")
ACCESS_TEST(add32, "addl %%eax, (%%ebx)")
ACCESS_TEST(fsload32, "movl %%fs:(%%ebx), %%eax")
ACCESS_TEST(bt_reg, "btl %%ecx, (%%ebx)")
ACCESS_TEST(rep_stosb, "rep stosb; movl %%ecx, %%eax")

static const char *name_of(void (*fn)(void))
{
  if (fn == load8) return "mov al, [off]";
  if (fn == load16) return "mov ax, [off]";
  if (fn == load32) return "mov eax, [off]";
  if (fn == store32) return "mov [off], eax";
  if (fn == add32) return "add [off], eax";
  if (fn == fsload32) return "mov eax, fs:[off]";
  if (fn == bt_reg) return "bt [off], ecx";
  return "rep stosb";
}

/* One access: `fault` 0 = it must complete, else the vector it must raise
 * at the instruction with error code 0 and EAX untouched. */
static void access(const char *seg, uint32_t sel, void (*fn)(void), uint32_t off, uint32_t ecx, int fault)
{
  struct trap_info ti;
  g_sel = sel;
  g_off = off;
  g_ecx = ecx;
  g_val = 0;
  int v = trap_call(fn, 0, &ti);
  if (v < 0) {
    printf("%s: %s at 0x%x: done\n", seg, name_of(fn), off);
  } else {
    printf("%s: %s at 0x%x: vector %d error 0x%x at the instruction %s, EAX %s\n", seg, name_of(fn), off, v,
           ti.err, ti.eip == g_site ? "yes" : "no", trap_frame.eax == 0x11111111 ? "untouched" : "changed");
  }
  if (fault ? (v != fault || ti.err != 0 || ti.eip != g_site || trap_frame.eax != 0x11111111) : v >= 0) failures++;
}

/* Ring 3 on a limited stack: SS = g_sel, ESP = g_off, then two pushes (the
 * second's address in g_site2), back to the user data segment and the
 * saved stack. */
static void r3_two_pushes(void)
{
  __asm__ volatile("movl $1f, g_site\n\t"
                   "movl $2f, g_site2\n\t"
                   "movl %%esp, g_saved_esp\n\t"
                   "movl g_off, %%ecx\n\t"
                   "movw g_sel, %%dx\n\t"
                   "movw %%dx, %%ss\n\t"
                   "movl %%ecx, %%esp\n\t"
                   "1: pushl $0x5a5a5a5a\n\t"
                   "2: pushl $0xa5a5a5a5\n\t"
                   "movw $0x23, %%dx\n\t"
                   "movw %%dx, %%ss\n\t"
                   "movl g_saved_esp, %%esp\n\t"
                   :
                   :
                   : "ecx", "edx", "memory");
}

static void r3_pop(void)
{
  __asm__ volatile("movl $1f, g_site\n\t"
                   "movl %%esp, g_saved_esp\n\t"
                   "movl g_off, %%ecx\n\t"
                   "movw g_sel, %%dx\n\t"
                   "movl $0x11111111, %%eax\n\t"
                   "movw %%dx, %%ss\n\t"
                   "movl %%ecx, %%esp\n\t"
                   "1: popl %%eax\n\t"
                   "movw $0x23, %%dx\n\t"
                   "movw %%dx, %%ss\n\t"
                   "movl g_saved_esp, %%esp\n\t"
                   "movl %%eax, g_val\n\t"
                   :
                   :
                   : "eax", "ecx", "edx", "memory");
}

static void r3_ebp_load(void)
{
  __asm__ volatile("movl $1f, g_site\n\t"
                   "movl %%esp, g_saved_esp\n\t"
                   "push %%ebp\n\t"
                   "movl g_off, %%ebp\n\t"
                   "movw g_sel, %%dx\n\t"
                   "movl $0x11111111, %%eax\n\t"
                   "movw %%dx, %%ss\n\t"
                   "1: movl (%%ebp), %%eax\n\t"
                   "movw $0x23, %%dx\n\t"
                   "movw %%dx, %%ss\n\t"
                   "movl g_saved_esp, %%esp\n\t"
                   "movl -4(%%esp), %%ebp\n\t"
                   "movl %%eax, g_val\n\t"
                   :
                   :
                   : "eax", "ecx", "edx", "memory");
}

/* The code of the 256-byte segment (copied to CODE_BASE; far-called at the
 * offsets below). */
static volatile uint32_t g_blob_esp;
extern char cl_blob[], cl_blob_end[];
__asm__(".text\n"
        "cl_blob:\n"
        "  jmp cl_blob + 0x100\n"              /* 0x00: JMP beyond the limit */
        "  .org cl_blob + 0x10\n"
        "  movl %esp, g_blob_esp\n"             /* 0x10: CALL beyond the limit */
        "  call cl_blob + 0x100\n"
        "  .org cl_blob + 0x20\n"
        "  pushl $0x100\n"                       /* 0x20: RET to beyond the limit */
        "  movl %esp, g_blob_esp\n"
        "  ret\n"
        "  .org cl_blob + 0x30\n"
        "  jmp cl_blob + 0xfc\n"               /* 0x30: to an instruction crossing the limit */
        "  .org cl_blob + 0x40\n"
        "  jmp cl_blob + 0x80\n"               /* 0x40: inside the limit */
        "  .org cl_blob + 0x80\n"
        "  lret\n"
        "  .org cl_blob + 0xa0\n"
        "  movl $2, %ecx\n"                     /* 0xa0: LOOP to beyond the limit (ECX kept) */
        "  loop cl_blob + 0x100\n"
        "  .org cl_blob + 0xfc\n"
        "  movl $0x12345678, %eax\n"            /* bytes 0xfc..0x100 */
        "  lret\n"
        "cl_blob_end:\n");

static volatile uint32_t g_entry;
static void far_call_blob(void)
{
  struct __attribute__((packed)) { uint32_t off; uint16_t sel; } target = {g_entry, SEL_CODE_LIM};
  __asm__ volatile("lcall *%0" : : "m"(target) : "eax", "ecx", "memory");
}

static void code_limit(const char *what, uint32_t entry, int fault, uint32_t at, int check_esp)
{
  struct trap_info ti;
  g_entry = entry;
  int v = trap_call(far_call_blob, 0, &ti);
  if (v < 0) {
    printf("CS limit 0xff, %s: done\n", what);
    if (fault) failures++;
    return;
  }
  /* The exception frame (EFLAGS CS EIP, error code) and the stub's vector lie below the faulting ESP. */
  const uint32_t esp = trap_frame.esp_unused + 20;
  printf("CS limit 0xff, %s: vector %d error 0x%x at CS 0x%x EIP 0x%x%s\n", what, v, ti.err, ti.cs, ti.eip,
         check_esp ? (esp == g_blob_esp ? ", ESP unchanged" : ", ESP moved") : "");
  if (!fault || v != 13 || ti.err != 0 || ti.cs != SEL_CODE_LIM || ti.eip != at || (check_esp && esp != g_blob_esp))
    failures++;
}

int main(void)
{
  setup();
  memset((void *)DATA_BASE, 0, 0x10000);

  printf("limit 0xfff (byte granular)\n");
  access("lim", SEL_LIM, load8, 0xfff, 0, 0);
  access("lim", SEL_LIM, load32, 0xffc, 0, 0);
  access("lim", SEL_LIM, load32, 0xffd, 0, 13);
  access("lim", SEL_LIM, load16, 0xfff, 0, 13);
  access("lim", SEL_LIM, load8, 0x1000, 0, 13);
  access("lim", SEL_LIM, load8, 0xfffffff0, 0, 13);
  access("lim", SEL_LIM, store32, 0xffc, 0, 0);
  access("lim", SEL_LIM, store32, 0xffe, 0, 13);
  access("lim", SEL_LIM, add32, 0xffd, 0, 13);
  access("lim", SEL_LIM, fsload32, 0xffc, 0, 0);
  access("lim", SEL_LIM, fsload32, 0x1000, 0, 13);
  access("lim", SEL_LIM, bt_reg, 0xf00, 0x7f8, 0);  /* the dword at 0xffc */
  access("lim", SEL_LIM, bt_reg, 0xf00, 0x800, 13); /* the dword at 0x1000 */
  CHECK_EQ(*(volatile uint32_t *)(DATA_BASE + 0xffc), 0x11111111);

  access("lim", SEL_LIM, rep_stosb, 0xff0, 0x20, 13);
  uint32_t written = 0;
  for (uint32_t i = 0xff0; i < 0x1010; i++) written += *(volatile uint8_t *)(DATA_BASE + i) == 0x11;
  printf("rep stosb from 0xff0, ECX 0x20: ECX 0x%x EDI 0x%x at the fault, %u bytes written\n", trap_frame.ecx,
         trap_frame.edi, written);
  CHECK_EQ(trap_frame.ecx, 0x10);
  CHECK_EQ(trap_frame.edi, 0x1000);
  CHECK_EQ(written, 0x10);

  printf("limit 0 (page granular)\n");
  access("limg", SEL_LIMG, load32, 0xffc, 0, 0);
  access("limg", SEL_LIMG, load8, 0x1000, 0, 13);

  printf("expand-down, limit 0xfff, B = 1\n");
  access("down32", SEL_DOWN32, load32, 0x1000, 0, 0);
  access("down32", SEL_DOWN32, load8, 0xfff, 0, 13);
  access("down32", SEL_DOWN32, load32, 0xffe, 0, 13);
  access("down32", SEL_DOWN32, load32, 0xfffffffc, 0, 0);
  access("down32", SEL_DOWN32, load32, 0xfffffffd, 0, 13);

  printf("expand-down, limit 0xfff, B = 0\n");
  access("down16", SEL_DOWN16, load8, 0xffff, 0, 0);
  access("down16", SEL_DOWN16, load16, 0xffff, 0, 13);
  access("down16", SEL_DOWN16, load8, 0x10000, 0, 13);
  access("down16", SEL_DOWN16, load8, 0xfff, 0, 13);

  printf("read-only\n");
  access("ro", SEL_RO, load32, 0x100, 0, 0);
  access("ro", SEL_RO, store32, 0x100, 0, 13);
  access("ro", SEL_RO, add32, 0x100, 0, 13);
  access("ro", SEL_RO, rep_stosb, 0x100, 4, 13);

  printf("null selector\n");
  access("null", 0, load32, 0, 0, 13);
  access("null", 0, store32, 0x100, 0, 13);
  access("null", 0, fsload32, 0, 0, 13);

  printf("ring 3, SS expand-down (limit 0x7fff, B = 1)\n");
  struct trap_info ti;
  g_sel = SEL_SS_DOWN;
  g_off = 0x8004;
  int v = trap_call(r3_two_pushes, 1, &ti);
  printf("push, push from ESP 0x8004: vector %d error 0x%x at the second push %s, ESP 0x%x, stack word 0x%x\n", v,
         ti.err, ti.eip == g_site2 ? "yes" : "no", trap_frame.useresp, *(volatile uint32_t *)(STACK_BASE + 0x8000));
  CHECK_EQ(v, 12);
  CHECK_EQ(ti.err, 0);
  CHECK_EQ(ti.eip, g_site2);
  CHECK_EQ(trap_frame.useresp, 0x8000);
  CHECK_EQ(*(volatile uint32_t *)(STACK_BASE + 0x8000), 0x5a5a5a5a);
  g_off = 0x9000;
  v = trap_call(r3_two_pushes, 1, &ti);
  printf("push, push from ESP 0x9000: %s\n", v < 0 ? "done" : "fault");
  CHECK_EQ(v, -1);

  printf("ring 3, SS limit 0xfff\n");
  g_sel = SEL_SS_LIM;
  g_off = 0x1002;
  v = trap_call(r3_two_pushes, 1, &ti);
  printf("push from ESP 0x1002: vector %d error 0x%x at the push %s, ESP 0x%x\n", v, ti.err,
         ti.eip == g_site ? "yes" : "no", trap_frame.useresp);
  CHECK_EQ(v, 12);
  CHECK_EQ(ti.eip, g_site);
  CHECK_EQ(trap_frame.useresp, 0x1002);
  g_off = 0xffe;
  v = trap_call(r3_pop, 1, &ti);
  printf("pop from ESP 0xffe: vector %d error 0x%x at the pop %s, ESP 0x%x, EAX %s\n", v, ti.err,
         ti.eip == g_site ? "yes" : "no", trap_frame.useresp, trap_frame.eax == 0x11111111 ? "untouched" : "changed");
  CHECK_EQ(v, 12);
  CHECK_EQ(trap_frame.useresp, 0xffe);
  CHECK_EQ(trap_frame.eax, 0x11111111);
  g_off = 0xffc;
  *(volatile uint32_t *)(STACK_BASE + 0xffc) = 0xc0ffee;
  v = trap_call(r3_pop, 1, &ti);
  printf("pop from ESP 0xffc: %s, EAX 0x%x\n", v < 0 ? "done" : "fault", g_val);
  CHECK_EQ(v, -1);
  CHECK_EQ(g_val, 0xc0ffee);
  g_off = 0xffd;
  v = trap_call(r3_ebp_load, 1, &ti);
  printf("mov eax, [ebp] at EBP 0xffd: vector %d error 0x%x at the instruction %s\n", v, ti.err,
         ti.eip == g_site ? "yes" : "no");
  CHECK_EQ(v, 12);
  CHECK_EQ(ti.eip, g_site);

  memcpy((void *)CODE_BASE, cl_blob, (size_t)(cl_blob_end - cl_blob));
  code_limit("jmp 0x100", 0x00, 1, 0x00, 0);
  code_limit("call 0x100", 0x10, 1, 0x16, 1);
  code_limit("ret to 0x100", 0x20, 1, 0x2b, 1);
  code_limit("mov eax, imm32 at 0xfc (to 0x100)", 0x30, 1, 0xfc, 0);
  code_limit("jmp 0x80; retf", 0x40, 0, 0, 0);
  code_limit("loop 0x100", 0xa0, 1, 0xa5, 0);
  printf("CS limit 0xff, loop 0x100: ECX 0x%x at the fault\n", trap_frame.ecx);
  CHECK_EQ(trap_frame.ecx, 2);

  CHECK_EQ(failures, 0);
  rt_finish();
}
