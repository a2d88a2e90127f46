/* pmode16: 16-bit protected-mode code (copied to CODE16_BASE, run through
 * SEL_CODE16 and SEL_CODE16_R3), 32-bit code with non-zero segment bases
 * (copied to CODE32_BASE, run through SEL_CODE32), and the 32-bit entries. */
#include "pmode16.h"

#define OFF(l) ((l) - pm16_start)
#define OFF32(l) ((l) - pm32_start)
#define SEL_KDATA 0x10

  .section .rodata.pmode16, "a"
  .globl pm16_start, pm16_end, pm16_entry, pm16_int62, pm16_int63, pm16_de, pm16_int62_ret, pm16_de_site
  .globl pm16_ring3, pm16_ring3_int
  .code16
pm16_start:

/* Entered by a 32-bit far call from pm16_run (CS:EIP dwords on the flat stack). */
pm16_entry:
  movw $SEL_DATA16, %ax
  movw %ax, %ds
  movw %ss, R_SAVED_SS
  movl %esp, R_SAVED_ESP
  movw $SEL_DATA32, %ax
  movw %ax, %es
  movw $0xbeef, 0x100
  movw 0x100, %ax
  movw %ax, R_BASE_WRITE
  movl $0x55667788, %es:0x20
  /* a 16-bit stack (B = 0) from SP 0 */
  movw $SEL_STACK16, %ax
  movw %ax, %ss
  xorl %esp, %esp
  pushw $0x1234
  movw %sp, R_SP_AFTER
  movl $(STACK16_BASE + 0xfffe - DATA32_BASE), %ebx
  movw %es:(%ebx), %ax           /* the pushed word, through ES's base */
  movw %ax, R_STACK_WORD
  popw %ax

  /* INT 0x62 through a 16-bit interrupt gate */
  movw $21, %ax
  movw %sp, %dx
  sti
  int $0x62
pm16_int62_ret:
  cli
  movw %ax, R_INT62_AX

  /* #DE through a 16-bit trap gate */
  movw $5, %ax
  xorb %cl, %cl
pm16_de_site:
  divb %cl

  /* LAR, LSL, VERR, VERW, ARPL */
  movw $R_LAR, %di
  movw $SEL_DATA16, %bx
  call lar_slot
  movw $SEL_CODE16_R3, %bx
  call lar_slot
  movw $0x28, %bx
  call lar_slot
  movw $SEL_LDT, %bx
  call lar_slot
  xorw %bx, %bx
  call lar_slot
  movw $0x400, %bx
  call lar_slot
  movw $R_LSL, %di
  movw $SEL_DATA32, %bx
  call lsl_slot
  movw $0x28, %bx
  call lsl_slot
  movw $SEL_CODE16, %bx
  call lsl_slot
  movw $R_VERR, %di
  movw $SEL_DATA16, %bx
  call verr_slot
  movw $SEL_CODE16, %bx
  call verr_slot
  movw $SEL_DATA16_DPL3_NOWRITE, %bx
  call verr_slot
  movw $0x400, %bx
  call verr_slot
  movw $R_VERW, %di
  movw $SEL_DATA16, %bx
  call verw_slot
  movw $SEL_CODE16, %bx
  call verw_slot
  movw $SEL_DATA16_DPL3_NOWRITE, %bx
  call verw_slot
  movw $0x400, %bx
  call verw_slot
  movw $0x38, %ax
  movw $0x03, %bx
  arpl %bx, %ax
  setz %cl
  movw %ax, R_ARPL
  movb %cl, R_ARPL + 2
  movw $0x01, %bx
  arpl %bx, %ax
  setz %cl
  movw %ax, R_ARPL + 4
  movb %cl, R_ARPL + 6

  /* to ring 3 by a 16-bit IRET (SP and SS popped as words) */
  movw %ss, R_SAVED_SS16
  movw %sp, R_SAVED_SP16
  pushw $SEL_STACK16_R3
  pushw $0x1000
  pushfw
  pushw $SEL_CODE16_R3
  pushw $OFF(pm16_ring3)
  iret
pm16_back_from_ring3:
  movw $SEL_DATA16, %ax
  movw %ax, %ds
  movw R_SAVED_SS, %ss
  movl R_SAVED_ESP, %esp
  movw $SEL_KDATA, %ax
  movw %ax, %ds
  movw %ax, %es
  movw %ax, %fs
  movw %ax, %gs
  lretl

