/* realmode: the 16-bit program (copied to RM_STUB and run in real mode with
 * CS = RM_CS) and the 32-bit glue that drops to real mode and comes back.
 * Results go to CS:RES_OFF (realmode.h); realmode.c prints and checks them. */
#include "realmode.h"

#define OFF(l) ((l) - rm_start)
#define RES(n) %cs:(RES_OFF + (n))
#define SEL_KCODE 0x08
#define SEL_KDATA 0x10

  .section .rodata.realmode, "a"
  .globl rm_start, rm_end, int60_return, de_site
  .code16
rm_start:

/* Entered from 32-bit code through the 16-bit code segment SEL_CODE16 (base
 * RM_STUB): 16-bit data segments everywhere, then PE off and a far jump. */
rm_pm16:
  movw $SEL_DATA16, %ax
  movw %ax, %ds
  movw %ax, %es
  movw %ax, %fs
  movw %ax, %gs
  movw %ax, %ss
  movl %cr0, %eax
  andl $0xfffffffe, %eax
  movl %eax, %cr0
  ljmp $RM_CS, $OFF(rm_real)

rm_real:
  movw $RM_SS, %ax
  movw %ax, %ss
  xorw %sp, %sp                  /* the first push wraps SP to 0xfffe */
  pushw $0x1234
  movw %sp, RES(R_SP_PUSH)
  movw $((RM_SS * 16 + 0xfffe) >> 4), %ax  /* the pushed word through another segment */
  movw %ax, %fs
  movw %fs:((RM_SS * 16 + 0xfffe) & 0xf), %ax
  movw %ax, RES(R_SP_WORD)
  popw %ax
  movw %sp, RES(R_SP_POP)
  movw %ax, RES(R_POPPED)

  /* The IVT at 0: #DE, int 0x60, IRQ0 (PIC base 0x20). */
  xorw %ax, %ax
  movw %ax, %es
  movw $OFF(de_handler), %es:0
  movw $RM_CS, %es:2
  movw $OFF(int60_handler), %es:(0x60 * 4)
  movw $RM_CS, %es:(0x60 * 4 + 2)
  movw $OFF(timer_handler), %es:(0x20 * 4)
  movw $RM_CS, %es:(0x20 * 4 + 2)

  /* ---- arithmetic, 16- and 32-bit operands */
  movw $0x1234, %ax
  addw $0xf00d, %ax
  pushfw
  popw %bx
  andw $0x8d5, %bx
  movw %ax, RES(R_ADD)
  movw %bx, RES(R_ADD_FLAGS)
  movw $1000, %ax
  movw $37, %bx
  mulw %bx
  movw %ax, RES(R_MUL_LO)
  movw %dx, RES(R_MUL_HI)
  movw $50000, %ax
  xorw %dx, %dx
  movw $7, %cx
  divw %cx
  movw %ax, RES(R_DIV_Q)
  movw %dx, RES(R_DIV_R)
  movw $-300, %ax
  movw $25, %cx
  imulw %cx
  movw %ax, RES(R_IMUL_LO)
  movw %dx, RES(R_IMUL_HI)
  movl $0x12345678, %eax
  addl $0x11111111, %eax
  movl %eax, RES(R_ADD32)
  movl $0xfffffff0, %eax
  xorl %edx, %edx
  addl $0x20, %eax
  adcl $0, %edx
  movl %eax, RES(R_ADC_LO)
  movl %edx, RES(R_ADC_HI)
  movb $0xf0, %al
  cbtw
  movw %ax, RES(R_CBW)
  cwtd
  movw %dx, RES(R_CWD)
  movw $0x8001, %ax
  rolw $1, %ax
  xchgb %ah, %al
  movw %ax, RES(R_ROL)

  /* ---- segments with different bases, 64 KiB wrap-around */
  movw $RM_DS, %ax
  movw %ax, %ds
  movw $RM_ES, %ax
  movw %ax, %es
  movw $RM_FS, %ax
  movw %ax, %fs
  movw $RM_GS, %ax
  movw %ax, %gs
  movw $0xaaaa, 0x8010           /* DS:8010 = FS:0010 */
  movw %fs:0x0010, %ax
  movw %ax, RES(R_FS_ALIAS)
  movw $0xdddd, 0x0010
  movw $0xbbbb, %es:0x0010
  movw $0xcccc, %gs:0x0010
  movw $0xfff0, %bx
  movw $0x0030, %si
  movb $0x5a, (%bx,%si)          /* wraps to DS:0020 */
  movw $0xffff, %di
  movb $0xa5, %es:2(%di)         /* wraps to ES:0001 */
  movb 0x0020, %al
  movb %es:0x0001, %ah
  movw %ax, RES(R_WRAP)
  pushw $0x7777
  movw %sp, %bp
  movw (%bp), %cx                /* BP: SS by default */
  movw %cx, RES(R_BP_SS)
  popw %ax
  movl $0x100, %ebx
  movl $0x8, %ecx
  movw $0x4242, (%ebx,%ecx,2)    /* 32-bit addressing: DS:0x110 */
  movw 0x110, %ax
  movw %ax, RES(R_A32)
  pushw %ds
  ldsw %cs:OFF(far_data_ptr), %si
  movw %ds, RES(R_LDS_DS)
  movw %si, RES(R_LDS_SI)
  popw %ds

  /* ---- near and far calls and returns, through registers and memory */
  xorw %ax, %ax
  call near_inc
  lcall $RM_CS, $OFF(far_inc)
  lcall $(RM_CS + 0x10), $(OFF(far_alias) - 0x100)   /* the same code through CS = RM_CS + 0x10 */
  movw %bx, RES(R_ALIAS_CS)
  movw $OFF(near_inc), %dx
  call *%dx
  call *%cs:OFF(near_ptr)
  lcall *%cs:OFF(far_ptr)
  pushw $5
  pushw $6
  call ret4_fn
  pushw $7
  lcall $RM_CS, $OFF(retf2_fn)
  movw %ax, RES(R_CALLS)
  movw %sp, RES(R_SP_CALLS)
  movw $2, %bx
  shlw $1, %bx
  jmp *%cs:OFF(jump_table)(%bx)
