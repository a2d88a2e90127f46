/* pmode16: 16-bit protected-mode code and segments with non-zero bases.
 *   A 16-bit code segment based at 0x10000 entered by a 32-bit far call (and
 *   left by an o32 RETF): DS and ES based at 0x20000 and 0x30000 (a 16-bit and
 *   a 32-bit data segment), a 16-bit stack segment (B = 0) whose SP wraps
 *   from 0 to 0xfffe;
 *   INT 0x62 through a 16-bit (286) interrupt gate (a word frame: IP, CS,
 *   FLAGS; IF cleared) and #DE through a 16-bit trap gate, both returning
 *   with a 16-bit IRET;
 *   LAR, LSL, VERR, VERW and ARPL on data, code, system (TSS, LDT), null and
 *   out-of-table selectors;
 *   a 16-bit IRET to ring 3 (SP and SS as words), where CPL 3 shows in CS,
 *   LAR sees a conforming DPL-0 code segment, VERR refuses DPL-0 data, and
 *   INT 0x62 through the DPL-3 16-bit gate switches to the ring-0 stack of the
 *   32-bit TSS and pushes SS, SP, FLAGS, CS, IP as words;
 *   32-bit code with DS = ES based at 0x30000 (a store, REP MOVSB) and a far
 *   call to 32-bit code in a segment based at 0x40000 (a near CALL there
 *   pushes the offset from that base). */
#include "rt.h"
#include "pmode16.h"

extern char pm16_start[], pm16_end[], pm16_int62[], pm16_int63[], pm16_de[], pm16_int62_ret[], pm16_de_site[];
extern char pm16_ring3[], pm16_ring3_int[];
extern char pm32_start[], pm32_end[], pm32_ret_site[];
extern void pm16_run(void);
extern void pm32_nonflat(void);

static uint64_t gdt[GDT_ENTRIES] __attribute__((aligned(8)));
static uint64_t ldt[2] __attribute__((aligned(8)));

static uint32_t off16(char *l) { return (uint32_t)(l - pm16_start); }

/* An IDT entry for a 16-bit gate (type 6 interrupt, 7 trap) to SEL_CODE16. */
static void idt_gate16(int vec, uint32_t offset, unsigned type, unsigned dpl)
{
  struct __attribute__((packed)) { uint16_t lim; uint32_t base; } d;
  __asm__ volatile("sidt %0" : "=m"(d));
  uint64_t *idt = (uint64_t *)d.base;
  idt[vec] = (offset & 0xffff) | ((uint64_t)SEL_CODE16 << 16) | ((uint64_t)(0x80 | (dpl << 5) | type) << 40);
}

static void setup(void)
{
  gdt_extend(gdt, GDT_ENTRIES);
  gdt[SEL_CODE16 >> 3] = seg_desc(CODE16_BASE, 0xffff, 0x9a, 0x0);
  gdt[SEL_DATA16 >> 3] = seg_desc(DATA16_BASE, 0xffff, 0x92, 0x0);
  gdt[SEL_DATA32 >> 3] = seg_desc(DATA32_BASE, 0x3fff, 0x92, 0xc);
  gdt[SEL_CODE32 >> 3] = seg_desc(CODE32_BASE, 0xfffff, 0x9a, 0x4);
  gdt[SEL_STACK16 >> 3] = seg_desc(STACK16_BASE, 0xffff, 0x92, 0x0);
  gdt[SEL_CODE16_R3 >> 3] = seg_desc(CODE16_BASE, 0xffff, 0xfa, 0x0);
  gdt[SEL_DATA16_R3 >> 3] = seg_desc(DATA16_BASE, 0xffff, 0xf2, 0x0);
  gdt[SEL_STACK16_R3 >> 3] = seg_desc(STACK16_R3_BASE, 0xffff, 0xf2, 0x0);
  gdt[SEL_DATA16_DPL3_NOWRITE >> 3] = seg_desc(DATA16_BASE, 0xffff, 0xf0, 0x0);
  gdt[SEL_CONFORMING >> 3] = seg_desc(0, 0xfffff, 0x9e, 0xc);
  gdt[SEL_LDT >> 3] = seg_desc((uint32_t)ldt, sizeof ldt - 1, 0x82, 0x0);
  idt_gate16(0x62, off16(pm16_int62), 0x6, 3);
  idt_gate16(0x63, off16(pm16_int63), 0x6, 3);
  idt_gate16(0, off16(pm16_de), 0x7, 0);
  pic_init(0x20, 0x28);  /* every line masked: STI below takes no interrupt */
}

