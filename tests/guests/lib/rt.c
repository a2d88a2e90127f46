/* Guest runtime: serial, printf, strings, exit, GDT/IDT/TSS, traps, PIC/PIT/APIC. */
#include "rt.h"

int rt_failures;

/* ------------------------------------------------------------------ serial */
#define COM1 0x3f8
void serial_init(void)
{
  outb(COM1 + 1, 0x00); /* no interrupts */
  outb(COM1 + 3, 0x80); /* DLAB */
  outb(COM1 + 0, 0x01); /* 115200 baud */
  outb(COM1 + 1, 0x00);
  outb(COM1 + 3, 0x03); /* 8N1 */
  outb(COM1 + 2, 0xc7); /* FIFO on, cleared */
  outb(COM1 + 4, 0x03); /* DTR RTS */
}
void putchar_serial(char c)
{
  while (!(inb(COM1 + 5) & 0x20))
    ;
  outb(COM1, (uint8_t)c);
}
void puts_serial(const char *s)
{
  while (*s)
    putchar_serial(*s++);
}

/* ------------------------------------------------------------------ printf */
struct out { char *buf; size_t n, pos; };
static void out_c(struct out *o, char c)
{
  if (o->buf) {
    if (o->pos + 1 < o->n)
      o->buf[o->pos] = c;
  } else {
    putchar_serial(c);
  }
  o->pos++;
}
static void out_num(struct out *o, unsigned long long v, int base, int upper, int neg, int width, int zero, int left)
{
  char tmp[24];
  int len = 0;
  const char *dig = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  do {
    tmp[len++] = dig[v % (unsigned)base];
    v /= (unsigned)base;
  } while (v);
  int total = len + (neg ? 1 : 0);
  if (neg && zero)
    out_c(o, '-');
  if (!left)
    for (; total < width; total++)
      out_c(o, zero ? '0' : ' ');
  if (neg && !zero)
    out_c(o, '-');
  while (len)
    out_c(o, tmp[--len]);
  if (left)
    for (; total < width; total++)
      out_c(o, ' ');
}
static void do_printf(struct out *o, const char *f, va_list ap)
{
  for (; *f; f++) {
    if (*f != '%') {
      out_c(o, *f);
      continue;
    }
    f++;
    int zero = 0, left = 0, width = 0, lng = 0;
    for (;; f++) {
      if (*f == '0') zero = 1;
      else if (*f == '-') left = 1;
      else break;
    }
    if (*f == '*') { width = va_arg(ap, int); f++; }
    while (*f >= '0' && *f <= '9')
      width = width * 10 + (*f++ - '0');
    while (*f == 'l') { lng++; f++; }
    if (*f == 'z') f++;
    if (left) zero = 0;
    switch (*f) {
    case 'd':
    case 'i': {
      long long v = lng >= 2 ? va_arg(ap, long long) : (long long)va_arg(ap, long);
      unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
      out_num(o, u, 10, 0, v < 0, width, zero, left);
      break;
    }
    case 'u':
    case 'x':
    case 'X':
    case 'o': {
      unsigned long long v = lng >= 2 ? va_arg(ap, unsigned long long) : (unsigned long long)va_arg(ap, unsigned long);
      out_num(o, v, *f == 'u' ? 10 : *f == 'o' ? 8 : 16, *f == 'X', 0, width, zero, left);
      break;
    }
    case 'p':
      out_c(o, '0');
      out_c(o, 'x');
      out_num(o, (uintptr_t)va_arg(ap, void *), 16, 0, 0, 8, 1, 0);
      break;
    case 'c': {
      int total = 1;
      if (!left) for (; total < width; total++) out_c(o, ' ');
      out_c(o, (char)va_arg(ap, int));
      if (left) for (; total < width; total++) out_c(o, ' ');
      break;
    }
    case 's': {
      const char *s = va_arg(ap, const char *);
      if (!s) s = "(null)";
      int len = (int)strlen(s), total = len;
      if (!left) for (; total < width; total++) out_c(o, ' ');
      while (*s) out_c(o, *s++);
      if (left) for (; total < width; total++) out_c(o, ' ');
      break;
    }
    case '%':
      out_c(o, '%');
      break;
    case 0:
      return;
    default:
      out_c(o, '%');
      out_c(o, *f);
      break;
    }
  }
}
int vprintf(const char *fmt, va_list ap)
{
  struct out o = { 0, 0, 0 };
  do_printf(&o, fmt, ap);
  return (int)o.pos;
}
int printf(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  int r = vprintf(fmt, ap);
  va_end(ap);
  return r;
}
int vsnprintf(char *buf, size_t n, const char *fmt, va_list ap)
{
  struct out o = { buf, n, 0 };
  do_printf(&o, fmt, ap);
  if (n)
    buf[o.pos < n ? o.pos : n - 1] = 0;
  return (int)o.pos;
}
int snprintf(char *buf, size_t n, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  int r = vsnprintf(buf, n, fmt, ap);
  va_end(ap);
  return r;
}

