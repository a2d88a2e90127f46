// Guest code for the KVM integration tests, assembled by gas into .rodata and
// copied into guest RAM at kCodeBase (0x4000) by the tests.  Layout the tests
// build around it (guest physical): GDT 0x800, IDT 0x1000, data 0x3000,
// code 0x4000, stack top 0x9000, page directory 0x10000, page table 0x11000
// (identity map of the first 4 MiB), 4 MiB PSE page at 0xfec00000 (APIC).
#include "guest_blobs.hpp"

__asm__(R"(
    .section .rodata
    .p2align 4

# --- real mode: IN, OUT, REP OUTSB, REP INSB, then CLI; HLT -----------------
    .code16
    .globl g_rm_io_start, g_rm_io_end
g_rm_io_start:
    movw $0x11, %dx
    inb %dx, %al                 # platform answers 0x5a
    outb %al, $0x10              # echoed
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    cld
    movw $(rm_msg - g_rm_io_start + 0x4000), %si
    movw $5, %cx
    movw $0x12, %dx
    rep outsb                    # "hello" to port 0x12
    movw $0x3000, %di
    movw $4, %cx
    movw $0x13, %dx
    rep insb                     # 4 bytes from port 0x13 into 0x3000
    cli
    hlt
rm_msg: .ascii "hello"
g_rm_io_end:

# --- 32-bit protected mode, no paging: MMIO writes and reads ----------------
    .code32
    .globl g_pm_mmio_start, g_pm_mmio_end
g_pm_mmio_start:
    movl $0x11223344, 0xd0000000     # MMIO write, 4 bytes
    movl 0xd0000008, %eax            # MMIO read, 4 bytes
    outl %eax, $0x14                 # report what was read
    movw $0x55aa, 0xd0000010         # MMIO write, 2 bytes
    movb 0xd0000011, %al             # MMIO read, 1 byte
    outb %al, $0x10
    cli
    hlt
g_pm_mmio_end:

# --- 32-bit paged: write each virtual page of a reverse-mapped window, then
#     remap virtual page 0 (PTE at %edx gets %ebp), INVLPG, write again ------
#     esi = window base, ecx = pages
    .globl g_paging_start, g_paging_end
g_paging_start:
    movl %esi, %ebx
    xorl %eax, %eax
1:  movl %eax, (%ebx)
    leal 0x100(%eax), %edi
    movl %edi, 4(%ebx)
    addl $0x1000, %ebx
    incl %eax
    cmpl %ecx, %eax
    jne 1b
    outb %al, $0x10                  # done with the window
    movl %ebp, (%edx)
    invlpg (%esi)
    movl $0xc0ffee, 8(%esi)
    cli
    hlt
g_paging_end:

# --- 32-bit paged: one run of each operation per marker (OUT 0xe0 <op>) ------
#     edi = repetitions; IDT: #DE, #PF, INT 0x80 handlers below
    .globl g_ops_start, g_ops_end, g_ops_de, g_ops_pf, g_ops_int80
g_ops_start:
    xorl %esi, %esi
    movb $1, %al
    outb %al, $0xe0                  # op 1: IN
    movl %edi, %ecx
1:  inb $0x11, %al
    decl %ecx
    jnz 1b
    movb $2, %al
    outb %al, $0xe0                  # op 2: TPR write through the MMIO APIC
    movl %edi, %ecx
1:  movl $0x10, 0xfee00080
    decl %ecx
    jnz 1b
    movb $3, %al
    outb %al, $0xe0                  # op 3: page faults (not-present PTEs at 0x200000)
    movl %edi, %ecx
    movl $0x200000, %ebx
1:  movl %ecx, (%ebx)
    addl $0x1000, %ebx
    decl %ecx
    jnz 1b
    movb $4, %al
    outb %al, $0xe0                  # op 4: INT 0x80 (system call gate)
    movl %edi, %ecx
1:  int $0x80
    decl %ecx
    jnz 1b
    movb $5, %al
    outb %al, $0xe0                  # op 5: CALL/RET
    movl %edi, %ecx
1:  call 2f
    decl %ecx
    jnz 1b
    jmp 3f
2:  ret
3:  movb $6, %al
    outb %al, $0xe0                  # op 6: divide by zero (#DE, handler skips the DIV)
    movl %edi, %ecx
1:  xorl %edx, %edx
    movl $1, %eax
    xorl %ebx, %ebx
    divl %ebx
    decl %ecx
    jnz 1b
    movb $7, %al
    outb %al, $0xe0                  # op 7: PTE modification + INVLPG + touch
    movl %edi, %ecx
1:  xorl $0x200, 0x11800             # PTE of 0x200000: flip an available bit
    invlpg 0x200000
    movl %ecx, 0x200000
    decl %ecx
    jnz 1b
    movb $8, %al
    outb %al, $0xe0                  # end
    movl %esi, %eax
    outl %eax, $0x14                 # INT 0x80 count
    cli
    hlt
g_ops_de:
    addl $2, (%esp)                  # skip the 2-byte DIV
    iret
g_ops_pf:
    pushl %eax
    movl %cr2, %eax
    shrl $12, %eax
    orl $1, 0x11000(,%eax,4)         # make the page present
    popl %eax
    addl $4, %esp                    # error code
    iret
g_ops_int80:
    incl %esi
    iret
g_ops_end:

# --- state round trip: LCG + SSE accumulation, IN 0x16 checkpoint each pass --
#     ecx = passes; at the end OUTL edx(xmm0 lane 0) to 0x14, ebx to 0x15
    .globl g_state_start, g_state_end
g_state_start:
    movl $1, %eax
    xorl %ebx, %ebx
    pxor %xmm0, %xmm0
    movl $3, %edx
    movd %edx, %xmm1
1:  imull $1103515245, %eax, %eax
    addl $12345, %eax
    addl %eax, %ebx
    paddd %xmm1, %xmm0
    pushl %eax
    inb $0x16, %al                   # checkpoint: the platform answers 7
    movzbl %al, %edx
    addl %edx, %ebx
    popl %eax
    decl %ecx
    jnz 1b
    movd %xmm0, %edx
    movl %edx, %eax
    outl %eax, $0x14
    movl %ebx, %eax
    outl %eax, $0x15
    cli
    hlt
g_state_end:

# --- XCR0: CR4.OSXSAVE, XSETBV with ESI, XGETBV reported on port 0x14 ---------
    .globl g_xcr0_start, g_xcr0_end
g_xcr0_start:
    movl %cr4, %eax
    orl $0x40000, %eax
    movl %eax, %cr4
    xorl %ecx, %ecx
    movl %esi, %eax
    xorl %edx, %edx
    xsetbv
    xorl %ecx, %ecx
    xorl %eax, %eax
    xgetbv
    outl %eax, $0x14                 # at once
    inb $0x16, %al                   # an exit to the host and back
    xorl %ecx, %ecx
    xorl %eax, %eax
    xgetbv
    outl %eax, $0x14                 # after an exit
    cli
    hlt
g_xcr0_end:

# --- triple fault: #UD with an empty IDT -------------------------------------
    .globl g_triple_start, g_triple_end
g_triple_start:
    movl $0xdead, %eax
    ud2
g_triple_end:

# --- interrupts: STI, then HLT (or spin) until the platform's interrupts came;
#     vector 0x30 handler reports on port 0x13 --------------------------------
    .globl g_irq_start, g_irq_end, g_irq_handler, g_irq_spin, g_irq_window
g_irq_start:
    sti
1:  hlt
    jmp 1b
g_irq_spin:
    sti
2:  jmp 2b
g_irq_window:
    cli
    outb %al, $0x10                  # the platform raises an interrupt here, IF=0
    outb %al, $0x12                  # still masked: this must come first
    sti
    nop                              # the STI shadow
3:  jmp 3b
g_irq_handler:
    outb %al, $0x13
    iret
g_irq_end:

# --- NMIs: the platform raises one on OUT 0x10 (and on OUT 0x14, inside the
#     handler: held until its IRET); the vector 2 handler counts them at
#     0x3000 and reports the count on port 0x13 --------------------------------
    .globl g_nmi_start, g_nmi_end, g_nmi_handler, g_nmi_hlt, g_nmi_init
g_nmi_start:
    cli
    outb %al, $0x10                  # an NMI comes: IF=0 does not block it
    outb %al, $0x12
    hlt                              # IF=0: ends the run
g_nmi_hlt:
    cli
    hlt                              # only an NMI (or INIT) ends this HLT
    outb %al, $0x12
    hlt
g_nmi_init:
    outb %al, $0x10                  # the platform has an INIT for this vCPU now
    outb %al, $0x12                  # must not run: the host applies the INIT first
    hlt
g_nmi_handler:
    incl 0x3000
    movl 0x3000, %eax
    cmpl $1, %eax
    jne 1f
    outb %al, $0x14
    movl 0x3000, %eax                # still 1 unless the second NMI nested
1:  outl %eax, $0x13
    iret
g_nmi_end:

# --- start-up in real mode: report CS (the STARTUP vector << 8) and the IP of
#     the instruction after a CALL (7 when execution began at IP 0) ------------
    .code16
    .globl g_sipi_start, g_sipi_end
g_sipi_start:
    movw %cs, %ax
    outw %ax, $0x10
    call 1f
1:  popw %ax
    outw %ax, $0x12
    cli
    hlt
g_sipi_end:
    .code32

# --- dirty pages: write one dword to each of 5 pages from 0x300000 -----------
    .globl g_dirty_start, g_dirty_end
g_dirty_start:
    movl $0x300000, %ebx
    movl $5, %ecx
1:  movl %ecx, (%ebx)
    addl $0x1000, %ebx
    decl %ecx
    jnz 1b
    cli
    hlt
g_dirty_end:
# --- 64-bit long mode: 8-byte MMIO write, SYSCALL through LSTAR -------------
    .code64
    .globl g_lm_start, g_lm_end, g_lm_after_syscall, g_lm_syscall
g_lm_start:
    movabsq $0x1122334455667788, %rax
    movabsq $0xd0000000, %rbx
    movq %rax, (%rbx)                # MMIO write, 8 bytes
    movq 8(%rbx), %rdx               # MMIO read, 8 bytes
    movq %rdx, 0x3000                # keep it in RAM
    syscall
g_lm_after_syscall:
    hlt
g_lm_syscall:
    movq %rcx, %rax                  # SYSCALL's return address
    outl %eax, $0x15
    movq %r11, %rax                  # SYSCALL's saved RFLAGS
    outl %eax, $0x15
    pushfq
    popq %rax                        # RFLAGS masked by SFMASK
    outl %eax, $0x15
    cli
    hlt
g_lm_end:
    .text
)");
