/* lm64exc's 64-bit and compatibility-mode routines.  Each one that raises
 * an exception stores RSP in exc_rsp just before it and marks the
 * instruction with a global label (the C side compares the frame with both). */
        .section .data
        .balign 8
        .globl exc_rsp
exc_rsp:
        .quad 0
compat_target:                          /* m16:32 far pointer */
        .long 0
        .word 0x08

        .text
        .code64
        .globl exc_div0, exc_div0_at
exc_div0:
        mov $5, %eax
        xor %edx, %edx
        xor %ecx, %ecx
        mov %rsp, exc_rsp(%rip)
exc_div0_at:
        divq %rcx
        ret

/* 2^64 / 1: the quotient does not fit in 64 bits. */
        .globl exc_divovf, exc_divovf_at
exc_divovf:
        xor %eax, %eax
        mov $1, %edx
        mov $1, %ecx
        mov %rsp, exc_rsp(%rip)
exc_divovf_at:
        divq %rcx
        ret

        .globl exc_idivovf, exc_idivovf_at
exc_idivovf:
        movabs $0x8000000000000000, %rax
        cqo
        mov $-1, %rcx
        mov %rsp, exc_rsp(%rip)
exc_idivovf_at:
        idivq %rcx
        ret

        .globl exc_ud2, exc_ud2_at
exc_ud2:
        mov %rsp, exc_rsp(%rip)
exc_ud2_at:
        ud2
        ret

/* PUSH DS (0x1e) is invalid in 64-bit mode. */
        .globl exc_pushds, exc_pushds_at
exc_pushds:
        mov %rsp, exc_rsp(%rip)
exc_pushds_at:
        .byte 0x1e
        ret

/* A selector beyond the GDT's limit: #GP(selector). */
        .globl exc_badsel, exc_badsel_at
exc_badsel:
        mov $0x1f8, %eax
        mov %rsp, exc_rsp(%rip)
exc_badsel_at:
        mov %eax, %fs
        ret

/* A non-canonical address: #GP(0), not #PF. */
        .globl exc_noncanon, exc_noncanon_at
exc_noncanon:
        movabs $0x0000800000000000, %rcx
        mov %rsp, exc_rsp(%rip)
exc_noncanon_at:
        mov (%rcx), %rax
        ret

/* Loads and stores of an unmapped address above 4 GiB: #PF, CR2 = it. */
        .globl exc_pf_read, exc_pf_read_at
exc_pf_read:
        movabs $0x00007ffffffff008, %rcx
        mov %rsp, exc_rsp(%rip)
exc_pf_read_at:
        mov (%rcx), %rax
        ret

        .globl exc_pf_write, exc_pf_write_at
exc_pf_write:
        movabs $0x0000000123456788, %rcx
        mov %rsp, exc_rsp(%rip)
exc_pf_write_at:
        movq $1, (%rcx)
        ret

/* int3 with RSP 8 bytes off 16-byte alignment (RDI = 8) or aligned (RDI = 0):
 * the CPU aligns RSP before it pushes SS:RSP. */
        .globl exc_int3, exc_int3_after
exc_int3:
        push %rbx
        mov %rsp, %rbx
        and $-16, %rsp
        sub %rdi, %rsp
        mov %rsp, exc_rsp(%rip)
        int3
exc_int3_after:
        mov %rbx, %rsp
        pop %rbx
        ret

/* int $2 through a gate with an IST: the stack switches at the same CPL. */
        .globl exc_int2, exc_int2_after
exc_int2:
        mov %rsp, exc_rsp(%rip)
        int $2
exc_int2_after:
        ret

/* int3 with RSP in unmapped memory (RDI): delivering #BP faults (#PF), so
 * does delivering that #PF, and the #DF that follows uses its IST stack. */
        .globl exc_df
exc_df:
        mov %rsp, exc_rsp(%rip)
        mov %rdi, %rsp
        int3
        mov exc_rsp(%rip), %rsp
        ret

/* int n through gates lm64exc makes not present (0x50) or of a 16-bit type (0x51). */
        .globl exc_int50, exc_int50_at, exc_int51, exc_int51_at
exc_int50:
        mov %rsp, exc_rsp(%rip)
exc_int50_at:
        int $0x50
        ret

exc_int51:
        mov %rsp, exc_rsp(%rip)
exc_int51_at:
        int $0x51
        ret

/* int $n (RDI: 0x52, a trap gate, or 0x53, an interrupt gate) with IF set. */
        .globl exc_int_if
exc_int_if:
        cmp $0x52, %edi
        sti
        jne 1f
        int $0x52
        cli
        ret
1:      int $0x53
        cli
        ret

/* sti; hlt in 64-bit code until an interrupt has come. */
        .globl exc_sti_hlt, exc_hlt_after
exc_sti_hlt:
        sti
        hlt
exc_hlt_after:
        cli
        ret

/* Far-call the 32-bit routine at RDI in compatibility mode (CS 0x08);
 * RAX = its EDX:EAX. */
        .globl exc_compat_call
exc_compat_call:
        push %rbx
        push %rbp
        mov %edi, compat_target(%rip)
        lcall *compat_target(%rip)
        mov %eax, %eax
        shl $32, %rdx
        or %rdx, %rax
        pop %rbp
        pop %rbx
        ret

        .code32
/* 32-bit code: 0x40 is INC EAX here (a REX prefix in 64-bit code), PUSH
 * moves ESP by 4; EAX = 42, EDX = the bytes the push took. */
        .globl compat_work
compat_work:
        mov $41, %eax
        .byte 0x40
        mov %esp, %ecx
        push %eax
        mov %ecx, %edx
        sub %esp, %edx
        pop %ecx
        lret

/* #DE in compatibility mode, into the 64-bit handler. */
        .globl compat_div0, compat_div0_at
compat_div0:
        mov $5, %eax
        xor %edx, %edx
        xor %ecx, %ecx
        mov %esp, exc_rsp
        movl $0, exc_rsp + 4
compat_div0_at:
        divl %ecx
        lret
        .section .note.GNU-stack,"",@progbits
