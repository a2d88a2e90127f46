/* The longmode guest's mode transitions: from 32-bit protected mode with
 * paging off into long mode (CR4.PAE, CR3 = 4-level tables, EFER.LME, CR0.PG),
 * a far jump into a 64-bit code segment, 64-bit work with output on COM1,
 * and a far return to 32-bit code (compatibility mode) so that C goes on. */
#define COM1 0x3f8

        .section .data
        .balign 8
lm_gdt:
        .quad 0
        .quad 0x00cf9a000000ffff        /* 0x08: 32-bit code, flat */
        .quad 0x00cf92000000ffff        /* 0x10: data, flat */
        .quad 0x00af9a000000ffff        /* 0x18: 64-bit code (L=1, D=0) */
lm_gdt_end:
        .balign 4
        .word 0
lm_gdtr:
        .word lm_gdt_end - lm_gdt - 1
        .long lm_gdt

        .balign 8
lm_factor:
        .quad 0x00000000fedcba98
lm_scratch:
        .quad 0
lm_banner:
        .asciz "64-bit code: hello from long mode (RIP-relative string, 64-bit port I/O loop)\n"

        .text
/* void lm_enter(uint32_t pml4, struct lm_result *out)
 * Called with paging off and interrupts disabled. */
        .code32
        .globl lm_enter
lm_enter:
        push %ebp
        mov %esp, %ebp
        push %ebx
        push %esi
        push %edi
        lgdt lm_gdtr
        ljmp $0x08, $1f
1:      mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov %ax, %fs
        mov %ax, %gs
        mov 8(%ebp), %eax
        mov %eax, %cr3
        mov %cr4, %eax
        or $0x20, %eax                  /* CR4.PAE */
        mov %eax, %cr4
        mov $0xc0000080, %ecx
        rdmsr
        or $0x100, %eax                 /* EFER.LME */
        wrmsr
        mov %cr0, %eax
        or $0x80000000, %eax            /* CR0.PG: EFER.LMA, compatibility mode */
        mov %eax, %cr0
        /* BT32 hands the VM to a hardware mode here. */
        mov 12(%ebp), %edi
        ljmp $0x18, $lm64

        .code64
lm64:
        mov %esp, %esp                  /* upper halves: zero */
        mov %edi, %edi
        lea lm_banner(%rip), %rsi
        call serial_puts64
        /* A 64x64 -> 128-bit multiply of a RIP-relative operand. */
        movabs $0x0123456789abcdef, %rax
        mulq lm_factor(%rip)
        mov %rax, 0(%rdi)
        mov %rdx, 8(%rdi)
        /* The same memory through an alias 512 GiB up (PML4 entry 1). */
        movabs $0x8000000000, %r8
        lea lm_factor(%rip), %rcx
        mov (%r8,%rcx), %rax
        mov %rax, 16(%rdi)
        movabs $0x1122334455667788, %rax
        lea lm_scratch(%rip), %rcx
        mov %rax, (%r8,%rcx)
        mov (%rcx), %rax
        mov %rax, 24(%rdi)
        /* 64-bit shifts and a 64-bit rotate across both halves. */
        mov $1, %eax
        shl $40, %rax
        rol $30, %rax                   /* 1 << 70 mod 64 = 1 << 6 */
        mov %rax, 32(%rdi)
        mov %cs, %ax
        movzwl %ax, %eax
        mov %rax, 40(%rdi)
        mov $0xc0000080, %ecx
        rdmsr
        shl $32, %rdx
        or %rdx, %rax
        mov %rax, 48(%rdi)
        /* Back to 32-bit code: a far return to the 32-bit code segment. */
        pushq $0x08
        lea lm_compat(%rip), %rax
        push %rax
        lretq

/* rsi: a NUL-terminated string, written to COM1 when it has room */
serial_puts64:
1:      movb (%rsi), %cl
        test %cl, %cl
        jz 3f
        mov $COM1 + 5, %dx
2:      inb %dx, %al
        test $0x20, %al
        jz 2b
        mov %cl, %al
        mov $COM1, %dx
        outb %al, %dx
        inc %rsi
        jmp 1b
3:      ret

        .code32
lm_compat:
        pop %edi
        pop %esi
        pop %ebx
        pop %ebp
        ret
        .section .note.GNU-stack,"",@progbits
