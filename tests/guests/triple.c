/* triple: a malformed guest on purpose.  It loads an empty IDT and executes
 * int3: the #BP cannot be delivered (#GP), nor can the #GP (#DF), nor the #DF,
 * so the CPU shuts down (triple fault).  The monitor must stop this VM with a
 * diagnostic and leave the host alone.  Not an oracle test: QEMU with
 * -no-reboot just exits. */
#include "rt.h"

int main(void)
{
  printf("triple: loading an empty IDT, then int3\n");
  static const struct __attribute__((packed)) { uint16_t limit; uint32_t base; } empty = { 0, 0 };
  __asm__ volatile("lidt %0\n\tint3" : : "m"(empty));
  printf("triple: still running: the fault was not a triple fault\n");
  return 1;
}
