/* The lm64* guests' long-mode runtime (lm64_rt.c, lm64_rt.S).  The C parts
 * stay 32-bit code: after lm64_init() they run in compatibility mode (CS
 * 0x08 under EFER.LMA) and call 64-bit assembly routines with lm64_call();
 * every interrupt goes through the 64-bit IDT, whose handlers record what the
 * CPU pushed in lm64_last. */
#ifndef GUEST_LM64_H
#define GUEST_LM64_H
#include "rt.h"

/* GDT: 0x08/0x10 as the runtime's (0x08 is compatibility-mode code now), a
 * 64-bit kernel code segment with its data segment right after it (SYSCALL's
 * CS and SS), then SYSRET's three user segments, then the 16-byte TSS. */
#define LM64_KCODE32 0x08
#define LM64_KDATA 0x10
#define LM64_KCODE64 0x18
#define LM64_KDATA_SYSCALL 0x20
#define LM64_UCODE32 0x2b
#define LM64_UDATA 0x33
#define LM64_UCODE64 0x3b
#define LM64_TSS 0x40
#define LM64_GDT_ENTRIES 10

#define MSR_EFER 0xc0000080u
#define MSR_STAR 0xc0000081u
#define MSR_LSTAR 0xc0000082u
#define MSR_SFMASK 0xc0000084u
#define MSR_FS_BASE 0xc0000100u
#define MSR_GS_BASE 0xc0000101u
#define MSR_KERNEL_GS_BASE 0xc0000102u
#define EFER_SCE (1u << 0)
#define EFER_LME (1u << 8)
#define EFER_LMA (1u << 10)
#define EFER_NXE (1u << 11)

/* Page-table entry bits. */
#define PTE_P 0x1ull
#define PTE_W 0x2ull
#define PTE_U 0x4ull
#define PTE_A 0x20ull
#define PTE_D 0x40ull
#define PTE_PS 0x80ull
#define PTE_G 0x100ull
#define PTE_NX (1ull << 63)

struct tss64 {
  uint32_t reserved0;
  uint64_t rsp[3];
  uint64_t reserved1;
  uint64_t ist[7];
  uint64_t reserved2;
  uint16_t reserved3, iomap;
} __attribute__((packed));
extern struct tss64 lm64_tss;

/* The tables lm64_init() builds: PML4[0] -> PDPT[0] -> PD mapping 0-1 GiB in
 * 2 MiB pages, present, writable and user-accessible (guests add their own). */
extern uint64_t lm64_pml4[512], lm64_pdpt[512], lm64_pd[512];

/* What a 64-bit interrupt handler saw: the frame the CPU pushed (error code
 * 0 where it pushes none), CR2, SS and RFLAGS at handler entry, and where the
 * frame was (its RIP slot: the CPU's stack pointer after its pushes). */
struct lm64_frame {
  uint64_t vec, err, rip, cs, rflags, rsp, ss;
  uint64_t cr2, handler_ss, frame_at;
  uint64_t count; /* interrupts taken since lm64_init */
  uint64_t handler_rflags;
};
extern volatile struct lm64_frame lm64_last;

/* What the handler of a vector does after recording it. */
enum {
  LM64_CATCH,  /* return the vector from lm64_try (a fault outside one is fatal) */
  LM64_RESUME, /* IRETQ to the interrupted code */
  LM64_IRQ,    /* EOI to the master 8259, then IRETQ */
};
extern uint8_t lm64_action[256];
/* Point IDT vector vec at its stub with gate DPL dpl and IST index ist (0: none). */
void lm64_gate(int vec, int dpl, int ist);
/* Set a gate's access byte (P, DPL, type: 0x8e an interrupt gate, 0x8f a trap gate). */
void lm64_gate_access(int vec, uint8_t access);

/* Enter long mode with EFER | efer_bits (e.g. EFER_NXE), print the
 * lines up to "entering long mode", return in compatibility mode. */
void lm64_init(uint32_t efer_bits);
/* Call the 64-bit routine fn(a, b) (System V: RDI, RSI; result in RAX). */
uint64_t lm64_call(void *fn, uint32_t a, uint32_t b);
/* Call fn(arg) in 64-bit code; -1 when it returns, else the vector of the
 * exception it raised (the handler restores lm64_try's stack: fn is left). */
int lm64_try(void *fn, uint32_t arg);
#endif
