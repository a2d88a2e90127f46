/* realmode: layout shared by realmode.c and realmode_asm.S. */
#ifndef GUEST_REALMODE_H
#define GUEST_REALMODE_H

#define SEL_CODE16 0x30 /* 16-bit code, base RM_STUB, limit 0xffff */
#define SEL_DATA16 0x38 /* 16-bit data, base 0, limit 0xffff */

#define RM_STUB 0x1000  /* the 16-bit program is copied here ... */
#define RM_CS 0x0100    /* ... and runs with CS = RM_STUB >> 4 */
#define RM_SS 0x0700    /* stack segment (base 0x7000), SP starts at 0 */
#define RM_DS 0x2000
#define RM_ES 0x3000
#define RM_FS 0x2800    /* FS:0 is DS:0x8000 */
#define RM_GS 0x4000
#define RES_OFF 0x3000  /* results at CS:RES_OFF (linear RM_STUB + RES_OFF) */

/* Result slots (byte offsets from RES_OFF). */
#define R_SP_PUSH 0x00     /* SP after the first push from SP = 0 */
#define R_SP_POP 0x02
#define R_POPPED 0x04
#define R_ADD 0x06
#define R_ADD_FLAGS 0x08
#define R_MUL_LO 0x0a
#define R_MUL_HI 0x0c
#define R_DIV_Q 0x0e
#define R_DIV_R 0x10
#define R_IMUL_LO 0x12
#define R_IMUL_HI 0x14
#define R_ADD32 0x18       /* dword */
#define R_ADC_LO 0x1c      /* dword */
#define R_ADC_HI 0x20      /* dword */
#define R_CBW 0x24
#define R_CWD 0x26
#define R_ROL 0x28
#define R_FS_ALIAS 0x2a
#define R_WRAP 0x2c
#define R_BP_SS 0x2e
#define R_A32 0x30
#define R_LDS_DS 0x32
#define R_LDS_SI 0x34
#define R_CALLS 0x36
#define R_SP_CALLS 0x38
#define R_ALIAS_CS 0x3a
#define R_JTAB 0x3c
#define R_FARJMP 0x3e
#define R_INT60 0x40
#define R_INT_IP 0x42
#define R_INT_CS 0x44
#define R_INT_IF 0x46      /* IF inside the handler */
#define R_INT_SAVED_IF 0x48 /* IF in the pushed FLAGS */
#define R_DE_IP 0x4a
#define R_DE_COUNT 0x4c
#define R_CMPS_CX 0x4e
#define R_CMPS_SI 0x50
#define R_SCAS_DI 0x52
#define R_WRAP_DI 0x54
#define R_STD_SI 0x56
#define R_TICKS 0x58
#define R_LOOP_N 0x5a
#define R_LOOP_ECX 0x5c    /* dword */
#define R_JCXZ 0x60
#define R_ENTER_BP 0x62    /* SP before ENTER - BP after it */
#define R_LEAVE_SP 0x64    /* SP after LEAVE - SP before ENTER */
#define R_POPA 0x66        /* 8 words: AX CX DX BX SP BP SI DI after PUSHA/POPA */
#define R_LEA16 0x76
#define R_LEA32 0x78       /* dword */
#define R_XLAT 0x7c
#define R_POPF 0x7e
#define R_SMSW 0x80
#define R_MISC 0x82        /* bsf, setc, cmov, movsx, xchg, aam: 6 words */
#define R_PUSH32 0x8e      /* dword popped after a 32-bit push */
#define R_SP_PUSH32 0x92   /* SP change of a 32-bit push */
#define R_LOOPNE 0x94
#define R_DE_DONE 0x96
#define R_INT_CS_ALIAS 0x98 /* CS in the handler of an int from the CS alias */
#define R_SP_WORD 0x9a  /* the word at SS:FFFE read through another segment */
#define R_END 0xa0

#endif
