/* The 64-bit compute guests' x86-64 code (compute/compute64_blob.ld: flat,
 * position-independent, c64_entry at offset 0), on pages of its own. */
        .section .text.compute64, "ax"
        .balign 4096
        .globl compute64_blob
compute64_blob:
        .incbin "compute64_blob.bin"
        .balign 4096
        .section .note.GNU-stack,"",@progbits
