/* Tiny freestanding runtime shared by all guest kernels. */
#ifndef GUEST_RT_H
#define GUEST_RT_H
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include "x86.h"

/* ---- multiboot v1 ---- */
struct mb_info {
  uint32_t flags, mem_lower, mem_upper, boot_device, cmdline;
  uint32_t mods_count, mods_addr, syms[4], mmap_length, mmap_addr;
};
struct mb_mmap_entry {
  uint32_t size;
  uint64_t addr, len;
  uint32_t type;
} __attribute__((packed));
extern uint32_t mb_magic;
extern uint32_t mb_info;
const char *mb_cmdline(void); /* "" if none */
/* Value of "key=<number>" in the cmdline (decimal or 0x hex), or def. */
unsigned long cmdline_ulong(const char *key, unsigned long def);

/* ---- output ---- */
void serial_init(void);
void putchar_serial(char c);
void puts_serial(const char *s);
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vprintf(const char *fmt, va_list ap);
int snprintf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int vsnprintf(char *buf, size_t n, const char *fmt, va_list ap);

/* ---- string / memory ---- */
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strcpy(char *d, const char *s);

/* ---- memory allocation: bump allocator above the image ---- */
void *rt_alloc(size_t size, size_t align);

/* ---- exit / self-checks ---- */
void rt_exit(int code) __attribute__((noreturn));     /* debug-exit port 0xf4 */
void rt_finish(void) __attribute__((noreturn));       /* RESULT line + exit */
void rt_fail_now(const char *why) __attribute__((noreturn));
extern int rt_failures;
#define CHECK(cond) do { if (!(cond)) { rt_failures++; \
    printf("FAIL %s:%d: %s\n", __FILE_NAME__, __LINE__, #cond); } } while (0)
#define CHECK_EQ(a, b) do { unsigned long long _a = (unsigned long long)(a), _b = (unsigned long long)(b); \
    if (_a != _b) { rt_failures++; printf("FAIL %s:%d: %s == %s (0x%llx != 0x%llx)\n", \
      __FILE_NAME__, __LINE__, #a, #b, _a, _b); } } while (0)

/* ---- descriptor tables / interrupts ---- */
#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_UCODE 0x1b
#define SEL_UDATA 0x23
#define SEL_TSS   0x28
struct regs {
  uint32_t gs, fs, es, ds;
  uint32_t edi, esi, ebp, esp_unused, ebx, edx, ecx, eax;
  uint32_t vec, err;
  uint32_t eip, cs, eflags;
  uint32_t useresp, ss; /* only valid when the interrupt came from ring 3 */
};
struct tss {
  uint32_t link, esp0, ss0, esp1, ss1, esp2, ss2, cr3, eip, eflags;
  uint32_t eax, ecx, edx, ebx, esp, ebp, esi, edi;
  uint32_t es, cs, ss, ds, fs, gs, ldtr;
  uint16_t trap, iomap;
} __attribute__((packed));
extern struct tss rt_tss;
typedef struct regs *(*isr_fn)(struct regs *r);
void isr_set(int vec, isr_fn fn);
void idt_set_dpl(int vec, int dpl);
extern void isr_return(void); /* restores a struct regs frame at %esp */

struct ctx { uint32_t ebx, esi, edi, ebp, esp, eip, eflags; };
int ctx_save(struct ctx *c) __attribute__((returns_twice));
void ctx_restore(struct ctx *c, int v) __attribute__((noreturn));
void enter_user(void (*fn)(void), uint32_t user_stack_top) __attribute__((noreturn));
extern void user_exit_stub(void);

/* Run fn in ring 0 or ring 3 (on the shared user stack) and catch a CPU
 * exception.  Returns -1 if fn finished normally, else the vector, with
 * details in *ti. Paging (if on) must map fn, user_exit_stub and the user
 * stack user-accessible for ring 3. */
struct trap_info { uint32_t vec, err, eip, cr2, cs; };
int trap_call(void (*fn)(void), int ring3, struct trap_info *ti);
/* A GDT descriptor (base, limit, access byte, flags nibble G D/B L AVL). */
uint64_t seg_desc(uint32_t base, uint32_t limit, uint8_t access, uint8_t flags);
/* Load `table` (`entries` descriptors) as the GDT, its first ones the
 * runtime's (null, 0x08, 0x10, 0x1b, 0x23, TSS 0x28); the rest are the caller's. */
void gdt_extend(uint64_t *table, unsigned entries);
extern struct regs trap_frame; /* the whole frame of the exception trap_call caught last */
extern uint8_t rt_user_stack[16384];

/* ---- PIC / PIT / local APIC ---- */
void pic_init(uint8_t base_master, uint8_t base_slave); /* all IRQs masked */
void pic_unmask(int irq);
void pic_mask_all(void);
void pic_eoi(int irq);
void pit_periodic(uint32_t hz);
#define LAPIC_BASE 0xfee00000u
#define LAPIC_ID 0x20
#define LAPIC_VER 0x30
#define LAPIC_TPR 0x80
#define LAPIC_EOI 0xb0
#define LAPIC_SVR 0xf0
#define LAPIC_ISR0 0x100
#define LAPIC_IRR0 0x200
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_CUR 0x390
#define LAPIC_TIMER_DIV 0x3e0
static inline uint32_t lapic_read(uint32_t reg) { return mmio_read32(LAPIC_BASE + reg); }
static inline void lapic_write(uint32_t reg, uint32_t v) { mmio_write32(LAPIC_BASE + reg, v); }
void lapic_enable(uint8_t spurious_vec);
static inline void lapic_eoi(void) { lapic_write(LAPIC_EOI, 0); }

#endif
