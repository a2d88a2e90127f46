/* The application processors' start-up code.
 *
 * smp_trampoline_start..smp_trampoline_end is copied by the BSP to
 * SMP_TRAMPOLINE_BASE and entered there in real mode by a STARTUP IPI
 * (CS = SMP_STARTUP_VECTOR << 8, IP 0).  It loads its own flat GDT (code
 * 0x08, data 0x10, the kernel's selectors), sets CR0.PE and far-jumps to
 * ap_protected_entry in the kernel image, which takes the stack the BSP
 * left in smp_ap_stack and calls ap_main(). */
#include "smp.h"

  .section .text
  .code16
  .globl smp_trampoline_start, smp_trampoline_end
smp_trampoline_start:
  cli
  cld
  movw %cs, %ax
  movw %ax, %ds
  lgdtl tramp_gdtr - smp_trampoline_start
  movl %cr0, %eax
  orl $1, %eax
  movl %eax, %cr0
  ljmpl $0x08, $ap_protected_entry

  .align 8
tramp_gdt:
  .quad 0
  .quad 0x00cf9a000000ffff  /* 0x08: flat 32-bit code */
  .quad 0x00cf92000000ffff  /* 0x10: flat data */
tramp_gdtr:
  .word 3 * 8 - 1
  .long SMP_TRAMPOLINE_BASE + (tramp_gdt - smp_trampoline_start)
smp_trampoline_end:

  .code32
  .globl ap_protected_entry
ap_protected_entry:
  movw $0x10, %ax
  movw %ax, %ds
  movw %ax, %es
  movw %ax, %fs
  movw %ax, %gs
  movw %ax, %ss
  movl smp_ap_stack, %esp
  call ap_main
1:cli
  hlt
  jmp 1b
  .section .note.GNU-stack, "", @progbits
