/* pmode16: layout shared by pmode16.c and pmode16_asm.S. */
#ifndef GUEST_PMODE16_H
#define GUEST_PMODE16_H

/* GDT selectors added to the runtime's (0x08..0x28). */
#define SEL_CODE16 0x30   /* 16-bit code, base CODE16_BASE, limit 0xffff */
#define SEL_DATA16 0x38   /* 16-bit data, base DATA16_BASE, limit 0xffff: the results */
#define SEL_DATA32 0x40   /* 32-bit data, base DATA32_BASE, 4 KiB-granular limit 64 MiB */
#define SEL_CODE32 0x48   /* 32-bit code, base CODE32_BASE */
#define SEL_STACK16 0x50  /* 16-bit stack (B = 0), base STACK16_BASE, limit 0xffff */
#define SEL_CODE16_R3 0x5b /* the same 16-bit code at DPL 3 */
#define SEL_DATA16_R3 0x63 /* the same data at DPL 3 */
#define SEL_STACK16_R3 0x6b /* a ring-3 16-bit stack, base STACK16_R3_BASE */
#define SEL_DATA16_DPL3_NOWRITE 0x73 /* read-only data at DPL 3 (VERW fails, VERR succeeds) */
#define SEL_CONFORMING 0x78 /* conforming 32-bit code at DPL 0 (LAR from ring 3 sees it) */
#define SEL_LDT 0x80      /* an LDT descriptor (LAR/LSL types) */
#define GDT_ENTRIES 17

#define CODE16_BASE 0x10000
#define DATA16_BASE 0x20000
#define DATA32_BASE 0x30000
#define CODE32_BASE 0x40000
#define STACK16_BASE 0x50000
#define STACK16_R3_BASE 0x60000

/* Result slots at DATA16_BASE + R_*. */
#define R_BASE_WRITE 0x00   /* DS:0x100 read back (linear DATA16_BASE + 0x100) */
#define R_SP_AFTER 0x02     /* SP after a push on the 16-bit stack from SP 0 */
#define R_INT62_AX 0x04
#define R_INT62_IP 0x06
#define R_INT62_CS 0x08
#define R_INT62_IF 0x0a     /* IF in the handler (an interrupt gate clears it) */
#define R_INT62_FRAME 0x0c  /* SP before INT - SP at the handler's entry: the 6-byte word frame */
#define R_DE_IP 0x0e
#define R_DE_COUNT 0x10
#define R_LAR 0x12          /* 6 x (dword value, word ZF): data16, code16 DPL 3, TSS, LDT, null, beyond the GDT */
#define R_LSL 0x36          /* 3 x (dword value, word ZF): data32 (4 KiB granular), TSS, code16 */
#define R_VERR 0x48         /* 4 x word ZF: data16, code16 (readable), read-only data, beyond */
#define R_VERW 0x50         /* 4 x word ZF */
#define R_ARPL 0x58         /* 2 x (word value, word ZF) */
#define R_R3_CPL 0x60       /* CS & 3 in the ring-3 16-bit code */
#define R_R3_FRAME 0x62     /* the ring-3 INT 0x62 frame: IP CS FLAGS SP SS (words) */
#define R_R3_LAR_CONF 0x6c  /* LAR of conforming DPL-0 code from ring 3: ZF */
#define R_R3_VERR_DATA0 0x6e /* VERR of DPL-0 data from ring 3: ZF */
#define R_SAVED_ESP 0x70    /* the 32-bit caller's SS:ESP while 16-bit code runs */
#define R_SAVED_SS 0x74
#define R_SAVED_SP16 0x76   /* the ring-0 16-bit SS:SP around the ring-3 excursion */
#define R_SAVED_SS16 0x78
#define R_STACK_WORD 0x7a  /* the word pushed at SS:FFFE, read through ES */
#define R_END 0x80

#endif
