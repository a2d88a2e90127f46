/* addr16: instructions with a 16-bit address size (0x67) in 32-bit code:
 * the offset is formed from BX/BP/SI/DI and a 16-bit displacement and wraps
 * at 64 KiB (flat segments, so it is the linear address).  Loads, stores,
 * read-modify-write, MOVZX, XCHG, an SSE load, LEA (offset only, wrapping),
 * XLAT (BX + AL), REP MOVSB / REP STOSW / REPNE SCASB counting in CX with
 * SI/DI (upper halves untouched), an indirect near JMP through [BX], and a
 * wrap of [BX+SI] past 64 KiB.  Data lives at 0x7800. */
#include "rt.h"

#define LOW 0x7800u
static volatile uint8_t *const low = (volatile uint8_t *)LOW;

int main(void)
{
  for (unsigned i = 0; i < 256; i++)
    low[i] = (uint8_t)(i * 3 + 1);
  uint32_t r1 = 0, r2 = 0, r3 = 0;
  /* mov eax, [bx+si+disp8]; movzx ecx, byte [bx+di]; the upper halves of EBX/ESI ignored. */
  __asm__ volatile("movl $0xabcd7800, %%ebx\n\tmovl $0x12340010, %%esi\n\tmovl $0x55550020, %%edi\n\t"
                   "addr16 movl 4(%%bx,%%si), %0\n\t"
                   "addr16 movzbl (%%bx,%%di), %1"
                   : "=&r"(r1), "=&c"(r2) : : "ebx", "esi", "edi", "memory");
  printf("mov [bx+si+4]: 0x%08x, movzx [bx+di]: 0x%x\n", r1, r2);
  CHECK_EQ(r1, *(volatile uint32_t *)(LOW + 0x14));
  CHECK_EQ(r2, low[0x20]);

  /* add [bp+di], eax (SS, flat); inc word [bx]; xchg [si], edx. */
  __asm__ volatile("pushl %%ebp\n\t"
                   "movl $0x7840, %%ebp\n\tmovl $0x0004, %%edi\n\tmovl $0x11111111, %%eax\n\t"
                   "addr16 addl %%eax, (%%bp,%%di)\n\t"
                   "popl %%ebp\n\t"
                   "movl $0x7850, %%ebx\n\t"
                   "addr16 incw (%%bx)\n\t"
                   "movl $0x7860, %%esi\n\tmovl $0xfeedface, %%edx\n\t"
                   "addr16 xchgl %%edx, (%%si)\n\t"
                   "movl %%edx, %0"
                   : "=r"(r3) : : "eax", "ebx", "edx", "esi", "edi", "memory");
  printf("add [bp+di]: 0x%08x, inc word [bx]: 0x%04x, xchg [si]: old 0x%08x new 0x%08x\n",
         *(volatile uint32_t *)(LOW + 0x44), *(volatile uint16_t *)(LOW + 0x50), r3,
         *(volatile uint32_t *)(LOW + 0x60));
  CHECK_EQ(*(volatile uint32_t *)(LOW + 0x60), 0xfeedface);

  /* A 16-bit displacement only: mov eax, [0x7808]. */
  __asm__ volatile("addr16 movl 0x7808, %0" : "=a"(r1));
  printf("mov [disp16]: 0x%08x\n", r1);
  CHECK_EQ(r1, *(volatile uint32_t *)(LOW + 8));

  /* The offset wraps at 64 KiB: [bx+si] with BX 0xfff0, SI 0x7820 is 0x7810. */
  __asm__ volatile("movl $0xfff0, %%ebx\n\tmovl $0x7820, %%esi\n\taddr16 movl (%%bx,%%si), %0"
                   : "=r"(r1) : : "ebx", "esi", "memory");
  printf("wrapped [bx+si]: 0x%08x\n", r1);
  CHECK_EQ(r1, *(volatile uint32_t *)(LOW + 0x10));

  /* LEA: the 16-bit offset, wrapped, zero-extended into a 32-bit register. */
  __asm__ volatile("movl $0x1234fff0, %%ebx\n\tmovl $0x20, %%esi\n\taddr16 leal 3(%%bx,%%si), %0"
                   : "=r"(r1) : : "ebx", "esi");
  printf("lea 3[bx+si]: 0x%08x\n", r1);
  CHECK_EQ(r1, 0x13);

  /* XLAT with BX + AL. */
  __asm__ volatile("movl $0xffff7800, %%ebx\n\tmovl $0x33, %%eax\n\taddr16 xlat" : "=a"(r1) : : "ebx", "memory");
  printf("xlat [bx+al]: 0x%x\n", r1 & 0xff);
  CHECK_EQ(r1 & 0xff, low[0x33]);

  /* SSE load through [si] (the compiler uses no SSE: XMM0 is free). */
  write_cr4(read_cr4() | CR4_OSFXSR | CR4_OSXMMEXCPT);
  uint32_t out[4];
  __asm__ volatile("movl $0x7880, %%esi\n\taddr16 movdqu (%%si), %%xmm0\n\tmovdqu %%xmm0, %0"
                   : "=m"(out) : : "esi", "memory");
  printf("movdqu [si]: %08x %08x %08x %08x\n", out[0], out[1], out[2], out[3]);
  CHECK_EQ(out[0], *(volatile uint32_t *)(LOW + 0x80));

  /* String instructions count in CX and step SI/DI; the upper halves stay. */
  uint32_t ecx = 0xabcd0005, esi = 0x12347800, edi = 0x567878c0;
  __asm__ volatile("addr16 rep movsb" : "+c"(ecx), "+S"(esi), "+D"(edi) : : "memory");
  printf("a16 rep movsb: ECX 0x%08x ESI 0x%08x EDI 0x%08x, copied %s\n", ecx, esi, edi,
         low[0xc0] == low[0] && low[0xc4] == low[4] && low[0xc5] != low[5] ? "5 bytes" : "wrong");
  CHECK_EQ(ecx, 0xabcd0000);
  CHECK_EQ(esi, 0x12347805);
  CHECK_EQ(edi, 0x567878c5);
  ecx = 0xffff0003;
  edi = 0x999978d0;
  __asm__ volatile("movl $0x4242, %%eax\n\taddr16 rep stosw" : "+c"(ecx), "+D"(edi) : : "eax", "memory");
  printf("a16 rep stosw: ECX 0x%08x EDI 0x%08x, words %04x %04x %04x\n", ecx, edi,
         *(volatile uint16_t *)(LOW + 0xd0), *(volatile uint16_t *)(LOW + 0xd2), *(volatile uint16_t *)(LOW + 0xd4));
  CHECK_EQ(ecx, 0xffff0000);
  CHECK_EQ(edi, 0x999978d6);
  low[0xe7] = 0x77;
  ecx = 0x00010100;
  edi = 0x000078e0;
  __asm__ volatile("movb $0x77, %%al\n\taddr16 repne scasb" : "+c"(ecx), "+D"(edi) : : "eax", "memory", "cc");
  printf("a16 repne scasb: found after %u bytes, ECX 0x%08x\n", edi - 0x78e0, ecx);
  CHECK_EQ(edi, 0x78e8);
  CHECK_EQ(ecx, 0x000100f8);

  /* Near JMP through [bx] with a 32-bit operand: the full target. */
  extern char addr16_landed[];
  *(volatile uint32_t *)(LOW + 0xf0) = (uint32_t)addr16_landed;
  r1 = 0;
  __asm__ volatile("movl $0x78f0, %%ebx\n\taddr16 jmp *(%%bx)\n\tmovl $1, %0\n"
                   ".globl addr16_landed\naddr16_landed:\n\tmovl $2, %0"
                   : "+r"(r1) : : "ebx", "memory");
  printf("jmp [bx]: %s\n", r1 == 2 ? "landed" : "fell through");
  CHECK_EQ(r1, 2);
  rt_finish();
}
