/* The lm64* guests' long-mode runtime, assembly side: the switch into long
 * mode, calls from compatibility mode into 64-bit routines, lm64_try, and the
 * 64-bit interrupt stubs and handler (see lm64.h). */
#define LM64_KCODE32 0x08
#define LM64_KDATA 0x10
#define LM64_KCODE64 0x18
#define LM64_RESUME 1
#define LM64_IRQ 2

        .section .data
        .balign 8
try_rsp:
        .quad 0
try_active:
        .byte 0

        .text
/* void lm64_enter(uint32_t pml4, uint32_t efer_bits): with paging off and
 * interrupts disabled; returns in compatibility mode (CS 0x08, EFER.LMA). */
        .code32
        .globl lm64_enter
lm64_enter:
        mov 4(%esp), %eax
        mov %eax, %cr3
        mov %cr4, %eax
        or $0x20, %eax                  /* CR4.PAE */
        mov %eax, %cr4
        mov $0xc0000080, %ecx
        rdmsr
        or $0x100, %eax                 /* EFER.LME */
        or 8(%esp), %eax
        wrmsr
        mov %cr0, %eax
        or $0x80000000, %eax            /* CR0.PG: EFER.LMA */
        mov %eax, %cr0
        ret

/* uint64_t lm64_call(void *fn, uint32_t a, uint32_t b): far call into 64-bit
 * code, fn(a, b) there, EDX:EAX = its RAX. */
        .globl lm64_call
lm64_call:
        push %ebp
        mov %esp, %ebp
        push %ebx
        push %esi
        push %edi
        mov 8(%ebp), %eax
        mov 12(%ebp), %edi
        mov 16(%ebp), %esi
        lcall $LM64_KCODE64, $call64
        pop %edi
        pop %esi
        pop %ebx
        pop %ebp
        ret

/* int lm64_try(void *fn, uint32_t arg) = lm64_call(lm64_try64, fn, arg) */
        .globl lm64_try
lm64_try:
        push 8(%esp)
        push 8(%esp)
        push $lm64_try64
        call lm64_call
        add $12, %esp
        ret

        .code64
call64:
        /* The upper halves of registers are undefined after compatibility mode. */
        mov %esp, %esp
        mov %eax, %eax
        mov %edi, %edi
        mov %esi, %esi
        push %rbp
        mov %rsp, %rbp
        and $-16, %rsp
        call *%rax
        mov %rbp, %rsp
        pop %rbp
        mov %rax, %rdx
        shr $32, %rdx
        /* After a ring-3 round trip SS is null, which compatibility mode cannot use. */
        mov $LM64_KDATA, %ecx
        mov %ecx, %ss
        mov %ecx, %ds
        mov %ecx, %es
        lretl                           /* 32-bit operand size: EIP, CS */

/* lm64_load_tables(idtr, tss selector) */
        .globl lm64_load_tables
lm64_load_tables:
        lidt (%rdi)
        ltr %si
        ret

/* lm64_try64(fn, arg): fn(arg); RAX = -1, or the vector via lm64_try_return. */
lm64_try64:
        push %rbx
        push %rbp
        push %r12
        push %r13
        push %r14
        push %r15
        mov %rsp, try_rsp(%rip)
        movb $1, try_active(%rip)
        mov %rdi, %rax
        mov %rsi, %rdi
        call *%rax
        mov $-1, %rax
/* Leave the routine lm64_try runs (whatever its stack and CPL) with RAX. */
        .globl lm64_try_return
lm64_try_return:
        movb $0, try_active(%rip)
        mov try_rsp(%rip), %rsp
        pop %r15
        pop %r14
        pop %r13
        pop %r12
        pop %rbp
        pop %rbx
        ret

/* 256 interrupt stubs, 16 bytes apart: an error code of 0 where the CPU
 * pushes none, the vector, the common handler. */
        .balign 16
        .globl lm64_stubs
lm64_stubs:
        .set vec, 0
        .rept 256
        .balign 16
        .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
        .else
        pushq $0
        .endif
        pushq $vec
        jmp lm64_isr_common
        .set vec, vec + 1
        .endr

/* Record the frame in lm64_last (see struct lm64_frame), then act as
 * lm64_action[vector] says. */
lm64_isr_common:
        push %rax
        push %rcx
        push %rdx
        push %rsi
        push %rdi
        push %r8
        push %r9
        push %r10
        push %r11
        lea lm64_last(%rip), %rdi
        xor %ecx, %ecx
1:      mov 72(%rsp,%rcx,8), %rax       /* vec, err, rip, cs, rflags, rsp, ss */
        mov %rax, (%rdi,%rcx,8)
        inc %ecx
        cmp $7, %ecx
        jne 1b
        mov %cr2, %rax
        mov %rax, 56(%rdi)
        xor %eax, %eax
        mov %ss, %ax
        mov %rax, 64(%rdi)
        lea 88(%rsp), %rax              /* where the CPU's frame starts */
        mov %rax, 72(%rdi)
        incq 80(%rdi)
        pushfq
        popq 88(%rdi)
        mov 72(%rsp), %rax
        lea lm64_action(%rip), %rcx
        movzbl (%rcx,%rax), %ecx
        cmp $LM64_RESUME, %ecx
        je lm64_isr_resume
        cmp $LM64_IRQ, %ecx
        je 2f
        cmpb $0, try_active(%rip)       /* LM64_CATCH */
        je lm64_isr_fatal
        jmp lm64_try_return             /* RAX = the vector */
2:      mov $0x20, %al                  /* EOI */
        out %al, $0x20
lm64_isr_resume:
        pop %r11
        pop %r10
        pop %r9
        pop %r8
        pop %rdi
        pop %rsi
        pop %rdx
        pop %rcx
        pop %rax
        add $16, %rsp
        iretq

/* Nowhere to go: report it from C, in compatibility mode. */
lm64_isr_fatal:
        and $-16, %rsp
        mov $LM64_KDATA, %eax
        mov %eax, %ss
        mov %eax, %ds
        mov %eax, %es
        pushq $LM64_KCODE32
        lea 3f(%rip), %rax
        push %rax
        lretq
        .code32
3:      call lm64_unexpected
        .section .note.GNU-stack,"",@progbits