/* ------------------------------------------------------------------ strings */
void *memcpy(void *d, const void *s, size_t n)
{
  void *r = d;
  __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
  return r;
}
void *memmove(void *d, const void *s, size_t n)
{
  if ((uintptr_t)d <= (uintptr_t)s || (uintptr_t)d >= (uintptr_t)s + n)
    return memcpy(d, s, n);
  void *r = d;
  const char *se = (const char *)s + n - 1;
  char *de = (char *)d + n - 1;
  __asm__ volatile("std; rep movsb; cld" : "+D"(de), "+S"(se), "+c"(n) : : "memory");
  return r;
}
void *memset(void *d, int c, size_t n)
{
  void *r = d;
  __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
  return r;
}
int memcmp(const void *a, const void *b, size_t n)
{
  const unsigned char *x = a, *y = b;
  for (size_t i = 0; i < n; i++)
    if (x[i] != y[i])
      return x[i] < y[i] ? -1 : 1;
  return 0;
}
size_t strlen(const char *s)
{
  size_t n = 0;
  while (s[n])
    n++;
  return n;
}
int strcmp(const char *a, const char *b)
{
  while (*a && *a == *b)
    a++, b++;
  return (unsigned char)*a - (unsigned char)*b;
}
int strncmp(const char *a, const char *b, size_t n)
{
  for (; n; n--, a++, b++) {
    if (*a != *b)
      return (unsigned char)*a - (unsigned char)*b;
    if (!*a)
      return 0;
  }
  return 0;
}
char *strcpy(char *d, const char *s)
{
  char *r = d;
  while ((*d++ = *s++))
    ;
  return r;
}

/* ------------------------------------------------------------------ multiboot */
const char *mb_cmdline(void)
{
  const struct mb_info *mi = (const struct mb_info *)mb_info;
  if (mb_magic != 0x2BADB002 || !mi || !(mi->flags & (1u << 2)) || !mi->cmdline)
    return "";
  return (const char *)mi->cmdline;
}
unsigned long cmdline_ulong(const char *key, unsigned long def)
{
  const char *s = mb_cmdline();
  size_t kl = strlen(key);
  while (*s) {
    while (*s == ' ')
      s++;
    if (!strncmp(s, key, kl) && s[kl] == '=') {
      const char *p = s + kl + 1;
      unsigned long v = 0;
      int base = 10;
      if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        base = 16;
        p += 2;
      }
      for (;; p++) {
        int d;
        if (*p >= '0' && *p <= '9') d = *p - '0';
        else if (base == 16 && *p >= 'a' && *p <= 'f') d = *p - 'a' + 10;
        else if (base == 16 && *p >= 'A' && *p <= 'F') d = *p - 'A' + 10;
        else break;
        v = v * (unsigned)base + (unsigned)d;
      }
      return v;
    }
    while (*s && *s != ' ')
      s++;
  }
  return def;
}

