/* nanobench: timed loops and minimal handlers.
 *
 * Every timed loop has the same frame:
 *   uint64_t nb_<op>(uint32_t n, uint32_t a, uint32_t b)
 * counter in %ebx (n >= 1, counts down), a in %ebp, b in %ecx, the start
 * time in %edi:%esi, %edx = nb_edx_in on entry to the loop and stored to
 * nb_edx_out after it, the counter's final value (0) to nb_left; %eax is free.  Returns the rdtsc delta in %edx:%eax.
 * The loop body sits between the start and end macros, so the empty loop
 * (nb_empty) is exactly the per-iteration overhead shared by all ops.
 */
#define LAPIC_TPR_ADDR 0xfee00080

  .section .data
  .align 4
  .global nb_edx_in, nb_edx_out, nb_left, nb_int80_count, nb_sysenter_count, nb_pf_count, nb_pf_bad, nb_de_count
  .global nb_pf_pte, nb_pf_va
nb_edx_in:         .long 0
nb_edx_out:        .long 0
nb_left:           .long 0   /* loop counter after the loop: 0 unless the loop exited early */
nb_int80_count:    .long 0
nb_sysenter_count: .long 0
nb_pf_count:       .long 0
nb_pf_bad:         .long 0
nb_de_count:       .long 0
nb_pf_pte:         .long 0   /* address of the PTE the #PF handler sets P in */
nb_pf_va:          .long 0   /* the linear address that is expected in CR2 */

  .text

.macro TIMED name
  .global \name
  .align 16
\name:
  pushl %ebx
  pushl %esi
  pushl %edi
  pushl %ebp
  movl 20(%esp), %ebx
  movl 24(%esp), %ebp
  movl 28(%esp), %ecx
  rdtsc
  movl %eax, %esi
  movl %edx, %edi
  movl nb_edx_in, %edx
  .align 16
1:
.endm

.macro TIMED_END
  decl %ebx
  jnz 1b
  movl %edx, nb_edx_out
  movl %ebx, nb_left
  rdtsc
  subl %esi, %eax
  sbbl %edi, %edx
  popl %ebp
  popl %edi
  popl %esi
  popl %ebx
  ret
.endm

/* Baseline: the loop overhead alone. */
TIMED nb_empty
TIMED_END

/* syscall: int 0x80 (ring 3 -> ring 0 through a DPL-3 gate) and iret back. */
TIMED nb_int80
  int $0x80
TIMED_END

/* sysenter into ring 0, sysexit back (ring 3 only). */
TIMED nb_sysenter
  movl %esp, %ecx
  movl $2f, %edx
  sysenter
2:
TIMED_END

/* in: read port 0x80 (a = unused). */
TIMED nb_in
  inb $0x80, %al
TIMED_END

/* cr8wr: a 32-bit guest's TPR write, alternating 0x10 and 0 (a starts at 0). */
TIMED nb_tpr
  xorl $0x10, %ebp
  movl %ebp, LAPIC_TPR_ADDR
TIMED_END

/* call/ret to an empty function. */
TIMED nb_call
  call nb_empty_fn
TIMED_END
  .align 16
nb_empty_fn:
  ret

/* pgfault: a = the linear address (not present), b = its PTE.  The load
 * faults, the handler sets P, the load restarts and completes; then the page
 * is unmapped again.  edx accumulates the loaded words. */
TIMED nb_pgfault
  movl (%ebp), %eax
  addl %eax, %edx
  andl $0xfffffffe, (%ecx)
  invlpg (%ebp)
TIMED_END

/* divzero: div by b = 0, the handler skips the 2-byte instruction. */
TIMED nb_divzero
  divl %ecx            /* f7 f1 */
TIMED_END

/* ptemod: a = linear address, b = its PTE, edx = value XORed into the PTE
 * (switches the page between two frames), then invlpg. */
TIMED nb_ptemod
  xorl %edx, (%ecx)
  invlpg (%ebp)
TIMED_END

/* ---- handlers (installed directly in the IDT, not through isr_common) ---- */
  .align 16
  .global nb_int80_stub
nb_int80_stub:
  incl nb_int80_count
  iret

  .align 16
  .global nb_sysenter_stub
nb_sysenter_stub:      /* ecx = user esp, edx = user eip, untouched */
  incl nb_sysenter_count
  sysexit

  .align 16
  .global nb_de_stub
nb_de_stub:
  addl $2, (%esp)
  incl nb_de_count
  iret

  .align 16
  .global nb_pf_stub
nb_pf_stub:            /* error code on the stack */
  pushl %eax
  movl %cr2, %eax
  cmpl nb_pf_va, %eax
  je 1f
  incl nb_pf_bad
1:
  movl nb_pf_pte, %eax
  orl $1, (%eax)
  incl nb_pf_count
  popl %eax
  addl $4, %esp
  iret

  .section .note.GNU-stack, "", @progbits