jt0:
  movw $100, %cx
  jmp jt_done
jt1:
  movw $101, %cx
  jmp jt_done
jt2:
  movw $102, %cx
  jmp jt_done
jt_done:
  movw %cx, RES(R_JTAB)
  ljmp $(RM_CS + 0x20), $(OFF(far_jump_target) - 0x200)
far_jump_back:

  /* ---- software interrupt through the IVT, from two CS values */
  movw $21, %ax
  sti
  int $0x60
int60_return:
  cli
  movw %ax, RES(R_INT60)
  lcall $(RM_CS + 0x10), $(OFF(int_from_alias) - 0x100)

  /* ---- #DE through the IVT: the handler skips the 2-byte DIV */
  movw $5, %ax
  xorb %cl, %cl
de_site:
  divb %cl
  movw $0xd0e, RES(R_DE_DONE)

  /* ---- string instructions */
  movw $RM_DS, %ax
  movw %ax, %ds
  movw $RM_ES, %ax
  movw %ax, %es
  pushw %es
  pushw %ds
  popw %es
  movw $0x100, %di
  movw $64, %cx
  movb $1, %al
  cld
fill:
  stosb
  addb $3, %al
  loop fill
  popw %es
  movw $0x100, %si
  movw $0x200, %di
  movw $37, %cx
  rep movsb
  movw $0x100, %si
  movw $0x300, %di
  movw $10, %cx
  rep movsw
  movw $0x400, %di
  movw $0xbeef, %ax
  movw $8, %cx
  rep stosw
  movw $0x100, %si
  movw $0x200, %di
  movw $40, %cx
  repe cmpsb                     /* stops after the first difference (byte 37) */
  movw %cx, RES(R_CMPS_CX)
  movw %si, RES(R_CMPS_SI)
  movb $16, %al
  movw $0x200, %di
  movw $37, %cx
  repne scasb
  movw %di, RES(R_SCAS_DI)
  movw $0xfffc, %di
  movw $8, %cx
  movb $0x77, %al
  rep stosb                      /* DI wraps past 0xffff */
  movw %di, RES(R_WRAP_DI)
  std
  movw $0x104, %si
  movw $0x504, %di
  movw $5, %cx
  rep movsb
  cld
  movw %si, RES(R_STD_SI)
  movw $OFF(message), %si        /* print through COM1, polling the LSR */