/* ------------------------------------------------------------------ alloc */
extern char __image_end[];
static uintptr_t alloc_next;
void *rt_alloc(size_t size, size_t align)
{
  const struct mb_info *mi = (const struct mb_info *)mb_info;
  uintptr_t limit = 0x100000 + 16u * 1024 * 1024; /* assume 16 MiB without info */
  if (mb_magic == 0x2BADB002 && mi && (mi->flags & 1))
    limit = 0x100000 + (uintptr_t)mi->mem_upper * 1024;
  if (!alloc_next)
    alloc_next = (uintptr_t)__image_end;
  if (align < 16)
    align = 16;
  uintptr_t p = (alloc_next + align - 1) & ~(uintptr_t)(align - 1);
  if (p + size > limit || p + size < p)
    rt_fail_now("out of memory");
  alloc_next = p + size;
  return (void *)p;
}

/* ------------------------------------------------------------------ exit */
void rt_exit(int code)
{
  outb(0xf4, (uint8_t)code); /* isa-debug-exit: status (code << 1) | 1 */
  for (;;)
    __asm__ volatile("cli; hlt");
}
void rt_finish(void)
{
  if (rt_failures) {
    printf("RESULT: FAIL %d\n", rt_failures);
    rt_exit(rt_failures > 100 ? 100 : rt_failures);
  }
  printf("RESULT: PASS\n");
  rt_exit(0);
}
void rt_fail_now(const char *why)
{
  printf("FATAL: %s\n", why);
  rt_failures++;
  rt_finish();
}

/* ------------------------------------------------------------------ GDT / TSS / IDT */
static uint64_t gdt[6];
struct tss rt_tss;
static uint64_t idt[256];
static isr_fn handlers[256];
extern char isr_stubs[];
extern void gdt_reload(uint32_t cs, uint32_t ds);
static uint8_t isr_stack[16384] __attribute__((aligned(16)));
uint8_t rt_user_stack[16384] __attribute__((aligned(4096)));

uint64_t seg_desc(uint32_t base, uint32_t limit, uint8_t access, uint8_t flags)
{
  return (uint64_t)(limit & 0xffff) | ((uint64_t)(base & 0xffffff) << 16) | ((uint64_t)access << 40) |
         ((uint64_t)((limit >> 16) & 0xf) << 48) | ((uint64_t)(flags & 0xf) << 52) | ((uint64_t)(base >> 24) << 56);
}

void gdt_extend(uint64_t *table, unsigned entries)
{
  struct __attribute__((packed)) { uint16_t lim; uint32_t base; } d;
  __asm__ volatile("sgdt %0" : "=m"(d));
  memcpy(table, (void *)d.base, sizeof gdt);
  d.lim = (uint16_t)(entries * 8 - 1);
  d.base = (uint32_t)table;
  __asm__ volatile("lgdt %0" : : "m"(d));
}
static void idt_gate(int vec, uint32_t off, int dpl)
{
  idt[vec] = (uint64_t)(off & 0xffff) | ((uint64_t)SEL_KCODE << 16) | ((uint64_t)(0x8e | (dpl << 5)) << 40) |
             ((uint64_t)(off >> 16) << 48);
}
void idt_set_dpl(int vec, int dpl) { idt_gate(vec, (uint32_t)(isr_stubs + 16 * vec), dpl); }
void isr_set(int vec, isr_fn fn) { handlers[vec] = fn; }

static struct ctx trap_ctx;
static int trap_active;
static struct trap_info *trap_out;

struct regs trap_frame;

int trap_call(void (*fn)(void), int ring3, struct trap_info *ti)
{
  trap_out = ti;
  trap_active = 1;
  int v = ctx_save(&trap_ctx);
  if (v == 0) {
    if (ring3)
      enter_user(fn, (uint32_t)(rt_user_stack + sizeof rt_user_stack));
    fn();
    trap_active = 0;
    return -1;
  }
  trap_active = 0;
  return v == 1000 ? -1 : v - 1;
}

