/* ioperm: the TSS I/O permission bitmap.  Ring 3 (IOPL 0) runs IN/OUT and
 * INS/OUTS against a TSS whose bitmap clears the bits of some ports: those
 * work, the others raise #GP(0); a word or dword access needs every one of
 * its ports' bits clear; a bitmap that starts beyond the TSS limit, or whose
 * word for a port lies beyond it, allows nothing.
 * Ports used: 0x80 (POST, writes ignored), 0x70/0x71 (CMOS index/data, read
 * back), 0x3f8-0x3ff (COM1: ring 3 prints a line itself through OUTS). */
#include "rt.h"

#define SEL_IOTSS 0x30

static uint64_t gdt[7] __attribute__((aligned(8)));
static struct {
  struct tss tss;
  uint8_t bitmap[8192];
  uint8_t end; /* the byte after the bitmap must have all bits set */
} __attribute__((packed)) io_tss;

static void allow(uint16_t port) { io_tss.bitmap[port / 8] &= (uint8_t) ~(1u << (port % 8)); }

static void set_limit(uint32_t limit)
{
  uint64_t base = (uint32_t)&io_tss;
  gdt[SEL_IOTSS >> 3] = (limit & 0xffff) | (base & 0xffffff) << 16 | (uint64_t)0x89 << 40 |
                        (uint64_t)((limit >> 16) & 0xf) << 48 | (base >> 24) << 56;
}

static void load_io_tss(uint32_t limit)
{
  /* The previous TR (if it is this TSS) is busy: make the descriptor available again, then LTR. */
  set_limit(limit);
  __asm__ volatile("ltr %w0" : : "r"((uint16_t)SEL_IOTSS));
}

static void setup(void)
{
  struct __attribute__((packed)) { uint16_t lim; uint32_t base; } d;
  __asm__ volatile("sgdt %0" : "=m"(d));
  memcpy(gdt, (void *)d.base, 6 * 8);
  d.lim = sizeof gdt - 1;
  d.base = (uint32_t)gdt;
  __asm__ volatile("lgdt %0" : : "m"(d));
  io_tss.tss = rt_tss; /* the same ring-0 stack for exceptions from ring 3 */
  io_tss.tss.iomap = sizeof(struct tss);
  memset(io_tss.bitmap, 0xff, sizeof io_tss.bitmap);
  io_tss.end = 0xff;
  allow(0x80);
  allow(0x70);
  allow(0x71);
  for (uint16_t p = 0x3f8; p < 0x400; p++)
    allow(p);
  load_io_tss(sizeof io_tss - 1);
}

static volatile uint32_t g_port, g_val;
static void do_outb(void) { __asm__ volatile("outb %b0, %w1" : : "a"(g_val), "Nd"((uint16_t)g_port)); }
static void do_outw(void) { __asm__ volatile("outw %w0, %w1" : : "a"(g_val), "Nd"((uint16_t)g_port)); }
static void do_outl(void) { __asm__ volatile("outl %0, %w1" : : "a"(g_val), "Nd"((uint16_t)g_port)); }
static void do_inb(void)
{
  uint8_t v;
  __asm__ volatile("inb %w1, %b0" : "=a"(v) : "Nd"((uint16_t)g_port));
  g_val = v;
}
static void do_cmos_read(void)
{
  /* CMOS index 0x0e: a plain RAM byte, the same whoever reads it */
  __asm__ volatile("outb %b0, $0x70" : : "a"(0x0e));
  uint8_t v;
  __asm__ volatile("inb $0x71, %b0" : "=a"(v));
  g_val = v;
}
static const char ring3_line[] = "ring 3 wrote this line through OUTSB\n";
static void do_outsb_line(void)
{
  for (const char *p = ring3_line; *p; p++) {
    uint8_t lsr;
    do {
      __asm__ volatile("inb %w1, %b0" : "=a"(lsr) : "Nd"((uint16_t)0x3fd));
    } while (!(lsr & 0x20));
    uint32_t n = 1, s = (uint32_t)p;
    __asm__ volatile("rep outsb" : "+c"(n), "+S"(s) : "d"((uint16_t)0x3f8) : "memory");
  }
}
static uint8_t ins_buf[4];
static void do_insb(void)
{
  uint32_t n = 1, d = (uint32_t)ins_buf;
  __asm__ volatile("rep insb" : "+c"(n), "+D"(d) : "d"((uint16_t)g_port) : "memory");
}

static int ring3(void (*fn)(void), uint16_t port, uint32_t val)
{
  struct trap_info ti;
  g_port = port;
  g_val = val;
  int v = trap_call(fn, 1, &ti);
  if (v == 13)
    CHECK_EQ(ti.err, 0);
  return v;
}

static const char *res(int v) { return v == -1 ? "ok" : v == 13 ? "#GP" : "other"; }

int main(void)
{
  setup();
  printf("TR 0x%x, bitmap allows 0x70 0x71 0x80 0x3f8-0x3ff\n", SEL_IOTSS);
  struct { const char *what; void (*fn)(void); uint16_t port; int want; } cases[] = {
      {"outb 0x80", do_outb, 0x80, -1},
      {"outb 0x81", do_outb, 0x81, 13},
      {"outw 0x80 (0x80-0x81)", do_outw, 0x80, 13},
      {"outw 0x70 (0x70-0x71)", do_outw, 0x70, -1},
      {"outl 0x70 (0x70-0x73)", do_outl, 0x70, 13},
      {"outb 0x7f", do_outb, 0x7f, 13},
      {"inb 0x3fd", do_inb, 0x3fd, -1},
      {"inb 0x3f7", do_inb, 0x3f7, 13},
      {"inb 0x400", do_inb, 0x400, 13},
      {"insb 0x3fd", do_insb, 0x3fd, -1},
      {"insb 0x61", do_insb, 0x61, 13},
      {"outb 0xffff (last port)", do_outb, 0xffff, 13},
  };
  for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int v = ring3(cases[i].fn, cases[i].port, 0);
    printf("ring 3 %s: %s\n", cases[i].what, res(v));
    CHECK_EQ(v, cases[i].want);
  }
  int v = ring3(do_cmos_read, 0, 0);
  uint8_t direct;
  outb(0x70, 0x0e);
  direct = inb(0x71);
  printf("ring 3 CMOS read through 0x70/0x71: %s, same as ring 0 %s\n", res(v), g_val == direct ? "yes" : "no");
  CHECK_EQ(v, -1);
  CHECK_EQ(g_val, direct);
  v = ring3(do_outsb_line, 0, 0);
  CHECK_EQ(v, -1);

  /* A limit that ends inside the bitmap: ports whose word lies beyond it fault. */
  load_io_tss(sizeof(struct tss) + 0x80 / 8); /* the word for 0x80 is bytes 16-17: beyond */
  v = ring3(do_outb, 0x80, 0);
  printf("limit ends before port 0x80's word: outb 0x80 %s\n", res(v));
  CHECK_EQ(v, 13);
  v = ring3(do_outb, 0x70, 0);
  printf("limit ends before port 0x80's word: outb 0x70 %s\n", res(v));
  CHECK_EQ(v, -1);

  /* The bitmap offset beyond the limit: nothing is allowed (as with the runtime's own TSS). */
  io_tss.tss.iomap = 0x2000;
  load_io_tss(sizeof io_tss - 1);
  v = ring3(do_outb, 0x80, 0);
  printf("bitmap beyond the limit: outb 0x80 %s\n", res(v));
  CHECK_EQ(v, 13);
  io_tss.tss.iomap = sizeof(struct tss);

  rt_finish();
}
