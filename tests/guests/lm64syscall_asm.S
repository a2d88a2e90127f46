/* lm64syscall's kernel side (the SYSCALL entry, the way into ring 3) and its
 * ring-3 64-bit programs.  The per-CPU area the kernel finds through GS
 * (after SWAPGS) holds its stack and the user's RSP, as in Linux. */
#define SYS_WRITE 1
#define SYS_ADD 2
#define SYS_FLAGS 3
#define SYS_GSBASES 4
#define SYS_EXIT 60
#define PCPU_KSTACK 8
#define PCPU_USER_RSP 16

        .section .data
        .balign 8
        .globl sys_kflags, sys_uflags, sys_gs_base, sys_kernel_gs_base, sys_exit_code
        .globl sys_out, sys_out_len
sys_kflags:     .quad 0                 /* SYS_FLAGS: RFLAGS at the entry (SFMASK applied) */
sys_uflags:     .quad 0                 /* and R11 there: the user's RFLAGS */
sys_gs_base:    .quad 0
sys_kernel_gs_base: .quad 0
sys_exit_code:  .quad 0
sys_out_len:    .quad 0
sys_out:        .skip 256               /* SYS_WRITE's bytes, NUL-terminated by the C side */

        .globl u_fs, u_gs, u_sum, u_rcx_ok, u_r11, u_flags_after, u_rsp, u_hello, u32_value
u_fs:           .quad 0
u_gs:           .quad 0
u_sum:          .quad 0
u_rcx_ok:       .quad 0
u_r11:          .quad 0
u_flags_after:  .quad 0
u_rsp:          .quad 0
u32_value:      .quad 0
u_hello:        .ascii "hello from ring 3 (64-bit) through syscall\n"
u_hello_end:

        .text
        .code64
/* sys_enter_user(rip, rsp): SYSRET to 64-bit ring 3 with RFLAGS 0x202; GS
 * must hold the kernel's per-CPU area (SWAPGS gives the user its own). */
        .globl sys_enter_user
sys_enter_user:
        mov %rdi, %rcx
        mov $0x202, %r11d
        swapgs
        mov %rsi, %rsp
        sysretq

        .globl sys_entry
sys_entry:
        swapgs
        mov %rsp, %gs:PCPU_USER_RSP
        mov %gs:PCPU_KSTACK, %rsp
        push %rcx
        push %r11
        pushfq                          /* before CMP changes the arithmetic flags */
        pop %r10
        cmp $SYS_WRITE, %eax
        je 1f
        cmp $SYS_ADD, %eax
        je 2f
        cmp $SYS_GSBASES, %eax
        je 3f
        cmp $SYS_EXIT, %eax
        je 4f
        mov %r10, sys_kflags(%rip)      /* SYS_FLAGS */
        mov %r11, sys_uflags(%rip)
        jmp 9f
1:      lea sys_out(%rip), %r8          /* append RSI bytes from RDI */
        add sys_out_len(%rip), %r8
        mov %rsi, %rcx
        add %rsi, sys_out_len(%rip)
        xchg %rdi, %rsi
        mov %r8, %rdi
        rep movsb
        xor %eax, %eax
        jmp 9f
2:      lea (%rdi,%rsi), %rax
        jmp 9f
3:      mov $0xc0000101, %ecx           /* GS_BASE: the kernel's now */
        rdmsr
        mov %eax, sys_gs_base(%rip)
        mov %edx, sys_gs_base+4(%rip)
        mov $0xc0000102, %ecx           /* KERNEL_GS_BASE: the user's now */
        rdmsr
        mov %eax, sys_kernel_gs_base(%rip)
        mov %edx, sys_kernel_gs_base+4(%rip)
        xor %eax, %eax
        jmp 9f
4:      mov %rdi, sys_exit_code(%rip)   /* back to lm64_try's caller, GS the kernel's */
        mov $-1, %rax
        jmp lm64_try_return
9:      pop %r11
        pop %rcx
        mov %gs:PCPU_USER_RSP, %rsp
        swapgs
        sysretq

/* Ring 3. */
        .globl user_main, user_int80_after, user_syscall_after
user_main:
        mov %fs:0, %rax                 /* FS and GS bases the kernel set */
        mov %rax, u_fs(%rip)
        mov %gs:0, %rax
        mov %rax, u_gs(%rip)
        lea u_hello(%rip), %rdi
        mov $u_hello_end - u_hello, %esi
        mov $SYS_WRITE, %eax
        syscall
        movabs $0x1111111111111111, %rdi
        movabs $0x2222222222222222, %rsi
        mov $SYS_ADD, %eax
        syscall
user_syscall_after:
        mov %rax, u_sum(%rip)
        lea user_syscall_after(%rip), %rdx
        cmp %rdx, %rcx                  /* RCX: the RIP after SYSCALL */
        sete %dl
        movzbl %dl, %edx
        mov %rdx, u_rcx_ok(%rip)
        mov %r11, u_r11(%rip)           /* R11: RFLAGS as SYSRET restored them */
        /* DF, AC and CF set: SFMASK clears the first two for the kernel, SYSRET restores all. */
        pushfq
        orq $0x40401, (%rsp)
        popfq
        mov $SYS_FLAGS, %eax
        syscall
        pushfq
        popq u_flags_after(%rip)
        pushfq
        andq $~0x40401, (%rsp)
        popfq
        mov $SYS_GSBASES, %eax
        syscall
        /* int $0x80 through a DPL-3 gate: the kernel stack comes from TSS.RSP0. */
        mov %rsp, u_rsp(%rip)
        int $0x80
user_int80_after:
        mov $SYS_EXIT, %eax
        mov $7, %edi
        syscall
        ud2

/* Ring 3: CLI with IOPL 0 is #GP(0). */
        .globl user_cli, user_cli_at
user_cli:
        mov %rsp, u_rsp(%rip)
user_cli_at:
        cli
        ud2

/* Ring 3: a read of the supervisor page lm64syscall maps at 0x3fe00000 is #PF(5). */
        .globl user_read_super, user_read_super_at
user_read_super:
        mov %rsp, u_rsp(%rip)
user_read_super_at:
        mov 0x3fe00010, %rax
        ud2

/* Ring 3: spin until three interrupts have come (lm64_last.count), then exit. */
        .globl user_spin
user_spin:
        mov lm64_last+80(%rip), %rdx
        add $3, %rdx
1:      cmp lm64_last+80(%rip), %rdx
        ja 1b
        mov $SYS_EXIT, %eax
        mov $3, %edi
        syscall
        ud2

        .code32
/* Ring 3 in compatibility mode (SYSRETL): 0x40 is INC EAX here; int $0x81
 * (a DPL-3 gate lm64_try catches) ends it. */
        .globl user32_main, user32_int81_after
user32_main:
        mov %esp, u_rsp
        movl $0, u_rsp + 4
        mov $41, %eax
        .byte 0x40
        mov %eax, u32_value
        int $0x81
user32_int81_after:
        ud2
        .code64

/* sys_run_user32(rip): SYSRETL to 32-bit ring 3 (CS 0x2b) at rip. */
        .globl sys_run_user32
sys_run_user32:
        mov %rdi, %rcx
        mov $0x202, %r11d
        swapgs
        lea user_stack_top(%rip), %rsp
        sysretl

/* sys_run_user(rip): ring 3 at rip on the user stack, under lm64_try. */
        .globl sys_run_user
sys_run_user:
        lea user_stack_top(%rip), %rsi
        jmp sys_enter_user

        .section .bss
        .balign 16
        .skip 8192
user_stack_top:
        .section .note.GNU-stack,"",@progbits
