/* Multiboot v1 header, entry point, interrupt stubs and context helpers. */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003   /* page-align modules, want memory info */

  .section .multiboot, "a"
  .align 4
  .long MB_MAGIC
  .long MB_FLAGS
  .long -(MB_MAGIC + MB_FLAGS)

  .section .data
  .align 4
  .global mb_magic, mb_info
mb_magic: .long 0
mb_info:  .long 0

  .section .bss
  .align 16
boot_stack:
  .skip 65536
  .global boot_stack_top
boot_stack_top:

  .section .text.entry, "ax"
  .global _start
_start:
  cli
  cld
  movl $boot_stack_top, %esp
  movl %eax, mb_magic
  movl %ebx, mb_info
  /* Zero .bss (the stack lives there, but nothing is on it yet). */
  movl $__bss_start, %edi
  movl $__bss_end, %ecx
  subl %edi, %ecx
  xorl %eax, %eax
  rep stosb
  pushl $0
  popfl
  call rt_init
  call main
  pushl %eax
  call rt_exit
1: cli
  hlt
  jmp 1b

/* Reload segment registers after lgdt: gdt_reload(code_sel, data_sel). */
  .text
  .global gdt_reload
gdt_reload:
  movl 8(%esp), %eax
  movw %ax, %ds
  movw %ax, %es
  movw %ax, %fs
  movw %ax, %gs
  movw %ax, %ss
  movl 4(%esp), %eax
  pushl %eax
  pushl $1f
  lret
1: ret

/* 256 interrupt stubs, 16 bytes apart, starting at isr_stubs. */
  .align 16
  .global isr_stubs
isr_stubs:
  .set vec, 0
  .rept 256
  .align 16
  .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
  .else
  pushl $0
  .endif
  pushl $vec
  jmp isr_common
  .set vec, vec + 1
  .endr

isr_common:
  pushal
  pushl %ds
  pushl %es
  pushl %fs
  pushl %gs
  movw $0x10, %ax
  movw %ax, %ds
  movw %ax, %es
  movw %ax, %fs
  movw %ax, %gs
  cld
  pushl %esp
  call isr_dispatch
  movl %eax, %esp        /* dispatcher returns the frame to resume */
  .global isr_return
isr_return:
  popl %gs
  popl %fs
  popl %es
  popl %ds
  popal
  addl $8, %esp
  iret

/* int ctx_save(struct ctx *c): returns 0, or the value given to ctx_restore. */
  .global ctx_save
ctx_save:
  movl 4(%esp), %eax
  movl %ebx, 0(%eax)
  movl %esi, 4(%eax)
  movl %edi, 8(%eax)
  movl %ebp, 12(%eax)
  leal 4(%esp), %ecx
  movl %ecx, 16(%eax)
  movl (%esp), %ecx
  movl %ecx, 20(%eax)
  pushfl
  popl %ecx
  movl %ecx, 24(%eax)
  xorl %eax, %eax
  ret

/* void ctx_restore(struct ctx *c, int v) */
  .global ctx_restore
ctx_restore:
  movl 4(%esp), %edx
  movl 8(%esp), %eax
  movl 0(%edx), %ebx
  movl 4(%edx), %esi
  movl 8(%edx), %edi
  movl 12(%edx), %ebp
  movl 16(%edx), %esp
  pushl 24(%edx)
  popfl
  jmp *20(%edx)

/* void enter_user(void (*fn)(void), uint32_t user_stack_top):
 * iret to ring 3 at fn with a stack whose return address is user_exit_stub. */
  .global enter_user
enter_user:
  movl 4(%esp), %ecx
  movl 8(%esp), %eax
  subl $4, %eax
  movl $user_exit_stub, (%eax)
  pushl $0x23
  pushl %eax
  pushfl
  andl $~0x4700, (%esp)     /* clear NT, DF, TF, IOPL */
  pushl $0x1b
  pushl %ecx
  movw $0x23, %ax
  movw %ax, %ds
  movw %ax, %es
  movw %ax, %fs
  movw %ax, %gs
  iret

  .global user_exit_stub
user_exit_stub:
  int $0x81
  ud2
  .section .note.GNU-stack, "", @progbits