print:
  lodsb %cs:(%si), %al
  testb %al, %al
  jz print_done
  call putc
  jmp print
print_done:

  /* ---- misc 16-bit instructions */
  movl $0x12340003, %ecx
  xorw %ax, %ax
1:
  incw %ax
  loop 1b                        /* CX counts; ECX's upper half stays */
  movw %ax, RES(R_LOOP_N)
  movl %ecx, RES(R_LOOP_ECX)
  jcxz 2f
  movw $1, RES(R_JCXZ)
  jmp 3f
2:
  movw $2, RES(R_JCXZ)
3:
  movw $10, %cx
  xorw %ax, %ax
4:
  incw %ax
  cmpw $4, %ax
  loopne 4b
  movw %cx, RES(R_LOOPNE)
  movw %sp, %si
  enter $8, $0
  movw %si, %ax
  subw %bp, %ax
  movw %ax, RES(R_ENTER_BP)
  leave
  movw %sp, %ax
  subw %si, %ax
  movw %ax, RES(R_LEAVE_SP)
  movw $0x1111, %ax
  movw $0x2222, %cx
  movw $0x3333, %dx
  movw $0x4444, %bx
  movw $0x5555, %bp
  movw $0x6666, %si
  movw $0x7777, %di
  movw %sp, RES(R_POPA + 8)
  pusha
  xorw %ax, %ax
  xorw %cx, %cx
  xorw %dx, %dx
  xorw %bx, %bx
  xorw %bp, %bp
  xorw %si, %si
  xorw %di, %di
  popa
  movw %ax, RES(R_POPA + 0)
  movw %cx, RES(R_POPA + 2)
  movw %dx, RES(R_POPA + 4)
  movw %bx, RES(R_POPA + 6)
  movw %bp, RES(R_POPA + 10)
  movw %si, RES(R_POPA + 12)
  movw %di, RES(R_POPA + 14)
  movw $0xfff0, %bx
  movw $0x0020, %si
  leaw 5(%bx,%si), %ax           /* 16-bit address: wraps */
  movw %ax, RES(R_LEA16)
  leal 5(%bx,%si), %eax          /* zero-extended */
  movl %eax, RES(R_LEA32)
  movw $0x100, %bx
  movb $9, %al
  xlat                           /* DS:BX+AL = 1 + 3*9 */
  movb %al, RES(R_XLAT)
  pushw $0x08d5
  popfw
  pushfw
  popw %ax
  andw $0x0fd5, %ax
  movw %ax, RES(R_POPF)
  pushw $0x0002
  popfw
  smsw %ax
  movw %ax, RES(R_SMSW)
  movw $0x0a00, %ax
  bsfw %ax, %bx
  movw %bx, RES(R_MISC + 0)
  stc
  setc %bl
  movb %bl, RES(R_MISC + 2)
  movw $7, %dx
  xorw %bx, %bx
  cmpw $1, %dx
  cmovaw %dx, %bx
  movw %bx, RES(R_MISC + 4)
  movb $0x80, %al
  movsbw %al, %ax
  movw %ax, RES(R_MISC + 6)
  movw $0x1234, %ax
  movw $0x5678, %dx
  xchgw %ax, %dx
  movw %ax, RES(R_MISC + 8)
  movb $79, %al
  aam
  movw %ax, RES(R_MISC + 10)
  movl $0xcafef00d, %eax
  pushl %eax
  movw %sp, %bx
  popl %edx
  movl %edx, RES(R_PUSH32)
  movw %sp, %ax
  subw %bx, %ax
  movw %ax, RES(R_SP_PUSH32)

  /* ---- timer interrupts in real mode: IRQ0 through the IVT */
  inb $0x21, %al
  andb $0xfe, %al
  outb %al, $0x21
  movw $0, RES(R_TICKS)
  sti
