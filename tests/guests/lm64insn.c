/* lm64insn: 64-bit instructions whose results are printed: 64-bit
 * immediates, RIP-relative addressing, 32-bit operations zeroing bits 63:32
 * (16/8-bit ones keeping them), sign extension, 128-bit MUL/IMUL/DIV/IDIV,
 * shifts and rotates with counts mod 64, SHLD/SHRD, R8-R15 and SIL/DIL/R8B,
 * BSWAP, BSR/BSF, a 128-bit ADD/ADC, PUSH/POP of 8 bytes.  The known answers
 * were computed in Python; the expected output is qemu-system-x86_64's (-cpu qemu64). */
#include "lm64.h"

extern volatile uint64_t ins_out[40];
extern char ins_run[];

static const struct { const char *what; uint64_t want; } results[] = {
  { "movabs imm64", 0x0123456789abcdefull },
  { "RIP-relative load", 0x8877665544332211ull },
  { "RIP-relative lea - absolute address", 0 },
  { "mov $5, %eax after rax = -1", 5 },
  { "add $0, %eax after rax = -1", 0xffffffffull },
  { "mov to %ax and %al after rax = -1", 0xffffffffffff1256ull },
  { "movslq 0x80000000", 0xffffffff80000000ull },
  { "cltq 0x7ffffffe", 0x7ffffffeull },
  { "cqo of INT64_MIN: rdx", 0xffffffffffffffffull },
  { "and $0x80000000, -1 (imm32 sign-extended)", 0xffffffff80000000ull },
  { "mulq: low", 0x2236d88fe5618cf0ull },
  { "mulq: high", 0x0121fa00ad77d742ull },
  { "imulq -3 * INT64_MAX: low", 0x8000000000000003ull },
  { "imulq -3 * INT64_MAX: high", 0xfffffffffffffffeull },
  { "divq 0x1_23456789abcdef01 / 0xfedcba98: quotient", 0x124924925ull },
  { "divq: remainder", 0x1a019f09ull },
  { "idivq -0x123456789abcdef0 / 0x1234: quotient", 0xfffefffb3fe96f95ull },
  { "idivq: remainder", 0xfffffffffffffcccull },
  { "imul $-7", 0xf8091a2b3c4d5e77ull },
  { "shl $63 of 1", 0x8000000000000000ull },
  { "sar $63", 0xffffffffffffffffull },
  { "rol by 67 (3) of 0x8000000000000001", 0xcull },
  { "ror by 67 twice", 0x3000000000000000ull },
  { "shld $12", 0x3456789abcdeffedull },
  { "shrd $20", 0x432103456789abcdull },
  { "r8b:r15b through sil/dil", 0x7788ull },
  { "bswap", 0x8877665544332211ull },
  { "bsr:bsf of 0x800000000010", 0x2f04ull },
  { "add/adc 128-bit: low", 0 },
  { "add/adc 128-bit: high", 1 },
  { "pushq: bytes", 8 },
  { "pushq $-2, popq", 0xfffffffffffffffeull },
};

int main(void)
{
  printf("lm64insn: 64-bit arithmetic, immediates, RIP-relative addressing\n");
  lm64_init(0);
  lm64_call(ins_run, 0, 0);
  for (unsigned i = 0; i < sizeof results / sizeof results[0]; ++i) {
    printf("%s: %llx\n", results[i].what, ins_out[i]);
    CHECK_EQ(ins_out[i], results[i].want);
  }
  rt_finish();
}
