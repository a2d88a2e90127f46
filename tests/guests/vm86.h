/* vm86: layout shared by vm86.c and vm86_asm.S. */
#ifndef GUEST_VM86_H
#define GUEST_VM86_H

#define SEL_IOTSS 0x30     /* a TSS with an I/O permission bitmap (COM1 allowed) */

#define V86_CODE 0x2000    /* the 16-bit program, run with CS = V86_CS */
#define V86_CS 0x0200
#define V86_SS 0x0600      /* stack at 0x6000..0x7000, SP starts at 0x1000 */
#define V86_SP 0x1000
#define V86_DS 0x0500      /* results at DS:0 = linear 0x5000 */
#define V86_ES 0x0700
#define V86_RES 0x5000

/* Result slots (byte offsets in the DS segment). */
#define R_A_PUSHF1 0x00    /* FLAGS pushed (through the monitor) after a virtual STI */
#define R_A_PUSHF2 0x02    /* ... after a virtual POPF of 0 */
#define R_A_INT60 0x04     /* AX after INT 0x60 reflected into the v8086 IVT */
#define R_A_DE_DONE 0x06
#define R_A_ES_WORD 0x08   /* read back through a second segment */
#define R_B_PUSHF_CLI 0x0a /* IOPL 3: FLAGS after a real CLI */
#define R_B_PUSHF_STI 0x0c
#define R_B_POPF 0x0e      /* FLAGS after POPF of 0x0ad5 */
#define R_TICKS 0x10       /* incremented by the kernel's IRQ0 handler */
#define R_B_INT61_AX 0x12  /* AX after INT 0x61 through the IDT (the kernel adds 1) */
#define R_C_SWITCHED 0x14  /* set by code run in a v8086 task entered by a task switch */
#define R_END 0x20

#endif
