/* lm64insn's 64-bit routine: each result goes to ins_out[n] (RIP-relative). */
#define OUT(n) ins_out + 8 * (n)(%rip)

        .section .data
        .balign 8
        .globl ins_out, ins_quad
ins_out:        .skip 8 * 40
ins_quad:       .quad 0x8877665544332211

        .text
        .code64
        .globl ins_run
ins_run:
        push %rbx
        push %r12
        push %r13
        push %r14
        push %r15
        /* 64-bit immediates, RIP-relative and absolute addresses */
        movabs $0x0123456789abcdef, %rax
        mov %rax, OUT(0)
        mov ins_quad(%rip), %rax
        mov %rax, OUT(1)
        lea ins_quad(%rip), %rax
        mov $ins_quad, %ecx
        sub %rcx, %rax                  /* 0: both name the same byte */
        mov %rax, OUT(2)
        /* A 32-bit operation zeroes bits 63:32; 16- and 8-bit ones keep them. */
        mov $-1, %rax
        mov $5, %eax
        mov %rax, OUT(3)
        mov $-1, %rax
        add $0, %eax
        mov %rax, OUT(4)
        mov $-1, %rax
        mov $0x1234, %ax
        mov $0x56, %al
        mov %rax, OUT(5)
        /* Sign extension: movsxd, cltq, cqo, an imm32 in a 64-bit AND. */
        mov $0x80000000, %ecx
        movslq %ecx, %rax
        mov %rax, OUT(6)
        mov $0x7ffffffe, %eax
        cltq
        mov %rax, OUT(7)
        movabs $0x8000000000000000, %rax
        cqo
        mov %rdx, OUT(8)
        mov $-1, %rax
        .byte 0x48, 0x25                /* and $0x80000000, %rax (GAS will not: imm32 is sign-extended) */
        .long 0x80000000
        mov %rax, OUT(9)
        /* 128-bit products and quotients */
        movabs $0xfedcba9876543210, %rax
        movabs $0x0123456789abcdef, %rcx
        mulq %rcx
        mov %rax, OUT(10)
        mov %rdx, OUT(11)
        mov $-3, %rax
        movabs $0x7fffffffffffffff, %rcx
        imulq %rcx
        mov %rax, OUT(12)
        mov %rdx, OUT(13)
        mov $1, %edx
        movabs $0x23456789abcdef01, %rax
        mov $0xfedcba98, %ecx
        divq %rcx
        mov %rax, OUT(14)
        mov %rdx, OUT(15)
        movabs $-0x123456789abcdef0, %rax
        cqo
        mov $0x1234, %ecx
        idivq %rcx
        mov %rax, OUT(16)
        mov %rdx, OUT(17)
        movabs $0x0123456789abcdef, %rax
        imul $-7, %rax, %rax
        mov %rax, OUT(18)
        /* Shifts and rotates: counts are taken mod 64. */
        mov $1, %eax
        shl $63, %rax
        mov %rax, OUT(19)
        sar $63, %rax
        mov %rax, OUT(20)
        movabs $0x8000000000000001, %rax
        mov $67, %ecx
        rol %cl, %rax
        mov %rax, OUT(21)
        ror %cl, %rax
        ror %cl, %rax
        mov %rax, OUT(22)
        movabs $0x0123456789abcdef, %rax
        movabs $0xfedcba9876543210, %rdx
        shld $12, %rdx, %rax
        mov %rax, OUT(23)
        shrd $20, %rdx, %rax
        mov %rax, OUT(24)
        /* R8-R15, SIL/DIL/R8B, BSWAP, BSR/BSF, a 128-bit ADD/ADC, PUSH/POP */
        movabs $0x1122334455667788, %r15
        mov %r15, %r8
        shr $8, %r8
        mov %r8b, %sil
        mov %r15b, %dil
        movzbl %sil, %esi
        movzbl %dil, %edi
        shl $8, %rsi
        or %rdi, %rsi
        mov %rsi, OUT(25)               /* 0x7788 */
        mov %r15, %rax
        bswap %rax
        mov %rax, OUT(26)
        movabs $0x0000800000000010, %rax
        bsr %rax, %rcx
        bsf %rax, %rdx
        shl $8, %rcx
        or %rdx, %rcx
        mov %rcx, OUT(27)
        mov $-1, %rax                   /* (2^64 - 1) + 1 in the low half */
        xor %edx, %edx
        mov $1, %r9d
        xor %r10d, %r10d
        add %r9, %rax
        adc %r10, %rdx
        mov %rax, OUT(28)
        mov %rdx, OUT(29)
        mov %rsp, %r12
        pushq $-2
        mov %rsp, %r13
        popq %r14
        sub %r13, %r12                  /* 8 */
        mov %r12, OUT(30)
        mov %r14, OUT(31)
        pop %r15
        pop %r14
        pop %r13
        pop %r12
        pop %rbx
        ret
        .section .note.GNU-stack,"",@progbits
