/* Shared by smp.c and smp_trampoline.S. */
#ifndef GUEST_SMP_H
#define GUEST_SMP_H
/* Where the BSP copies the real-mode AP trampoline: page-aligned, below
 * 1 MiB, clear of the multiboot information (0x8000-0x10000 here, after the
 * image under QEMU) and the EBDA.  The STARTUP vector is its page number. */
#define SMP_TRAMPOLINE_BASE 0x70000
#define SMP_STARTUP_VECTOR (SMP_TRAMPOLINE_BASE >> 12)
#endif
