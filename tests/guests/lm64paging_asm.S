/* lm64paging's 64-bit accessors: each uses the 64-bit address in pg_addr
 * (compatibility mode cannot form one), so lm64_try can run them too. */
        .section .data
        .balign 8
        .globl pg_addr, pg_value
pg_addr:        .quad 0
pg_value:       .quad 0
rip_value:      .quad 0x5249502d72656c61        /* read RIP-relatively by rip_probe */

        .text
        .code64
        .globl pg_read, pg_write, pg_call, pg_invlpg, pg_reload_cr3, rip_probe
pg_read:
        mov pg_addr(%rip), %rcx
        mov (%rcx), %rax
        ret

pg_write:
        mov pg_addr(%rip), %rcx
        mov pg_value(%rip), %rax
        mov %rax, (%rcx)
        ret

pg_call:
        mov pg_addr(%rip), %rcx
        call *%rcx
        ret

pg_invlpg:
        mov pg_addr(%rip), %rcx
        invlpg (%rcx)
        ret

pg_reload_cr3:
        mov %cr3, %rax
        mov %rax, %cr3
        ret

/* Run at an alias of the image, it sees that alias in RIP and reads its
 * data RIP-relatively through it: RAX = RIP, pg_value = rip_value. */
rip_probe:
        lea 0(%rip), %rax
        mov rip_value(%rip), %rcx
        mov %rcx, pg_value(%rip)
        ret
        .section .note.GNU-stack,"",@progbits