tick_wait:
  hlt
  cmpw $5, RES(R_TICKS)
  jb tick_wait
  cli
  inb $0x21, %al
  orb $0x01, %al
  outb %al, $0x21

  /* ---- back to protected mode */
  movl %cr0, %eax
  orl $1, %eax
  movl %eax, %cr0
  ljmpl $SEL_KCODE, $rm_back32

/* ---- subroutines and handlers */
near_inc:
  incw %ax
  ret
far_inc:
  incw %ax
  lret
far_alias:                       /* entered with CS = RM_CS + 0x10 */
  movw %cs, %bx
  incw %ax
  lret
ret4_fn:
  movw %sp, %bp
  addw 2(%bp), %ax
  addw 4(%bp), %ax
  ret $4
retf2_fn:
  movw %sp, %bp
  addw 4(%bp), %ax
  lret $2
far_jump_target:                 /* entered with CS = RM_CS + 0x20 */
  movw %cs, RES(R_FARJMP - 0x200)
  ljmp $RM_CS, $OFF(far_jump_back)
int_from_alias:                  /* CS = RM_CS + 0x10: the handler sees that CS pushed */
  int $0x60
  lret
int60_handler:
  pushw %bp
  movw %sp, %bp
  pushw %bx
  movw 2(%bp), %bx
  cmpw $OFF(int60_return), %bx
  jne 5f
  movw %bx, RES(R_INT_IP)
  movw 4(%bp), %bx
  movw %bx, RES(R_INT_CS)
  pushfw
  popw %bx
  andw $0x200, %bx
  movw %bx, RES(R_INT_IF)
  movw 6(%bp), %bx
  andw $0x200, %bx
  movw %bx, RES(R_INT_SAVED_IF)
  shlw $1, %ax
  incw %ax
  jmp 6f
5:
  movw 4(%bp), %bx
  movw %bx, RES(R_INT_CS_ALIAS)
6:
  popw %bx
  popw %bp
  iret
de_handler:
  pushw %bp
  movw %sp, %bp
  pushw %bx
  movw 2(%bp), %bx
  movw %bx, RES(R_DE_IP)
  addw $2, 2(%bp)
  incw RES(R_DE_COUNT)
  popw %bx
  popw %bp
  iret
timer_handler:
  incw RES(R_TICKS)
  pushw %ax
  movb $0x20, %al
  outb %al, $0x20
  popw %ax
  iret
putc:
  pushw %dx
  pushw %ax
  movw $0x3fd, %dx
7:
  inb %dx, %al
  testb $0x20, %al
  jz 7b
  popw %ax
  movw $0x3f8, %dx
  outb %al, %dx
  popw %dx
  ret

near_ptr:
  .word OFF(near_inc)
far_ptr:
  .word OFF(far_inc), RM_CS
far_data_ptr:
  .word 0x0123, 0x2345
jump_table:
  .word OFF(jt0), OFF(jt1), OFF(jt2)
message:
  .asciz "real mode: this line went out through COM1 from 16-bit code\n"
rm_end:

/* ---- 32-bit glue: void rm_call(void) */
  .text
  .code32
  .globl rm_call
rm_call:
  pushal
  movl %esp, rm_saved_esp
  sidt rm_saved_idt
  lidt rm_ivt
  ljmp $SEL_CODE16, $OFF(rm_pm16)
rm_back32:
  movw $SEL_KDATA, %ax
  movw %ax, %ds
  movw %ax, %es
  movw %ax, %fs
  movw %ax, %gs
  movw %ax, %ss
  movl rm_saved_esp, %esp
  lidt rm_saved_idt
  popal
  ret

  .data
rm_saved_esp:
  .long 0
rm_saved_idt:
  .word 0
  .long 0
rm_ivt:
  .word 0x3ff
  .long 0

  .section .note.GNU-stack, "", @progbits