pm16_ring3:
  movw $SEL_DATA16_R3, %ax
  movw %ax, %ds
  movw %cs, %ax
  andw $3, %ax
  movw %ax, R_R3_CPL
  movw $SEL_CONFORMING, %bx
  lar %bx, %ax
  setz %cl
  movb %cl, R_R3_LAR_CONF
  movw $SEL_DATA16, %bx
  verr %bx
  setz %cl
  movb %cl, R_R3_VERR_DATA0
pm16_ring3_int:
  int $0x62
  int $0x63                      /* back to ring 0 for good */

/* ---- handlers (16-bit gates) */
pm16_int62:                      /* 32-bit addressing: the ring-0 stack may be the flat one */
  pushl %ebp
  movl %esp, %ebp
  pushw %bx
  testw $3, 6(%ebp)
  jnz 1f
  movw 4(%ebp), %bx
  movw %bx, R_INT62_IP
  movw 6(%ebp), %bx
  movw %bx, R_INT62_CS
  pushfw
  popw %bx
  andw $0x200, %bx
  movw %bx, R_INT62_IF
  movw %dx, %bx
  subw %bp, %bx
  subw $4, %bx                   /* EBP = entry SP - 4 */
  movw %bx, R_INT62_FRAME
  shlw $1, %ax
  incw %ax
  jmp 2f
1:                               /* from ring 3: IP CS FLAGS SP SS */
  movw 4(%ebp), %bx
  movw %bx, R_R3_FRAME
  movw 6(%ebp), %bx
  movw %bx, R_R3_FRAME + 2
  movw 8(%ebp), %bx
  movw %bx, R_R3_FRAME + 4
  movw 10(%ebp), %bx
  movw %bx, R_R3_FRAME + 6
  movw 12(%ebp), %bx
  movw %bx, R_R3_FRAME + 8
2:
  popw %bx
  popl %ebp
  iret
pm16_int63:
  jmp pm16_back_from_ring3
pm16_de:
  pushl %ebp
  movl %esp, %ebp
  pushw %bx
  movw 4(%ebp), %bx
  movw %bx, R_DE_IP
  addw $2, 4(%ebp)
  incw R_DE_COUNT
  popw %bx
  popl %ebp
  iret

/* DS:DI <- (dword value, word ZF) of LAR/LSL BX; VERR/VERW: word ZF */
lar_slot:
  movl $0xeeeeeeee, %eax
  lar %bx, %eax
  jmp store_value
lsl_slot:
  movl $0xeeeeeeee, %eax
  lsl %bx, %eax
store_value:
  setz %cl
  movl %eax, (%di)
  movb %cl, 4(%di)
  movb $0, 5(%di)
  addw $6, %di
  ret
verr_slot:
  verr %bx
  jmp store_zf
verw_slot:
  verw %bx
store_zf:
  setz %cl
  movb %cl, (%di)
  movb $0, 1(%di)
  addw $2, %di
  ret
pm16_end:

/* ---- 32-bit code run with CS base CODE32_BASE (a far call from pm32_nonflat) */
  .code32
  .globl pm32_start, pm32_end, pm32_code, pm32_ret_site
pm32_start:
pm32_code:
  call pm32_inner
pm32_ret_site:
  movl %eax, 0x300               /* DS base DATA32_BASE */
  lret
pm32_inner:
  movl (%esp), %eax              /* the return offset, relative to the CS base */
  ret
pm32_end:

/* ---- void pm16_run(void): the 16-bit program, by a far call */
  .text
  .globl pm16_run, pm32_nonflat
pm16_run:
  pushal
  lcall $SEL_CODE16, $OFF(pm16_entry)
  popal
  ret

/* ---- void pm32_nonflat(void): 32-bit code with DS = ES based at DATA32_BASE
 * (a store, REP MOVSB, a far call to code based at CODE32_BASE). */
pm32_nonflat:
  pushal
  movw $SEL_DATA32, %ax
  movw %ax, %ds
  movw %ax, %es
  movl $0xa1b2c3d4, 0x100
  movl $0x100, %esi
  movl $0x200, %edi
  movl $4, %ecx
  cld
  rep movsb
  lcall $SEL_CODE32, $OFF32(pm32_code)
  movw $SEL_KDATA, %ax
  movw %ax, %ds
  movw %ax, %es
  popal
  ret

  .section .note.GNU-stack, "", @progbits
