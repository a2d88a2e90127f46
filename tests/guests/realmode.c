/* realmode: drops from protected mode to real mode (through a 16-bit code
 * segment, PE cleared, a far jump), runs a 16-bit program and comes back:
 *   the 16-bit stack wrapping (SP 0 -> 0xfffe), arithmetic with 16- and
 *   32-bit operands (flags, mul/div/imul, add/adc, cbw/cwd, rol);
 *   DS/ES/FS/GS with different bases (an alias of DS:8000 through FS),
 *   [BX+SI] and [DI+disp] wrapping at 64 KiB, BP addressing through SS,
 *   32-bit addressing, LDS;
 *   near and far calls and returns (direct, through a register and memory,
 *   RET 4, RETF 2), one routine entered through a second CS value (an alias
 *   of the same linear code), a jump table through CS:[BX], a far JMP;
 *   INT 0x60 through an IVT handler it installed (the pushed IP/CS/FLAGS,
 *   IF cleared in the handler), also from the aliased CS; #DE through the
 *   IVT (faulting IP pushed, the handler skips the DIV);
 *   REP MOVSB/MOVSW/STOSW, REPE CMPSB, REPNE SCASB, REP STOSB with DI
 *   wrapping past 0xffff, a backward MOVSB (DF), LODSB with a CS override
 *   printing a line through COM1 (IN/OUT polling the LSR);
 *   LOOP counting in CX (ECX's upper half kept), JCXZ, LOOPNE, ENTER/LEAVE,
 *   PUSHA/POPA, 16- and 32-bit LEA of a wrapping 16-bit address, XLAT,
 *   POPF/PUSHF, SMSW, BSF, SETC, CMOVA, MOVSX, XCHG, AAM, a 32-bit push;
 *   the PIT's IRQ0 in real mode through the IVT (sti; hlt);
 *   then PE set again and a far jump back to 32-bit code.
 * The program stores what it sees at CS:RES_OFF; this side prints it. */
#include "rt.h"
#include "realmode.h"

extern char rm_start[], rm_end[];
extern void rm_call(void);

static uint64_t gdt[8] __attribute__((aligned(8)));

static uint64_t seg16(uint32_t base, uint8_t access)
{
  return 0xffffull | ((uint64_t)(base & 0xffffff) << 16) | ((uint64_t)access << 40) | ((uint64_t)(base >> 24) << 56);
}

static void setup_gdt(void)
{
  struct __attribute__((packed)) { uint16_t lim; uint32_t base; } d;
  __asm__ volatile("sgdt %0" : "=m"(d));
  memcpy(gdt, (void *)d.base, 6 * 8);
  gdt[SEL_CODE16 >> 3] = seg16(RM_STUB, 0x9a);
  gdt[SEL_DATA16 >> 3] = seg16(0, 0x92);
  d.lim = sizeof gdt - 1;
  d.base = (uint32_t)gdt;
  __asm__ volatile("lgdt %0" : : "m"(d));
}

static volatile uint8_t *const res8 = (volatile uint8_t *)(RM_STUB + RES_OFF);
static uint16_t w(int off) { return (uint16_t)(res8[off] | res8[off + 1] << 8); }
static uint32_t d32(int off) { return (uint32_t)w(off) | (uint32_t)w(off + 2) << 16; }
static uint8_t lin8(uint32_t a) { return *(volatile uint8_t *)a; }
static uint16_t lin16(uint32_t a) { return *(volatile uint16_t *)a; }
#define OFF(l) ((uint32_t)((l) - rm_start))

extern char int60_return[], de_site[];