static volatile uint8_t *const res8 = (volatile uint8_t *)DATA16_BASE;
static uint16_t w(int o) { return (uint16_t)(res8[o] | res8[o + 1] << 8); }
static uint32_t d32(int o) { return (uint32_t)w(o) | (uint32_t)w(o + 2) << 16; }

int main(void)
{
  setup();
  memcpy((void *)CODE16_BASE, pm16_start, (size_t)(pm16_end - pm16_start));
  memcpy((void *)CODE32_BASE, pm32_start, (size_t)(pm32_end - pm32_start));
  memset((void *)DATA16_BASE, 0, R_END);
  printf("16-bit code: %u bytes at 0x%x; 32-bit code at 0x%x\n", (unsigned)(pm16_end - pm16_start), CODE16_BASE,
         CODE32_BASE);

  pm16_run();
  printf("back in 32-bit code\n");
  printf("DS base 0x%x: 0x%x; ES base 0x%x: 0x%x; 16-bit stack: SP 0 -> push -> 0x%x, word at its base + 0xfffe "
         "0x%x\n",
         DATA16_BASE, w(R_BASE_WRITE), DATA32_BASE, *(volatile uint32_t *)(DATA32_BASE + 0x20), w(R_SP_AFTER),
         w(R_STACK_WORD));
  CHECK_EQ(w(R_BASE_WRITE), 0xbeef);
  CHECK_EQ(*(volatile uint16_t *)(DATA16_BASE + 0x100), 0xbeef);
  CHECK_EQ(*(volatile uint32_t *)(DATA32_BASE + 0x20), 0x55667788);
  CHECK_EQ(w(R_SP_AFTER), 0xfffe);
  CHECK_EQ(w(R_STACK_WORD), 0x1234);
  printf("int 0x62 (16-bit interrupt gate): 21 -> %u, IP %s, CS 0x%x, IF in the handler %u, frame %u bytes\n",
         w(R_INT62_AX), w(R_INT62_IP) == off16(pm16_int62_ret) ? "= return" : "wrong", w(R_INT62_CS),
         w(R_INT62_IF) >> 9, w(R_INT62_FRAME));
  CHECK_EQ(w(R_INT62_AX), 43);
  CHECK_EQ(w(R_INT62_IP), off16(pm16_int62_ret));
  CHECK_EQ(w(R_INT62_CS), SEL_CODE16);
  CHECK_EQ(w(R_INT62_IF), 0);
  CHECK_EQ(w(R_INT62_FRAME), 6);
  printf("#DE (16-bit trap gate): %u, IP %s\n", w(R_DE_COUNT), w(R_DE_IP) == off16(pm16_de_site) ? "= the div" : "wrong");
  CHECK_EQ(w(R_DE_COUNT), 1);
  CHECK_EQ(w(R_DE_IP), off16(pm16_de_site));

  static const char *const lar_names[6] = {"data16", "code16 DPL 3 (never loaded)", "TSS", "LDT", "null", "beyond the GDT"};
  static const uint32_t lar_expect[6] = {0x00009300, 0x0000fa00, 0x00008b00, 0x00008200, 0xeeeeeeee, 0xeeeeeeee};
  static const uint16_t lar_zf[6] = {1, 1, 1, 1, 0, 0};
  for (int i = 0; i < 6; i++) {
    printf("lar %s: 0x%x ZF %u\n", lar_names[i], d32(R_LAR + 6 * i), w(R_LAR + 6 * i + 4));
    CHECK_EQ(d32(R_LAR + 6 * i), lar_expect[i]);
    CHECK_EQ(w(R_LAR + 6 * i + 4), lar_zf[i]);
  }
  static const char *const lsl_names[3] = {"data32 (4 KiB granular)", "TSS", "code16"};
  static const uint32_t lsl_expect[3] = {0x3ffffff, sizeof(struct tss) - 1, 0xffff};
  for (int i = 0; i < 3; i++) {
    printf("lsl %s: 0x%x ZF %u\n", lsl_names[i], d32(R_LSL + 6 * i), w(R_LSL + 6 * i + 4));
    CHECK_EQ(d32(R_LSL + 6 * i), lsl_expect[i]);
    CHECK_EQ(w(R_LSL + 6 * i + 4), 1);
  }
  printf("verr data16 %u code16 %u read-only %u beyond %u; verw %u %u %u %u\n", w(R_VERR), w(R_VERR + 2),
         w(R_VERR + 4), w(R_VERR + 6), w(R_VERW), w(R_VERW + 2), w(R_VERW + 4), w(R_VERW + 6));
  CHECK(w(R_VERR) == 1 && w(R_VERR + 2) == 1 && w(R_VERR + 4) == 1 && w(R_VERR + 6) == 0);
  CHECK(w(R_VERW) == 1 && w(R_VERW + 2) == 0 && w(R_VERW + 4) == 0 && w(R_VERW + 6) == 0);
  printf("arpl 0x38 by RPL 3: 0x%x ZF %u; again by RPL 1: 0x%x ZF %u\n", w(R_ARPL), w(R_ARPL + 2), w(R_ARPL + 4),
         w(R_ARPL + 6));
  CHECK_EQ(w(R_ARPL), 0x3b);
  CHECK_EQ(w(R_ARPL + 2), 1);
  CHECK_EQ(w(R_ARPL + 4), 0x3b);
  CHECK_EQ(w(R_ARPL + 6), 0);

  printf("ring 3 (16-bit): CPL %u, lar conforming DPL 0 ZF %u, verr DPL-0 data ZF %u\n", w(R_R3_CPL),
         w(R_R3_LAR_CONF), w(R_R3_VERR_DATA0));
  CHECK_EQ(w(R_R3_CPL), 3);
  CHECK_EQ(w(R_R3_LAR_CONF), 1);
  CHECK_EQ(w(R_R3_VERR_DATA0), 0);
  printf("int 0x62 from ring 3: IP %s CS 0x%x FLAGS IOPL %u SP 0x%x SS 0x%x\n",
         w(R_R3_FRAME) == off16(pm16_ring3_int) + 2 ? "= return" : "wrong", w(R_R3_FRAME + 2),
         (w(R_R3_FRAME + 4) >> 12) & 3, w(R_R3_FRAME + 6), w(R_R3_FRAME + 8));
  CHECK_EQ(w(R_R3_FRAME), off16(pm16_ring3_int) + 2);
  CHECK_EQ(w(R_R3_FRAME + 2), SEL_CODE16_R3);
  CHECK_EQ(w(R_R3_FRAME + 6), 0x1000);
  CHECK_EQ(w(R_R3_FRAME + 8), SEL_STACK16_R3);

  pm32_nonflat();
  const uint32_t ret_off = (uint32_t)(pm32_ret_site - pm32_start);
  printf("32-bit code, DS base 0x%x: store 0x%x, rep movsb 0x%x; CS base 0x%x: call pushed offset %s\n", DATA32_BASE,
         *(volatile uint32_t *)(DATA32_BASE + 0x100), *(volatile uint32_t *)(DATA32_BASE + 0x200), CODE32_BASE,
         *(volatile uint32_t *)(DATA32_BASE + 0x300) == ret_off ? "= the return offset" : "wrong");
  CHECK_EQ(*(volatile uint32_t *)(DATA32_BASE + 0x100), 0xa1b2c3d4);
  CHECK_EQ(*(volatile uint32_t *)(DATA32_BASE + 0x200), 0xa1b2c3d4);
  CHECK_EQ(*(volatile uint32_t *)(DATA32_BASE + 0x300), ret_off);
  rt_finish();
}
