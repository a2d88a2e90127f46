/* The lm64* guests' long-mode runtime, C side: the GDT with SYSCALL/SYSRET's
 * segment layout, the 64-bit TSS and IDT, 4-level tables for 0-1 GiB, the
 * switch into long mode, and the report of an unexpected interrupt. */
#include "lm64.h"

uint64_t lm64_pml4[512] __attribute__((aligned(4096)));
uint64_t lm64_pdpt[512] __attribute__((aligned(4096)));
uint64_t lm64_pd[512] __attribute__((aligned(4096)));
static uint64_t gdt[LM64_GDT_ENTRIES];
static uint64_t idt[512] __attribute__((aligned(16)));
struct tss64 lm64_tss __attribute__((aligned(16)));
uint8_t lm64_action[256];
volatile struct lm64_frame lm64_last;
static uint8_t rsp0_stack[16384] __attribute__((aligned(16)));

extern char lm64_stubs[];                 /* 256 stubs, 16 bytes apart */
extern char lm64_load_tables[];           /* (idtr, tss selector) */
void lm64_enter(uint32_t pml4, uint32_t efer_bits);

void lm64_gate(int vec, int dpl, int ist)
{
  uint32_t off = (uint32_t)(lm64_stubs + 16 * vec);
  idt[2 * vec] = (uint64_t)(off & 0xffff) | ((uint64_t)LM64_KCODE64 << 16) | ((uint64_t)(ist & 7) << 32) |
                 ((uint64_t)(0x8e | (dpl << 5)) << 40) | ((uint64_t)(off >> 16) << 48);
  idt[2 * vec + 1] = 0; /* offset bits 63:32 */
}

void lm64_gate_access(int vec, uint8_t access)
{
  idt[2 * vec] = (idt[2 * vec] & ~(0xffull << 40)) | (uint64_t)access << 40;
}

void lm64_init(uint32_t efer_bits)
{
  uint32_t a, b, c, d;
  cli();
  cpuid(0x80000000, 0, &a, &b, &c, &d);
  if (a < 0x80000001) rt_fail_now("CPUID has no leaf 0x80000001");
  cpuid(0x80000001, 0, &a, &b, &c, &d);
  if (!(d & (1u << 29))) rt_fail_now("CPUID offers no long mode");
  if (!(d & (1u << 20))) rt_fail_now("CPUID offers no NX");
  cpuid(1, 0, &a, &b, &c, &d);
  if (!(d & (1u << 13))) rt_fail_now("CPUID offers no global pages");
  printf("CPUID: long mode, NX and global pages offered\n");

  gdt[1] = seg_desc(0, 0xfffff, 0x9a, 0xc); /* 32-bit kernel code: compatibility mode */
  gdt[2] = seg_desc(0, 0xfffff, 0x92, 0xc);
  gdt[3] = seg_desc(0, 0xfffff, 0x9a, 0xa); /* L=1 */
  gdt[4] = seg_desc(0, 0xfffff, 0x92, 0xc);
  gdt[5] = seg_desc(0, 0xfffff, 0xfa, 0xc); /* SYSRET to compatibility mode */
  gdt[6] = seg_desc(0, 0xfffff, 0xf2, 0xc);
  gdt[7] = seg_desc(0, 0xfffff, 0xfa, 0xa); /* SYSRET to 64-bit mode */
  lm64_tss.rsp[0] = (uint32_t)(rsp0_stack + sizeof rsp0_stack);
  lm64_tss.iomap = sizeof lm64_tss; /* no I/O bitmap */
  gdt[8] = seg_desc((uint32_t)&lm64_tss, sizeof lm64_tss - 1, 0x89, 0x0);
  gdt[9] = 0; /* base 63:32 */
  for (int i = 0; i < 256; i++) {
    lm64_gate(i, 0, 0);
    lm64_action[i] = LM64_CATCH;
  }
  struct __attribute__((packed)) { uint16_t lim; uint32_t base; } gd = { sizeof gdt - 1, (uint32_t)gdt };
  __asm__ volatile("lgdt %0" : : "m"(gd)); /* 0x08 and 0x10 as before: no reload */

  for (unsigned i = 0; i < 512; ++i) lm64_pd[i] = (uint64_t)i << 21 | PTE_PS | PTE_U | PTE_W | PTE_P;
  lm64_pdpt[0] = (uint32_t)lm64_pd | PTE_U | PTE_W | PTE_P;
  lm64_pml4[0] = (uint32_t)lm64_pdpt | PTE_U | PTE_W | PTE_P;
  printf("entering long mode\n");
  lm64_enter((uint32_t)lm64_pml4, efer_bits);
  /* The 64-bit IDT and TSS: LIDT from 64-bit code takes the 10-byte form. */
  static struct __attribute__((packed)) { uint16_t lim; uint64_t base; } idtr;
  idtr.lim = sizeof idt - 1;
  idtr.base = (uint32_t)idt;
  lm64_call(lm64_load_tables, (uint32_t)&idtr, LM64_TSS);
}

/* Called in compatibility mode by a handler that had nowhere to go. */
void lm64_unexpected(void) __attribute__((noreturn));
void lm64_unexpected(void)
{
  printf("unexpected interrupt %llu err=0x%llx rip=0x%llx cs=0x%llx cr2=0x%llx\n", lm64_last.vec, lm64_last.err,
         lm64_last.rip, lm64_last.cs, lm64_last.cr2);
  rt_fail_now("unexpected interrupt");
}