struct regs *isr_dispatch(struct regs *r)
{
  if (handlers[r->vec])
    return handlers[r->vec](r);
  if (r->vec == 0x81 && trap_active && (r->cs & 3) == 3)
    ctx_restore(&trap_ctx, 1000);
  if (r->vec < 32 && trap_active) {
    trap_frame = *r;
    if (trap_out) {
      trap_out->vec = r->vec;
      trap_out->err = r->err;
      trap_out->eip = r->eip;
      trap_out->cs = r->cs;
      trap_out->cr2 = read_cr2();
    }
    ctx_restore(&trap_ctx, (int)r->vec + 1);
  }
  printf("unexpected interrupt %u err=0x%x eip=0x%08x cs=0x%x cr2=0x%08x\n", r->vec, r->err, r->eip, r->cs,
         read_cr2());
  rt_fail_now("unexpected interrupt");
}

void rt_init(void)
{
  serial_init();
  gdt[1] = seg_desc(0, 0xfffff, 0x9a, 0xc);
  gdt[2] = seg_desc(0, 0xfffff, 0x92, 0xc);
  gdt[3] = seg_desc(0, 0xfffff, 0xfa, 0xc);
  gdt[4] = seg_desc(0, 0xfffff, 0xf2, 0xc);
  rt_tss.ss0 = SEL_KDATA;
  rt_tss.esp0 = (uint32_t)(isr_stack + sizeof isr_stack);
  rt_tss.iomap = sizeof(struct tss); /* no I/O bitmap: ring 3 port I/O faults */
  gdt[5] = seg_desc((uint32_t)&rt_tss, sizeof(struct tss) - 1, 0x89, 0x0);
  struct __attribute__((packed)) { uint16_t lim; uint32_t base; } gd = { sizeof gdt - 1, (uint32_t)gdt },
                                                                       id = { sizeof idt - 1, (uint32_t)idt };
  __asm__ volatile("lgdt %0" : : "m"(gd));
  gdt_reload(SEL_KCODE, SEL_KDATA);
  __asm__ volatile("ltr %w0" : : "r"(SEL_TSS));
  for (int i = 0; i < 256; i++)
    idt_set_dpl(i, 0);
  idt_set_dpl(0x81, 3);
  __asm__ volatile("lidt %0" : : "m"(id));
}

/* ------------------------------------------------------------------ PIC / PIT / APIC */
static uint16_t pic_mask_bits = 0xffff;
static void pic_write_masks(void)
{
  outb(0x21, (uint8_t)pic_mask_bits);
  outb(0xa1, (uint8_t)(pic_mask_bits >> 8));
}
void pic_init(uint8_t base_master, uint8_t base_slave)
{
  outb(0x20, 0x11); /* ICW1: edge, cascade, ICW4 */
  outb(0xa0, 0x11);
  outb(0x21, base_master);
  outb(0xa1, base_slave);
  outb(0x21, 0x04); /* slave on IRQ2 */
  outb(0xa1, 0x02);
  outb(0x21, 0x01); /* 8086 mode */
  outb(0xa1, 0x01);
  pic_mask_bits = 0xffff & ~(1u << 2);
  pic_write_masks();
}
void pic_unmask(int irq)
{
  pic_mask_bits &= (uint16_t)~(1u << irq);
  pic_write_masks();
}
void pic_mask_all(void)
{
  pic_mask_bits = 0xffff;
  pic_write_masks();
}
void pic_eoi(int irq)
{
  if (irq >= 8)
    outb(0xa0, 0x20);
  outb(0x20, 0x20);
}
void pit_periodic(uint32_t hz)
{
  uint32_t div = 1193182u / hz;
  outb(0x43, 0x34); /* channel 0, lo/hi, mode 2 */
  outb(0x40, (uint8_t)div);
  outb(0x40, (uint8_t)(div >> 8));
}
void lapic_enable(uint8_t spurious_vec)
{
  uint64_t base = rdmsr(0x1b);
  wrmsr(0x1b, base | (1u << 11));
  lapic_write(LAPIC_SVR, 0x100u | spurious_vec);
  lapic_write(LAPIC_TPR, 0);
}
