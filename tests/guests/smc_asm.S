/* Self-modifying code routines for the smc guest.  Each one patches the
 * 32-bit immediate of a "movl $imm, %eax" (B8 id) or "addl $imm, %eax" (05 id)
 * and then executes it. */
  .text

/* uint32_t smc_same_nojump(uint32_t v): patch the very next instruction. */
  .global smc_same_nojump
smc_same_nojump:
  movl 4(%esp), %eax
  movl %eax, 1f+1
1: movl $0, %eax
  ret

/* uint32_t smc_same_jump(uint32_t v): patch, then jump to the patched insn. */
  .global smc_same_jump
smc_same_jump:
  movl 4(%esp), %eax
  movl %eax, 1f+1
  jmp 1f
  nop
1: movl $0, %eax
  ret

/* uint32_t smc_loop(uint32_t n): the loop increments the immediate of its own
 * add instruction every iteration: returns 1 + 2 + ... + n. */
  .global smc_loop
smc_loop:
  movl 4(%esp), %ecx
  xorl %eax, %eax
  movl $1, 2f+1
2: addl $0x12345678, %eax
  incl 2b+1
  decl %ecx
  jnz 2b
  ret

/* uint32_t smc_retpatch(uint32_t v): the callee patches the instruction at its
 * own return address; the caller then executes the new instruction. */
  .global smc_retpatch
smc_retpatch:
  movl $0x11111111, 2f+1
  movl 4(%esp), %edx
  call 1f
2: movl $0x11111111, %eax
  ret
1: movl %edx, 2b+1
  ret

/* Cross-page routines: the page boundary is marked by smc_page2. */
  .p2align 12
  .skip 4096 - 64
/* uint32_t smc_cross_jump(uint32_t v): patch an instruction on the next page, jump there. */
  .global smc_cross_jump
smc_cross_jump:
  movl 4(%esp), %eax
  movl %eax, smc_cross_tgt+1
  jmp smc_cross_tgt
  .p2align 6, 0xcc
  .global smc_page2
smc_page2:
smc_cross_tgt:
  movl $0, %eax
  ret

  .p2align 12
  .skip 4096 - 9
/* uint32_t smc_cross_fall(uint32_t v): patch the instruction that starts on the
 * next page and fall through into it. */
  .global smc_cross_fall
smc_cross_fall:
  movl 4(%esp), %eax          /* 4 bytes */
  movl %eax, 3f+1             /* 5 bytes */
3: movl $0, %eax              /* first byte of the next page */
  ret
  .if (3b - smc_cross_fall) != 9
  .error "smc_cross_fall layout"
  .endif

  .p2align 12
  .skip 4096 - 11
/* uint32_t smc_straddle(uint32_t v): the patched instruction straddles the page boundary. */
  .global smc_straddle
smc_straddle:
  movl 4(%esp), %eax          /* 4 bytes */
  movl %eax, 4f+1             /* 5 bytes */
4: movl $0, %eax              /* B8 + 1 imm byte on this page, 3 on the next */
  ret
  .if (4b - smc_straddle) != 9
  .error "smc_straddle layout"
  .endif
  .p2align 12

  .section .note.GNU-stack, "", @progbits
