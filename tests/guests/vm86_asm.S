/* vm86: the virtual-8086 programs (copied to V86_CODE, run with CS =
 * V86_CS) and the 32-bit helper that enters virtual-8086 mode by IRET. */
#include "vm86.h"

#define OFF(l) ((l) - v86_start)

  .section .rodata.vm86, "a"
  .globl v86_start, v86_end, v86_part_a, v86_part_b, v86_part_c, v86_int60, v86_de_site, v86_int61_site
  .code16
v86_start:

/* ---- part A, IOPL 0: the kernel's #GP handler emulates CLI, STI, PUSHF,
 * POPF, INT n (reflected into the v8086 IVT), IRET, refused port I/O, HLT. */
v86_part_a:
  movw $V86_DS, %ax
  movw %ax, %ds
  cli
  sti
  pushfw
  popw %ax
  movw %ax, R_A_PUSHF1
  pushw $0
  popfw
  pushfw
  popw %ax
  movw %ax, R_A_PUSHF2
  movw $21, %ax
  int $0x60
  movw %ax, R_A_INT60
  movb $0x42, %al
  outb %al, $0x80                /* not in the I/O bitmap: #GP */
  movw $OFF(message_a), %si
  call print
  movw $V86_ES, %ax
  movw %ax, %es
  movw $0x1234, %es:0x10
  movw $((V86_ES * 16 + 0x10) >> 4), %ax
  movw %ax, %fs
  movw %fs:0, %ax
  movw %ax, R_A_ES_WORD
  movw $5, %ax
  xorb %cl, %cl
v86_de_site:
  divb %cl                       /* #DE to the ring-0 handler, which skips it */
  movw $1, R_A_DE_DONE
  hlt                            /* #GP: the kernel takes over again */

v86_int60:                       /* the v8086 IVT's handler for INT 0x60 */
  shlw $1, %ax
  incw %ax
  iret

/* ---- part B, IOPL 3: CLI/STI/PUSHF/POPF run without faults, INT n goes
 * through the protected-mode IDT, port I/O still follows the bitmap, the
 * PIT's IRQ0 interrupts virtual-8086 mode. */
v86_part_b:
  movw $V86_DS, %ax
  movw %ax, %ds
  cli
  pushfw
  popw %ax
  movw %ax, R_B_PUSHF_CLI
  sti
  pushfw
  popw %ax
  movw %ax, R_B_PUSHF_STI
  pushw $0x0ad5
  popfw
  pushfw
  popw %ax
  movw %ax, R_B_POPF
  sti
  movw $41, %ax
v86_int61_site:
  int $0x61
  movw %ax, R_B_INT61_AX
  movb $0x43, %al
  outb %al, $0x80                /* not IOPL-sensitive in v8086 mode: still #GP */
  movw $OFF(message_b), %si
  call print
tick_wait:
  cmpw $3, R_TICKS
  jb tick_wait
  cli
  hlt

/* ---- part C: a v8086 task entered by a hardware task switch */
v86_part_c:
  movw $V86_DS, %ax
  movw %ax, %ds
  movw %cs, %ax
  movw %ax, R_C_SWITCHED
  hlt

print:                           /* CS:SI, through COM1 (allowed by the bitmap) */
  lodsb %cs:(%si), %al
  testb %al, %al
  jz 2f
  movw $0x3fd, %dx
  movb %al, %ah
1:
  inb %dx, %al
  testb $0x20, %al
  jz 1b
  movb %ah, %al
  movw $0x3f8, %dx
  outb %al, %dx
  jmp print
2:
  ret

message_a:
  .asciz "v8086 (IOPL 0): this line went out through COM1, allowed by the I/O bitmap\n"
message_b:
  .asciz "v8086 (IOPL 3): this line too\n"
v86_end:

/* ---- void v86_iret(const uint32_t frame[9]): IRET to virtual-8086 mode with
 * EIP CS EFLAGS ESP SS ES DS FS GS. */
  .text
  .code32
  .globl v86_iret
v86_iret:
  movl 4(%esp), %esi
  subl $36, %esp
  movl %esp, %edi
  movl $9, %ecx
  cld
  rep movsl
  iret

  .section .note.GNU-stack, "", @progbits