int main(void)
{
  uint32_t size = (uint32_t)(rm_end - rm_start);
  printf("16-bit program: %u bytes at 0x%x, CS 0x%x\n", size, RM_STUB, RM_CS);
  CHECK(size < RES_OFF);
  setup_gdt();
  memcpy((void *)RM_STUB, rm_start, size);
  memset((void *)(RM_STUB + RES_OFF), 0, R_END);
  pic_init(0x20, 0x28);
  pit_periodic(1000);

  rm_call();
  pic_mask_all();
  printf("back in protected mode\n");

  printf("stack: SP 0 -> push -> 0x%x, pop -> 0x%x, popped 0x%x, at linear SS*16+0xfffe 0x%x\n", w(R_SP_PUSH),
         w(R_SP_POP), w(R_POPPED), w(R_SP_WORD));
  CHECK_EQ(w(R_SP_PUSH), 0xfffe);
  CHECK_EQ(w(R_SP_POP), 0);
  CHECK_EQ(w(R_POPPED), 0x1234);
  CHECK_EQ(w(R_SP_WORD), 0x1234);

  printf("add 0x%x flags 0x%x; mul 0x%x:0x%x; div q %u r %u; imul 0x%x:0x%x\n", w(R_ADD), w(R_ADD_FLAGS),
         w(R_MUL_HI), w(R_MUL_LO), w(R_DIV_Q), w(R_DIV_R), w(R_IMUL_HI), w(R_IMUL_LO));
  CHECK_EQ(w(R_ADD), 0x0241);
  CHECK_EQ(w(R_MUL_HI) << 16 | w(R_MUL_LO), 37000);
  CHECK_EQ(w(R_DIV_Q), 50000 / 7);
  CHECK_EQ(w(R_DIV_R), 50000 % 7);
  CHECK_EQ((uint32_t)(w(R_IMUL_HI) << 16 | w(R_IMUL_LO)), (uint32_t)-7500);
  printf("32-bit: add 0x%x, add/adc 0x%x:%08x; cbw 0x%x cwd 0x%x; rol+xchg 0x%x\n", d32(R_ADD32), d32(R_ADC_HI),
         d32(R_ADC_LO), w(R_CBW), w(R_CWD), w(R_ROL));
  CHECK_EQ(d32(R_ADD32), 0x23456789);
  CHECK_EQ(d32(R_ADC_LO), 0x10);
  CHECK_EQ(d32(R_ADC_HI), 1);
  CHECK_EQ(w(R_CBW), 0xfff0);
  CHECK_EQ(w(R_CWD), 0xffff);
  CHECK_EQ(w(R_ROL), 0x0300);

  printf("segments: FS alias 0x%x; DS 0x%x ES 0x%x GS 0x%x at their bases + 0x10\n", w(R_FS_ALIAS),
         lin16(RM_DS * 16 + 0x10), lin16(RM_ES * 16 + 0x10), lin16(RM_GS * 16 + 0x10));
  CHECK_EQ(w(R_FS_ALIAS), 0xaaaa);
  CHECK_EQ(lin16(RM_DS * 16 + 0x8010), 0xaaaa);
  CHECK_EQ(lin16(RM_DS * 16 + 0x10), 0xdddd);
  CHECK_EQ(lin16(RM_ES * 16 + 0x10), 0xbbbb);
  CHECK_EQ(lin16(RM_GS * 16 + 0x10), 0xcccc);
  printf("64 KiB wrap: [bx+si] -> DS:0020 = 0x%x; [di+2] -> ES:0001, read back 0x%x\n", lin8(RM_DS * 16 + 0x20),
         w(R_WRAP));
  CHECK_EQ(lin8(RM_DS * 16 + 0x20), 0x5a);
  CHECK_EQ(w(R_WRAP), 0xa55a);
  CHECK_EQ(lin8(RM_DS * 16 + 0x10020), 0);  /* nothing went past the segment */
  printf("[bp] through SS 0x%x; a32 [ebx+ecx*2] 0x%x; lds 0x%x:0x%x\n", w(R_BP_SS), w(R_A32), w(R_LDS_DS),
         w(R_LDS_SI));
  CHECK_EQ(w(R_BP_SS), 0x7777);
  CHECK_EQ(w(R_A32), 0x4242);
  CHECK_EQ(w(R_LDS_DS), 0x2345);
  CHECK_EQ(w(R_LDS_SI), 0x0123);

  printf("calls: sum %u, SP after 0x%x, aliased CS 0x%x, jump table %u, far jmp CS 0x%x\n", w(R_CALLS),
         w(R_SP_CALLS), w(R_ALIAS_CS), w(R_JTAB), w(R_FARJMP));
  CHECK_EQ(w(R_CALLS), 6 + 5 + 6 + 7);
  CHECK_EQ(w(R_SP_CALLS), 0);
  CHECK_EQ(w(R_ALIAS_CS), RM_CS + 0x10);
  CHECK_EQ(w(R_JTAB), 102);
  CHECK_EQ(w(R_FARJMP), RM_CS + 0x20);

  printf("int 0x60: ax 21 -> %u; pushed IP %s CS 0x%x, IF in handler %u, pushed IF %u; from CS 0x%x\n",
         w(R_INT60), w(R_INT_IP) == OFF(int60_return) ? "= return" : "wrong", w(R_INT_CS), w(R_INT_IF) >> 9,
         w(R_INT_SAVED_IF) >> 9, w(R_INT_CS_ALIAS));
  CHECK_EQ(w(R_INT60), 43);
  CHECK_EQ(w(R_INT_IP), OFF(int60_return));
  CHECK_EQ(w(R_INT_CS), RM_CS);
  CHECK_EQ(w(R_INT_IF), 0);
  CHECK_EQ(w(R_INT_SAVED_IF), 0x200);
  CHECK_EQ(w(R_INT_CS_ALIAS), RM_CS + 0x10);
  printf("#DE: %u, pushed IP %s, resumed after it: %s\n", w(R_DE_COUNT),
         w(R_DE_IP) == OFF(de_site) ? "= the div" : "wrong", w(R_DE_DONE) == 0xd0e ? "yes" : "no");
  CHECK_EQ(w(R_DE_COUNT), 1);
  CHECK_EQ(w(R_DE_IP), OFF(de_site));
  CHECK_EQ(w(R_DE_DONE), 0xd0e);

  int copy_ok = 1, words_ok = 1, stos_ok = 1;
  for (int i = 0; i < 37; i++) copy_ok &= lin8(RM_ES * 16 + 0x200 + i) == (uint8_t)(1 + 3 * i);
  copy_ok &= lin8(RM_ES * 16 + 0x200 + 37) == 0;
  for (int i = 0; i < 20; i++) words_ok &= lin8(RM_ES * 16 + 0x300 + i) == (uint8_t)(1 + 3 * i);
  for (int i = 0; i < 8; i++) stos_ok &= lin16(RM_ES * 16 + 0x400 + 2 * i) == 0xbeef;
  int wrap_ok = 1;
  for (int i = 0; i < 4; i++) wrap_ok &= lin8(RM_ES * 16 + 0xfffc + i) == 0x77 && lin8(RM_ES * 16 + i) == 0x77;
  int back_ok = 1;
  for (int i = 0; i < 5; i++) back_ok &= lin8(RM_ES * 16 + 0x500 + i) == (uint8_t)(1 + 3 * i);
  printf("strings: movsb %s, movsw %s, stosw %s; cmpsb CX %u SI 0x%x; scasb DI 0x%x; stosb wrap DI 0x%x %s; "
         "std movsb SI 0x%x %s\n",
         copy_ok ? "ok" : "bad", words_ok ? "ok" : "bad", stos_ok ? "ok" : "bad", w(R_CMPS_CX), w(R_CMPS_SI),
         w(R_SCAS_DI), w(R_WRAP_DI), wrap_ok ? "ok" : "bad", w(R_STD_SI), back_ok ? "ok" : "bad");
  CHECK(copy_ok && words_ok && stos_ok && wrap_ok && back_ok);
  CHECK_EQ(w(R_CMPS_CX), 2);
  CHECK_EQ(w(R_CMPS_SI), 0x126);
  CHECK_EQ(w(R_SCAS_DI), 0x206);
  CHECK_EQ(w(R_WRAP_DI), 4);
  CHECK_EQ(w(R_STD_SI), 0xff);

  printf("loop: %u, ECX 0x%x; jcxz %u; loopne CX %u; enter SP-BP %u, leave restores SP: %s\n", w(R_LOOP_N),
         d32(R_LOOP_ECX), w(R_JCXZ), w(R_LOOPNE), w(R_ENTER_BP), w(R_LEAVE_SP) == 0 ? "yes" : "no");
  CHECK_EQ(w(R_LOOP_N), 3);
  CHECK_EQ(d32(R_LOOP_ECX), 0x12340000);
  CHECK_EQ(w(R_JCXZ), 2);
  CHECK_EQ(w(R_LOOPNE), 6);
  CHECK_EQ(w(R_ENTER_BP), 2);
  CHECK_EQ(w(R_LEAVE_SP), 0);
  printf("popa:");
  for (int i = 0; i < 8; i++) printf(" %x", w(R_POPA + 2 * i));
  printf("\n");
  static const uint16_t popa_expect[8] = {0x1111, 0x2222, 0x3333, 0x4444, 0, 0x5555, 0x6666, 0x7777};
  for (int i = 0; i < 8; i++)
    if (i != 4) CHECK_EQ(w(R_POPA + 2 * i), popa_expect[i]);
  printf("lea16 0x%x lea32 0x%x xlat %u popf 0x%x smsw 0x%x\n", w(R_LEA16), d32(R_LEA32), res8[R_XLAT],
         w(R_POPF), w(R_SMSW) & 0x1f);
  CHECK_EQ(w(R_LEA16), 0x15);
  CHECK_EQ(d32(R_LEA32), 0x15);
  CHECK_EQ(res8[R_XLAT], 28);
  CHECK_EQ(w(R_POPF), 0x08d5);
  CHECK_EQ(w(R_SMSW) & 1, 0);
  printf("bsf %u setc %u cmova %u movsx 0x%x xchg 0x%x aam 0x%x; push32 0x%x SP -%u\n", w(R_MISC), w(R_MISC + 2),
         w(R_MISC + 4), w(R_MISC + 6), w(R_MISC + 8), w(R_MISC + 10), d32(R_PUSH32), w(R_SP_PUSH32));
  CHECK_EQ(w(R_MISC), 9);
  CHECK_EQ(w(R_MISC + 2), 1);
  CHECK_EQ(w(R_MISC + 4), 7);
  CHECK_EQ(w(R_MISC + 6), 0xff80);
  CHECK_EQ(w(R_MISC + 8), 0x5678);
  CHECK_EQ(w(R_MISC + 10), 0x0709);
  CHECK_EQ(d32(R_PUSH32), 0xcafef00d);
  CHECK_EQ(w(R_SP_PUSH32), 4);
  printf("timer interrupts in real mode: at least 5: %s\n", w(R_TICKS) >= 5 ? "yes" : "no");
  CHECK(w(R_TICKS) >= 5);
  rt_finish();
}
